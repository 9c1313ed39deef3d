"""`cloudkeep host …`: protect the machine cloudkeep runs on (no cloud needed).

Thin commands over ``cloudkeep.host``: ``protect`` sets everything up, installs the machine-side
services for real (``/opt/cloudkeep``, ``/etc/cloudkeep``, ``/var/lib/cloudkeep``) and runs a
first backup; ``backup`` runs the job again; ``status`` shows the services and restore points;
``unprotect`` stops and removes the services and disables the job, keeping the backups.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    SUCCESS_STATES,
    Col,
    cell,
    console,
    exit_code_for,
    human_size,
    print_json,
    print_table,
    short,
    state,
    success,
    watch,
)
from cloudkeep.config import Settings
from cloudkeep.errors import ConfigurationError
from cloudkeep.host import (
    GROUP,
    JOB,
    HostError,
    HostLayout,
    host_view,
    protect,
    restore_points,
    unprotect,
)
from cloudkeep.server.client import Client, open_client
from cloudkeep.server.services.schemas import SessionDetail

app = typer.Typer(help="Protect this host: back up its own files.", no_args_is_help=True)

PATH = typer.Option(None, "--path", help="Absolute path on this host to back up (repeat).")
ROOT = typer.Option(
    Path("/"),
    "--root",
    hidden=True,
    help="For tests only: treat this folder as the host's root instead of /.",
)


def _settings(ctx: typer.Context) -> Settings:
    """Refuse what installs or removes services on this machine when the server is elsewhere."""
    settings = state(ctx).settings
    if settings.api_url:
        raise ConfigurationError(
            f"`cloudkeep host {ctx.command.name}` installs or removes services on the server's own host, "
            "so it runs there, without --api-url",
            hint="run it on the server host without --api-url / CLOUDKEEP_API_URL; "
            "`host backup` and `host status` work remotely",
        )
    _check_home(settings)
    return settings


def _check_home(settings: Settings) -> None:
    """A home made root's by ``sudo cloudkeep host protect`` is refused with the reason (embedded)."""
    if settings.api_url:
        return
    database = settings.home / "cloudkeep.db"
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        # `sudo cloudkeep host protect` made this home's state root's: it holds the host's backups
        # (/etc/shadow among them), so it is not handed to the user; say so instead of a traceback
        raise ConfigurationError(
            f"the server home {settings.home} belongs to another user (root, when set up with sudo)",
            hint="run the command with sudo, as `host protect` was",
        )


def _home_for_invoker(home: Path) -> None:
    """Under sudo, create the home as the invoking user's folder (their other cloudkeep state lives
    there too); what ``protect`` writes into it stays root's and private."""
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if home.exists() or not uid.isdigit() or not gid.isdigit() or os.geteuid() != 0:
        return
    home.mkdir(parents=True, mode=0o700)
    os.chown(home, int(uid), int(gid))


def _layout(ctx: typer.Context, root: Path = Path("/")) -> HostLayout:
    return HostLayout(state(ctx).settings.home, root.resolve())


def _follow(c: Client, session_id: str, as_json: bool) -> SessionDetail:
    """Watch with progress bars, or (``--json``) silently: the command prints one object at the end."""
    if not as_json:
        return watch(c, session_id)
    final: SessionDetail | None = None
    for detail in c.watch_session(session_id):
        final = detail
    return final or c.get_session(session_id)


def _backup(c: Client, *, as_json: bool = False) -> SessionDetail:
    """Run the host job; a failed run raises, a partial one ('warning', e.g. a missing path) is
    returned for the caller to exit 3 after naming what is missing."""
    final = _follow(c, c.start_job(JOB), as_json)
    if final.state not in SUCCESS_STATES:
        raise HostError(f"the backup ended {final.state}: {final.reason}", hint="cloudkeep session show <id>")
    if as_json:
        return final
    for task in final.tasks:
        console().print(
            f"  read {human_size(task.bytes_read)}, stored {human_size(task.bytes_transferred)},"
            f" {task.files} files"
        )
        if task.state == "warning":
            console().print(f"  [yellow]warning:[/yellow] {task.reason}", highlight=False)
    return final


@app.command("protect")
def protect_command(
    ctx: typer.Context,
    path: list[str] | None = PATH,
    exclude: list[str] | None = typer.Option(None, "--exclude", help="Path or glob to skip (repeat)."),
    repository: Path | None = typer.Option(
        None, "--repository", help="Backup repository folder (default: host-repository in the server home)."
    ),
    password_file: Path | None = typer.Option(
        None, "--password-file", help="File holding the repository password (default: generated, 0600)."
    ),
    backup: bool = typer.Option(True, "--backup/--no-backup", help="Run a first backup right away."),
    root: Path = ROOT,
    as_json: bool = JSON_OPTION,
) -> None:
    """Back up paths of this host: set up, install the services, run the first backup (idempotent)."""
    _settings(ctx)
    layout = _layout(ctx, root)
    _home_for_invoker(layout.home)
    with open_client(state(ctx).settings) as c:
        machine = protect(
            c, layout, path or [], repository=repository, password_file=password_file, excludes=exclude
        )
        if not as_json:
            console().print(f"host {machine.name} (root {machine.root}), job {JOB}: {', '.join(path or [])}")
        rescan = _follow(c, c.rescan(GROUP), as_json)
        view = host_view(c)
        if not as_json:
            console().print(f"  {view.status}: {' → '.join(f'{s.step}:{s.outcome}' for s in view.steps)}")
        if rescan.state not in SUCCESS_STATES or view.status != "deployed":
            raise HostError(f"the services were not deployed: {view.status_reason}")
        first = _backup(c, as_json=as_json) if backup else None
    if as_json:
        print_json({"home": str(layout.home), "host": view, "rescan": rescan, "backup": first})
    else:
        success(
            f"this host is protected; back up again with `cloudkeep host backup` (server home {layout.home})"
        )
    if first is not None and (code := exit_code_for(first.state)):
        raise typer.Exit(code)


@app.command("backup")
def backup_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Run the host's backup job now, on the server host or with --api-url (exit 3 when some paths
    or files were missing)."""
    _check_home(state(ctx).settings)
    with open_client(state(ctx).settings) as c:
        host_view(c)
        final = _backup(c, as_json=as_json)
    if as_json:
        print_json(final)
    if code := exit_code_for(final.state):
        raise typer.Exit(code)


@app.command("status")
def status_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """The host's services, what is backed up, and its restore points (also with --api-url)."""
    _check_home(state(ctx).settings)
    with open_client(state(ctx).settings) as c:
        view = host_view(c)
        job = c.get_job(JOB)
        repository = c.get_repository(job.repository_id)
        points = restore_points(c)
    if as_json:
        print_json({"host": view, "job": job, "repository": repository, "restore_points": points})
        return
    out = console()
    heartbeat = cell(view.last_heartbeat_at)
    out.print(f"host {view.name}: {view.status} — {view.status_reason}", highlight=False)
    out.print(f"  agent {view.agent_version or '-'}, last heartbeat {heartbeat}", highlight=False)
    state_ = "enabled" if job.enabled else "disabled"
    out.print(f"  job {job.name} ({state_}): {', '.join(job.includes)}", highlight=False)
    out.print(f"  repository {repository.location}", highlight=False)
    out.print(f"  server home {state(ctx).settings.home}", highlight=False)
    print_table(
        points,
        [
            Col("restore point", "id", short),
            Col("snapshot", "snapshot_id", short),
            ("created", "created_at"),
            ("files", "files"),
            ("size", "size", human_size),
        ],
        title="Restore points",
    )


@app.command("unprotect")
def unprotect_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Stop and remove the services, disable the job; the backups stay restorable."""
    _settings(ctx)
    with open_client(state(ctx).settings) as c:
        done = unprotect(c, _layout(ctx))
    if as_json:
        print_json({"ok": True, "done": done})
        return
    for line in done:
        console().print(f"  {line}")
    success("this host is no longer protected (its backups are kept)" if done else "nothing to unprotect")
