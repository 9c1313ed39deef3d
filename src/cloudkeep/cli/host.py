"""`cloudkeep host …`: protect the machine cloudkeep runs on (no cloud needed).

Thin commands over ``cloudkeep.host``: ``protect`` sets everything up, installs the machine-side
services for real (``/opt/cloudkeep``, ``/etc/cloudkeep``, ``/var/lib/cloudkeep``) and runs a
first backup; ``backup`` runs the job again; ``status`` shows the services and restore points;
``unprotect`` stops and removes the services and disables the job, keeping the backups.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cloudkeep.cli.common import SUCCESS_STATES, console, print_table, state, success, watch
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

app = typer.Typer(help="Protect this host: back up its own files.", no_args_is_help=True)

PATH = typer.Option(None, "--path", help="Absolute path on this host to back up (repeat).")
ROOT = typer.Option(
    Path("/"),
    "--root",
    hidden=True,
    help="For tests only: treat this folder as the host's root instead of /.",
)


def _settings(ctx: typer.Context) -> object:
    """Refuse what installs or removes services on this machine when the server is elsewhere."""
    settings = state(ctx).settings
    if settings.api_url:
        raise ConfigurationError(
            f"`cloudkeep host {ctx.command.name}` installs or removes services on the server's own host, "
            "so it runs there, without --api-url",
            hint="run it on the server host without --api-url / CLOUDKEEP_API_URL; "
            "`host backup` and `host status` work remotely",
        )
    return settings


def _layout(ctx: typer.Context, root: Path = Path("/")) -> HostLayout:
    return HostLayout(state(ctx).settings.home, root.resolve())


def _backup(c: Client) -> None:
    final = watch(c, c.start_job(JOB))
    if final.state not in SUCCESS_STATES:
        raise HostError(f"the backup ended {final.state}: {final.reason}", hint="cloudkeep session show <id>")
    for task in final.tasks:
        console().print(
            f"  read {task.bytes_read / 2**20:.1f} MiB, stored {task.bytes_transferred / 2**20:.2f} MiB,"
            f" {task.files} files"
        )


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
) -> None:
    """Back up paths of this host: set up, install the services, run the first backup (idempotent)."""
    _settings(ctx)
    layout = _layout(ctx, root)
    with open_client(state(ctx).settings) as c:
        machine = protect(
            c, layout, path or [], repository=repository, password_file=password_file, excludes=exclude
        )
        console().print(f"host {machine.name} (root {machine.root}), job {JOB}: {', '.join(path or [])}")
        final = watch(c, c.rescan(GROUP))
        view = host_view(c)
        steps = " → ".join(f"{s.step}:{s.outcome}" for s in view.steps)
        console().print(f"  {view.status}: {steps}")
        if final.state not in SUCCESS_STATES or view.status != "deployed":
            raise HostError(f"the services were not deployed: {view.status_reason}")
        if backup:
            _backup(c)
    success(f"this host is protected; back up again with `cloudkeep host backup` (server home {layout.home})")


@app.command("backup")
def backup_command(ctx: typer.Context) -> None:
    """Run the host's backup job now (on the server host, or remotely with --api-url)."""
    with open_client(state(ctx).settings) as c:
        host_view(c)
        _backup(c)


@app.command("status")
def status_command(ctx: typer.Context) -> None:
    """The host's services, what is backed up, and its restore points (also with --api-url)."""
    with open_client(state(ctx).settings) as c:
        view = host_view(c)
        job = c.get_job(JOB)
        repository = c.get_repository(job.repository_id)
        out = console()
        out.print(f"host {view.name}: {view.status} — {view.status_reason}")
        out.print(f"  agent {view.agent_version or '-'}, last heartbeat {view.last_heartbeat_at or '-'}")
        out.print(f"  job {job.name} ({'enabled' if job.enabled else 'disabled'}): {', '.join(job.includes)}")
        out.print(f"  repository {repository.location}")
        print_table(
            restore_points(c),
            [
                ("restore point", "id"),
                ("snapshot", "snapshot_id", lambda v: str(v)[:8]),
                ("created", "created_at"),
                ("files", "files"),
                ("size", "size"),
            ],
            title="Restore points",
        )


@app.command("unprotect")
def unprotect_command(ctx: typer.Context) -> None:
    """Stop and remove the services, disable the job; the backups stay restorable."""
    _settings(ctx)
    with open_client(state(ctx).settings) as c:
        done = unprotect(c, _layout(ctx))
    for line in done:
        console().print(f"  {line}")
    success("this host is no longer protected (its backups are kept)" if done else "nothing to unprotect")
