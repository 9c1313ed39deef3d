"""The README's first command through the real `cloudkeep` entry point: the whole flow, embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkeep.quickstart import MACHINES, PROBE_FILE, QuickstartLayout, probe_content

CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")


def _run(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    return subprocess.run(
        [str(CLOUDKEEP), "--home", str(home), *args],
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

        second = _run(tmp_path, "quickstart")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "upload:skipped" in second.stdout and "install:skipped" in second.stdout  # nothing reinstalled
        assert "the machine now has generation 2" in second.stdout
    finally:
        cleaned = _run(tmp_path, "quickstart", "--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not layout.home.exists()


def test_quickstart_clean_without_a_lab_says_so(tmp_path: Path) -> None:
    result = _run(tmp_path, "quickstart", "--clean")
    assert result.returncode == 0
    assert "nothing to clean" in result.stdout
