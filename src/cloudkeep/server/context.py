"""ServerContext: everything a server worker needs, built once from Settings and passed down.

Server workers are stateless beyond the database: any number of them can open a context on the
same PostgreSQL database and cooperate through it (leases, row locks).
"""

from __future__ import annotations

import base64
import secrets as pysecrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from cloudkeep.config import Settings
from cloudkeep.errors import NotFoundError
from cloudkeep.providers.base import CloudProvider, get_provider
from cloudkeep.server.db.models import Credential, ServerSetting
from cloudkeep.server.secrets import SecretBox


def make_engine(url: str) -> Engine:
    """SQLite gets WAL and a busy timeout so several processes can share it; PostgreSQL is used as is."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@dataclass
class ServerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    secrets: SecretBox
    server_id: str
    signing_key: Ed25519PrivateKey

    @contextmanager
    def db(self) -> Iterator[Session]:
        """A transaction: commits on success, rolls back on error."""
        with self.sessions.begin() as session:
            yield session

    @property
    def public_key_b64(self) -> str:
        public = self.signing_key.public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def provider_for(self, credential_id: str) -> CloudProvider:
        """Build the cloud provider for a stored credential (decrypting its secret in memory only)."""
        with self.db() as session:
            credential = session.get(Credential, credential_id)
            if credential is None:
                raise NotFoundError(f"credential {credential_id} does not exist")
            secret = self.secrets.open(credential.secret)
            return get_provider(credential.provider, secret, credential.options)

    def close(self) -> None:
        self.engine.dispose()


def _setting(session: Session, key: str) -> str | None:
    row = session.scalar(select(ServerSetting).where(ServerSetting.key == key))
    return row.value if row else None


def open_context(settings: Settings) -> ServerContext:
    """Open (creating on first use) the state store, master key, server id and signing key."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    from cloudkeep.server.db.migrate import upgrade

    upgrade(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    box = SecretBox.load_or_create(settings.effective_master_key_file)
    with sessions.begin() as session:
        server_id = _setting(session, "server_id")
        if server_id is None:
            server_id = "ck-" + pysecrets.token_hex(6)
            session.add(ServerSetting(key="server_id", value=server_id))
        sealed_key = _setting(session, "signing_key")
        if sealed_key is None:
            key = Ed25519PrivateKey.generate()
            raw = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            session.add(ServerSetting(key="signing_key", value=box.seal(raw.hex()).hex()))
        else:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(box.open(bytes.fromhex(sealed_key))))
    return ServerContext(settings, engine, sessions, box, server_id, key)
