"""The wheelhouse: which wheels a bundle takes, a filled cache reused offline, and install.sh's
answers when the bundle cannot serve this machine. Fast: no download, a real venv only in the
fallback test (pip from the cached wheelhouse, --no-index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudkeep.errors import ConfigurationError
from cloudkeep.machine.bundle import build_bundle
from cloudkeep.machine.bundle import wheelhouse as wh
from cloudkeep.machine.bundle.manifest import public_key_b64

KEY = Ed25519PrivateKey.generate()


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"PK\x05\x06" + b"\0" * 18)


def test_wheels_by_arch_keeps_one_copy_and_refuses_a_foreign_platform(tmp_path: Path) -> None:
    pure, cp39 = "six-1.17.0-py2.py3-none-any.whl", "zstandard-0.25.0-cp39-cp39-manylinux2014_{}.whl"
    for arch in wh.ARCHES:
        _touch(tmp_path / arch / "cp39", pure, cp39.format(arch))
        _touch(tmp_path / arch / "cp313", pure, cp39.format(arch).replace("cp39", "cp313"))
    found = wh.wheels_by_arch(tmp_path)
    assert [p.name for p in found["aarch64"]] == sorted(
        [pure, cp39.format("aarch64"), cp39.format("aarch64").replace("cp39", "cp313")]
    )
    _touch(tmp_path / "x86_64" / "cp39", cp39.format("aarch64"))  # an aarch64 wheel in the x86_64 folder
    with pytest.raises(ConfigurationError, match="is not a wheel for Linux x86_64"):
        wh.wheels_by_arch(tmp_path)
    with pytest.raises(ConfigurationError, match="has no wheels for riscv64"):
        wh.wheels_by_arch(tmp_path / "x86_64" / "..", arches=("aarch64", "riscv64"))


def test_a_filled_wheelhouse_is_reused_without_pip(
    machine_wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real_run = subprocess.run

    def spy(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if "download" in args:
            calls.append(args)
            raise AssertionError("a filled wheelhouse must not download again")
        return real_run(args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(wh.subprocess, "run", spy)
    from tests.machine.pythons import find_pythons

    interpreters = {f"{p.version[0]}.{p.version[1]}": str(p.path) for p in find_pythons()}
    assert wh.fetch_wheelhouse(machine_wheelhouse, interpreters=interpreters) == machine_wheelhouse
    assert calls == []


def test_machine_requirements_are_the_base_and_cloud_sets_only() -> None:
    names = {r.split(">")[0].split("=")[0].split(";")[0] for r in wh.machine_requirements()}
    assert {"cryptography", "pydantic", "boto3", "azure-storage-queue"} <= names
    assert not names & {"fastapi", "sqlalchemy", "uvicorn", "alembic", "typer", "azure-mgmt-compute"}


def _config(tmp_path: Path, kind: str = "local") -> Path:
    path = tmp_path / "machine.json"
    path.write_text(json.dumps({
        "machine_id": "m1", "server_id": "s1", "server_public_key": public_key_b64(KEY),
        "agent_queue": {"kind": kind}, "server_queue": {"kind": kind},
    }))  # fmt: skip
    return path


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "CLOUDKEEP_"))}
    return {**env, "CLOUDKEEP_MACHINE_ROOT": str(root), **extra}


def test_install_sh_without_wheels_or_python_says_what_is_missing(tmp_path: Path) -> None:
    build_bundle(tmp_path / "bundle", version="0.1.0", signing_key=KEY)  # a lab bundle: no wheels
    run = ["sh", str(tmp_path / "bundle/install.sh"), "--config", str(_config(tmp_path)), "--no-start"]
    env = _env(tmp_path / "root", CLOUDKEEP_INSTALL_PYTHON=sys.executable)
    refused = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 3
    assert "carries no wheels for" in refused.stdout and "built without a wheelhouse" in refused.stdout
    assert not (tmp_path / "root/opt/cloudkeep/venv").exists()

    env = _env(tmp_path / "root", CLOUDKEEP_INSTALL_PYTHON="/nonexistent/python3")
    refused = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 3 and "python 3.9 or later is required" in refused.stdout


@pytest.mark.slow
def test_install_sh_falls_back_to_a_private_site_packages_without_venv(
    tmp_path: Path, machine_wheelhouse: Path
) -> None:
    """A python whose ``venv`` module is missing (a wrapper refuses ``-m venv``): pip from the
    bundle installs into $ROOT/opt/cloudkeep/lib and the services' entry point puts it on the path."""
    bundle = tmp_path / "bundle"
    build_bundle(bundle, version="0.1.0", signing_key=KEY, wheelhouse=machine_wheelhouse)
    wrapper = tmp_path / "python3"
    wrapper.write_text(
        f'#!/bin/sh\n[ "$1 $2" != "-m venv" ] || {{ echo "No module named venv" >&2; exit 1; }}\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    root = tmp_path / "root"
    env = _env(root, CLOUDKEEP_INSTALL_PYTHON=str(wrapper))
    done = subprocess.run(
        ["sh", str(bundle / "install.sh"), "--config", str(_config(tmp_path)), "--no-start"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no venv module" in done.stderr and not (root / "opt/cloudkeep/venv").exists()
    assert (root / "opt/cloudkeep/lib/cloudkeep/machine/smoke.py").is_file()
    entry = root / "opt/cloudkeep/bin/cloudkeep-machine"
    assert f"PYTHONPATH='{root}/opt/cloudkeep/lib'" in entry.read_text()
    status = subprocess.run(
        [str(entry), "status", "--config", str(root / "etc/cloudkeep/machine.json")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["version"] == "0.1.0"
