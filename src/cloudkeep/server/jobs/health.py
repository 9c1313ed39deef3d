"""Repository health checks: a ``check`` (with a read-data sample) run by one of the job's agents.

The check runs on a machine, not on the server, because the data path stays between machines
and object storage; any deployed machine of the job can verify the shared repository. The
result is a ``check`` session whose task holds the problems found.
"""

from __future__ import annotations

from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.protocol.bodies import CheckResult
from cloudkeep.repo.confidential import CONFIDENTIAL_FORMAT
from cloudkeep.server.context import ServerContext
from cloudkeep.server.jobs.lifecycle import job_machines, resolve_job
from cloudkeep.server.jobs.options import parse_share
from cloudkeep.server.sessions import CommandSender, CommandSession, Outcome, start_command_session
from cloudkeep.server.sessions.access import load_repository, opened_repository


def read_fraction(value: str | float | None) -> float | None:
    """``"5%"``, ``"0.05"`` or ``0.05`` → 0.05 (the share of packs read back); None reads structure only."""
    if value is None or value == "":
        return None
    try:
        fraction = parse_share(value)
    except ValueError:
        raise ConfigurationError(
            f"read_data_subset {value!r} is not a share", hint="use e.g. '5%' or 0.05"
        ) from None
    if not 0 < fraction <= 1:
        raise ConfigurationError(f"read_data_subset {value!r} must be more than 0% and at most 100%")
    return fraction


def start_health_check(
    ctx: ServerContext,
    job_id: str,
    *,
    read_data_subset: str | float | None = "5%",
    machine_id: str | None = None,
    wait: bool = False,
    dispatcher: CommandSender | None = None,
) -> str:
    """Create a ``check`` session for the job's repository and run it on one deployed machine."""
    fraction = read_fraction(read_data_subset)
    with ctx.db() as db:
        job = resolve_job(db, job_id)
        deployed = [m for m in job_machines(db, job) if m.status == "deployed"]
        if machine_id is not None:
            deployed = [m for m in deployed if machine_id in (m.id, m.name)]
        if not deployed:
            raise ConfigurationError(
                f"job {job.name!r} has no deployed machine to run the health check on",
                hint="run a rescan of its protection groups first",
            )
        machine, job_ref, repository_id = deployed[0], job.id, job.repository_id
    _refuse_format_3(ctx, repository_id)
    spec = CommandSession(
        kind="check",
        command="check",
        body={"read_data_subset": fraction},
        machine_id=machine.id,
        machine_name=machine.name,
        repository_id=repository_id,
        job_id=job_ref,
        trigger="schedule",
        started_message="checking the repository",
        interpret=_checked,
        error_prefix="check could not run: ",
        timeout=6 * 3600,
        unfinished=Outcome("failed", "", {"stats": {"problems": []}}, {"stats": {"problems": []}}),
    )
    return start_command_session(ctx, spec, wait=wait, dispatcher=dispatcher)


def _refuse_format_3(ctx: ServerContext, repository_id: str) -> None:
    """A machine holding a format 3 writer bundle can read no restore point or pack: it cannot check."""
    try:
        with opened_repository(ctx, load_repository(ctx, repository_id), load_index=False) as repo:
            confidential = repo.config.version >= CONFIDENTIAL_FORMAT
    except NotFoundError:  # not initialised: the machine says so
        return
    if confidential:
        raise ConfigurationError(
            "this repository keeps machines' data confidential from each other (format 3): no machine "
            "can check it",
            hint="run `cloudkeep repository check NAME --read-data 0.05` (on the server, which holds "
            "the keys)",
        )


def _checked(result: CheckResult) -> Outcome:
    problems = list(result.problems)
    ok = result.healthy
    reason = "repository healthy" if ok else f"{len(problems)} problem(s): " + "; ".join(problems)[:2000]
    stats = {"stats": {"problems": problems}}
    return Outcome("success" if ok else "failed", reason, stats, stats)
