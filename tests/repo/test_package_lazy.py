"""``cloudkeep.repo`` imports an operation's module only when its name is asked for: a backup's worker
process imports the package first and needs none of them (~30 ms of CPU at each worker's start)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import cloudkeep.repo as package


def _modules_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [m for m in json.loads(out.stdout) if m.startswith("cloudkeep.repo.")]


def test_a_worker_imports_none_of_the_operations() -> None:
    for worker in ("procworker", "restoreworker"):
        loaded = _modules_after(f"import cloudkeep.repo.{worker}")
        assert f"cloudkeep.repo.{worker}" in loaded
        for operation in ("archiver", "restorer", "checker", "retention", "browse", "volume"):
            assert f"cloudkeep.repo.{operation}" not in loaded, (worker, operation)


def test_every_exported_name_is_its_modules_object() -> None:
    for name in package.__all__:
        value = getattr(package, name)
        if name in package._MODULES:
            module = importlib.import_module(f"cloudkeep.repo.{package._MODULES[name]}")
            assert getattr(module, name) is value, name
    assert set(package._MODULES) == set(package.__all__) - {"list_snapshots", "prune", "PruneResult"}
    assert callable(package.prune) and package.prune.__module__ == "cloudkeep.repo.prune"  # not the module
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no_such_name"):  # an unknown name gets no value
        package.no_such_name  # noqa: B018
