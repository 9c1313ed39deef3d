"""`cloudkeep credential add` builds its cloud options from the providers' credential fields."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cloudkeep.cli import credential
from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.registry import all_provider_facts


def test_every_non_secret_field_is_an_option_and_no_secret_is() -> None:
    done = CliRunner().invoke(credential.app, ["add", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    for facts in all_provider_facts():
        for field in facts.credential_fields:
            assert (field.option in done.output) is not field.secret, field.key
            if field.env:
                assert field.env in done.output  # named in --from-env's help


def test_from_env_reads_only_the_chosen_providers_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "azure-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    secrets = credential._secrets("azure", {"client_id": "app"}, from_env=True, prompt=False)
    assert {k: v.get_secret_value() for k, v in secrets.items()} == {
        "client_id": "app",
        "client_secret": "azure-secret",
    }


def test_a_secret_is_prompted_for_only_after_its_partner(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(credential.typer, "prompt", lambda key, hide_input: asked.append(key) or "typed")
    assert credential._secrets("aws", {}, from_env=False, prompt=True) == {}  # the default chain
    secrets = credential._secrets("aws", {"aws_access_key_id": "AKIA"}, from_env=False, prompt=True)
    assert asked == ["aws_secret_access_key"]
    assert secrets["aws_secret_access_key"].get_secret_value() == "typed"
    assert credential._secrets("local", {}, from_env=False, prompt=True) == {} and len(asked) == 1


def test_unknown_provider_names_the_registered_ones() -> None:
    done = CliRunner().invoke(credential.app, ["add", "x", "--provider", "gcp"])
    assert isinstance(done.exception, ConfigurationError)
    assert done.exception.hint == "use aws, azure or local"
