"""`cloudkeep server …`: run the API server, manage API tokens, rotate the master key."""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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
from cloudkeep.config import Settings
from cloudkeep.errors import ConfigurationError
from cloudkeep.server.logs import LogFormat, logging_config, normalize_level
from cloudkeep.server.service_unit import DEFAULT_UNIT_NAME, SYSTEM_UNIT_DIR, ServiceSpec, unit_text
from cloudkeep.server.services.schemas import TokenCreate

app = typer.Typer(help="The backup server.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


LOG_LEVEL_OPTION = typer.Option(
    None, "--log-level", help="debug | info | warning | error (env CLOUDKEEP_LOG_LEVEL; default info)."
)
LOG_FORMAT_OPTION = typer.Option(
    None, "--log-format", help="text (key=value) | json (env CLOUDKEEP_LOG_FORMAT; default text)."
)


def _log_settings(settings: Settings, level: str | None, fmt: str | None) -> tuple[str, LogFormat]:
    """Flags win over ``CLOUDKEEP_LOG_*``; both are checked here, before anything starts."""
    try:
        chosen_level = normalize_level(level or settings.log_level)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    chosen_format = fmt or settings.log_format
    if chosen_format not in ("text", "json"):
        raise ConfigurationError(f"unknown log format {chosen_format!r}", hint="use text or json")
    return chosen_level, chosen_format  # type: ignore[return-value]


def _tls_pair(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigurationError("--tls-cert and --tls-key go together", hint="give both, or neither")
    for path in (cert, key):
        if not path.is_file():
            raise ConfigurationError(f"{path} is not a readable file")
    return cert, key


@app.command("start")
def start(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8750, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Worker processes (share the database)."),
    background: bool = typer.Option(
        True, "--background/--no-background", help="Run scheduler and consumers."
    ),
    log_level: str | None = LOG_LEVEL_OPTION,
    log_format: str | None = LOG_FORMAT_OPTION,
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate (chain): serve HTTPS."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
) -> None:
    """Serve the REST API (and the scheduler and queue consumers) until interrupted."""
    import uvicorn

    from cloudkeep.server.api.asgi import BACKGROUND_ENV
    from cloudkeep.server.context import open_context
    from cloudkeep.server.db.pool import check_max_connections

    settings = state(ctx).settings
    if settings.api_url:
        raise ConfigurationError("`server start` runs a server; it does not take --api-url")
    level, fmt = _log_settings(settings, log_level, log_format)
    tls = _tls_pair(tls_cert, tls_key)
    server = open_context(settings)  # migrate and create keys once, before workers start
    try:
        warning = check_max_connections(server.engine, settings, workers)
    finally:
        server.close()
    if warning:
        console(stderr=True).print(f"[yellow]warning:[/yellow] {warning}")
    os.environ["CLOUDKEEP_HOME"] = str(settings.home)
    os.environ["CLOUDKEEP_DATABASE_URL"] = settings.effective_database_url
    os.environ["CLOUDKEEP_MASTER_KEY_FILE"] = str(settings.effective_master_key_file)
    os.environ[BACKGROUND_ENV] = "1" if background else "0"
    scheme = "https" if tls else "http"
    console(stderr=True).print(f"cloudkeep API on {scheme}://{host}:{port}/api/v1 (docs: /api/v1/docs)")
    uvicorn.run(
        "cloudkeep.server.api.asgi:create_asgi_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=logging_config(level, fmt),
        log_level=level.lower(),
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )


@app.command("install-service")
def install_service(
    ctx: typer.Context,
    user: str | None = typer.Option(None, "--user", help="Run the server as this user (default: you)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8750, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, max=64),
    log_level: str | None = LOG_LEVEL_OPTION,
    log_format: str | None = LOG_FORMAT_OPTION,
    tls_cert: Path | None = typer.Option(None, "--tls-cert"),
    tls_key: Path | None = typer.Option(None, "--tls-key"),
    unit_path: Path = typer.Option(
        SYSTEM_UNIT_DIR / DEFAULT_UNIT_NAME, "--unit-path", help="Where to write the unit."
    ),
    enable: bool = typer.Option(False, "--enable", help="Also `systemctl enable --now` it (needs root)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the unit; write nothing."),
) -> None:
    """Write a systemd unit that runs `cloudkeep server start` at boot and restarts it on failure."""
    settings = state(ctx).settings
    if settings.api_url:
        raise ConfigurationError("`server install-service` sets up a local server; not with --api-url")
    level, fmt = _log_settings(settings, log_level, log_format)
    tls = _tls_pair(tls_cert, tls_key)
    executable = Path(sys.executable).with_name("cloudkeep")
    spec = ServiceSpec(
        executable=executable if executable.exists() else Path(shutil.which("cloudkeep") or executable),
        home=settings.home.resolve(),
        user=user or getpass.getuser(),
        host=host,
        port=port,
        workers=workers,
        log_level=level,
        log_format=fmt,
        database_url=settings.database_url,
        tls_cert=tls[0].resolve() if tls else None,
        tls_key=tls[1].resolve() if tls else None,
    )
    text = unit_text(spec)
    if dry_run:
        typer.echo(text, nl=False)
        return
    if enable and os.geteuid() != 0:
        raise ConfigurationError("--enable needs root", hint="run it with sudo, or leave out --enable")
    try:
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(text)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write {unit_path}: {exc.strerror}", hint="run with sudo, or choose --unit-path"
        ) from exc
    success(f"wrote {unit_path}")
    if not enable:
        console().print(
            "start it at boot with: sudo systemctl daemon-reload && "
            f"sudo systemctl enable --now {unit_path.name}"
        )
        return
    for command in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", unit_path.name]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigurationError(f"{shlex.join(command)} failed: {done.stderr.strip()}")
    success(f"{unit_path.name} enabled and started (logs: journalctl -u {unit_path.name})")


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
