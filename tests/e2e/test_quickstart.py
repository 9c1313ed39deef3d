"""The README's first command through the real `cloudkeep` entry point: the whole flow, embedded default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkeep.cli.quickstart import cloudkeep_command, quickstart_layout
from cloudkeep.quickstart import MACHINES, PROBE_FILE, QuickstartLayout, probe_content

CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")


def _run(home: Path | None, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The installed script; ``home`` None: no --home (the printed CLOUDKEEP_HOME is in ``args``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    if home is None:
        env["CLOUDKEEP_HOME"], args = args[0], args[1:]
    return subprocess.run(
        [str(CLOUDKEEP), *(["--home", str(home)] if home else []), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "COLUMNS": "200"},
    )


def _live_pids(layout: QuickstartLayout) -> set[int]:
    pids: set[int] = set()
    for pidfile in layout.lab_dir.glob("machines/*/root/var/run/cloudkeep/*.pid"):
        pid = int(pidfile.read_text().strip())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        pids.add(pid)
    return pids


@pytest.mark.slow
def test_quickstart_backs_up_restores_and_is_idempotent(tmp_path: Path) -> None:
    layout = QuickstartLayout(tmp_path / "quickstart")
    printed_home = ""
    try:
        first = _run(tmp_path, "quickstart")
        assert first.returncode == 0, first.stdout + first.stderr
        for expected in ("deployed", "Backup (first run", "incremental", "identical to what was backed up"):
            assert expected in first.stdout
        restored = list((layout.lab_dir / "machines/web-1/root/restore/quickstart").rglob("app.conf"))
        assert restored and restored[0].read_bytes() == probe_content("web-1", 0)
        live = (layout.lab_dir / "machines/web-1/root" / PROBE_FILE.lstrip("/")).read_bytes()
        assert live == probe_content("web-1", 1)
        assert len(_live_pids(layout)) == 3 * len(MACHINES)  # message service, agent, transport each
        printed_home = _next_steps_work_as_printed(first.stdout, layout)

        second = _run(tmp_path, "quickstart")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "upload:skipped" in second.stdout and "install:skipped" in second.stdout  # nothing reinstalled
        assert "the machine now has generation 2" in second.stdout
    finally:
        # as printed: `export CLOUDKEEP_HOME=…` then `cloudkeep quickstart --clean` (no --home)
        cleaned = _run(None, printed_home or str(tmp_path), "quickstart", "--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "nothing to clean" not in cleaned.stdout and not layout.home.exists()
    assert not _live_pids(layout)  # its 9 daemons were stopped


def _next_steps_work_as_printed(out: str, layout: QuickstartLayout) -> str:
    """The summary's `export CLOUDKEEP_HOME=…` and commands run in a shell as printed; its 8-character
    restore point ids are accepted. Returns the printed home."""
    home = re.search(r"export CLOUDKEEP_HOME=(\S+)", out)
    assert home and Path(home.group(1)) == layout.home
    line = next(line.strip() for line in out.splitlines() if " machine list;" in line)
    assert Path(line.split()[0]).resolve() == CLOUDKEEP.resolve()  # off PATH: its full path
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    script = f"export CLOUDKEEP_HOME={home.group(1)}; {line}"
    shell = subprocess.run(
        ["bash", "-e", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "COLUMNS": "200"},
    )
    assert shell.returncode == 0, shell.stdout + shell.stderr
    assert "web-1" in shell.stdout and "success" in shell.stdout
    table = out[out.index("Restore points") :]
    short_id = re.search(r"│ ([0-9a-f]{8}) +│", table)
    assert short_id, table
    shown = _run(None, home.group(1), "restore-point", "show", short_id.group(1), "--json")
    assert shown.returncode == 0 and short_id.group(1) in shown.stdout, shown.stderr
    return home.group(1)


def test_quickstart_clean_without_a_lab_says_so(tmp_path: Path) -> None:
    result = _run(tmp_path, "quickstart", "--clean")
    assert result.returncode == 0
    assert "nothing to clean" in result.stdout


def test_clean_finds_the_quickstart_from_its_printed_home(tmp_path: Path) -> None:
    """The summary prints the quickstart's own home; given as CLOUDKEEP_HOME it is found, not nested."""
    home = tmp_path / "quickstart"
    assert quickstart_layout(tmp_path).home == home  # the default: a quickstart beside a real server
    home.mkdir()
    QuickstartLayout(home).marker.write_text("{}")
    assert quickstart_layout(home).home == home
    result = _run(None, str(home), "quickstart", "--clean")
    assert result.returncode == 0, result.stderr
    assert f"removed {home}" in result.stdout and not home.exists()


def test_printed_command_is_runnable() -> None:
    """`make quickstart` installs cloudkeep into .venv/bin only: off PATH, the full path is printed."""
    command = cloudkeep_command()
    assert command == "cloudkeep" or Path(command) == CLOUDKEEP
    assert subprocess.run([command, "version"], capture_output=True, check=False).returncode == 0
