"""What every command shares: settings from flags/env, the client, rendering, errors, watching.

Settings are built here, at the edge, from the global flags (``--home``, ``--api-url``,
``--token``) and ``CLOUDKEEP_*`` environment variables, and nothing below reads the environment.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from cloudkeep.config import Settings
from cloudkeep.errors import CloudkeepError, ConfigurationError
from cloudkeep.server.client import Client, open_client
from cloudkeep.server.jobs.options import describe
from cloudkeep.server.services.schemas import Page, SessionDetail

JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")
WIDE_OPTION = typer.Option(False, "--wide", help="Also show ids (and other wide columns).")
LIMIT_OPTION = typer.Option(100, "--limit", min=1, max=500, help="Page size.")
OFFSET_OPTION = typer.Option(0, "--offset", min=0, help="Rows to skip.")
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3  # as restic: the run finished, but some machines or files failed
EXIT_CODES_HELP = (
    "Exit codes: 0 all succeeded; 3 partial (some machines or files failed: the session ended"
    " 'warning'); 1 failed or stopped; 2 usage or bad input; 130 interrupted."
)


@dataclass
class CliState:
    settings: Settings


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(build_settings())
    return root.obj


def invoking_user_home(environ: Mapping[str, str] = os.environ, euid: int | None = None) -> Path | None:
    """Under ``sudo`` (and no ``CLOUDKEEP_HOME``), the invoking user's ``~/.cloudkeep``.

    So ``sudo cloudkeep host protect`` and a later ``cloudkeep host status`` name one server home,
    not root's and the user's; the state in it stays root's (see ``cloudkeep.cli.host``).
    """
    user = environ.get("SUDO_USER")
    if environ.get("CLOUDKEEP_HOME") or not user or user == "root":
        return None
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    try:
        import pwd  # POSIX only, as sudo is

        return Path(pwd.getpwnam(user).pw_dir) / ".cloudkeep"
    except (ImportError, KeyError):
        return None


def build_settings(
    home: Path | None = None, api_url: str | None = None, token: str | None = None
) -> Settings:
    home = home or invoking_user_home()
    overrides: dict[str, Any] = {"home": home, "api_url": api_url, "api_token": token}
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from exc


@contextmanager
def client(ctx: typer.Context) -> Iterator[Client]:
    """The embedded or remote client for this invocation, closed afterwards."""
    with open_client(state(ctx).settings) as c:
        yield c


# --- rendering ---------------------------------------------------------------------------------


def console(*, stderr: bool = False) -> Console:
    """A console as wide as ``COLUMNS`` says (a terminal's own width; 200 for a pipe without it)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=terminal_width(stream.isatty()), stderr=stderr)


def terminal_width(isatty: bool) -> int | None:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if isatty else 200


def human_size(value: Any) -> str:
    """Bytes in binary units (``1.2 GiB``), as ``ls -h`` and restic print them."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def timestamp(value: datetime) -> str:
    """The one timestamp style: UTC, to the minute, with its zone (``2026-12-02 03:00 UTC``)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)  # the store keeps naive UTC
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(dump(value), indent=2, sort_keys=False))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


@dataclass(frozen=True)
class Col:
    """A table column: ``ref`` names the kind of object an id points to (shown by name, the id in
    an extra column with ``--wide``); ``wide`` columns appear only with ``--wide``."""

    header: str
    attr: str
    fmt: Callable[[Any], Any] | None = None
    ref: str | None = None
    wide: bool = False


Column = tuple[str, str] | tuple[str, str, Callable[[Any], Any]] | Col


def short(value: Any) -> str:
    """An id's first 8 characters: every command accepts a unique prefix of at least 4."""
    return str(value)[:8] if value else "-"


# fields of views that hold the id of another object, and the kind of that object
REF_FIELDS = {
    "machine_id": "machine",
    "repository_id": "repository",
    "distribution_repository_id": "repository",
    "credential_id": "credential",
    "job_id": "job",
    "protection_group_id": "group",
    "restore_point_id": "restore-point",
}
SIZE_FIELDS = frozenset({"size", "bytes_read", "bytes_transferred"})


class Names:
    """Names for the ids views carry, each kind fetched once per command and only when needed."""

    def __init__(self, c: Client) -> None:
        self._c = c
        self._maps: dict[str, dict[str, str]] = {}

    def all(self, kind: str) -> dict[str, str]:
        """Every object of ``kind`` (machine, repository, credential, job, group): id → name."""
        lister: dict[str, Callable[..., Page[Any]]] = {
            "machine": self._c.list_machines,
            "repository": self._c.list_repositories,
            "credential": self._c.list_credentials,
            "job": self._c.list_jobs,
            "group": self._c.list_groups,
        }
        names: dict[str, str] = {}
        if kind not in lister:
            return names
        offset = 0
        while True:
            page = lister[kind](limit=500, offset=offset)
            names.update({item.id: item.name for item in page.items})
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return names

    def name(self, kind: str, value: Any) -> str:
        if not value:
            return "-"
        if kind not in self._maps:
            self._maps[kind] = self.all(kind)
        return self._maps[kind].get(str(value)) or short(value)


def _columns(columns: Sequence[Column], wide: bool) -> list[Col]:
    result: list[Col] = []
    for column in columns:
        col = column if isinstance(column, Col) else Col(*column)
        if col.wide and not wide:
            continue
        result.append(col)
        if col.ref and wide:
            result.append(Col(f"{col.header} id", col.attr))
    return result


def print_table(
    rows: Sequence[BaseModel],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    names: Names | None = None,
    wide: bool = False,
) -> None:
    """A Rich table that fits the console (long cells fold); ids of ``ref`` columns become names."""
    table = Table(title=title, show_lines=False)
    cols = _columns(columns, wide)
    for col in cols:
        table.add_column(col.header, overflow="fold")
    for row in rows:
        cells = []
        for col in cols:
            value = getattr(row, col.attr, None)
            if col.ref and names is not None:
                value = names.name(col.ref, value)
            cells.append(cell(col.fmt(value) if col.fmt else value))
        table.add_row(*cells)
    console().print(table)


def render_page(
    page: Page[Any],
    as_json: bool,
    columns: Sequence[Column],
    *,
    title: str,
    names: Names | None = None,
    wide: bool = False,
) -> None:
    if as_json:
        print_json(page)
        return
    print_table(page.items, columns, title=title, names=names, wide=wide)
    if page.total > page.offset + len(page.items):
        console().print(
            f"[dim]{len(page.items)} of {page.total}; next page: --offset {page.offset + page.limit}[/dim]"
        )


def render_object(
    obj: BaseModel,
    as_json: bool,
    *,
    title: str,
    skip: Sequence[str] = (),
    names: Names | None = None,
) -> None:
    """One object as key/value lines (or JSON); ids of other objects with their names, sizes in units."""
    if as_json:
        print_json(obj)
        return
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in obj:
        if name in skip:
            continue
        text = cell(value)
        if name in SIZE_FIELDS and isinstance(value, int):
            text = f"{human_size(value)} ({value} bytes)"
        elif names is not None and name in REF_FIELDS and value:
            text = f"{names.name(REF_FIELDS[name], value)} ({value})"
        table.add_row(name, text)
    console().print(table)


def success(message: str) -> None:
    console().print(f"[green]✓[/green] {message}")


def done(message: str, as_json: bool, **fields: Any) -> None:
    """A command that changes something without returning an object: a line, or ``{"ok": true, …}``."""
    if as_json:
        print_json({"ok": True, **fields})
    else:
        success(message)


def parse_pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    """``key=value`` options into a dict."""
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{what} {item!r} is not key=value")
        result[key.strip()] = value
    return result


def parse_options(values: Sequence[str] | None, what: str = "--option") -> dict[str, Any]:
    """``key=value`` options whose values may be JSON objects or arrays (``notifications={…}``);
    scalars stay text for the server's typed model to read (``10MiB``, ``90m``, ``4``)."""
    result: dict[str, Any] = {}
    for key, value in parse_pairs(values, what).items():
        if value.lstrip().startswith(("{", "[")):
            try:
                result[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(
                    f"{what} {key}: the value is not valid JSON: {exc.msg}",
                    hint=f"""e.g. {what} '{key}={{"webhook": {{"url": "https://…"}}}}'""",
                ) from exc
        else:
            result[key] = value
    return result


def parse_json(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{what} is not valid JSON: {exc.msg}", hint=f"e.g. --{what} '{{...}}'"
        ) from exc


# --- errors ------------------------------------------------------------------------------------


def render_error(exc: CloudkeepError) -> int:
    """Print ``error: <message>`` and the hint (no traceback); returns the exit code."""
    err = console(stderr=True)
    # soft_wrap: one line however long (a list of known options), for logs and `grep error:`
    err.print(
        f"[bold red]error:[/bold red] {escape(exc.message)}", highlight=False, markup=True, soft_wrap=True
    )
    if exc.hint:
        err.print(f"[yellow]hint:[/yellow] {escape(exc.hint)}", highlight=False)
    return EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_ERROR


class CloudkeepGroup(TyperGroup):
    """The root command group: turns expected failures into a one-line message and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CloudkeepError as exc:
            raise typer.Exit(render_error(exc)) from None
        except ValidationError as exc:  # a request body built from flags: bad input, not a bug
            raise typer.Exit(render_error(ConfigurationError(describe(exc, "")))) from None


# --- watching sessions -------------------------------------------------------------------------

SUCCESS_STATES = ("success", "warning")


def exit_code_for(state: str) -> int:
    """Exit code of a command that waited for a session: `job start x || alert` alerts on partial runs."""
    if state == "success":
        return 0
    return EXIT_PARTIAL if state == "warning" else EXIT_ERROR


def watch(c: Client, session_id: str, *, as_json: bool = False, poll: float = 0.5) -> SessionDetail:
    """Follow a session with a live progress bar per task until it ends; returns the final state.

    Ctrl-C stops watching, not the session (a server keeps running it; `session stop` stops it).
    """
    try:
        return _watch(c, session_id, as_json=as_json, poll=poll)
    except KeyboardInterrupt:
        where = "in this process, which now exits" if c.embedded else "on the server"
        console(stderr=True).print(
            f"stopped watching session {session_id} (it ran {where}); "
            f"see `cloudkeep session show {session_id}`"
        )
        raise typer.Exit(130) from None


def _watch(c: Client, session_id: str, *, as_json: bool, poll: float) -> SessionDetail:
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    final: SessionDetail | None = None
    if as_json:
        for detail in c.watch_session(session_id, poll=poll):
            final = detail
    else:
        bars: dict[str, TaskID] = {}
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console(), transient=False) as progress:
            overall = progress.add_task(f"session {session_id[:8]}", total=1.0, state="pending")
            for detail in c.watch_session(session_id, poll=poll):
                final = detail
                done = sum(t.progress for t in detail.tasks) / len(detail.tasks) if detail.tasks else 0.0
                if detail.task_total > len(detail.tasks):  # one page shown: count every task's end
                    ended = sum(
                        n for state, n in detail.task_counts.items() if state not in ("pending", "running")
                    )
                    done = ended / detail.task_total
                if detail.state in ("success", "warning", "failed", "stopped"):
                    done = 1.0
                progress.update(overall, completed=done, state=detail.state)
                for task in detail.tasks:
                    if task.id not in bars:
                        label = task.machine_name or task.machine_id[:12]
                        bars[task.id] = progress.add_task(f"  {label}", total=1.0, state=task.state)
                    progress.update(bars[task.id], completed=task.progress, state=task.state)
    if final is None:
        final = c.get_session(session_id)
    if as_json:
        print_json(final)
    else:
        colour = "green" if final.state in SUCCESS_STATES else "red"
        reason = f": {final.reason}" if final.reason else ""
        console().print(f"session {final.id} [{colour}]{final.state}[/{colour}]{reason}")
    return final


def follow(c: Client, session_id: str, *, wait: bool, as_json: bool) -> None:
    """After starting a long operation: watch it (always in embedded mode, where it runs in-process)."""
    if not wait and not c.embedded:
        if as_json:
            print_json({"session_id": session_id})
        else:
            console().print(f"started session {session_id} (watch: cloudkeep session watch {session_id})")
        return
    final = watch(c, session_id, as_json=as_json)
    if code := exit_code_for(final.state):
        raise typer.Exit(code)


YES_OPTION = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="Say what would be done, change nothing.")


def confirm(question: str, *, yes: bool) -> None:
    """Ask before a destructive step; without a terminal, only ``--yes`` may go on (exit 2)."""
    if yes:
        return
    if not sys.stdin.isatty():
        console(stderr=True).print(f"{escape(question)} Refused without a terminal: pass --yes.")
        raise typer.Exit(EXIT_USAGE)
    if not typer.confirm(question, default=False):
        raise typer.Exit(EXIT_USAGE)
