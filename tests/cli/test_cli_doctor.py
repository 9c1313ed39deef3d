"""`cloudkeep doctor` against the moto server: a missing ssm_output_bucket is named before a rescan
meets it, and an endpoint it cannot reach gets a connection hint, not "grant the missing permissions"."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli_core import Invoke, ok, run  # noqa: F401 - the `run` fixture
from tests.support.peers import free_port

pytestmark = pytest.mark.moto


def _add(run: Invoke, name: str, aws: dict[str, str], *options: str) -> None:  # noqa: F811
    args = ["credential", "add", name, "--provider", "aws", "--access-key-id", aws["aws_access_key_id"]]
    for option in ("region=us-east-1", "max_attempts=1", *options):
        args += ["--option", option]
    ok(run(*args, input=f"{aws['aws_secret_access_key']}\n"))


def test_doctor_names_a_missing_ssm_output_bucket(run: Invoke, aws_options: dict[str, str]) -> None:  # noqa: F811
    endpoint = f"endpoint_url={aws_options['endpoint_url']}"
    _add(run, "no-bucket", aws_options, endpoint)
    _add(run, "with-bucket", aws_options, endpoint, "ssm_output_bucket=ck-ssm-output")

    doctor = run("doctor", "--credential", "no-bucket")
    assert doctor.exit_code == 1, doctor.output
    assert "ssm_output_bucket is not set" in " ".join(doctor.output.split())
    assert "grant the missing permissions" not in doctor.output
    (result,) = json.loads(run("doctor", "--credential", "no-bucket", "--json").output)
    assert not result["ok"] and result["missing_permissions"] == []
    assert len(result["problems"]) == 1 and "ssm_output_bucket" in result["problems"][0]

    fine = run("doctor", "--credential", "with-bucket", "--json")
    assert fine.exit_code == 0, fine.output
    assert json.loads(fine.output)[0]["problems"] == []


def test_doctor_gives_a_connection_hint_for_an_unreachable_endpoint(
    run: Invoke,  # noqa: F811
    aws_options: dict[str, str],
) -> None:
    nothing_listens = f"endpoint_url=http://127.0.0.1:{free_port()}"
    _add(run, "offline", aws_options, nothing_listens, "ssm_output_bucket=ck-ssm-output")

    doctor = run("doctor", "--credential", "offline")

    assert doctor.exit_code == 1
    text = " ".join(doctor.output.split())
    assert "cannot reach AWS" in text
    assert "DNS" in text and "HTTPS_PROXY" in text
    assert "grant the missing permissions" not in text and "Traceback" not in text
