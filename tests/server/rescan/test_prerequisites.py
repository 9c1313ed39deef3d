"""Prerequisites from probe facts, the probe's parsing, and the generated Python-install step.

Pure functions over facts as the Linux probe reports them for the distributions people run; the
probe itself runs for real in tests/machine/test_oldroot_bullseye.py (Debian 11 in a chroot).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.providers.base import Platform
from cloudkeep.server.rescan import prerequisites, scripts

BULLSEYE = {
    "os": "debian", "os_version": "11", "arch": "x86_64", "glibc": "2.31", "python": "3.9",
    "python_path": "/usr/bin/python3", "pythons": [{"path": "/usr/bin/python3", "version": "3.9.2"}],
}  # fmt: skip


def facts(**changes: Any) -> dict[str, Any]:
    return {**BULLSEYE, **changes}


def test_a_machine_with_python_39_and_glibc_231_can_run_the_agent() -> None:
    assert prerequisites.linux_blocker(BULLSEYE, install_python=False) is None
    assert prerequisites.pick_python(BULLSEYE) == ("/usr/bin/python3", "3.9.2")


def test_the_newest_suitable_python_beside_an_old_default_is_picked() -> None:
    rhel8 = facts(
        os="rhel", os_version="8.9", glibc="2.28", python="3.6", python_path="/usr/bin/python3",
        pythons=[{"path": "/usr/bin/python3", "version": "3.6.8"},
                 {"path": "/usr/bin/python3.9", "version": "3.9.18"},
                 {"path": "/usr/bin/python3.11", "version": "3.11.5"},
                 {"path": "/usr/libexec/platform-python", "version": "3.6.8"}],
    )  # fmt: skip
    assert prerequisites.pick_python(rhel8) == ("/usr/bin/python3.11", "3.11.5")
    assert prerequisites.linux_blocker(rhel8, install_python=False) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"glibc": "2.17", "os": "centos", "os_version": "7"},
            "glibc 2.17 < 2.28 needed by the cryptography wheels",
        ),
        ({"glibc": "2.26", "os": "amzn", "os_version": "2"}, "glibc 2.26 < 2.28"),
        ({"glibc": None, "libc": "musl", "os": "alpine"}, "musl libc (e.g. Alpine) cannot load"),
        ({"arch": "s390x"}, "architecture s390x is not supported"),
        ({"arch": "armv7l"}, "wheels for x86_64 and aarch64 only"),
    ],
)
def test_machines_that_cannot_load_the_wheels_are_skipped_with_the_reason(
    changes: dict[str, Any], reason: str
) -> None:
    blocker = prerequisites.linux_blocker({k: v for k, v in facts(**changes).items() if v is not None},
                                          install_python=True)  # fmt: skip
    assert blocker is not None and reason in blocker


@pytest.mark.parametrize(
    ("os_id", "version", "command"),
    [
        ("debian", "11", "apt-get install -y -q python3 python3-venv"),
        ("ubuntu", "20.04", "apt-get install -y -q python3 python3-venv"),
        ("rhel", "8.9", "dnf install -y python3.11"),
        ("rocky", "9.3", "dnf install -y python3"),
        ("almalinux", "9", "dnf install -y python3"),
        ("amzn", "2023", "dnf install -y python3"),
        ("centos", "7", "yum install -y python3"),
        ("sles", "15.5", "zypper --non-interactive install python311"),
        ("opensuse-leap", "15.5", "zypper --non-interactive install python311"),
    ],
)
def test_no_python_names_the_package_to_install(os_id: str, version: str, command: str) -> None:
    old = facts(os=os_id, os_version=version, glibc="2.34", python=None, python_path=None,
                pythons=[{"path": "/usr/bin/python3", "version": "3.6.8"}])  # fmt: skip

    blocker = prerequisites.linux_blocker(old, install_python=False)

    assert blocker == (
        f"no Python ≥ 3.9 on the machine (found 3.6.8 at /usr/bin/python3): install python3 ({command}), "
        "or turn on install_python for the protection group"
    )
    assert prerequisites.linux_blocker(old, install_python=True) is None  # the installer adds it
    assert command in prerequisites.python_install_script(old)


def test_an_unknown_distribution_without_python_is_skipped_even_with_install_python() -> None:
    unknown = facts(os="gentoo", python=None, python_path=None, pythons=[])
    blocker = prerequisites.linux_blocker(unknown, install_python=True)
    assert (
        blocker is not None
        and "install Python 3.9 or later with the distribution's package manager" in blocker
    )
    assert prerequisites.python_install_script(unknown) == ""


def test_probe_output_is_parsed_and_bounded() -> None:
    stdout = "\n".join([
        "noise", scripts.PROBE_MARKER, "os=debian", "os_version=11", "glibc=2.31", "arch=x86_64",
        "pythons=/usr/bin/python3:3.9.2 /usr/bin/python3.9:3.9.2 relative:3.9 /x:notaversion "
        "/usr/bin/python3:3.9.2",
        "python=3.9", "python_path=/usr/bin/python3", "service_manager=none", "os_name=" + "x" * 5000,
    ])  # fmt: skip
    probe = scripts.read_probe(Platform.LINUX, 0, stdout, "")
    assert probe.ok
    assert probe.facts["pythons"] == [
        {"path": "/usr/bin/python3", "version": "3.9.2"}, {"path": "/usr/bin/python3.9", "version": "3.9.2"},
    ]  # fmt: skip
    assert len(probe.facts["os_name"]) == scripts.MAX_FACT
    assert probe.facts["glibc"] == "2.31" and probe.facts["service_manager"] == "none"


def test_the_bootstrap_uses_the_picked_python_or_installs_one() -> None:
    common: dict[str, Any] = {
        "version": "1.0",
        "url": "http://127.0.0.1:1/x",
        "sha256": "0" * 64,
        "config": {},
    }
    picked = scripts.linux_bootstrap(**common, python="/usr/bin/python3.11")
    assert "PY=${CLOUDKEEP_PYTHON:-/usr/bin/python3.11}" in picked
    assert 'export CLOUDKEEP_INSTALL_PYTHON="$PY"' in picked
    step = prerequisites.python_install_script(facts(os="rocky", os_version="9"))
    installing = scripts.linux_bootstrap(**common, install_python=step)
    assert installing.index("dnf install -y python3") < installing.index("fetch http")
    assert "for name in python3.13 python3.12" in installing


def test_the_python_install_step_reports_a_failing_package_manager(tmp_path: Path) -> None:
    """The generated step, run with a stand-in apt-get that fails like one without a network."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text('#!/bin/sh\necho "E: Unable to locate package python3" >&2\nexit 100\n')
    (bin_dir / "apt-get").chmod(0o755)
    script = "set -eu\nSTAGE=" + str(tmp_path) + "\n" + prerequisites.python_install_script(BULLSEYE)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 12
    assert done.stdout.startswith(
        "CLOUDKEEP-ERROR could not install Python with 'apt-get install -y -q python3 python3-venv' "
        "(no package repository reachable?): E: Unable to locate package python3"
    )
    log = (tmp_path / "install-python.log").read_text()
    assert log.count("Unable to locate") == 2  # install, then the index refresh before a second try


def test_malformed_facts_read_as_unknown_not_as_a_crash() -> None:
    odd = {
        "os": ["x"],
        "os_version": "eleven",
        "glibc": "two",
        "python": "3.x",
        "pythons": ["/usr/bin/python3:3.9", 7],
    }
    blocker = prerequisites.linux_blocker(odd, install_python=True)
    assert blocker is not None and blocker.startswith("glibc two < 2.28")
    del odd["glibc"]
    assert prerequisites.pick_python(odd) is None
    assert prerequisites.linux_blocker(odd, install_python=True) == (
        "no Python ≥ 3.9 on the machine (found none): install Python 3.9 or later with the distribution's "
        "package manager"
    )
