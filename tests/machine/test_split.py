"""The machine side stands apart from the server: its own dependency set, no server imports, 3.9+.

Each check runs in a fresh interpreter (this one has already imported half the project).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.machine.pythons import find_pythons

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
SERVER_ONLY = {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "croniter", "azure-mgmt-compute"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower()


def _run(python: str, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_base_install_is_the_machine_set_and_the_server_is_an_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {_name(spec) for spec in project["dependencies"]}
    extras = {k: {_name(s) for s in v} for k, v in project["optional-dependencies"].items()}
    assert base == {"pydantic", "zstandard", "cryptography", "blake3", "pyfastcdc", "eval_type_backport"}
    assert project["requires-python"] == ">=3.9"
    assert extras["aws"] == {"boto3"}
    assert {"azure-storage-blob", "azure-storage-queue"} <= extras["azure"]
    assert extras["server"] >= SERVER_ONLY and not SERVER_ONLY & (base | extras["aws"] | extras["azure"])


def test_machine_modules_import_nothing_of_the_server() -> None:
    result = _run(
        sys.executable,
        "import sys, json\n"
        "from cloudkeep.machine.smoke import import_all\n"
        "imported, skipped = import_all()\n"
        "print(json.dumps([len(imported), skipped, sorted(sys.modules)]))\n",
    )
    assert result.returncode == 0, result.stderr
    count, skipped, modules = __import__("json").loads(result.stdout)
    assert count > 50 and skipped == []  # this venv has both cloud SDKs: nothing may be skipped
    assert "cloudkeep.machine.message_service" in modules and "cloudkeep.repo.restorer" in modules
    loaded = [m for m in modules if m.startswith(("cloudkeep.server", "fastapi", "sqlalchemy", "uvicorn"))]
    assert loaded == []


def test_a_machine_daemon_does_not_load_pydantic_settings_or_the_cli() -> None:
    result = _run(
        sys.executable,
        "import sys\nimport cloudkeep.machine.__main__, cloudkeep.machine.message_service\n"
        "heavy = ('typer', 'rich', 'pydantic_settings', 'httpx')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_server_refuses_an_old_python_with_the_reason() -> None:
    old = [p for p in find_pythons() if p.version < (3, 11)]
    if not old:
        pytest.skip("no CPython older than 3.11 on this machine")
    result = _run(str(old[0].path), "import cloudkeep.server")
    assert result.returncode == 1
    assert "the server needs Python 3.11 or later" in result.stderr
    assert f"found {old[0].version[0]}.{old[0].version[1]}" in result.stderr
