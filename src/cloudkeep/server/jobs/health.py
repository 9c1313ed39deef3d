"""Repository health checks: a ``check`` (with a read-data sample) run by one of the job's agents.

The check runs on a machine, not on the server, because the data path stays between machines
and object storage; any deployed machine of the job can verify the shared repository. The
result is a ``check`` session whose task holds the problems found.
"""

from __future__ import annotations

import threading

from cloudkeep.errors import CloudkeepError, ConfigurationError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, SessionTask
from cloudkeep.server.jobs.access import agent_access, load_repository, repository_password
from cloudkeep.server.jobs.lifecycle import job_machines, resolve_job
from cloudkeep.server.jobs.options import parse_share
from cloudkeep.server.jobs.runner import CommandSender, default_dispatcher, update_task, utcnow


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
        session = JobSession(kind="check", job_id=job.id, trigger="schedule", state="pending")
        db.add(session)
        db.flush()
        task = SessionTask(session_id=session.id, machine_id=deployed[0].id, state="pending")
        db.add(task)
        db.flush()
        ids = (session.id, task.id, deployed[0].id, job.repository_id)

    def run() -> None:
        _run_check(ctx, *ids, read_data_subset=fraction, dispatcher=dispatcher)

    if wait:
        run()
    else:
        threading.Thread(target=run, name=f"ck-check-{ids[0][:8]}", daemon=True).start()
    return ids[0]


def _run_check(
    ctx: ServerContext,
    session_id: str,
    task_id: str,
    machine_id: str,
    repository_id: str,
    *,
    read_data_subset: float | None,
    dispatcher: CommandSender | None,
) -> None:
    started = utcnow()
    _set_session(ctx, session_id, state="running", started_at=started)
    update_task(ctx, task_id, "checking the repository", state="running", started_at=started)
    state, reason, problems = "failed", "", []
    try:
        repository = load_repository(ctx, repository_id)
        provider = ctx.provider_for(repository.credential_id)
        try:
            access = agent_access(provider, repository, machine_id, repository_password(ctx, repository))
        finally:
            provider.close()
        sender = dispatcher or default_dispatcher(ctx)
        body = {"read_data_subset": read_data_subset}
        command_id = sender.send(machine_id, "check", body, sealed=access, task_id=task_id)
        payload = sender.wait(command_id, timeout=6 * 3600)
        problems = [str(p) for p in payload.get("problems") or []]
        ok = bool(payload.get("ok", not problems))
        state = "success" if ok else "failed"
        reason = "repository healthy" if ok else f"{len(problems)} problem(s): " + "; ".join(problems)[:2000]
    except CloudkeepError as exc:
        reason = f"check could not run: {exc}"
    ended = utcnow()
    update_task(
        ctx, task_id, reason, state=state, reason=reason, ended_at=ended, stats={"problems": problems}
    )
    _set_session(ctx, session_id, state=state, reason=reason, ended_at=ended, stats={"problems": problems})


def _set_session(ctx: ServerContext, session_id: str, **fields: object) -> None:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        if session is not None:
            for key, value in fields.items():
                setattr(session, key, value)
