"""`cloudkeep quickstart`: the whole product on the embedded default, in one command.

Three simulated machines are discovered and get the machine-side services deployed (every step
shown), a backup job runs with live progress, files change, the job runs again (incremental), and
a file is restored from the first restore point and verified byte for byte.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import typer
from rich.rule import Rule
from rich.table import Table

from cloudkeep.cli.common import (
    SUCCESS_STATES,
    Col,
    console,
    human_size,
    print_table,
    short,
    state,
    success,
    timestamp,
    watch,
)
from cloudkeep.quickstart import (
    GROUP,
    JOB,
    MACHINES,
    PROBE_FILE,
    QuickstartError,
    QuickstartLayout,
    clean,
    ensure_lab,
    load_state,
    mutate_machine,
    probe_content,
    save_state,
)
from cloudkeep.server.client import Client, open_client
from cloudkeep.server.services.schemas import FileRestoreRequest

app = typer.Typer()


def quickstart_layout(home: Path) -> QuickstartLayout:
    """The quickstart under ``home``, or ``home`` itself when it is one: the summary prints
    ``export CLOUDKEEP_HOME=<its home>``, and ``quickstart --clean`` must find it from there too."""
    itself = QuickstartLayout(home)
    if itself.marker.exists() or itself.password_file.exists():
        return itself
    return QuickstartLayout(home / "quickstart")


def cloudkeep_command() -> str:
    """How to run cloudkeep from the user's shell: ``cloudkeep`` when that is on PATH and is this
    one, else this one's full path (``make quickstart`` installs it into ``.venv/bin`` only)."""
    script = Path(sys.executable).with_name("cloudkeep")
    found = shutil.which("cloudkeep")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "cloudkeep"
    return str(script)


def _step(title: str) -> None:
    console().print(Rule(f"[bold]{title}"))


def _require(final_state: str, what: str) -> None:
    if final_state not in SUCCESS_STATES:
        raise QuickstartError(f"{what} ended {final_state}", hint="see `cloudkeep session show <id>` above")


def _show_deployment(c: Client) -> None:
    """Each machine's recorded deployment steps, as the rescan left them."""
    table = Table(title="Deployment")
    for header in ("machine", "status", "deployment steps", "reason"):
        table.add_column(header)
    for view in c.list_machines(group=GROUP).items:
        steps = " → ".join(f"{s.step}:{s.outcome}" for s in c.get_machine(view.id).steps[-7:]) or "-"
        table.add_row(view.name, view.status, steps, view.status_reason or "")
    console().print(table)


def _machine_names(c: Client) -> dict[str, str]:
    return {m.id: m.name for m in c.list_machines(group=GROUP).items}


def _backup(c: Client, label: str) -> None:
    _step(label)
    session_id = c.start_job(JOB)
    final = watch(c, session_id)
    _require(final.state, label)
    names = _machine_names(c)
    for task in sorted(final.tasks, key=lambda t: names.get(t.machine_id, t.machine_id)):
        stats = task.stats
        console().print(
            f"  {names.get(task.machine_id, task.machine_id[:12])}: read {human_size(task.bytes_read)},"
            f" stored {human_size(task.bytes_transferred)}, {task.files} files,"
            f" dedup x{stats.get('dedup_ratio', 0) or 0:.1f},"
            f" compression x{stats.get('compression_ratio', 0) or 0:.1f}"
        )


def _restore_and_verify(c: Client, layout: QuickstartLayout, generation: int) -> Path:
    """Restore the probe file from the oldest restore point of web-1 and check it is the old content."""
    machine = next(m for m in c.list_machines(group=GROUP).items if m.name == MACHINES[0])
    points = sorted(c.list_restore_points(machine=machine.id).items, key=lambda p: p.created_at)
    if not points:
        raise QuickstartError(f"no restore point for {machine.name}")
    oldest = points[0]
    _step(
        f"Restore {PROBE_FILE} on {machine.name} from restore point {oldest.snapshot_id[:8]}"
        f" ({timestamp(oldest.created_at)})"
    )
    session_id = c.restore_files(
        oldest.id,
        FileRestoreRequest(paths=[PROBE_FILE], target_path=layout.restore_dir, target_machine=machine.id),
    )
    final = watch(c, session_id)
    _require(final.state, "the restore")
    root = layout.lab_dir / "machines" / machine.name / "root"
    candidates = [
        p for p in (root / layout.restore_dir.lstrip("/")).rglob(Path(PROBE_FILE).name) if p.is_file()
    ]
    if not candidates:
        raise QuickstartError(
            f"the restore reported success but {PROBE_FILE} is not under {layout.restore_dir}"
        )
    restored = max(candidates, key=lambda p: p.stat().st_mtime_ns)
    first_generation = load_state(layout)["first_backup_generation"]
    expected = probe_content(machine.name, first_generation)
    if restored.read_bytes() != expected:
        raise QuickstartError(f"restored {restored} does not match the backed-up content")
    current = (root / PROBE_FILE.lstrip("/")).read_bytes()
    success(
        f"restored {PROBE_FILE} as it was at the first backup (generation {first_generation}, the machine"
        f" now has generation {generation}): {len(expected)} bytes, identical to what was backed up"
        f" ({'and different from' if current != expected else 'same as'} the live file)"
    )
    return restored


def _summary(c: Client, layout: QuickstartLayout, started: float) -> None:
    _step("Summary")
    print_table(
        c.list_machines(group=GROUP).items,
        [("machine", "name"), ("platform", "platform"), ("status", "status"), ("agent", "agent_version")],
        title="Machines",
    )
    print_table(
        c.list_sessions(limit=10).items,
        [
            Col("session", "id", short),
            ("kind", "kind"),
            ("state", "state"),
            ("started", "started_at"),
            ("ended", "ended_at"),
        ],
        title="Sessions (newest first)",
    )
    names = _machine_names(c)
    print_table(
        c.list_restore_points(limit=20).items,
        [
            Col("restore point", "snapshot_id", short),
            ("machine", "machine_id", lambda v: names.get(str(v), short(v))),
            ("created", "created_at"),
            ("files", "files"),
            ("size", "size", human_size),
        ],
        title="Restore points",
    )
    out = console()
    out.print(f"\nDone in {time.monotonic() - started:.0f}s. Where everything lives:")
    out.print(f"  server state (database, master key):  {layout.home}")
    out.print(f"  lab machines (each a folder as root):  {layout.lab_dir / 'machines'}")
    out.print(f"  backup repository (local folder):      {layout.repository_dir}")
    out.print(f"  distribution repository (installers):  {layout.distribution_dir}")
    out.print(f"  repository password (keep it safe!):   {layout.password_file}")
    command = cloudkeep_command()
    out.print("\nExplore it (the ids above are accepted as printed):")
    if command != "cloudkeep":
        out.print(f"  source {Path(command).parent / 'activate'}   # or run {command} as printed below")
    out.print(f"  export CLOUDKEEP_HOME={layout.home}", soft_wrap=True)
    out.print(
        f"  {command} machine list; {command} session list; {command} restore-point list;"
        f" {command} job start {JOB}",
        soft_wrap=True,
    )
    out.print(f"Remove it:  {command} quickstart --clean", soft_wrap=True)


@app.command("quickstart")
def quickstart(
    ctx: typer.Context,
    clean_lab: bool = typer.Option(
        False, "--clean", help="Stop the lab's services and remove the quickstart."
    ),
) -> None:
    """Run the whole flow on the embedded default: discover, deploy, back up, change, back up, restore."""
    layout = quickstart_layout(state(ctx).settings.home)
    if clean_lab:
        removed = clean(layout)
        success(f"removed {', '.join(removed)}" if removed else "nothing to clean")
        return
    started = time.monotonic()
    settings = state(ctx).settings.model_copy(update={"home": layout.home, "api_url": None})
    _step("Lab: three simulated machines, a local repository, a distribution repository")
    with open_client(settings) as c:
        lab = ensure_lab(c, layout)
        console().print(f"  machines: {', '.join(MACHINES)} under {layout.lab_dir / 'machines'}")
        _step(f"Rescan {GROUP}: discover machines, deploy Cloud Message Service, Agent, Transport Service")
        final = watch(c, c.rescan(GROUP))
        _show_deployment(c)
        _require(final.state, "the rescan")
        generation = lab.generation
        first_run = "first_backup_generation" not in load_state(layout)
        _backup(c, "Backup (first run: everything is new)" if first_run else "Backup (the lab exists)")
        if first_run:
            save_state(layout, first_backup_generation=generation)
        generation += 1
        _step(f"Change files on every machine (generation {generation})")
        for name in MACHINES:
            mutate_machine(layout.lab_dir / "machines" / name / "root", name, generation)
        console().print("  edited a config, appended to a log, rewrote 4 KiB inside a 2 MiB file,")
        console().print("  added one document and deleted another")
        save_state(layout, generation=generation)
        _backup(c, "Backup again (incremental: only changed chunks are uploaded)")
        _restore_and_verify(c, layout, generation)
        _summary(c, layout, started)
