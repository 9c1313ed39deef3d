"""The message protocol between the backup server and the machine-side services (version 1).

See ``docs/protocol.md``. Public surface: ``Envelope``, ``make_envelope``, ``sign_envelope``,
``MessageValidator``, the body models in ``bodies`` and the ``ProtocolError`` family.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudkeep.protocol.bodies import (
        BODIES,
        COMMAND_BODIES,
        NEEDS_REPOSITORY,
        REPORT_BODIES,
        RepositoryAccess,
    )
    from cloudkeep.protocol.envelope import (
        DEFAULT_CLOCK_SKEW,
        MAX_MESSAGE_BYTES,
        PROTOCOL_VERSION,
        Envelope,
        MessageValidator,
        make_envelope,
        sign_envelope,
    )
    from cloudkeep.protocol.errors import (
        BadSignature,
        ExpiredMessage,
        FutureMessage,
        MalformedMessage,
        OversizedMessage,
        ProtocolError,
        ReplayedMessage,
        SealError,
        UnknownSender,
        UnsignedMessage,
        UnsupportedVersion,
        WrongRecipient,
    )

# Loaded on first use (PEP 562): the idle agent and transport need ProtocolError, not the pydantic
# body models behind ``bodies`` / ``envelope``, and each service process is kept small.
_HOMES = {
    **dict.fromkeys(
        ["BODIES", "COMMAND_BODIES", "NEEDS_REPOSITORY", "REPORT_BODIES", "RepositoryAccess"], "bodies"
    ),
    **dict.fromkeys(
        [
            "DEFAULT_CLOCK_SKEW",
            "MAX_MESSAGE_BYTES",
            "PROTOCOL_VERSION",
            "Envelope",
            "MessageValidator",
            "make_envelope",
            "sign_envelope",
        ],
        "envelope",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"cloudkeep.protocol.{_HOMES[name]}"), name)
    if name in __all__:
        return getattr(importlib.import_module("cloudkeep.protocol.errors"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BODIES",
    "COMMAND_BODIES",
    "DEFAULT_CLOCK_SKEW",
    "MAX_MESSAGE_BYTES",
    "NEEDS_REPOSITORY",
    "PROTOCOL_VERSION",
    "REPORT_BODIES",
    "BadSignature",
    "Envelope",
    "ExpiredMessage",
    "FutureMessage",
    "MalformedMessage",
    "MessageValidator",
    "OversizedMessage",
    "ProtocolError",
    "ReplayedMessage",
    "RepositoryAccess",
    "SealError",
    "UnknownSender",
    "UnsignedMessage",
    "UnsupportedVersion",
    "WrongRecipient",
    "make_envelope",
    "sign_envelope",
]
