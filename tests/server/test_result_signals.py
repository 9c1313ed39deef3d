"""Results applied in this process wake their waiter (consumer.RESULTS) only once committed and applied."""

from __future__ import annotations

import json
from pathlib import Path

from tests.server.jobs_fakes import build_world, make_context

from cloudkeep.machine.keys import AgentKeys
from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.server.consumer import RESULTS, apply_report
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine
from cloudkeep.server.dispatcher import Dispatcher
from cloudkeep.server.machine_keys import report_validator


def test_a_result_wakes_its_waiter_and_progress_or_a_duplicate_does_not(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    try:
        machine_id = build_world(ctx, tmp_path / "lab", machines=1).machine_ids[0]
        keys = AgentKeys.generate()
        with ctx.db() as db:
            row = db.get(DiscoveredMachine, machine_id)
            assert row is not None
            row.agent_public_key = json.dumps(keys.public())
            db.add(CommandRecord(id="c" * 32, machine_id=machine_id, kind="ping", channel="queue"))
        validator = report_validator(ctx)

        def report(kind: str, body: dict[str, object]) -> str:
            envelope = make_envelope(kind, body, sender=machine_id, recipient=ctx.server_id)
            return apply_report(ctx, validator.validate(sign_envelope(envelope, keys.signing)))

        woken = RESULTS.watch("c" * 32)
        try:
            assert report("progress", {"command_id": "c" * 32, "bytes_read": 1}) == "applied"
            assert not woken.is_set()
            assert report("result", {"command_id": "c" * 32, "ok": True, "payload": {"n": 1}}) == "applied"
            assert woken.is_set()
            woken.clear()
            assert report("result", {"command_id": "c" * 32, "ok": True, "payload": {}}) == "duplicate"
            assert not woken.is_set()
        finally:
            RESULTS.forget("c" * 32)
        # Dispatcher.wait reads the applied result (and lets go of its signal afterwards)
        assert Dispatcher(ctx).wait("c" * 32, timeout=5) == {"n": 1}
    finally:
        ctx.close()
