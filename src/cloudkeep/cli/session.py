"""`cloudkeep session …`: runs of jobs, rescans and restores, with live progress."""

from __future__ import annotations

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    WIDE_OPTION,
    Col,
    Column,
    Names,
    client,
    console,
    done,
    exit_code_for,
    human_size,
    print_json,
    print_table,
    render_object,
    render_page,
    short,
    watch,
)
from cloudkeep.cli.completion import SESSION_KINDS, choices, names_of

app = typer.Typer(help="Job sessions.", no_args_is_help=True)
COLUMNS: list[Column] = [
    Col("id", "id", short),
    Col("id", "id", wide=True),
    ("kind", "kind"),
    Col("job", "job_id", ref="job"),
    ("state", "state"),
    ("trigger", "trigger"),
    ("started", "started_at"),
    ("ended", "ended_at"),
    ("reason", "reason"),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    kind: str | None = typer.Option(
        None, "--kind", help="backup | rescan | restore | check", autocompletion=choices(*SESSION_KINDS)
    ),
    state: str | None = typer.Option(None, "--state", help="running, success, failed …"),
    job: str | None = typer.Option(None, "--job", help="Job id or name.", autocompletion=names_of("job")),
    as_json: bool = JSON_OPTION,
    wide: bool = WIDE_OPTION,
    limit: int = LIMIT_OPTION,
    offset: int = OFFSET_OPTION,
) -> None:
    """List sessions, newest first (ids shortened to 8 characters, which every command accepts)."""
    with client(ctx) as c:
        page = c.list_sessions(kind=kind, state=state, job=job, limit=limit, offset=offset)
        render_page(page, as_json, COLUMNS, title="Sessions", names=Names(c), wide=wide)


@app.command("show")
def show(
    ctx: typer.Context,
    session_id: str = typer.Argument(...),
    as_json: bool = JSON_OPTION,
    limit: int = typer.Option(100, "--limit", min=1, max=500, help="Tasks per page."),
    offset: int = typer.Option(0, "--offset", min=0, help="Tasks to skip."),
    all_tasks: bool = typer.Option(False, "--all", help="Every task (fetched page by page)."),
) -> None:
    """Show a session with one page of its per-machine tasks and their log (--all: every task)."""
    with client(ctx) as c:
        detail = (
            c.get_session_all(session_id)
            if all_tasks
            else c.get_session(session_id, limit=limit, offset=offset)
        )
        if as_json:
            print_json(detail)
            return
        render_object(detail, False, title=f"Session {detail.id}", names=Names(c),
                      skip=("tasks", "log", "task_limit", "task_offset"))  # fmt: skip
    first = detail.task_offset + 1 if detail.tasks else detail.task_offset
    shown = f"{first}-{detail.task_offset + len(detail.tasks)} of {detail.task_total}"
    print_table(
        detail.tasks,
        [
            ("machine", "machine_name"),
            ("state", "state"),
            ("progress", "progress", lambda p: f"{p * 100:.0f}%"),
            ("read", "bytes_read", human_size),
            ("sent", "bytes_transferred", human_size),
            ("files", "files"),
            ("reason", "reason"),
        ],
        title=f"Tasks {shown}",
    )
    if detail.task_offset + len(detail.tasks) < detail.task_total:
        console().print(f"more: --offset {detail.task_offset + len(detail.tasks)} (or --all)")


@app.command("watch")
def watch_(ctx: typer.Context, session_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Follow a session with a progress bar per machine until it ends.

    Exits 0 when every machine succeeded, 3 when some machines or files failed, 1 when the
    run failed or was stopped.
    """
    with client(ctx) as c:
        final = watch(c, session_id, as_json=as_json)
    if code := exit_code_for(final.state):
        raise typer.Exit(code)


@app.command("stop")
def stop(ctx: typer.Context, session_id: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Ask a running session to stop."""
    with client(ctx) as c:
        c.stop_session(session_id)
    done(f"asked session {session_id} to stop", as_json, session_id=session_id)
