"""Schemathesis fuzzes every operation of ``create_app(ctx).openapi()``: no input may cause a 5xx."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from tests.server.fixtures import Seeded

from cloudkeep.server.api import create_app
from cloudkeep.server.context import ServerContext

EXAMPLES_PER_OPERATION = 6


def test_no_server_errors(ctx: ServerContext, seeded: Seeded, admin_token: str) -> None:
    app = create_app(ctx)
    spec = app.openapi()
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    headers = {"Authorization": f"Bearer {admin_token}"}
    failures: list[str] = []
    calls: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(methods) for methods in spec["paths"].values())

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            calls.append(case.operation.label)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )
            elif response.status_code >= 400:
                assert set(response.json()["error"]) >= {"type", "message", "hint"}, response.text

        check()
    assert failures == []
    assert len(set(calls)) == len(operations)  # every operation was really exercised
