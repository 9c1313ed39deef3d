"""Job options through the REST API: the typed model is the body's schema, so a bad option is a 422
in the API's error shape, never a stored job that fails at run time."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.server.fixtures import Seeded

V1 = "/api/v1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bandwidth_limit": "10XB"}, "body.options.bandwidth_limit: '10XB' is not a size"),
        ({"parallel_machines": "two"}, "body.options.parallel_machines: Input should be a valid integer"),
        ({"notifications": '{"on": ["failed"]}'}, "body.options.notifications: Input should be a valid dict"),
        ({"colour": "blue"}, "body.options: unknown option colour; known options: bandwidth_limit,"),
    ],
)
def test_a_bad_option_is_a_422_naming_it(
    api: TestClient, seeded: Seeded, options: dict[str, Any], message: str
) -> None:
    body = {"name": "nightly", "repository": seeded.backup, "protection_groups": [seeded.group]}
    response = api.post(f"{V1}/jobs", json={**body, "options": options})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation" and error["message"].startswith(message)
    assert error["details"][0]["loc"][:2] == ["body", "options"]
    assert api.get(f"{V1}/jobs").json()["total"] == 0
    created = api.post(f"{V1}/jobs", json={**body, "options": {"bandwidth_limit": "10MiB"}})
    assert created.status_code == 201 and created.json()["options"] == {"bandwidth_limit": 10 * 1024**2}
    patched = api.patch(f"{V1}/jobs/nightly", json={"options": options})
    assert patched.status_code == 422 and patched.json()["error"]["message"].startswith(message)
    assert api.get(f"{V1}/jobs/nightly").json()["options"] == {"bandwidth_limit": 10 * 1024**2}
