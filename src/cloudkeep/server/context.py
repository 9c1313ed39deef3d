"""ServerContext: everything a server worker needs, built once from Settings and passed down.

Server workers are stateless beyond the database: any number of them can open a context on the
same PostgreSQL database and cooperate through it (leases, row locks).
"""

from __future__ import annotations

import base64
import secrets as pysecrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, event, make_url, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloudkeep.config import Settings
from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.base import CloudProvider
from cloudkeep.providers.registry import get_provider
from cloudkeep.server.db.models import Credential, ServerSetting
from cloudkeep.server.db.pool import PoolSize, default_pool, pool_size
from cloudkeep.server.secrets import SecretBox


def _enable_wal(cur: Any, *, timeout: float = 30.0) -> None:
    """Switch a SQLite file to WAL (persistent, so only its first connection really does it).

    The switch needs an exclusive lock and SQLite does not wait for it through the busy handler,
    so when several workers open a brand-new file at once the losers retry until it is done.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str, pool: PoolSize | None = None) -> Engine:
    """SQLite gets WAL and a busy timeout so several processes can share it; PostgreSQL a pool of
    ``pool`` (sized from the settings by ``open_context``: ``db/pool.py``)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            _enable_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    pool = pool or default_pool()
    return create_engine(url, pool_pre_ping=True, pool_size=pool.size, max_overflow=pool.overflow)


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


def _new_signing_key_hex() -> str:
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return raw.hex()


def _ensure_setting(sessions: sessionmaker[Session], key: str, make: Callable[[], str]) -> str:
    """Read a server setting, creating it once; workers racing on a fresh database: first insert wins."""
    with sessions.begin() as session:
        value = _setting(session, key)
    if value is not None:
        return value
    try:
        with sessions.begin() as session:
            session.add(ServerSetting(key=key, value=make()))
    except IntegrityError:
        pass  # another worker created it first
    with sessions.begin() as session:
        value = _setting(session, key)
    if value is None:  # pragma: no cover - the row was just written
        raise ConfigurationError(f"server setting {key!r} could not be created")
    return value


def _require_state(settings: Settings) -> None:
    url = make_url(settings.effective_database_url)
    missing = [settings.effective_master_key_file] if not settings.effective_master_key_file.is_file() else []
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        missing.append(Path(url.database))
    if missing:
        raise NotFoundError(
            f"no cloudkeep server state in {settings.home} ({', '.join(map(str, missing))} missing)",
            hint="pass the server's --home (env CLOUDKEEP_HOME), or --api-url to use a running server",
        )


def open_context(settings: Settings, *, create: bool = True) -> ServerContext:
    """Open (creating on first use) the state store, master key, server id and signing key.

    ``create=False`` is for commands that only read: they must not leave a fresh database and
    master key behind, so missing state is a ``NotFoundError`` instead.
    """
    if not create:
        _require_state(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url, pool_size(settings))
    from cloudkeep.server.db.migrate import upgrade

    upgrade(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    box = SecretBox.load_or_create(settings.effective_master_key_file)
    server_id = _ensure_setting(sessions, "server_id", lambda: "ck-" + pysecrets.token_hex(6))
    sealed_key = _ensure_setting(sessions, "signing_key", lambda: box.seal(_new_signing_key_hex()).hex())
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(box.open(bytes.fromhex(sealed_key))))
    return ServerContext(settings, engine, sessions, box, server_id, key)
