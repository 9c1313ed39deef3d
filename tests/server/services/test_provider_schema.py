"""The API's provider names come from the provider registry: validated as before, listed in OpenAPI."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloudkeep.providers.registry import provider_kinds
from cloudkeep.server.services.schemas import CredentialCreate


def test_unknown_provider_is_refused_with_the_registered_names() -> None:
    with pytest.raises(ValidationError) as caught:
        CredentialCreate(name="lab", provider="gcp")
    assert caught.value.errors()[0]["msg"] == "Input should be 'aws', 'azure' or 'local'"
    assert caught.value.errors()[0]["type"] == "literal_error"  # as when it was a Literal


def test_every_registered_provider_is_accepted_and_listed_in_the_schema() -> None:
    for kind in provider_kinds():
        assert CredentialCreate(name="lab", provider=kind).provider == kind
    schema = CredentialCreate.model_json_schema()["properties"]["provider"]
    assert schema == {"enum": ["aws", "azure", "local"], "title": "Provider", "type": "string"}
