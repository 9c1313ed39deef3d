"""A backup's result names the entries it could not back up, and still fits one queue message
however many there are and however long (past PATH_MAX) or odd their names."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudkeep.machine import tasks
from cloudkeep.pathnames import path_fields
from cloudkeep.protocol import MessageValidator, make_envelope, sign_envelope

AGENT = Ed25519PrivateKey.generate()


def skipped_entries(count: int) -> list[dict[str, str]]:
    """What the engine reports: deep paths (5 KiB) with bytes that are not UTF-8."""
    deep = "/srv/" + "/".join(["d" * 250] * 20)
    return [
        {
            **path_fields(deep + os.fsdecode(b"/f-%d-\xff" % i)),
            "error": "cannot read (No such file or directory)",
        }
        for i in range(count)
    ]


def test_many_long_skipped_entries_fit_one_signed_result_and_are_named() -> None:
    skipped = skipped_entries(300)
    warnings = tasks._skipped_warnings(skipped, 1234)
    errors = tasks._within(skipped, tasks.ERRORS_BUDGET)
    payload = {
        "snapshot_id": "s1", "stats": {"files": 10}, "forgotten": [],
        "warnings": warnings, "errors": errors, "errors_total": 1234,
    }  # fmt: skip
    envelope = make_envelope(
        "result", {"command_id": "c1", "ok": True, "payload": payload}, sender="m1", recipient="srv"
    )
    text = sign_envelope(envelope, AGENT)  # OversizedMessage if the bounds did not hold
    received = MessageValidator(me="srv", sender_key={"m1": AGENT.public_key()}.get).validate(text)
    got = received.body["payload"]
    assert got["warnings"][0] == "1234 entries could not be read and are missing from the restore point"
    named = got["warnings"][1:-1]
    suffix = "-\\xff: cannot read (No such file or directory)"
    assert len(named) >= 10 and all(w.endswith(f"f-{i}{suffix}") for i, w in enumerate(named))
    assert got["warnings"][-1] == f"… and {1234 - len(named)} more"
    assert got["errors"] and got["errors"] == errors  # exact paths (path_b64) for the first ones


def test_one_skipped_entry_is_one_warning_and_none_is_none() -> None:
    (entry,) = skipped_entries(1)
    assert (
        tasks._skipped_warnings([entry], 1)[0]
        == "1 entry could not be read and is missing from the restore point"
    )
    assert len(tasks._skipped_warnings([entry], 1)) == 2
    assert tasks._skipped_warnings([], 0) == []
