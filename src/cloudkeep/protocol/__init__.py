"""The message protocol between the backup server and the machine-side services (version 1).

See ``docs/protocol.md``. Public surface: ``Envelope``, ``make_envelope``, ``sign_envelope``,
``MessageValidator``, the body models in ``bodies`` and the ``ProtocolError`` family.
"""

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
