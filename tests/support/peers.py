"""Real test peers started once per test session: moto server, Azurite, PostgreSQL.

Each runs as a child process on a free loopback port and is torn down at the end. A peer that
cannot start raises ``PeerError`` with a message saying what is missing: tests fail, never skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.tls import TlsFiles, make_self_signed

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Well-known Azurite development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class PeerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until true or the deadline passes (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise PeerError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Peer:
    name: str
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    log_path: Path | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for fn in reversed(self.cleanup):
            fn()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(
    peer: Peer, argv: list[str], env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.Popen[bytes]:
    """Start the peer in its own session, logging to its workdir; returns the process to poll at start."""
    assert peer.workdir is not None
    peer.log_path = peer.workdir / f"{peer.name}.log"
    log = peer.log_path.open("wb")
    preexec: Callable[[], None] | None = None
    if user is not None:
        import pwd

        pw = pwd.getpwnam(user)

        def preexec() -> None:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    peer.process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=preexec
    )
    return peer.process


@dataclass
class MotoServer(Peer):
    port: int = 0
    tls: TlsFiles | None = None  # serving HTTPS with this self-signed certificate

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def recording(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "recording.jsonl"

    @classmethod
    def start(cls, *, auth: bool = False, tls: bool = False, record: bool = False) -> MotoServer:
        """``record``: moto appends every request to ``recording`` (the SSM stand-in reads the real
        InstanceIds of each SendCommand there); costly with large uploads, so off by default."""
        workdir = Path(tempfile.mkdtemp(prefix="ck-moto-"))
        peer = cls(name="moto", workdir=workdir, port=free_port())
        env = dict(os.environ)
        if record:
            env["MOTO_ENABLE_RECORDING"] = "1"
            env["MOTO_RECORDER_FILEPATH"] = str(peer.recording)
        if auth:
            env["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "false"
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(peer.port)]
        if tls:
            peer.tls = make_self_signed(workdir / "tls")
            argv += ["-c", str(peer.tls.cert), "-k", str(peer.tls.key)]
        process = _spawn(peer, argv, env=env)
        try:
            wait_until(
                lambda: port_open(peer.port) or process.poll() is not None,
                timeout=30,
                what="moto server",
            )
        finally:
            if process.poll() is not None:
                raise PeerError(
                    f"moto server exited at start (is moto[server] installed?):\n{peer.log_tail()}"
                )
        return peer


@dataclass
class Azurite(Peer):
    blob_port: int = 0
    queue_port: int = 0
    tls: TlsFiles | None = None  # serving HTTPS with this self-signed certificate

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
        )

    @property
    def blob_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.blob_port}/{AZURITE_ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.queue_port}/{AZURITE_ACCOUNT}"

    @classmethod
    def start(cls, *, tls: bool = False) -> Azurite:
        binary = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
        if not binary.exists():
            raise PeerError(f"Azurite is not installed at {binary}: run `make test-env` (npm install)")
        workdir = Path(tempfile.mkdtemp(prefix="ck-azurite-"))
        peer = cls(name="azurite", workdir=workdir, blob_port=free_port(), queue_port=free_port())
        argv = [
            str(binary), "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
            "--location", str(workdir / "data"),
            "--blobHost", "127.0.0.1", "--blobPort", str(peer.blob_port),
            "--queueHost", "127.0.0.1", "--queuePort", str(peer.queue_port),
            "--tableHost", "127.0.0.1", "--tablePort", str(free_port()),
        ]  # fmt: skip
        if tls:
            peer.tls = make_self_signed(workdir / "tls")
            argv += ["--cert", str(peer.tls.cert), "--key", str(peer.tls.key)]
        process = _spawn(peer, argv)
        wait_until(
            lambda: (port_open(peer.blob_port) and port_open(peer.queue_port)) or process.poll() is not None,
            timeout=60,
            what="Azurite",
        )
        if peer.process is not None and peer.process.poll() is not None:
            raise PeerError(f"Azurite exited at start:\n{peer.log_tail()}")
        return peer


def _postgres_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if not candidates:
        found = shutil.which("initdb")
        if found:
            return Path(found).resolve().parent
        raise PeerError(
            "PostgreSQL is not installed (no initdb): run `make test-env`, which apt-get installs it"
        )
    return candidates[0].parent


@dataclass
class Postgres(Peer):
    port: int = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://cloudkeep@127.0.0.1:{self.port}/cloudkeep"

    @classmethod
    def start(cls) -> Postgres:
        bindir = _postgres_bindir()
        workdir = Path(tempfile.mkdtemp(prefix="ck-pg-"))
        peer = cls(name="postgres", workdir=workdir, port=free_port())
        user = None
        if os.geteuid() == 0:  # initdb refuses root: run the throw-away cluster as an unprivileged user
            import pwd

            user = "postgres"
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                user, pw = "nobody", pwd.getpwnam("nobody")
            os.chmod(workdir, 0o755)
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        datadir = workdir / "data"
        init = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "cloudkeep",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            preexec_fn=_demote(user),
        )
        if init.returncode != 0:
            raise PeerError(f"initdb failed: {init.stderr.decode(errors='replace')}")
        argv = [
            str(bindir / "postgres"), "-D", str(datadir), "-p", str(peer.port), "-h", "127.0.0.1",
            "-k", str(workdir), "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=200",
        ]  # fmt: skip
        process = _spawn(peer, argv, user=user)
        wait_until(lambda: port_open(peer.port) or process.poll() is not None, timeout=60, what="PostgreSQL")
        if process.poll() is not None:
            raise PeerError(f"PostgreSQL exited at start:\n{peer.log_tail()}")
        port = str(peer.port)
        createdb = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "cloudkeep", "cloudkeep"]
        deadline = time.monotonic() + 60
        while True:  # the port opens before the server accepts connections ("starting up")
            created = subprocess.run(createdb, capture_output=True)
            if created.returncode == 0 or b"starting up" not in created.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if created.returncode != 0:
            raise PeerError(f"createdb failed: {created.stderr.decode(errors='replace')}")
        return peer


def _demote(user: str | None) -> Callable[[], None] | None:
    if user is None:
        return None
    import pwd

    pw = pwd.getpwnam(user)

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return demote
