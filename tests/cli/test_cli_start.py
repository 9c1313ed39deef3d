"""A CLI start imports what ``--help`` and argument parsing need, not the backup machinery.

Every command module reads the API schema (``services.schemas`` → ``jobs.options``); that import must
not pull in the session runner, the engine or the state store (issue 17). Runs in a fresh interpreter:
this test process has long since imported all of them.
"""

from __future__ import annotations

import json

from tests.support.interpreter import fresh_interpreter

HEAVY = ("cloudkeep.server.jobs.lifecycle", "cloudkeep.server.jobs.runner", "cloudkeep.repo", "sqlalchemy")


def test_the_cli_starts_without_the_runner_the_engine_or_the_state_store() -> None:
    code = (
        "import json, sys; import cloudkeep.cli.main; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    )
    assert json.loads(fresh_interpreter(code, timeout=120)[-1]) == []


def test_the_jobs_package_still_offers_its_contract_on_first_use() -> None:
    from cloudkeep.server import jobs
    from cloudkeep.server.jobs.lifecycle import start_job, stop_session

    assert (jobs.start_job, jobs.stop_session) == (start_job, stop_session)
