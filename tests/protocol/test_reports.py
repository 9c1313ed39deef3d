"""Reports signed without pydantic (``protocol.reports``) are the same bytes the models produce."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudkeep.protocol import (
    MalformedMessage,
    MessageValidator,
    OversizedMessage,
    ProtocolError,
    make_envelope,
    sign_envelope,
)
from cloudkeep.protocol.bodies import Heartbeat
from cloudkeep.protocol.reports import MAX_MESSAGE_BYTES, report_fields, sign_fields, wire_time

MACHINE = Ed25519PrivateKey.generate()
BODY = {
    "services": {"agent": {"state": "running", "pid": 41}, "transport": {"state": "stopped", "pid": None}},
    "version": "0.1.0\udcff",  # not UTF-8: displayed, as make_envelope does
    "agent_level": 2,
}


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 12, 2, 3, 4, 5, 7, tzinfo=UTC),
        datetime(2026, 12, 2, 5, 4, 5, 120000, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_a_plain_heartbeat_is_byte_for_byte_the_models_heartbeat(now: datetime) -> None:
    model = make_envelope(
        "heartbeat", Heartbeat(services=BODY["services"], version=BODY["version"], agent_level=2),
        sender="m1", recipient="srv", ttl=90, message_id="ab" * 16, now=now,
    )  # fmt: skip
    plain = report_fields(
        "heartbeat", BODY, sender="m1", recipient="srv", ttl=90, message_id="ab" * 16, now=now
    )
    assert plain == model.unsigned_dict()
    text, signature = sign_fields(plain, MACHINE)
    assert text == sign_envelope(model, MACHINE) and signature == model.signature


def test_the_server_accepts_a_plain_heartbeat() -> None:
    text, _ = sign_fields(report_fields("heartbeat", BODY, sender="m1", recipient="srv", ttl=90), MACHINE)
    server = MessageValidator(me="srv", sender_key={"m1": MACHINE.public_key()}.get)
    envelope = server.validate(text)
    assert isinstance(envelope.parsed_body(), Heartbeat) and envelope.kind == "heartbeat"


def test_an_agent_from_before_levels_is_accepted_and_a_hostile_level_refused() -> None:
    server = MessageValidator(me="srv", sender_key={"m1": MACHINE.public_key()}.get)
    old = {k: v for k, v in BODY.items() if k != "agent_level"}
    text, _ = sign_fields(report_fields("heartbeat", old, sender="m1", recipient="srv", ttl=90), MACHINE)
    body = server.validate(text).parsed_body()
    assert isinstance(body, Heartbeat) and body.agent_level is None
    for level in (0, 1001, "2", True):
        forged = {**BODY, "agent_level": level}
        text, _ = sign_fields(
            report_fields("heartbeat", forged, sender="m1", recipient="srv", ttl=90), MACHINE
        )
        with pytest.raises(MalformedMessage):
            server.validate(text).parsed_body()


def test_a_newer_agents_fields_are_ignored_but_its_known_fields_still_checked() -> None:
    """An agent upgraded before its server adds fields this server does not know: still a heartbeat."""
    server = MessageValidator(me="srv", sender_key={"m1": MACHINE.public_key()}.get)
    newer = {**BODY, "agent_level": 3, "disk_free": 123, "later": {"nested": [1, 2]}}
    text, _ = sign_fields(report_fields("heartbeat", newer, sender="m1", recipient="srv", ttl=90), MACHINE)
    body = server.validate(text).parsed_body()
    assert isinstance(body, Heartbeat) and body.agent_level == 3
    assert "disk_free" not in body.model_dump()  # ignored, not kept
    progress = {"command_id": "c1", "bytes_read": 5, "stage": "upload"}
    text, _ = sign_fields(report_fields("progress", progress, sender="m1", recipient="srv", ttl=90), MACHINE)
    assert server.validate(text).parsed_body().model_dump()["bytes_read"] == 5

    for bad in ({**newer, "agent_level": "3"}, {**newer, "version": None}, {"later": 1}):
        text, _ = sign_fields(report_fields("heartbeat", bad, sender="m1", recipient="srv", ttl=90), MACHINE)
        with pytest.raises(MalformedMessage):
            server.validate(text).parsed_body()
    text, _ = sign_fields(report_fields("heartbeat", newer, sender="m1", recipient="srv", ttl=90), MACHINE)
    forged = text.replace('"disk_free":123', '"disk_free":124')
    assert forged != text
    with pytest.raises(ProtocolError):  # still signed: a changed unknown field breaks the signature
        server.validate(forged)


def test_bad_lifetimes_and_oversized_reports_are_refused() -> None:
    for ttl in (0, -1, 8 * 86400):
        with pytest.raises(MalformedMessage, match="ttl"):
            report_fields("heartbeat", BODY, sender="m1", recipient="srv", ttl=ttl)
    huge = {**BODY, "services": {"x": "y" * MAX_MESSAGE_BYTES}}
    with pytest.raises(OversizedMessage, match="heartbeat message is"):
        sign_fields(report_fields("heartbeat", huge, sender="m1", recipient="srv", ttl=90), MACHINE)


def test_wire_time_writes_utc_as_z() -> None:
    assert wire_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    assert wire_time(datetime(2026, 1, 2, 4, 4, 5, 6, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-01-02T04:04:05.000006+01:00"
    )
