"""Can this machine run the agent? Decided from the probe's facts, with a reason an operator can act on.

The machine side needs CPython 3.9 or later, an architecture the bundle carries wheels for, and
glibc 2.28 or later (the cryptography wheels are ``manylinux_2_28``). A machine that falls short
is skipped with what to install; a group with ``install_python`` on lets the installer add
Python through the OS package manager instead (``python_install_command``). Windows machines are
skipped: there is no Windows service host yet, so an install could only fail after uploading.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

MIN_PYTHON = (3, 9)
MIN_GLIBC = (2, 28)
ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def windows_reason(powershell_version: object) -> str:
    return (
        "Windows machines are not supported yet: cloudkeep has no Windows service host "
        f"(PowerShell {powershell_version} found); protect Linux machines, or back this one up another way"
    )


_RHEL_LIKE = {"rhel", "centos", "rocky", "almalinux", "ol", "fedora"}
_DEBIAN_LIKE = {"debian", "ubuntu", "raspbian", "linuxmint"}
_SUSE_LIKE = {"sles", "sled", "opensuse-leap", "opensuse-tumbleweed", "opensuse"}


def version_tuple(text: object) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in str(text).split(".")[:3])
    except ValueError:
        return None


def _major(facts: Mapping[str, Any]) -> int | None:
    version = version_tuple(str(facts.get("os_version", "")).split(".")[0])
    return version[0] if version else None


def pick_python(facts: Mapping[str, Any]) -> tuple[str, str] | None:
    """(path, version) of the interpreter to install with: the default ``python3`` when new enough,
    else the newest suitable one found (``python3.11`` beside an old ``python3``), else None."""
    default, path = facts.get("python"), facts.get("python_path")
    listed = [p for p in facts.get("pythons") or [] if isinstance(p, Mapping)]
    if path and (v := version_tuple(default)) and v[:2] >= MIN_PYTHON:
        full = next((str(p.get("version")) for p in listed if p.get("path") == path), str(default))
        return str(path), full
    found = [
        (v, p["path"], p["version"])
        for p in listed
        if (v := version_tuple(p.get("version"))) and v[:2] >= MIN_PYTHON
    ]
    if not found:
        return None
    _, best_path, best_version = max(found)
    return str(best_path), str(best_version)


def package_manager_install(facts: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """(package manager, argv) that installs a suitable Python on this distribution, or None."""
    os_id = str(facts.get("os", "")).lower()
    major = _major(facts)
    if os_id in _DEBIAN_LIKE:
        return "apt", ["apt-get", "install", "-y", "-q", "python3", "python3-venv"]
    if os_id == "amzn":
        if major == 2:  # Amazon Linux 2: python3 is 3.7; its glibc 2.26 stops the agent anyway
            return "yum", ["yum", "install", "-y", "python3.11"]
        return "dnf", ["dnf", "install", "-y", "python3"]
    if os_id in _RHEL_LIKE:
        if major is not None and major <= 7:
            return "yum", ["yum", "install", "-y", "python3"]
        package = "python3.11" if major == 8 else "python3"
        return "dnf", ["dnf", "install", "-y", package]
    if os_id in _SUSE_LIKE:
        return "zypper", ["zypper", "--non-interactive", "install", "python311"]
    return None


def python_hint(facts: Mapping[str, Any]) -> str:
    command = package_manager_install(facts)
    if command is None:
        return "install Python 3.9 or later with the distribution's package manager"
    return f"install python3 ({shlex.join(command[1])})"


def linux_blocker(facts: Mapping[str, Any], *, install_python: bool) -> str | None:
    """Why this Linux machine cannot run the agent, or None when it can (maybe after adding Python)."""
    arch = facts.get("arch")
    if arch and str(arch) not in ARCHITECTURES:
        return f"architecture {arch} is not supported: the bundle carries wheels for x86_64 and aarch64 only"
    if facts.get("libc") == "musl":
        return (
            "musl libc (e.g. Alpine) cannot load the bundle's manylinux wheels: glibc 2.28 or later is needed"
        )
    glibc = version_tuple(facts.get("glibc", ""))
    if facts.get("glibc") and (glibc is None or glibc[:2] < MIN_GLIBC):
        return (
            f"glibc {facts.get('glibc')} < 2.28 needed by the cryptography wheels: upgrade the "
            "distribution (e.g. CentOS 7 / Amazon Linux 2 → Rocky 8+ / Amazon Linux 2023)"
        )
    if pick_python(facts) is None:
        if install_python and package_manager_install(facts) is not None:
            return None
        listed = [p for p in facts.get("pythons") or [] if isinstance(p, Mapping)]
        found = ", ".join(f"{p.get('version')} at {p.get('path')}" for p in listed) or "none"
        extra = "" if install_python else ", or turn on install_python for the protection group"
        return f"no Python ≥ 3.9 on the machine (found {found}): {python_hint(facts)}{extra}"
    return None


def python_install_script(facts: Mapping[str, Any]) -> str:
    """Shell lines run before the installer when the group may add Python and none is suitable.

    Fails with a ``CLOUDKEEP-ERROR`` naming the command (no repository reachable is the usual cause
    on a machine in a private subnet).
    """
    found = package_manager_install(facts)
    if found is None:
        return ""
    manager, argv = found
    command = shlex.join(argv)
    refresh = {"apt": "apt-get update -q", "dnf": "", "yum": "", "zypper": "zypper --non-interactive refresh"}
    first = f'{refresh[manager]} >>"$PMLOG" 2>&1 && ' if refresh[manager] else ""
    env = "DEBIAN_FRONTEND=noninteractive " if manager == "apt" else ""
    return f"""PMLOG="$STAGE/install-python.log"
if ! {env}{command} >"$PMLOG" 2>&1 && ! {{ {first}{env}{command} >>"$PMLOG" 2>&1; }}; then
    echo "CLOUDKEEP-ERROR could not install Python with '{command}' (no package repository reachable?):" \\
        "$(tail -n 3 "$PMLOG" | tr '\\n' ' ')"
    exit 12
fi
"""
