"""A CLI start imports what ``--help`` and argument parsing need, not the backup machinery.

Every command module reads the API schema (``services.schemas`` → ``jobs.options``); that import must
not pull in the session runner, the engine or the state store (issue 17). Runs in a fresh interpreter:
this test process has long since imported all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("cloudkeep.server.jobs.lifecycle", "cloudkeep.server.jobs.runner", "cloudkeep.repo", "sqlalchemy")


def test_the_cli_starts_without_the_runner_the_engine_or_the_state_store() -> None:
    code = (
        "import json, sys; import cloudkeep.cli.main; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout) == []


def test_the_jobs_package_still_offers_its_contract_on_first_use() -> None:
    from cloudkeep.server import jobs
    from cloudkeep.server.jobs.lifecycle import start_job, stop_session

    assert (jobs.start_job, jobs.stop_session) == (start_job, stop_session)
