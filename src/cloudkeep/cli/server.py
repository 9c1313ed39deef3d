"""`cloudkeep server …`: run the API server, manage API tokens, rotate the master key."""

from __future__ import annotations

import os

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    client,
    console,
    print_json,
    render_object,
    render_page,
    state,
    success,
)
from cloudkeep.errors import ConfigurationError
from cloudkeep.server.services.schemas import TokenCreate

app = typer.Typer(help="The backup server.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@app.command("start")
def start(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8750, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Worker processes (share the database)."),
    background: bool = typer.Option(
        True, "--background/--no-background", help="Run scheduler and consumers."
    ),
) -> None:
    """Serve the REST API (and the scheduler and queue consumers) until interrupted."""
    import uvicorn

    from cloudkeep.server.api.asgi import BACKGROUND_ENV
    from cloudkeep.server.context import open_context

    settings = state(ctx).settings
    if settings.api_url:
        raise ConfigurationError("`server start` runs a server; it does not take --api-url")
    open_context(settings).close()  # migrate and create keys once, before workers start
    os.environ["CLOUDKEEP_HOME"] = str(settings.home)
    os.environ["CLOUDKEEP_DATABASE_URL"] = settings.effective_database_url
    os.environ["CLOUDKEEP_MASTER_KEY_FILE"] = str(settings.effective_master_key_file)
    os.environ[BACKGROUND_ENV] = "1" if background else "0"
    console(stderr=True).print(f"cloudkeep API on http://{host}:{port}/api/v1 (docs: /api/v1/docs)")
    uvicorn.run(
        "cloudkeep.server.api.asgi:create_asgi_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


@app.command("info")
def info(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Server id, version, database, public key and object counts."""
    with client(ctx) as c:
        render_object(c.server_info(), as_json, title="Server")


@app.command("rotate-key")
def rotate_key(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Re-seal every stored secret under a new master key and retire the old one."""
    with client(ctx) as c:
        result = c.rotate_key()
    if as_json:
        print_json(result)
    else:
        success(f"master key rotated to {result.new_key_id}; {result.resealed} secret(s) re-sealed")


@app.command("audit")
def audit(
    ctx: typer.Context,
    actor: str | None = typer.Option(None, "--actor"),
    action: str | None = typer.Option(None, "--action", help="Prefix, e.g. job."),
    as_json: bool = JSON_OPTION,
    limit: int = LIMIT_OPTION,
    offset: int = OFFSET_OPTION,
) -> None:
    """The audit log of administrator changes, newest first."""
    with client(ctx) as c:
        page = c.list_audit(actor=actor, action=action, limit=limit, offset=offset)
    columns = [
        ("at", "at"),
        ("actor", "actor"),
        ("action", "action"),
        ("target", "target"),
        ("detail", "detail"),
    ]
    render_page(page, as_json, columns, title="Audit log")


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A unique name (shown as the actor in the audit log)."),
    scope: str = typer.Option("read-only", "--scope", help="admin | read-only"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create an API token; it is printed once and only its hash is stored."""
    if scope not in ("admin", "read-only"):
        raise ConfigurationError(f"unknown scope {scope!r}", hint="use admin or read-only")
    with client(ctx) as c:
        created = c.create_token(TokenCreate(name=name, scope=scope))  # type: ignore[arg-type]
    if as_json:
        print_json(created)
        return
    success(f"token {created.name} ({created.scope}) created; store it now, it is not shown again:")
    typer.echo(created.token)


@token_app.command("list")
def token_list(
    ctx: typer.Context, as_json: bool = JSON_OPTION, limit: int = LIMIT_OPTION, offset: int = OFFSET_OPTION
) -> None:
    """List API tokens (never the tokens themselves)."""
    with client(ctx) as c:
        page = c.list_tokens(limit=limit, offset=offset)
    columns = [
        ("name", "name"),
        ("scope", "scope"),
        ("created", "created_at"),
        ("revoked", "revoked_at"),
        ("id", "id"),
    ]
    render_page(page, as_json, columns, title="API tokens")


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context, ref: str = typer.Argument(..., help="Id or name."), as_json: bool = JSON_OPTION
) -> None:
    """Revoke an API token at once."""
    with client(ctx) as c:
        view = c.revoke_token(ref)
    if as_json:
        print_json(view)
    else:
        success(f"token {view.name} revoked")
