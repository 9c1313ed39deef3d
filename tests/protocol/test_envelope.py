"""The protocol's promises: signed, sealed, validated; every kind of bad message has its own error."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloudkeep.protocol import (
    BadSignature,
    ExpiredMessage,
    FutureMessage,
    MalformedMessage,
    MessageValidator,
    OversizedMessage,
    ReplayedMessage,
    SealError,
    UnknownSender,
    UnsignedMessage,
    UnsupportedVersion,
    WrongRecipient,
    make_envelope,
    sign_envelope,
)
from cloudkeep.protocol.crypto import canonical_json

SERVER = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
MACHINE_BOX = X25519PrivateKey.generate()
OTHER_BOX = X25519PrivateKey.generate()
SECRETS = {"store_url": "file:///repo", "options": {"token": "t0p"}, "password": "hunter2"}


def validator(**kw: object) -> MessageValidator:
    keys = {"srv": SERVER.public_key()}
    return MessageValidator(me="m1", sender_key=keys.get, **kw)  # type: ignore[arg-type]


def command(kind: str = "run_script", body: dict | None = None, **kw: object) -> str:
    envelope = make_envelope(
        kind,
        body if body is not None else {"script": "true"},
        sender="srv",
        recipient="m1",
        **kw,  # type: ignore[arg-type]
    )
    return sign_envelope(envelope, SERVER)


def resign(data: dict, key: Ed25519PrivateKey = SERVER) -> str:
    from cloudkeep.protocol.crypto import sign

    data = {k: v for k, v in data.items() if k != "signature"}
    return canonical_json({**data, "signature": sign(key, canonical_json(data))}).decode()


def test_round_trip_and_sealed_secrets_only_for_the_recipient() -> None:
    text = command(
        "backup", {"hostname": "h", "sources": ["/etc"]}, secrets=SECRETS, seal_to=MACHINE_BOX.public_key()
    )
    assert "hunter2" not in text and "t0p" not in text
    envelope = validator().validate(text)
    assert envelope.kind == "backup" and envelope.body["sources"] == ["/etc"]
    assert envelope.repository(MACHINE_BOX).password == "hunter2"
    with pytest.raises(SealError):
        envelope.repository(OTHER_BOX)


def test_sealed_blob_cannot_be_moved_into_another_message() -> None:
    donor = json.loads(command("check", {}, secrets=SECRETS, seal_to=MACHINE_BOX.public_key()))
    victim = json.loads(
        command("check", {}, secrets={"store_url": "x", "password": "y"}, seal_to=MACHINE_BOX.public_key())
    )
    victim["sealed"] = donor["sealed"]
    envelope = validator().validate(resign(victim))
    with pytest.raises(SealError):
        envelope.open_sealed(MACHINE_BOX)


def test_tampered_body_is_a_bad_signature() -> None:
    data = json.loads(command())
    data["body"]["script"] = "rm -rf /"
    with pytest.raises(BadSignature):
        validator().validate(json.dumps(data))


def test_forged_with_another_key_is_a_bad_signature() -> None:
    with pytest.raises(BadSignature):
        validator().validate(resign(json.loads(command()), OTHER))


def test_unsigned_unknown_sender_wrong_recipient() -> None:
    data = json.loads(command())
    with pytest.raises(UnsignedMessage):
        validator().validate(json.dumps({k: v for k, v in data.items() if k != "signature"}))
    with pytest.raises(UnknownSender):
        validator().validate(resign({**data, "sender": "mallory"}))
    with pytest.raises(WrongRecipient):
        validator().validate(resign({**data, "recipient": "m2"}))


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", json.dumps({"version": 1, "id": "x"}), json.dumps({"version": 1})],
)
def test_malformed(text: str) -> None:
    with pytest.raises(MalformedMessage):
        validator().validate(text)


def test_body_not_matching_its_kind_is_malformed_even_if_signed() -> None:
    data = json.loads(command())
    data["body"] = {"script": 42, "shell": "cmd.exe"}
    with pytest.raises(MalformedMessage, match="run_script body"):
        validator().validate(resign(data))
    with pytest.raises(MalformedMessage):
        make_envelope("run_script", {"nope": 1}, sender="srv", recipient="m1")
    with pytest.raises(MalformedMessage, match="unknown message kind"):
        validator().validate(resign({**data, "kind": "format_disk"}))


def test_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersion):
        validator().validate(resign({**json.loads(command()), "version": 2}))


def test_oversized_on_send_and_on_receive() -> None:
    with pytest.raises(OversizedMessage):
        command(body={"script": "x" * 70_000})
    with pytest.raises(OversizedMessage):
        validator().validate("{" + " " * 70_000 + "}")


def test_clock_skew_allowance() -> None:
    now = datetime.now(UTC)
    skewed = command(now=now + timedelta(seconds=200))
    assert validator(clock_skew=300).validate(skewed)
    with pytest.raises(FutureMessage):
        validator(clock_skew=60).validate(skewed)
    old = command(now=now - timedelta(hours=2), ttl=3600)
    with pytest.raises(ExpiredMessage):
        validator(clock_skew=300).validate(old)
    assert validator(clock_skew=7300).validate(old)  # a machine whose clock runs two hours behind


def test_replay_is_detected_by_the_seen_store() -> None:
    seen: set[str] = set()
    text = command()
    envelope = validator().validate(text, seen=seen.__contains__)
    seen.add(envelope.id)
    with pytest.raises(ReplayedMessage):
        validator().validate(text, seen=seen.__contains__)


def test_every_rejection_is_a_distinct_type() -> None:
    kinds = {BadSignature, ExpiredMessage, FutureMessage, MalformedMessage, OversizedMessage, ReplayedMessage,
             UnknownSender, UnsignedMessage, WrongRecipient, SealError}  # fmt: skip
    assert len({k.reason for k in kinds}) == len(kinds)


def test_a_file_name_that_is_not_utf8_never_makes_a_message_unsendable() -> None:
    """os.fsdecode turns such bytes into lone surrogates, which UTF-8 (and so every queue) refuses:
    they leave as \\xNN text, and the message signs, travels and validates."""
    name = "/srv/caf\udce9/\udcff\udcfe"
    envelope = make_envelope(
        "result",
        {"command_id": "c1", "ok": True, "payload": {"warnings": [f"{name}: cannot read"], name: 1}},
        sender="m1",
        recipient="srv",
    )
    text = sign_envelope(envelope, OTHER)
    text.encode("utf-8")
    received = MessageValidator(me="srv", sender_key={"m1": OTHER.public_key()}.get).validate(text)
    payload = received.body["payload"]
    assert payload == {"warnings": ["/srv/caf\\xe9/\\xff\\xfe: cannot read"], "/srv/caf\\xe9/\\xff\\xfe": 1}


def test_compromised_machine_cannot_speak_for_the_server_or_another_machine() -> None:
    """Machine m1's own signing key (everything it holds, docs/security.md) cannot produce a
    message the server takes as another machine's, nor one a machine takes as the server's."""
    stolen = Ed25519PrivateKey.generate()  # m1's key, in the attacker's hands
    keys = {"srv": SERVER.public_key(), "m1": stolen.public_key(), "m2": OTHER.public_key()}
    server = MessageValidator(me="srv", sender_key=keys.get)
    result = make_envelope("result", {"command_id": "c1", "ok": True}, sender="m1", recipient="srv")
    assert server.validate(sign_envelope(result, stolen)).sender == "m1"  # as itself: accepted
    as_m2 = make_envelope("result", {"command_id": "c1", "ok": True}, sender="m2", recipient="srv")
    with pytest.raises(BadSignature):
        server.validate(sign_envelope(as_m2, stolen))
    as_server = make_envelope("run_script", {"script": "true"}, sender="srv", recipient="m2")
    with pytest.raises(BadSignature):
        MessageValidator(me="m2", sender_key=keys.get).validate(sign_envelope(as_server, stolen))
