"""The agent's own keys: Ed25519 to sign results, X25519 to open secrets sealed to this machine.

Created once (``keygen``) in ``$STATE/agent.key`` with mode 0600; the public halves are
registered on the server at install, so no other machine can sign as this one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloudkeep.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_FILE = "agent.key"
# What this agent understands, registered with its public keys at install. Raised when the server
# starts sending commands an older agent would misread (level 2: repository access options such
# as an append-only local store); the server's table of what needs which is server/agent_compat.py.
AGENT_LEVEL = 2
RAW_KEY_BYTES = 32


def read_raw(state_dir: Path) -> tuple[bytes, bytes]:
    """The two private keys' raw bytes, checked without loading ``cryptography``: an idle agent or
    transport only needs to know at start that its key is there, and builds the key objects (and
    pays for the library's memory) at its first command."""
    path = state_dir / KEY_FILE
    try:
        data = json.loads(path.read_text())
        signing, encryption = bytes.fromhex(data["signing"]), bytes.fromhex(data["encryption"])
    except FileNotFoundError:
        raise ConfigurationError(
            f"agent keys {path} do not exist", hint="run `python -m cloudkeep.machine keygen --config …`"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigurationError(f"agent keys {path} are unreadable: {exc}") from None
    if len(signing) != RAW_KEY_BYTES or len(encryption) != RAW_KEY_BYTES:
        raise ConfigurationError(f"agent keys {path} are unreadable: a key is not {RAW_KEY_BYTES} bytes")
    return signing, encryption


@dataclass(frozen=True)
class AgentKeys:
    signing: Ed25519PrivateKey
    encryption: X25519PrivateKey

    def public(self) -> dict[str, str | int]:
        """What the installer reports for the server to register: the public keys (stored in
        ``DiscoveredMachine.agent_public_key`` as JSON) and this agent's level."""
        from cloudkeep.protocol import crypto

        return {
            "signing_public_key": crypto.b64encode(crypto.public_raw(self.signing)),
            "encryption_public_key": crypto.b64encode(crypto.public_raw(self.encryption)),
            "agent_level": AGENT_LEVEL,
        }

    @classmethod
    def generate(cls) -> AgentKeys:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def load(cls, state_dir: Path) -> AgentKeys:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        signing, encryption = read_raw(state_dir)
        return cls(
            Ed25519PrivateKey.from_private_bytes(signing), X25519PrivateKey.from_private_bytes(encryption)
        )

    @classmethod
    def load_or_create(cls, state_dir: Path) -> AgentKeys:
        """Idempotent: an existing key is never replaced (the server has registered it)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / KEY_FILE
        if path.exists():
            return cls.load(state_dir)
        from cloudkeep.protocol import crypto

        keys = cls.generate()
        data = {
            "signing": crypto.private_raw(keys.signing).hex(),
            "encryption": crypto.private_raw(keys.encryption).hex(),
        }
        tmp = state_dir / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        try:
            os.link(tmp, path)  # fails if another keygen won the race: then use its key
        except FileExistsError:
            return cls.load(state_dir)
        finally:
            tmp.unlink(missing_ok=True)
        return keys
