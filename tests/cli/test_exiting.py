"""The process entry points end without the interpreter's last sweep of the heap.

Each runs in a fresh interpreter with an ``atexit`` hook that reports the collector's permanent
generation: exit hooks run before that sweep, and only a frozen heap makes it skip everything.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from tests.support.interpreter import fresh_interpreter

REPORT = "import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count(), flush=True)); "


def _frozen_at_exit(code: str, tmp_path: Path) -> tuple[int, list[str]]:
    lines = fresh_interpreter(REPORT + code, tmp_path, timeout=120)
    frozen = [int(line.split()[1]) for line in lines if line.startswith("frozen ")]
    assert len(frozen) == 1, lines
    return frozen[0], [line for line in lines if not line.startswith("frozen ")]


def test_the_cloudkeep_command_freezes_its_heap_before_exit(tmp_path: Path) -> None:
    frozen, out = _frozen_at_exit(
        "import sys; sys.argv = ['cloudkeep', 'version']; from cloudkeep.cli.main import run; run()", tmp_path
    )
    assert out and out[-1][0].isdigit()  # the command ran: it printed the version
    assert frozen > 1000  # typer, click, the API schema: all of it left to the operating system


def test_the_machine_entry_point_freezes_its_heap_before_exit(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "cloudkeep" / "machine.json"
    config.parent.mkdir(parents=True)
    frozen, out = _frozen_at_exit(
        "import runpy, sys; "
        f"sys.argv = ['cloudkeep.machine', 'keygen', '--config', {str(config)!r}]; "
        "runpy.run_module('cloudkeep.machine', run_name='__main__')",
        tmp_path,
    )
    assert out and out[-1].startswith("{")  # keygen printed the public keys
    assert frozen > 1000


def test_the_installed_command_is_the_one_that_freezes() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="cloudkeep")
    assert script.value == "cloudkeep.cli.main:run"
