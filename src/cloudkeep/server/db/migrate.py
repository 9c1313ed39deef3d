"""Schema migrations: ``upgrade(engine)`` runs ``alembic upgrade head`` on the given engine.

Several server workers may start at once against one database. On PostgreSQL they serialise on
an advisory lock, so exactly one applies each revision and the others find the schema current.
On SQLite a lock file next to the database does the same across processes.

Regenerate the initial revision after a model change (nothing is deployed yet)::

    .venv/bin/python -m cloudkeep.server.db.migrate regenerate

Once databases exist in the field, add a new revision instead (and set ``HEAD`` below to it)::

    .venv/bin/python -m cloudkeep.server.db.migrate revision "add foo"
"""

from __future__ import annotations

import fcntl
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision. Opening a database that is already there skips Alembic (half a second of
# imports for every CLI command); a test checks this equals Alembic's own head.
HEAD = "0006"
_PG_LOCK_KEY = 0x636B_6D69  # "ckmi": any constant shared by every worker


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Serialise migrations across processes (advisory lock on PostgreSQL, lock file on SQLite)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()
        return
    database = conn.engine.url.database
    if conn.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stored_revision(conn: Connection) -> str | None:
    try:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no version table yet
        conn.rollback()
        return None
    conn.rollback()
    return None if revision is None else str(revision)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent, safe for concurrent workers)."""
    with engine.connect() as conn:
        if _stored_revision(conn) == HEAD:
            return
        from alembic import command

        with _migration_lock(conn):
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:  # batch mode copies tables: a DROP of a referenced table fails with FKs enforced
                conn.commit()  # the PRAGMA is a no-op inside a transaction
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                # SQLite commits DDL at once: a copy interrupted earlier left alembic's scratch table.
                names = "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'"  # noqa: E501
                for (scratch,) in conn.exec_driver_sql(names).fetchall():
                    conn.exec_driver_sql(f'DROP TABLE "{scratch}"')
            try:
                command.upgrade(alembic_config(conn), "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    # The driver has committed the DDL already: this cannot undo the change, but
                    # it stops the server from starting on a catalog with dangling references
                    # (``finally`` rolls back what is still open).
                    if broken:
                        raise RuntimeError(f"migration left broken references: {broken[:5]}")
                conn.commit()
            finally:
                if sqlite:
                    conn.rollback()
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")  # back to the pool enforcing


def script_head() -> str | None:
    """Alembic's head revision as the scripts define it."""
    from alembic.script import ScriptDirectory

    head: str | None = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_drift(engine: Engine) -> list[object]:
    """Differences between the migrated database and the models (empty when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from cloudkeep.server.db.models import Base

    with engine.connect() as conn:
        migration = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(migration, Base.metadata))


def _autogenerate(message: str, *, rev_id: str | None = None) -> None:
    from alembic import command

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        with engine.connect() as conn:
            if rev_id is None:  # a follow-up revision diffs against the current head
                command.upgrade(alembic_config(conn), "head")
                conn.commit()
            command.revision(alembic_config(conn), message=message, autogenerate=True, rev_id=rev_id)
        engine.dispose()


def main(argv: list[str]) -> int:
    """Developer entry point: ``regenerate`` the initial revision or add a ``revision``."""
    if argv[:1] == ["regenerate"]:
        for old in (MIGRATIONS / "versions").glob("r0001_*.py"):
            old.unlink()
        _autogenerate("initial schema", rev_id="0001")
        return 0
    if argv[:1] == ["revision"] and len(argv) == 2:
        _autogenerate(argv[1])
        print(f"now set HEAD in {__file__} to the new revision id (a test checks it)")
        return 0
    print("usage: python -m cloudkeep.server.db.migrate regenerate | revision MESSAGE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
