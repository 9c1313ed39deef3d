"""The typed job options: size and duration parsing, normalised storage, and reading back options
stored before they were validated (accepted where they still mean something, never a crash)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.server.jobs_fakes import FakeDispatcher, World, build_world, make_context

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.jobs import start_job
from cloudkeep.server.jobs.options import (
    parse_duration,
    parse_size,
    read_job_options,
    validate_job_options,
)
from cloudkeep.server.scheduling.scheduler import tick


@pytest.mark.parametrize(
    ("given", "size"),
    [
        ("10MiB", 10 * 1024**2),
        ("10MB", 10_000_000),
        ("10 mb", 10_000_000),
        ("1.5GiB", 1536 * 1024**2),
        ("10MiB/s", 10 * 1024**2),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_sizes_are_read_in_bytes(given: Any, size: int) -> None:
    assert parse_size(given) == size


@pytest.mark.parametrize("given", ["ten", "10XB", "-5", "", True, None, "10 MiB MiB"])
def test_a_bad_size_says_what_is_expected(given: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a size: use e\.g\. 10MiB, 10MB or a number of bytes"):
        parse_size(given)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("90m", 5400.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        (" 1h 30m ", 5400.0),
        ("45s", 45.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("2H", 7200.0),
        ("45", 45.0),
        ("0.05", 0.05),
        (45, 45.0),
        (0.5, 0.5),
    ],
)
def test_durations_are_read_in_seconds(given: Any, seconds: float) -> None:
    assert parse_duration(given) == pytest.approx(seconds)


@pytest.mark.parametrize("given", ["soon", "", "h", "5 parsecs", "1h junk", "m30", True, None, [1]])
def test_a_bad_duration_says_what_is_expected(given: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: use e\.g\. 90m, 2h, 45s or a number"):
        parse_duration(given)


def test_options_are_stored_normalised() -> None:
    options = validate_job_options(
        {
            "bandwidth_limit": "10MB",
            "script_timeout": "5m",
            "prune": "false",
            "fsfreeze": ["/srv"],
            "health_check": {"every_days": "7", "read_data_subset": "5%"},
            "notifications": {
                "email": {"to": "ops@example.com", "from": "ck@example.com", "smtp_host": "mx"}
            },
        }
    )
    assert options.stored() == {
        "bandwidth_limit": 10_000_000,
        "script_timeout": 300.0,
        "prune": False,
        "fsfreeze": ["/srv"],
        "health_check": {"every_days": 7.0, "read_data_subset": 0.05},
        "notifications": {"email": {"to": ["ops@example.com"], "from": "ck@example.com", "smtp_host": "mx"}},
    }
    assert validate_job_options(options.stored()) == options  # normalised options read back unchanged


def test_unknown_options_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        validate_job_options({"bandwith_limit": "10MB"})
    assert caught.value.message.startswith("unknown option bandwith_limit; known options: bandwidth_limit,")
    assert "notifications" in caught.value.message and "task_timeout_seconds" in caught.value.message


def test_options_stored_before_validation_are_read_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    legacy = {"bandwidth_limit": "10MB", "parallel_machines": "4", "prune": "no", "retired_knob": 1}
    with caplog.at_level(logging.WARNING, logger="cloudkeep.server.jobs.options"):
        options = read_job_options("nightly", legacy)
    assert (options.bandwidth_limit, options.parallel_machines, options.prune) == (10_000_000, 4, False)
    assert "job nightly: ignoring unknown stored option(s) retired_knob" in caplog.text


def test_a_stored_option_that_cannot_work_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        read_job_options("nightly", {"parallel_machines": "two"})
    assert caught.value.message.startswith("job 'nightly': option parallel_machines: Input should be")
    assert caught.value.hint == "correct it: cloudkeep job update nightly --option KEY=VALUE"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    return build_world(ctx, tmp_path / "lab", machines=1)


def test_runner_reads_legacy_strings_and_fails_bad_options_cleanly(ctx: ServerContext, world: World) -> None:
    """Rows written straight to the database, as an older server stored them."""
    fake = FakeDispatcher(ctx)
    legacy = world.add_job("legacy", options={"bandwidth_limit": "10MB", "poll_slice_seconds": "50ms"})
    start_job(ctx, legacy, wait=True, dispatcher=fake)
    assert fake.kinds("backup")[0].body["bandwidth_limit"] == 10_000_000
    broken = world.add_job("broken", options={"parallel_machines": "two"})
    session_id = start_job(ctx, broken, wait=True, dispatcher=fake)
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        assert session.state == "failed"
        assert session.reason.startswith("job 'broken': option parallel_machines: Input should be")


def test_scheduler_skips_a_job_whose_options_cannot_be_read(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    world.add_job("broken", options={"health_check": {"every_days": "weekly"}})
    world.add_job("healthy", options={"health_check": {"every_days": 7}})
    assert len(tick(ctx, datetime(2026, 11, 26, tzinfo=UTC), dispatcher=fake, wait=True)) == 1
    assert len(fake.kinds("check")) == 1
