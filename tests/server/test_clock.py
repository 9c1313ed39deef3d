"""The server's one clock: ``use_clock`` moves every server reading of "now" at once, so tests of
expiry, freshness and stamps control time instead of reading the wall clock.

Real server context on SQLite for the stamped rows; the freshness checks read unsaved rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.server import clock
from cloudkeep.server.clock import use_clock, utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.dispatcher import Dispatcher
from cloudkeep.server.rescan.confirm import heartbeat_is_fresh
from cloudkeep.server.rescan.deploy import CONFIG_REFRESH, _config_stale
from cloudkeep.server.services import tokens
from cloudkeep.server.services.schemas import TokenCreate

THEN = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"  # stamps only: one backend is enough


def _as_utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def test_use_clock_moves_utcnow_and_restores_the_wall_clock() -> None:
    with use_clock(lambda: THEN):
        assert utcnow() == THEN
    assert utcnow() != THEN and abs(utcnow() - datetime.now(UTC)) < timedelta(minutes=1)
    with pytest.raises(RuntimeError), use_clock(lambda: THEN):
        raise RuntimeError("the block failed")
    assert clock._source is clock._wall  # restored even when the block raised


def test_token_stamps_and_dispatcher_default_follow_the_injected_clock(ctx: ServerContext) -> None:
    with use_clock(lambda: THEN):
        created = tokens.create_token(ctx, TokenCreate(name="ops", scope="read-only"))
        revoked = tokens.revoke_token(ctx, created.id)
        assert Dispatcher(ctx).clock() == THEN
    assert _as_utc(revoked.created_at) == THEN  # the model's column default reads the same clock
    assert _as_utc(revoked.revoked_at) == THEN


def test_rescan_freshness_is_judged_against_the_injected_clock(ctx: ServerContext) -> None:
    timeout = timedelta(seconds=ctx.settings.heartbeat_timeout_seconds)
    written = {"config_written_at": THEN.isoformat()}
    row = DiscoveredMachine(last_heartbeat_at=THEN - timeout / 2, facts=written)
    with use_clock(lambda: THEN):
        assert heartbeat_is_fresh(ctx, row)
        assert not _config_stale(row)
    with use_clock(lambda: THEN + timeout):
        assert not heartbeat_is_fresh(ctx, row)
    with use_clock(lambda: THEN + CONFIG_REFRESH + timedelta(seconds=1)):
        assert _config_stale(row)
