"""Older Linux machines for the tests: a Debian root built with debootstrap, entered with chroot.

``ensure_root("bullseye")`` builds ``debootstrap --variant=minbase`` roots from Debian's own
packages once and caches them outside the repository (``~/.cache/cloudkeep-test/roots/<suite>-
<recipe hash>``, or ``$CLOUDKEEP_TEST_CACHE/roots``): the build runs in a temporary folder that
is renamed into place only when complete, so a killed build never leaves a half root. CI builds
the root when it is missing (``scripts/setup-env.sh --test`` installs debootstrap).

``OldRootMachine`` gives one test a fresh copy-on-use of that root (an overlayfs whose upper layer
lives in the machine folder; a full copy where overlayfs is refused), a network namespace with
only loopback up, and ``/proc``, ``/dev``, ``/sys`` and the test's host folders bind-mounted at
the same paths inside. Its ``launcher`` is the argv prefix the local provider's ``launcher``
machine option takes, so the product's own command channel runs every script in the root.

The namespace has no route anywhere: a ``LoopbackBridge`` forwards chosen loopback ports of the
namespace to the same ports of the host (the signed-URL server of the distribution repository),
which is what a machine in a private subnet reaches and nothing more.

Everything here needs root (mount, chroot, ip netns); without it, or without debootstrap, the
fixtures skip with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

SUITES = {
    # suite: (Python, glibc) the root brings; checked after every build.
    "bullseye": ("3.9", "2.31"),
    "trixie": ("3.13", "2.41"),
}
INCLUDE = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
RECIPE_VERSION = 1  # bump when the build steps below change
_CLONE_NEWNET = 0x40000000


class OldRootUnavailable(Exception):
    """This host cannot build or enter test roots (not root, no debootstrap, no network)."""


def cache_dir() -> Path:
    base = os.environ.get("CLOUDKEEP_TEST_CACHE") or Path.home() / ".cache" / "cloudkeep-test"
    return Path(base) / "roots"


def debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def recipe(suite: str) -> dict[str, object]:
    return {
        "suite": suite,
        "variant": "minbase",
        "include": list(INCLUDE),
        "arch": debian_arch(),
        "version": RECIPE_VERSION,
    }


def recipe_hash(suite: str) -> str:
    return hashlib.sha256(json.dumps(recipe(suite), sort_keys=True).encode()).hexdigest()[:12]


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (not its security archive), else deb.debian.org."""
    texts = []
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in {".list", ".sources"}:
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1).rstrip("/")
            if uri.startswith(("http://", "https://")) and uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def _require_host() -> None:
    if os.geteuid() != 0:
        raise OldRootUnavailable("test roots need root (debootstrap, mount, chroot, ip netns)")
    for tool in ("ip", "chroot", "mount", "umount"):
        if shutil.which(tool) is None:
            raise OldRootUnavailable(f"{tool} is not installed")


def ensure_root(suite: str = "bullseye") -> Path:
    """The cached root of ``suite``, built first when missing (one builder at a time, atomic)."""
    _require_host()
    cache = cache_dir()
    final = cache / f"{suite}-{recipe_hash(suite)}"
    if (final / ".cloudkeep-root.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".cloudkeep-root.json").is_file():
            return final
        if shutil.which("debootstrap") is None:
            raise OldRootUnavailable("debootstrap is not installed (scripts/setup-env.sh --test installs it)")
        for stale in cache.glob(f".build-{suite}-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{suite}-", dir=cache))
        started = time.monotonic()
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            f"--arch={debian_arch()}",
            suite,
            str(work / "root"),
            debian_mirror(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise OldRootUnavailable(f"debootstrap {suite} failed: {done.stdout[-800:]}{done.stderr[-800:]}")
        facts = {
            **recipe(suite),
            "build_seconds": round(time.monotonic() - started, 1),
            **_root_facts(work / "root"),
        }
        (work / "root" / ".cloudkeep-root.json").write_text(json.dumps(facts, indent=2))
        os.rename(work / "root", final)
        shutil.rmtree(work, ignore_errors=True)
    return final


def _root_facts(root: Path) -> dict[str, str]:
    """Python and glibc versions of a fresh root, checked against what the suite should bring."""

    def inside(*argv: str) -> str:
        return subprocess.run(
            ["chroot", str(root), *argv], capture_output=True, text=True, check=True
        ).stdout.strip()

    python = inside("python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])")
    glibc = inside("getconf", "GNU_LIBC_VERSION").split()[-1]
    return {"python": python, "glibc": glibc}


def root_facts(root: Path) -> dict[str, object]:
    facts: dict[str, object] = json.loads((root / ".cloudkeep-root.json").read_text())
    return facts


# --- the network namespace and its bridge to host loopback ports ---------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


class LoopbackBridge:
    """Forwards ``127.0.0.1:PORT`` inside a network namespace to ``127.0.0.1:PORT`` of the host.

    The listening socket is made by a thread that enters the namespace (setns changes only the
    calling thread) and comes back; connections to the host are made from the host namespace.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._listeners: list[socket.socket] = []
        self._closed = threading.Event()

    def forward(self, port: int) -> None:
        made: list[socket.socket | BaseException] = []

        def listen_inside() -> None:
            host_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(f"/var/run/netns/{self.netns}", os.O_RDONLY)
            try:
                _setns(target)
                try:
                    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    server.bind(("127.0.0.1", port))
                    server.listen(64)
                    made.append(server)
                finally:
                    _setns(host_ns)
            except BaseException as exc:  # reported to the caller below
                made.append(exc)
            finally:
                os.close(host_ns)
                os.close(target)

        thread = threading.Thread(target=listen_inside)
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        server = made[0]
        self._listeners.append(server)
        threading.Thread(target=self._accept, args=(server, port), daemon=True).start()

    def _accept(self, server: socket.socket, port: int) -> None:
        while not self._closed.is_set():
            try:
                inner, _ = server.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                inner.close()
                continue
            outer.settimeout(None)
            for src, dst in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for server in self._listeners:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


# --- one machine living in a copy of the root ------------------------------------------------------


class OldRootMachine:
    """A fresh copy of a cached root at ``root``, entered with ``launcher`` (netns + chroot)."""

    def __init__(self, cached: Path, root: Path, *, binds: list[Path]) -> None:
        self.cached = cached
        self.root = root
        self.netns = f"ck-{uuid.uuid4().hex[:10]}"
        self.mounts: list[Path] = []
        self.layers = root.parent / f".{root.name}-layers"
        self.copy_mode = ""
        self.copy_seconds = 0.0
        self.bridge: LoopbackBridge | None = None
        try:
            self._copy()
            self._mount_system()
            for folder in binds:
                self._bind(folder)
            _run("ip", "netns", "add", self.netns)
            _run("ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up")
            self.bridge = LoopbackBridge(self.netns)
        except BaseException:
            self.close()
            raise

    @property
    def launcher(self) -> list[str]:
        """The local provider's ``launcher`` machine option: scripts run chrooted in the namespace."""
        return ["ip", "netns", "exec", self.netns, "chroot", str(self.root)]

    def run(self, script: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the machine (for the test's own looks; the product uses launcher)."""
        return subprocess.run(
            [*self.launcher, "/bin/sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": _PATH, "LANG": "C.UTF-8"},
        )

    def _copy(self) -> None:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        upper, work = self.layers / "upper", self.layers / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        options = f"lowerdir={self.cached},upperdir={upper},workdir={work}"
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            self.mounts.append(self.root)
            self.copy_mode = "overlayfs"
        else:  # overlayfs refused (nested container, odd file system): a real copy
            shutil.rmtree(self.layers)
            self.root.rmdir()
            _run("cp", "-a", "--reflink=auto", str(self.cached), str(self.root))
            self.copy_mode = "copy"
        self.copy_seconds = time.monotonic() - started

    def _mount_system(self) -> None:
        _run("mount", "-t", "proc", "proc", str(self.root / "proc"))
        self.mounts.append(self.root / "proc")
        for name in ("dev", "sys"):
            _run("mount", "--rbind", f"/{name}", str(self.root / name))
            _run("mount", "--make-rslave", str(self.root / name))
            self.mounts.append(self.root / name)

    def _bind(self, folder: Path) -> None:
        folder = folder.resolve()
        inside = self.root / folder.relative_to("/")
        inside.mkdir(parents=True, exist_ok=True)
        _run("mount", "--bind", str(folder), str(inside))
        self.mounts.append(inside)

    def host_path(self, inside: str) -> Path:
        """Where the machine's path ``inside`` is on this host, following symlinks as the chroot does.

        Debian links ``/var/run`` to ``/run``: joined naively, ``root/var/run`` would name the
        host's own ``/run``.
        """
        path = self.root
        parts = [p for p in inside.split("/") if p not in ("", ".")]
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                path = path.parent if path != self.root else path
                continue
            candidate = path / part
            if candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks resolving {inside} in {self.root}")
                target = os.readlink(candidate)
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                path = self.root if target.startswith("/") else path
                continue
            path = candidate
        return path

    def processes(self) -> list[int]:
        """Pids of every process whose root is this machine's root (the services it started)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "root") == str(self.root):
                        pids.append(int(entry.name))
        return pids

    def close(self) -> None:
        """Stop what runs inside, unmount everything, drop the namespace and the copy."""
        if self.bridge is not None:
            self.bridge.close()
        pids = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
                time.sleep(0.05)
        for mount in reversed(self.mounts):
            if subprocess.run(["umount", "-R", str(mount)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-R", "-l", str(mount)], capture_output=True, check=False)
        self.mounts.clear()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        if self.copy_mode == "copy":
            shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.layers, ignore_errors=True)


_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OldRootUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@contextlib.contextmanager
def old_root_machine(suite: str, root: Path, *, binds: list[Path]) -> Iterator[OldRootMachine]:
    machine = OldRootMachine(ensure_root(suite), root, binds=binds)
    try:
        yield machine
    finally:
        machine.close()
