"""`cloudkeep job …`: backup jobs — what, where, when, how long to keep."""

from __future__ import annotations

from typing import Any

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    Col,
    Column,
    client,
    console,
    follow,
    parse_json,
    parse_options,
    print_json,
    success,
    timestamp,
)
from cloudkeep.cli.completion import MODES, choices, names_of
from cloudkeep.cli.resource import Resource, add_resource_commands
from cloudkeep.server.jobs.options import validate_job_options
from cloudkeep.server.scheduling.schedule import schedule_from_text
from cloudkeep.server.services.schemas import JobCreate, JobUpdate, Retention

app = typer.Typer(help="Backup jobs.", no_args_is_help=True)
COLUMNS: list[Column] = [
    ("name", "name"),
    ("mode", "mode"),
    Col("repository", "repository_id", ref="repository"),
    ("schedule", "schedule", lambda s: s.get("kind", s) if s else "manual"),
    ("next run", "next_run_at"),
    ("enabled", "enabled"),
    Col("id", "id", wide=True),
]
GROUP = typer.Option(
    None, "--group", help="Protection group id or name (repeat).", autocompletion=names_of("group")
)
MACHINE = typer.Option(
    None, "--machine", help="Machine id or name (repeat).", autocompletion=names_of("machine")
)
INCLUDE = typer.Option(None, "--include", help="Path, volume or glob to back up (repeat).")
EXCLUDE = typer.Option(None, "--exclude", help="Path or glob to skip (repeat).")
SCHEDULE = typer.Option(
    None,
    "--schedule",
    help='JSON, e.g. \'{"kind": "daily", "time": "02:00"}\', or cron: \'cron:0 3 * * 1-5\''
    " (add CRON_TZ=Europe/Paris before the fields for a zone).",
)
DAILY = typer.Option(None, "--daily", help="Shortcut: run every day at HH:MM (UTC).")
OPTION = typer.Option(
    None,
    "--option",
    help="KEY=VALUE job option, e.g. bandwidth_limit=10MiB, task_timeout_seconds=2h,"
    ' notifications=\'{"webhook": {"url": "https://…"}}\' (unknown keys are refused).',
)
KEEPS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within_days")


def _schedule(schedule: str | None, daily: str | None) -> dict[str, Any] | None:
    if daily:
        return {"kind": "daily", "time": daily}
    if schedule is not None and (cron := schedule_from_text(schedule)) is not None:
        return cron
    value: dict[str, Any] | None = parse_json(schedule, "schedule")
    return value


def _retention(values: dict[str, int | None]) -> Retention | None:
    given = {k: v for k, v in values.items() if v is not None}
    return Retention(**given) if given else None


def _keep(name: str) -> Any:
    return typer.Option(
        None, f"--{name.replace('_', '-')}", min=0, help=f"Retention: {name.replace('_', ' ')}."
    )


def _next_run(view: Any) -> str:
    return timestamp(view.next_run_at) if view.next_run_at else "manual"


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A unique name."),
    repository: str = typer.Option(
        ..., "--repository", help="Backup repository id or name.", autocompletion=names_of("repository")
    ),
    group: list[str] | None = GROUP,
    machine: list[str] | None = MACHINE,
    mode: str = typer.Option("file", "--mode", help="entire | volume | file", autocompletion=choices(*MODES)),
    include: list[str] | None = INCLUDE,
    exclude: list[str] | None = EXCLUDE,
    schedule: str | None = SCHEDULE,
    daily: str | None = DAILY,
    keep_last: int | None = _keep("keep_last"),
    keep_daily: int | None = _keep("keep_daily"),
    keep_weekly: int | None = _keep("keep_weekly"),
    keep_monthly: int | None = _keep("keep_monthly"),
    keep_yearly: int | None = _keep("keep_yearly"),
    keep_within_days: int | None = _keep("keep_within_days"),
    option: list[str] | None = OPTION,
    disabled: bool = typer.Option(False, "--disabled", help="Create it disabled."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a backup job."""
    keeps = dict(
        zip(
            KEEPS,
            (keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within_days),
            strict=True,
        )
    )
    data = JobCreate(
        name=name,
        repository=repository,
        protection_groups=group or [],
        machines=machine or [],
        mode=mode,  # type: ignore[arg-type]
        includes=include or [],
        excludes=exclude or [],
        schedule=_schedule(schedule, daily),
        retention=_retention(keeps),
        options=validate_job_options(parse_options(option)),
        enabled=not disabled,
        description=description,
    )
    with client(ctx) as c:
        view = c.create_job(data)
    if as_json:
        print_json(view)
    else:
        success(f"job {view.name} created ({view.id[:8]}); next run: {_next_run(view)}")


@app.command("update")
def update(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("job")),
    name: str | None = typer.Option(None, "--name", help="Rename."),
    repository: str | None = typer.Option(None, "--repository", autocompletion=names_of("repository")),
    group: list[str] | None = GROUP,
    machine: list[str] | None = MACHINE,
    mode: str | None = typer.Option(None, "--mode", autocompletion=choices(*MODES)),
    include: list[str] | None = INCLUDE,
    exclude: list[str] | None = EXCLUDE,
    schedule: str | None = SCHEDULE,
    daily: str | None = DAILY,
    no_schedule: bool = typer.Option(False, "--no-schedule", help="Remove the schedule (manual only)."),
    keep_last: int | None = _keep("keep_last"),
    keep_daily: int | None = _keep("keep_daily"),
    keep_weekly: int | None = _keep("keep_weekly"),
    keep_monthly: int | None = _keep("keep_monthly"),
    keep_yearly: int | None = _keep("keep_yearly"),
    keep_within_days: int | None = _keep("keep_within_days"),
    option: list[str] | None = OPTION,
    description: str | None = typer.Option(None, "--description"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a job; only the options given change (retention options replace the policy)."""
    keeps = dict(
        zip(
            KEEPS,
            (keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within_days),
            strict=True,
        )
    )
    fields: dict[str, Any] = {
        "name": name,
        "repository": repository,
        "protection_groups": group,
        "machines": machine,
        "mode": mode,
        "includes": include,
        "excludes": exclude,
        "schedule": _schedule(schedule, daily),
        "retention": _retention(keeps),
        "options": validate_job_options(parse_options(option)) if option else None,
        "description": description,
    }
    data = JobUpdate(**{k: v for k, v in fields.items() if v is not None}, clear_schedule=no_schedule)
    with client(ctx) as c:
        view = c.update_job(ref, data)
    if as_json:
        print_json(view)
    else:
        success(f"job {view.name} updated; next run: {_next_run(view)}")


@app.command("enable")
def enable(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("job")),
    as_json: bool = JSON_OPTION,
) -> None:
    """Let the scheduler run the job again."""
    with client(ctx) as c:
        view = c.set_job_enabled(ref, True)
    if as_json:
        print_json(view)
    else:
        success(f"job {view.name} enabled; next run: {_next_run(view)}")


@app.command("disable")
def disable(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("job")),
    as_json: bool = JSON_OPTION,
) -> None:
    """Stop scheduled runs (manual starts still work)."""
    with client(ctx) as c:
        view = c.set_job_enabled(ref, False)
    if as_json:
        print_json(view)
    else:
        success(f"job {view.name} disabled")


@app.command("start")
def start(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("job")),
    machine: list[str] | None = typer.Option(
        None, "--machine", help="Only these machines (repeat).", autocompletion=names_of("machine")
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Watch until it ends (always in embedded mode)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run a job now and follow its progress.

    Exits 0 when every machine succeeded, 3 when some machines or files failed, 1 when the
    run failed or was stopped.
    """
    with client(ctx) as c:
        follow(c, c.start_job(ref, machines=machine), wait=wait, as_json=as_json)


@app.command("stop")
def stop(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("job")),
    as_json: bool = JSON_OPTION,
) -> None:
    """Ask the job's running sessions to stop."""
    with client(ctx) as c:
        ids = c.stop_job(ref)
    if as_json:
        print_json({"ok": True, "stopping": ids})
    elif ids:
        success(f"asked {len(ids)} session(s) to stop: {', '.join(ids)}")
    else:
        console().print(f"job {ref} is not running")


add_resource_commands(
    app,
    Resource(
        noun="job",
        title="Jobs",
        columns=COLUMNS,
        get=lambda c, ref: c.get_job(ref),
        list_page=lambda c, **page: c.list_jobs(**page),
        delete=lambda c, ref: c.delete_job(ref),
        delete_help="Delete a job (its restore points stay in the catalog).",
        kind="job",
    ),
)
