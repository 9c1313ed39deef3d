"""The machine side on every CPython 3.9-3.13 found here, installed the way a machine installs it.

One bundle is built with the real wheelhouse (both architectures); for each interpreter found,
``install.sh`` builds a fresh venv offline from the bundle's wheels (``--no-start``: no services),
then ``python -m cloudkeep.machine.smoke`` imports every machine module and round-trips a backup.
A version is skipped only when its interpreter is absent; the summary test prints which ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudkeep.machine.bundle import build_bundle
from cloudkeep.machine.bundle.manifest import public_key_b64
from tests.machine.pythons import MACHINE_PYTHONS, find_pythons

pytestmark = pytest.mark.slow
KEY = Ed25519PrivateKey.generate()
FOUND = {p.version: p for p in find_pythons()}
RAN: dict[str, dict[str, object]] = {}
# Each cloud SDK extra is installed and imported on one interpreter (the oldest and the newest: where
# wheels and markers differ most); the others install the local set, which keeps the suite's time down.
CLOUD = {(3, 9): "aws", (3, 10): "local", (3, 11): "local", (3, 12): "local", (3, 13): "azure"}


@pytest.fixture(scope="module")
def wheel_bundle(tmp_path_factory: pytest.TempPathFactory, machine_wheelhouse: Path) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    manifest = build_bundle(folder, version="0.1.0", signing_key=KEY, wheelhouse=machine_wheelhouse)
    wheels = [name for name in manifest.platforms["linux"].files if name.startswith("wheels/")]
    for arch in ("x86_64", "aarch64"):
        mine = [w for w in wheels if w.startswith(f"wheels/{arch}/")]
        assert any("/cryptography-" in w for w in mine) and any("/pip-" in w for w in mine)
        for tag in ("cp39", "cp310", "cp311", "cp312", "cp313"):  # binary deps for every Python
            assert any("/zstandard-" in w and f"-{tag}-" in w for w in mine), (arch, tag)
        assert not any(f"/{name}-" in w for w in mine for name in ("fastapi", "SQLAlchemy", "sqlalchemy"))
    return folder


@pytest.mark.parametrize("version", MACHINE_PYTHONS, ids=lambda v: f"cp{v[0]}{v[1]}")
def test_machine_side_installs_offline_and_runs(
    version: tuple[int, int], wheel_bundle: Path, tmp_path: Path
) -> None:
    python = FOUND.get(version)
    if python is None:
        pytest.skip(f"CPython {version[0]}.{version[1]} is not installed here")
    kind = CLOUD[version]
    config = tmp_path / "machine.json"
    config.write_text(
        json.dumps(
            {
                "machine_id": "m-1",
                "server_id": "s-1",
                "server_public_key": public_key_b64(KEY),
                "agent_queue": {"kind": kind},
                "server_queue": {"kind": kind},
            }
        )
    )
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(CLOUDKEEP_MACHINE_ROOT=str(root), CLOUDKEEP_INSTALL_PYTHON=str(python.path))
    started = time.monotonic()
    install = subprocess.run(
        ["sh", str(wheel_bundle / "install.sh"), "--config", str(config), "--no-start"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert install.returncode == 0, install.stdout + install.stderr
    assert "CLOUDKEEP-INSTALLED version=0.1.0 changed=yes services=not-started" in install.stdout
    venv_python = root / "opt/cloudkeep/venv/bin/python"
    smoke = subprocess.run(
        [str(venv_python), "-m", "cloudkeep.machine.smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    report = json.loads(smoke.stdout.strip().splitlines()[-1])
    assert report["python"].startswith(f"{version[0]}.{version[1]}.") and report["files"] == 2
    # Only the machine's own cloud SDK is installed: the other cloud's modules are the skipped ones.
    skipped = set(report["skipped"])
    for cloud in ("aws", "azure"):
        modules = {f"cloudkeep.providers.{cloud}.queues", f"cloudkeep.providers.{cloud}.storage"}
        assert (modules & skipped == set()) if cloud == kind else (modules <= skipped), (cloud, skipped)
    listing = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import importlib.metadata as m; print([d.metadata['Name'].lower() for d in m.distributions()])",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    assert "fastapi" not in listing and "sqlalchemy" not in listing and "typer" not in listing
    RAN[f"{version[0]}.{version[1]}"] = {"install_seconds": round(seconds, 1), "cloud": kind}


def test_zz_report_which_pythons_ran() -> None:
    """Printed with ``-s``: which interpreters ran, and how long each offline install took."""
    print("machine side ran on:", json.dumps(RAN, sort_keys=True))
    assert RAN, "no CPython 3.9-3.13 ran the machine side"
