"""Simulated machines: a folder that stands in for a cloud machine on this host.

A ``SimulatedMachine`` is a directory holding ``machine.json`` (what a cloud API would say about
the machine: id, name, platform, tags, boot mode, Secure Boot, PowerShell version, execution
policy …) and ``root/`` (its file system). Scripts run with ``/bin/sh`` in ``root/`` with
``CLOUDKEEP_MACHINE_ROOT``, ``CLOUDKEEP_MACHINE_ID`` and a ``HOME`` under ``root/``.

A machine whose ``root/`` is a whole operating system (an older distribution's root) sets the
``launcher`` option: an argv prefix that enters ``root/`` (it ends with ``chroot <root>``, maybe
after ``ip netns exec <ns>``). Its scripts then run with the root's own ``/bin/sh`` and see the
machine's paths as ``/`` (no ``CLOUDKEEP_MACHINE_ROOT``), so the installer and the services it
starts live entirely in that root, as on a real machine.

The local provider inventories a ``Lab`` of these; the SSM and Azure Resource Manager test
stand-ins execute their commands in them, so every cloud sees the same kind of machine.

Windows machines are honest about what this host can do:

* if ``pwsh`` is installed, PowerShell scripts run in it;
* otherwise a tiny interpreter understands only probe statements (below);
* anything else fails with "PowerShell cannot run here".

Before either, a ``Restricted`` execution policy refuses the script with the real Windows error
("… cannot be loaded because running scripts is disabled on this system …").

Probe statements the built-in interpreter understands, one per line (``;`` also separates):
``$PSVersionTable.PSVersion`` / ``.ToString()`` (prints the configured version),
``$PSVersionTable.PSVersion.Major`` / ``.Minor``, ``Get-ExecutionPolicy``, ``$env:COMPUTERNAME``,
``Write-Output|Write-Host|echo <literal>``, a bare quoted literal, ``Write-Error <literal>``,
``$ErrorActionPreference = …`` / ``$ProgressPreference = …`` (ignored), ``exit <n>`` and comments.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudkeep.errors import ConfigurationError, ConflictError, NotFoundError
from cloudkeep.providers.base import CommandResult, Machine, Platform, Shell

MACHINE_FILE = "machine.json"
TIMEOUT_EXIT_CODE = 124  # what coreutils `timeout` reports; SSM reports TimedOut
RESTRICTED_ERROR = (
    "File {path} cannot be loaded because running scripts is disabled on this system. For more "
    "information, see about_Execution_Policies at https:/go.microsoft.com/fwlink/?LinkID=135170.\n"
    "    + CategoryInfo          : SecurityError: (:) [], PSSecurityException\n"
    "    + FullyQualifiedErrorId : UnauthorizedAccess\n"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class ScriptOutcome:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False

    def as_result(self, command_id: str | None = None) -> CommandResult:
        return CommandResult(
            self.exit_code, self.stdout, self.stderr, command_id=command_id, timed_out=self.timed_out
        )


class SimulatedMachine:
    """One machine folder. Cheap to construct; reads ``machine.json`` on each access."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not (self.path / MACHINE_FILE).is_file():
            raise NotFoundError(f"{self.path} is not a simulated machine (no {MACHINE_FILE})")

    @property
    def root(self) -> Path:
        """``root/`` in the machine folder, or the ``root`` of ``machine.json`` (only the real host's
        entry, made by ``cloudkeep host protect``, sets it: its root is ``/``)."""
        override = self.info().get("root")
        return Path(override) if override else self.path / "root"

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / MACHINE_FILE).read_text())
        return data

    @property
    def id(self) -> str:
        return str(self.info()["id"])

    @property
    def name(self) -> str:
        return str(self.info()["name"])

    @property
    def platform(self) -> Platform:
        return Platform(self.info()["platform"])

    @contextlib.contextmanager
    def _locked_info(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write ``machine.json`` under a file lock, replacing it atomically."""
        with (self.path / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.info()
            yield data
            tmp = self.path / f".{MACHINE_FILE}.{uuid.uuid4().hex}"
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            os.replace(tmp, self.path / MACHINE_FILE)

    def update(self, **fields: Any) -> None:
        with self._locked_info() as data:
            data.update(fields)

    def set_tag(self, key: str, value: str) -> None:
        with self._locked_info() as data:
            data.setdefault("tags", {})[key] = value

    def remove_tag(self, key: str) -> None:
        with self._locked_info() as data:
            data.setdefault("tags", {}).pop(key, None)

    def describe(self, *, region: str | None = None) -> Machine:
        """The machine as a cloud inventory API would report it."""
        info = self.info()
        return Machine(
            id=str(info["id"]),
            name=str(info["name"]),
            platform=Platform(info["platform"]),
            state=str(info.get("state", "running")),
            region=region or str(info.get("region", "local")),
            tags=dict(info.get("tags", {})),
            boot_mode=info.get("boot_mode"),
            secure_boot=info.get("secure_boot"),
            private_ip=info.get("private_ip", "127.0.0.1"),
            hostname=info.get("hostname", info["name"]),
            extra={"path": str(self.path)},
        )

    # --- running scripts -------------------------------------------------------------------

    def run(self, script: str, *, shell: Shell | None = None, timeout: float = 600.0) -> ScriptOutcome:
        """Run ``script`` as the machine would: ``/bin/sh`` on Linux, PowerShell on Windows."""
        info = self.info()
        if info.get("state", "running") != "running":
            return ScriptOutcome(1, "", f"machine {info['name']} is {info.get('state')}, not running\n")
        if shell is None:
            shell = "powershell" if info["platform"] == Platform.WINDOWS else "shell"
        runs = self.path / "runs"
        runs.mkdir(exist_ok=True)
        if shell == "shell" and info.get("launcher"):
            return self._run_entered(script, info, timeout)
        if shell == "shell":
            script_path = runs / f"{uuid.uuid4().hex}.sh"
            script_path.write_text(script)
            try:
                return self._spawn(["/bin/sh", str(script_path)], info, timeout)
            finally:
                script_path.unlink(missing_ok=True)
        return self._run_powershell(script, info, timeout)

    def _run_entered(self, script: str, info: Mapping[str, Any], timeout: float) -> ScriptOutcome:
        """Run ``script`` through the ``launcher`` prefix, which enters ``root/``."""
        launcher = info["launcher"]
        if not isinstance(launcher, list) or not launcher or not all(isinstance(a, str) for a in launcher):
            return ScriptOutcome(1, "", f"machine {info['name']}: launcher must be a list of strings\n")
        runs = self.root / "tmp" / "cloudkeep-runs"
        runs.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.sh"
        (runs / name).write_text(script)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "CLOUDKEEP_MACHINE_ID": str(info["id"]),
            "CLOUDKEEP_MACHINE_NAME": str(info["name"]),
            "CLOUDKEEP_MACHINE_PLATFORM": str(info["platform"]),
            **{str(k): str(v) for k, v in info.get("env", {}).items()},
        }
        try:
            return self._spawn([*launcher, "/bin/sh", f"/tmp/cloudkeep-runs/{name}"], info, timeout, env=env)
        finally:
            (runs / name).unlink(missing_ok=True)

    def _environment(self, info: Mapping[str, Any]) -> dict[str, str]:
        # A machine with its own root (the real host) keeps HOME in its folder, not in /home.
        home = self.path / "home" if info.get("root") else self.root / "home" / "cloudkeep"
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "CLOUDKEEP_MACHINE_ROOT": str(self.root),
            "CLOUDKEEP_MACHINE_ID": str(info["id"]),
            "CLOUDKEEP_MACHINE_NAME": str(info["name"]),
            "CLOUDKEEP_MACHINE_PLATFORM": str(info["platform"]),
            **{str(k): str(v) for k, v in info.get("env", {}).items()},
        }

    def _spawn(
        self, argv: list[str], info: Mapping[str, Any], timeout: float, *, env: dict[str, str] | None = None
    ) -> ScriptOutcome:
        self.root.mkdir(parents=True, exist_ok=True)
        # Output goes to files, not pipes: a daemon the script leaves behind must not hold us up.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                argv, cwd=self.root, env=env or self._environment(info), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip
            timed_out = False
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = TIMEOUT_EXIT_CODE
            out.seek(0)
            err.seek(0)
            return ScriptOutcome(
                code, out.read().decode(errors="replace"), err.read().decode(errors="replace"), timed_out
            )

    def _run_powershell(self, script: str, info: Mapping[str, Any], timeout: float) -> ScriptOutcome:
        script_name = f"C:\\ProgramData\\cloudkeep\\runs\\{uuid.uuid4().hex}.ps1"
        if str(info.get("execution_policy", "RemoteSigned")).lower() == "restricted":
            return ScriptOutcome(1, "", RESTRICTED_ERROR.format(path=script_name))
        if not info.get("powershell_version"):
            return ScriptOutcome(1, "", "'powershell' is not recognized as an internal or external command\n")
        pwsh = shutil.which("pwsh")
        if pwsh:
            script_path = self.path / "runs" / f"{uuid.uuid4().hex}.ps1"
            script_path.write_text(script)
            try:
                return self._spawn(
                    [pwsh, "-NoProfile", "-NonInteractive", "-File", str(script_path)], info, timeout
                )
            finally:
                script_path.unlink(missing_ok=True)
        return _ProbeInterpreter(info).run(script)


_LITERAL = re.compile(r"""^(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'$][^\s]*))$""")


class _ProbeInterpreter:
    """Understands the probe statements listed in the module docstring, nothing more."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = info
        self.version = str(info.get("powershell_version"))

    def _value(self, expr: str) -> str | None:
        parts = self.version.split(".")
        lowered = expr.strip().lower()
        values = {
            "$psversiontable.psversion": self.version,
            "$psversiontable.psversion.tostring()": self.version,
            "$psversiontable.psversion.major": parts[0],
            "$psversiontable.psversion.minor": parts[1] if len(parts) > 1 else "0",
            "get-executionpolicy": str(self.info.get("execution_policy", "RemoteSigned")),
            "$env:computername": str(self.info.get("hostname", self.info["name"])).upper(),
        }
        if lowered in values:
            return values[lowered]
        match = _LITERAL.match(expr.strip())
        if match:
            return next(g for g in match.groups() if g is not None)
        return None

    def run(self, script: str) -> ScriptOutcome:
        out: list[str] = []
        err: list[str] = []
        code = 0
        statements = [s.strip() for line in script.splitlines() for s in line.split(";")]
        for number, statement in enumerate(statements, 1):
            if not statement or statement.startswith("#"):
                continue
            lowered = statement.lower()
            if re.match(r"^\$(erroractionpreference|progresspreference)\s*=", lowered):
                continue
            exit_match = re.match(r"^exit(?:\s+(-?\d+))?$", lowered)
            if exit_match:
                return ScriptOutcome(int(exit_match.group(1) or code), _join(out), _join(err))
            command, _, argument = statement.partition(" ")
            if command.lower() in {"write-output", "write-host", "echo"}:
                value = self._value(argument)
            elif command.lower() == "write-error":
                err.append(self._value(argument) or argument)
                code = 1
                continue
            else:
                value = self._value(statement)
            if value is None:
                err.append(
                    f"PowerShell cannot run here: this host has no pwsh and the simulated machine's "
                    f"interpreter understands only probe statements (statement {number}: {statement!r})"
                )
                return ScriptOutcome(1, _join(out), _join(err))
            out.append(value)
        return ScriptOutcome(code, _join(out), _join(err))


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


class Lab:
    """A folder of simulated machines (``<lab>/machines/<name>/``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.machines_dir = self.path / "machines"
        self.machines_dir.mkdir(parents=True, exist_ok=True)

    def create_machine(
        self,
        name: str,
        *,
        platform: Platform | str = Platform.LINUX,
        tags: Mapping[str, str] | None = None,
        machine_id: str | None = None,
        boot_mode: str | None = "uefi",
        secure_boot: bool | None = False,
        powershell_version: str | None = None,
        execution_policy: str = "RemoteSigned",
        state: str = "running",
        region: str = "local",
        **extra: Any,
    ) -> SimulatedMachine:
        """Create a machine folder; ``machine_id`` defaults to ``name`` (the stand-ins pass cloud ids)."""
        if not _NAME_RE.match(name):
            raise ConfigurationError(
                f"invalid machine name {name!r}", hint="use letters, digits, '.', '_' and '-'"
            )
        platform = Platform(platform)
        folder = self.machines_dir / name
        try:
            folder.mkdir()
        except FileExistsError:
            raise ConflictError(f"simulated machine {name!r} already exists in {self.path}") from None
        (folder / "root").mkdir()
        if platform == Platform.WINDOWS and powershell_version is None:
            powershell_version = "5.1.17763.316"
        info = {
            "id": machine_id or name,
            "name": name,
            "platform": platform.value,
            "state": state,
            "region": region,
            "tags": dict(tags or {}),
            "boot_mode": boot_mode,
            "secure_boot": secure_boot,
            "powershell_version": powershell_version,
            "execution_policy": execution_policy,
            **extra,
        }
        tmp = folder / f".{MACHINE_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
        os.replace(tmp, folder / MACHINE_FILE)
        return SimulatedMachine(folder)

    def list(self) -> list[SimulatedMachine]:
        return [
            SimulatedMachine(p) for p in sorted(self.machines_dir.iterdir()) if (p / MACHINE_FILE).is_file()
        ]

    def get(self, machine_id: str) -> SimulatedMachine | None:
        """Find a machine by id (or by folder name)."""
        direct = self.machines_dir / machine_id
        if _NAME_RE.match(machine_id) and (direct / MACHINE_FILE).is_file():
            return SimulatedMachine(direct)
        return next((m for m in self.list() if m.id == machine_id), None)

    def remove(self, machine_id: str) -> None:
        machine = self.get(machine_id)
        if machine is None:
            raise NotFoundError(f"no simulated machine {machine_id!r} in {self.path}")
        shutil.rmtree(machine.path)
