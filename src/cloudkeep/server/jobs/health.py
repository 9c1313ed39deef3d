"""Repository health checks: a ``check`` (with a read-data sample) run by one of the job's agents.

The check runs on a machine, not on the server, because the data path stays between machines
and object storage; any deployed machine of the job can verify the shared repository. The
result is a ``check`` session whose task holds the problems found. A format 3 repository keeps
machines' data from each other, so no machine can read it whole: the server, which holds its
keys, checks it instead (the read-data sample then moves through the server).
"""

from __future__ import annotations

from cloudkeep.errors import CloudkeepError, ConfigurationError, NotFoundError
from cloudkeep.protocol.bodies import CheckResult
from cloudkeep.repo.confidential import CONFIDENTIAL_FORMAT
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.jobs.lifecycle import job_machines, resolve_job
from cloudkeep.server.jobs.options import parse_share
from cloudkeep.server.sessions import CommandSender, CommandSession, Outcome, start_command_session
from cloudkeep.server.sessions.access import load_repository, opened_repository
from cloudkeep.server.sessions.runtime import launch, open_session, set_session

PROBLEM_CHARS = 8 * 1024


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
    if _is_format_3(ctx, repository_id):
        return _start_server_check(ctx, job_ref, repository_id, fraction, wait=wait)
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


def _is_format_3(ctx: ServerContext, repository_id: str) -> bool:
    """A machine holding a format 3 writer bundle can read no restore point or pack: it cannot check."""
    try:
        with opened_repository(ctx, load_repository(ctx, repository_id), load_index=False) as repo:
            return repo.config.version >= CONFIDENTIAL_FORMAT
    except NotFoundError:  # not initialised: the machine says so
        return False


def _start_server_check(
    ctx: ServerContext, job_id: str, repository_id: str, fraction: float | None, *, wait: bool
) -> str:
    """The same ``check`` session, run by the server with the repository's full keys."""
    from cloudkeep.server.services.repositories import check_repository

    session_id, _ = open_session(ctx, kind="check", job_id=job_id, trigger="schedule", machine_ids=[])

    def run() -> None:
        set_session(ctx, session_id, state="running", started_at=utcnow())
        try:
            checked = check_repository(ctx, repository_id, read_data_subset=fraction)
            problems = [p[:PROBLEM_CHARS] for p in checked.problems[:1000]]  # a result's bounds
            outcome = _checked(CheckResult(ok=checked.ok, problems=problems))
        except CloudkeepError as exc:
            outcome = Outcome("failed", f"check could not run: {exc}", {}, {"stats": {"problems": []}})
        set_session(ctx, session_id, state=outcome.state, reason=outcome.reason, ended_at=utcnow(),
                    **outcome.session)  # fmt: skip

    launch(run, wait=wait, name=f"ck-check-{session_id[:8]}")
    return session_id


def _checked(result: CheckResult) -> Outcome:
    problems = list(result.problems)
    ok = result.healthy
    reason = "repository healthy" if ok else f"{len(problems)} problem(s): " + "; ".join(problems)[:2000]
    stats = {"stats": {"problems": problems}}
    return Outcome("success" if ok else "failed", reason, stats, stats)
