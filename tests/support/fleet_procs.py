"""The fleet simulator and the server's queue consumers, each in processes of their own.

In one process the simulated agents and the server share one interpreter lock: at 5,000 machines
and more the simulator could not even send its heartbeats on time, and the server's figures
included the simulator's CPU. Here ``SimulatorProcs`` runs the agents (``fleet.SimulatedFleet``,
the real signed protocol over the provider's queues) in N processes, thousands each, and
``ConsumerProcs`` runs the server-queue consumers in M processes, as ``cloudkeep server start
--workers M`` would on PostgreSQL. Each child opens its own ``ServerContext`` on the same home and
database and obeys a few commands over a pipe; the parent keeps the job runner.
"""

from __future__ import annotations

import multiprocessing
import resource
import traceback
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cloudkeep.config import Settings
from cloudkeep.providers.base import CloudProvider
from cloudkeep.server.consumer import server_queue_name
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import ProtectionGroup
from tests.support.fleet import FleetCounts, SimulatedFleet

Handler = Callable[..., Any]
START_TIMEOUT = 600.0  # registering thousands of machines in one child takes a while


def cpu_seconds() -> float:
    """This process's CPU time (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _usage() -> dict[str, float]:
    return {"cpu": cpu_seconds(), "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _serve(conn: Connection, handlers: dict[str, Handler]) -> None:
    """Answer ``(command, kwargs)`` until ``exit``; an exception goes back as its traceback."""
    handlers = {"usage": _usage, **handlers}
    while True:
        command, kwargs = conn.recv()
        if command == "exit":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", handlers[command](**kwargs)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def _open(home: str, database_url: str | None) -> ServerContext:
    return open_context(Settings(home=Path(home), database_url=database_url))


def _started(
    conn: Connection, start: Callable[[], Any], answer: Callable[[Any], Any] = lambda _: None
) -> Any:
    """Run a child's set-up and tell the parent ``answer(value)``; a failure goes back as a traceback."""
    try:
        value = start()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    conn.send(("ok", answer(value)))
    return value


def _simulator_main(conn: Connection, home: str, database_url: str | None, group_id: str, count: int,
                    prefix: str) -> None:  # fmt: skip
    def register() -> tuple[ServerContext, CloudProvider, SimulatedFleet]:
        ctx = _open(home, database_url)
        with ctx.db() as db:
            group = db.get(ProtectionGroup, group_id)
            assert group is not None
            provider = ctx.provider_for(group.credential_id)
        provider.queues.ensure_queue(server_queue_name(ctx.server_id))
        return ctx, provider, SimulatedFleet.register(ctx, provider, group_id, count, prefix=prefix)

    ctx, provider, fleet = _started(conn, register, lambda made: len(made[2].agents))

    def start(**kwargs: Any) -> None:
        fleet.start(**kwargs)

    def stop() -> dict[str, Any]:
        fleet.stop()
        return asdict(fleet.counts)

    _serve(conn, {
        "heartbeat_all": fleet.heartbeat_all,
        "start": start,
        "stop": stop,
        "counts": lambda: asdict(fleet.counts),
    })  # fmt: skip
    provider.close()
    ctx.close()


def _consumer_main(conn: Connection, home: str, database_url: str | None, workers: int) -> None:
    from cloudkeep.server.dispatcher import ensure_consumers, stop_consumers

    ctx = _started(conn, lambda: _open(home, database_url))
    _serve(conn, {"start": lambda: ensure_consumers(ctx, workers=workers), "stop": stop_consumers})
    stop_consumers()
    ctx.close()


class _Children:
    """Child processes (spawned: the parent runs threads and holds database connections)."""

    def __init__(self, target: Callable[..., None], argument_lists: list[tuple[Any, ...]]) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for arguments in argument_lists:
            parent, child = spawn.Pipe()
            proc = spawn.Process(target=target, args=(child, *arguments), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.started = [self._reply(pipe, START_TIMEOUT) for pipe in self.pipes]

    def _reply(self, pipe: Connection, timeout: float) -> Any:
        if not pipe.poll(timeout):
            raise TimeoutError(f"a fleet child did not answer within {timeout:.0f}s")
        status, value = pipe.recv()
        if status != "ok":
            raise RuntimeError(f"a fleet child failed:\n{value}")
        return value

    def call(self, command: str, timeout: float = 600.0, **kwargs: Any) -> list[Any]:
        """Send ``command`` to every child at once, then collect every answer."""
        for pipe in self.pipes:
            pipe.send((command, kwargs))
        return [self._reply(pipe, timeout) for pipe in self.pipes]

    def usage(self) -> tuple[float, float]:
        """CPU seconds of all the children together, and the largest child's peak RSS (MiB)."""
        usages = self.call("usage")
        return sum(u["cpu"] for u in usages), max(u["rss_mib"] for u in usages)

    def close(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            if proc.is_alive():
                try:
                    pipe.send(("exit", {}))
                    pipe.poll(30)
                except (BrokenPipeError, OSError):
                    pass
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(10)


class SimulatorProcs(_Children):
    """``count`` simulated agents split over ``procs`` processes; the interface of ``SimulatedFleet``."""

    def __init__(self, ctx: ServerContext, group_id: str, count: int, procs: int) -> None:
        home, url = str(ctx.settings.home), ctx.settings.database_url
        shares = [count // procs + (1 if n < count % procs else 0) for n in range(procs)]
        super().__init__(_simulator_main, [(home, url, group_id, share, f"sim{n}") for n, share in
                                           enumerate(shares) if share])  # fmt: skip
        self.count = sum(self.started)

    def heartbeat_all(self) -> int:
        return sum(self.call("heartbeat_all"))

    def start(self, threads: int = 4, idle_seconds: float = 0.05,
              heartbeat_seconds: float | None = None) -> SimulatorProcs:  # fmt: skip
        self.call("start", threads=threads, idle_seconds=idle_seconds, heartbeat_seconds=heartbeat_seconds)
        return self

    def stop(self) -> None:
        self.call("stop")

    @property
    def counts(self) -> FleetCounts:
        """All the children's counts together (the worst lateness of any)."""
        total = FleetCounts()
        for counts in self.call("counts"):
            total.commands += counts["commands"]
            total.rejected += counts["rejected"]
            total.reports_sent += counts["reports_sent"]
            total.heartbeat_late_max = max(total.heartbeat_late_max, counts["heartbeat_late_max"])
            for kind, n in counts["by_kind"].items():
                total.by_kind[kind] = total.by_kind.get(kind, 0) + n
        return total


class ConsumerProcs(_Children):
    """The server-queue consumers (``workers`` threads each) in ``procs`` processes."""

    def __init__(self, ctx: ServerContext, procs: int, workers: int) -> None:
        home, url = str(ctx.settings.home), ctx.settings.database_url
        super().__init__(_consumer_main, [(home, url, workers)] * procs)

    def start(self) -> ConsumerProcs:
        self.call("start")
        return self

    def stop(self) -> None:
        self.call("stop")
