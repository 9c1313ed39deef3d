"""Cron schedules through the real CLI: `job create --schedule cron:…`, and `job show` naming both zones."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from typer.testing import CliRunner

from cloudkeep.cli.main import app
from cloudkeep.config import Settings
from tests.server.fixtures import Seeded


def _invoke(settings: Settings, *args: str) -> tuple[int, str]:
    env = {
        "CLOUDKEEP_HOME": str(settings.home), "CLOUDKEEP_DATABASE_URL": settings.effective_database_url,
        "CLOUDKEEP_API_URL": "", "CLOUDKEEP_API_TOKEN": "", "COLUMNS": "200",
    }  # fmt: skip
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_cron_job_shows_its_next_runs_in_its_zone_and_utc(settings: Settings, seeded: Seeded) -> None:
    base = ("job", "create", "weekday", "--repository", seeded.backup, "--group", seeded.group)
    code, out = _invoke(settings, *base, "--schedule", "CRON_TZ=America/New_York 0 3 * * 1-5")
    assert code == 0, out
    code, out = _invoke(settings, "job", "show", "weekday", "--json")
    assert code == 0, out
    job = json.loads(out)
    assert job["schedule"] == {"kind": "cron", "expression": "0 3 * * 1-5", "timezone": "America/New_York"}
    runs = job["next_runs"]
    assert len(runs) == 3
    for run in runs:
        local = datetime.fromisoformat(run["local"])
        utc = datetime.fromisoformat(run["utc"])
        assert local == utc and utc.utcoffset() == timedelta(0)
        assert local.astimezone(ZoneInfo("America/New_York")).hour == 3 and local.weekday() < 5
        assert run["timezone"] == "America/New_York"
    stored = datetime.fromisoformat(job["next_run_at"])
    assert datetime.fromisoformat(runs[0]["utc"]) == (stored if stored.tzinfo else stored.replace(tzinfo=UTC))
    code, table = _invoke(settings, "job", "show", "weekday")
    assert code == 0, table
    first = datetime.fromisoformat(runs[0]["local"]).astimezone(ZoneInfo("America/New_York"))
    assert f"{first:%Y-%m-%d} 03:00 America/New_York" in table and " UTC)" in table


def test_bad_cron_is_a_usage_error_without_traceback(settings: Settings, seeded: Seeded) -> None:
    base = ("job", "create", "bad", "--repository", seeded.backup, "--group", seeded.group)
    code, out = _invoke(settings, *base, "--schedule", "cron:61 3 * * *")
    assert code == 2, out
    assert "cron expression '61 3 * * *' is not valid" in out and "Traceback" not in out
