"""`cloudkeep repository …`: object storage repositories and distribution repositories."""

from __future__ import annotations

import os
import sys

import typer
from pydantic import SecretStr
from rich.table import Table

from cloudkeep.cli.common import (
    DRY_RUN_OPTION,
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    WIDE_OPTION,
    YES_OPTION,
    Col,
    Column,
    Names,
    client,
    confirm,
    console,
    parse_pairs,
    print_json,
    render_object,
    render_page,
    success,
)
from cloudkeep.cli.completion import PURPOSES, choices, names_of
from cloudkeep.cli.resource import Resource, add_resource_commands
from cloudkeep.errors import ConfigurationError
from cloudkeep.server.services.maintenance_schemas import (
    ForgetRequest,
    PasswordChange,
    RepositoryRepairRequest,
)
from cloudkeep.server.services.schemas import (
    RepositoryCreate,
    RepositoryUpdate,
)

app = typer.Typer(help="Object storage repositories.", no_args_is_help=True)
COLUMNS: list[Column] = [
    ("name", "name"),
    ("purpose", "purpose"),
    ("location", "location"),
    ("immutable days", "immutability_days"),
    Col("credential", "credential_id", ref="credential"),
    Col("id", "id", wide=True),
]


def read_password(env: str | None, stdin: bool, *, confirm: bool) -> str:
    """The repository password from an environment variable, stdin, or a hidden prompt."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigurationError(f"environment variable {env} is empty or unset")
        return value
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("repository password", hide_input=True, confirmation_prompt=confirm))


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A unique name."),
    location: str = typer.Option(
        ..., "--location", help="bucket/prefix, container/prefix or a folder (the prefix is optional)."
    ),
    credential: str = typer.Option(
        ..., "--credential", help="Credential id or name.", autocompletion=names_of("credential")
    ),
    purpose: str = typer.Option(
        "backup", "--purpose", help="backup | distribution", autocompletion=choices(*PURPOSES)
    ),
    immutability_days: int = typer.Option(0, "--immutability-days", min=0, help="Object-lock retention."),
    password_env: str | None = typer.Option(
        None, "--password-env", help="Read the password from this variable."
    ),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
    option: list[str] | None = typer.Option(None, "--option", help="KEY=VALUE (pack size, compression …)."),
    init: bool = typer.Option(True, "--init/--no-init", help="Create the container and repository format."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a repository; a backup repository is initialised with its password (never echoed)."""
    if purpose not in ("backup", "distribution"):
        raise ConfigurationError(f"unknown purpose {purpose!r}", hint="use backup or distribution")
    password = None
    if purpose == "backup":
        password = SecretStr(read_password(password_env, password_stdin, confirm=init))
    data = RepositoryCreate(
        name=name,
        purpose=purpose,  # type: ignore[arg-type]
        credential=credential,
        location=location,
        password=password,
        immutability_days=immutability_days,
        options=parse_pairs(option, "--option"),
        initialize=init,
    )
    with client(ctx) as c:
        view = c.create_repository(data)
    if as_json:
        print_json(view)
    else:
        success(f"{view.purpose} repository {view.name} added ({view.id[:8]})")


@app.command("list")
def list_(
    ctx: typer.Context,
    purpose: str | None = typer.Option(
        None, "--purpose", help="backup | distribution", autocompletion=choices(*PURPOSES)
    ),
    as_json: bool = JSON_OPTION,
    wide: bool = WIDE_OPTION,
    limit: int = LIMIT_OPTION,
    offset: int = OFFSET_OPTION,
) -> None:
    """List repositories."""
    with client(ctx) as c:
        page = c.list_repositories(purpose=purpose, limit=limit, offset=offset)
        render_page(page, as_json, COLUMNS, title="Repositories", names=Names(c), wide=wide)


@app.command("check")
def check(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("repository")),
    read_data: float | None = typer.Option(
        None, "--read-data", min=0.0001, max=1.0, help="Share of packs to read."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Verify the repository structure (and optionally data)."""
    with client(ctx) as c:
        result = c.check_repository(ref, read_data_subset=read_data)
    render_object(result, as_json, title="Repository check")
    if not result.ok:
        raise typer.Exit(1)


@app.command("repair")
def repair(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("repository")),
    index: bool = typer.Option(True, "--index/--no-index", help="Rebuild index entries from pack headers."),
    snapshots: bool = typer.Option(
        True, "--snapshots/--no-snapshots", help="Set damaged restore-point manifests aside."
    ),
    rewrite: bool = typer.Option(
        False, "--rewrite", help="Write restore points that need missing data again, without it."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Rebuild what damage left rebuildable; what cannot be is moved to lost+found/, never deleted."""
    request = RepositoryRepairRequest(index=index, snapshots=snapshots, rewrite=rewrite)
    with client(ctx) as c:
        result = c.repair_repository(ref, request)
    render_object(result, as_json, title="Repository repair")
    if result.problems:
        raise typer.Exit(1)


@app.command("verify")
def verify(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name.", autocompletion=names_of("repository")),
    as_json: bool = JSON_OPTION,
) -> None:
    """Certify the repository's store: what works, and what cloudkeep does about each gap."""
    with client(ctx) as c:
        result = c.verify_store(ref)
    if as_json:
        print_json(result)
    else:
        table = Table(title=f"Store checks for {result.location}")
        for column in ("check", "result", "seen", "what cloudkeep does"):
            table.add_column(column, overflow="fold")
        for check in result.checks:
            mark = "[green]ok[/green]" if check.ok else "[red]FAILS[/red]"
            table.add_row(check.name, mark, check.detail, check.action)
        console().print(table)
    if not result.ok:
        raise typer.Exit(1)


add_resource_commands(
    app,
    Resource(
        noun="repository",
        title="Repositories",
        columns=COLUMNS,
        get=lambda c, ref: c.get_repository(ref),
        delete=lambda c, ref: c.delete_repository(ref),
        delete_command="remove",
        delete_help="Forget a repository (its data stays in storage).",
        kind="repository",
    ),
)


@app.command("update")
def update(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    name: str | None = typer.Option(None, "--name", help="A new unique name."),
    credential: str | None = typer.Option(None, "--credential", help="Another credential of the same cloud."),
    option: list[str] | None = typer.Option(
        None, "--option", help="KEY=VALUE merged into the options; KEY= removes one."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Rename a repository, switch its credential or change options; its location cannot change."""
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = name
    if credential is not None:
        changes["credential"] = credential
    if option is not None:
        changes["options"] = {k: (v or None) for k, v in parse_pairs(option, "--option").items()}
    if not changes:
        raise ConfigurationError("nothing to change", hint="give --name, --credential or --option")
    with client(ctx) as c:
        view = c.update_repository(ref, RepositoryUpdate.model_validate(changes))
    if as_json:
        print_json(view)
    else:
        success(f"repository {view.name} updated")


@app.command("stats")
def stats(
    ctx: typer.Context, ref: str = typer.Argument(..., help="Id or name."), as_json: bool = JSON_OPTION
) -> None:
    """What the repository holds: restore points, packs, bytes stored."""
    with client(ctx) as c:
        render_object(c.repository_stats(ref), as_json, title="Repository stats")


@app.command("forget")
def forget(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    keep_last: int = typer.Option(0, "--keep-last", min=0),
    keep_daily: int = typer.Option(0, "--keep-daily", min=0),
    keep_weekly: int = typer.Option(0, "--keep-weekly", min=0),
    keep_monthly: int = typer.Option(0, "--keep-monthly", min=0),
    keep_yearly: int = typer.Option(0, "--keep-yearly", min=0),
    keep_within_days: int | None = typer.Option(None, "--keep-within-days", min=0),
    yes: bool = YES_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Forget the restore points the policy does not keep (data goes with the next prune)."""
    request = ForgetRequest(
        keep_last=keep_last,
        keep_daily=keep_daily,
        keep_weekly=keep_weekly,
        keep_monthly=keep_monthly,
        keep_yearly=keep_yearly,
        keep_within_days=keep_within_days,
        dry_run=dry_run,
    )
    with client(ctx) as c:
        if not dry_run:
            confirm(f"Forget the restore points of repository {ref} the policy does not keep?", yes=yes)
        render_object(c.forget(ref, request), as_json, title="Forget")


@app.command("prune")
def prune(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    yes: bool = YES_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete data that no restore point uses any more."""
    with client(ctx) as c:
        name = c.get_repository(ref).name  # a typo fails here, before any question
        if dry_run:
            message = (
                f"would delete data of repository {name} that no restore point uses (after the grace period)"
            )
            if as_json:
                print_json({"dry_run": True, "repository": name})
            else:
                console().print(message)
            return
        confirm(f"Delete the unused data of repository {name}?", yes=yes)
        result = c.prune(ref)
    render_object(result, as_json, title="Prune")
    if result.warnings:
        raise typer.Exit(3)


@app.command("extend-locks")
def extend_locks(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Lock the data restore points use for one more generation (immutable repositories; at most
    once per generation: run it daily, e.g. from a timer)."""
    with client(ctx) as c:
        render_object(c.extend_locks(ref), as_json, title="Extend locks")


@app.command("migrate")
def migrate(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    yes: bool = YES_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Move a repository to format 3: machines then get writer bundles instead of its password and
    cannot read each other's new backups (older restore points are restored through the server)."""
    with client(ctx) as c:
        name = c.get_repository(ref).name  # a typo fails here, before any question
        question = f"Migrate repository {name} to format 3 (agents older than this server cannot use it)?"
        confirm(question, yes=yes)
        done = c.migrate_repository(ref)
    if as_json:
        print_json(done)
    else:
        success(f"repository {name}: {done.detail} (session {done.session_id})")


@app.command("change-password")
def change_password(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id or name."),
    password_env: str | None = typer.Option(None, "--password-env", help="Read the new password here."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the new password from stdin."),
    yes: bool = YES_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Give a repository a new password (the server keeps it; agents get it from there)."""
    new = read_password(password_env, password_stdin, confirm=True)
    confirm(f"Replace the password of repository {ref}?", yes=yes)
    with client(ctx) as c:
        done = c.change_password(ref, PasswordChange(new_password=SecretStr(new)))
    if as_json:
        print_json(done)
    else:
        success(f"repository {ref}: {done.detail} (session {done.session_id})")
