"""A rescan session: discover a protection group's machines and run each one's state machine.

``start_rescan`` creates the ``JobSession`` and returns its id at once (or after the work with
``wait=True``). Only one rescan of a group runs at a time across every server worker: the
session holds the lease ``rescan:<group id>``; a second ``start_rescan`` of the same group joins
the running session (returns its id, and waits for it with ``wait=True``). Machines are handled
by a bounded thread pool (``settings.rescan_concurrency``); progress is written to
``JobSession.stats`` after every machine so ``session watch`` and the API see it live.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloudkeep.errors import CloudkeepError, NotFoundError
from cloudkeep.providers.base import CloudProvider, InventoryScope, Machine
from cloudkeep.server import leases, metrics
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, JobSession, ProtectionGroup, new_id
from cloudkeep.server.logs import event
from cloudkeep.server.pacing import pacer_for
from cloudkeep.server.rescan import bundles
from cloudkeep.server.rescan.confirm import make_confirm
from cloudkeep.server.rescan.deploy import (
    OWNER_TAG,
    MachineDeployment,
    RescanEnvironment,
    agent_queue_name,
    probe_in_batches,
    server_queue_name,
)

log = logging.getLogger(__name__)

LEASE_TTL_SECONDS = 60.0
FINAL_STATES = ("success", "warning", "failed", "stopped")
COUNTED = ("deployed", "ready", "skipped", "failed", "foreign", "outdated")


def lease_name(group_id: str) -> str:
    return f"rescan:{group_id}"


def start_rescan(
    ctx: ServerContext,
    group_id: str,
    *,
    machine_ids: list[str] | None = None,
    wait: bool = False,
    trigger: str = "manual",
    deploy: bool = True,
    upgrade: bool = False,
) -> str:
    """Start (or join) the rescan of ``group_id``; returns the session id.

    ``machine_ids`` limits the rescan to some machines (DiscoveredMachine ids, cloud ids or
    names); machines not found are then not marked missing. ``deploy=False`` stops after the
    checks (probe, ownership, prerequisites): machines that pass are reported ``ready``.
    ``upgrade=True`` installs the current bundle on machines that run an older one even when the
    group's auto-update is off (``cloudkeep machine upgrade``); the session's stats say so, and a
    rescan that was already running (joined, not started) does not.
    """
    with ctx.db() as session:
        if session.get(ProtectionGroup, group_id) is None:
            raise NotFoundError(
                f"protection group {group_id} does not exist", hint="see `cloudkeep protection-group list`"
            )
    deadline = time.monotonic() + 30
    while True:
        session_id = new_id()
        if leases.acquire(ctx, lease_name(group_id), session_id, ttl_seconds=LEASE_TTL_SECONDS):
            break
        running = leases.holder_of(ctx, lease_name(group_id))
        if running is not None:
            _wait_for_row(ctx, running)
            if wait:
                wait_for_session(ctx, running)
            return running
        if time.monotonic() > deadline:  # pragma: no cover - a lease flapping for 30 s
            raise CloudkeepError(
                f"could not start the rescan of group {group_id}: its lease keeps changing hands"
            )
    now = utcnow()
    with ctx.db() as session:
        # We hold the lease, so any rescan of this group still "running" lost its worker (crash,
        # restart) and its lease expired: end it with that reason rather than leave it running.
        session.execute(
            update(JobSession)
            .where(
                JobSession.kind == "rescan",
                JobSession.protection_group_id == group_id,
                JobSession.state.in_(("pending", "running")),
            )
            .values(state="failed", ended_at=now, reason="interrupted: the server worker running it stopped")
            .execution_options(synchronize_session=False)
        )
        session.add(JobSession(id=session_id, kind="rescan", protection_group_id=group_id, state="running",
                               trigger=trigger, started_at=now,
                               stats=_empty_stats() | ({"upgrade": True} if upgrade else {})))  # fmt: skip
    runner = RescanRunner(ctx, group_id, session_id, machine_ids, deploy=deploy, upgrade=upgrade)
    if wait:
        runner.run()
    else:
        threading.Thread(target=runner.run, name=f"rescan-{session_id[:8]}", daemon=True).start()
    return session_id


def wait_for_session(
    ctx: ServerContext, session_id: str, *, timeout: float | None = None, poll: float = 0.2
) -> str:
    """Block until the session ends; returns its final state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with ctx.db() as session:
            row = session.get(JobSession, session_id)
            state = row.state if row else "missing"
        if state in FINAL_STATES or state == "missing":
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id} still {state} after {timeout} s")
        time.sleep(poll)


def _wait_for_row(ctx: ServerContext, session_id: str) -> None:
    """The lease winner inserts its session row right after taking the lease; give it a moment."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with ctx.db() as session:
            if session.get(JobSession, session_id) is not None:
                return
        time.sleep(0.05)


def _empty_stats() -> dict[str, Any]:
    return {"found": 0, "total": 0, "seen": 0, "processed": 0, "installed": 0, "missing": 0} | dict.fromkeys(
        COUNTED, 0
    )


class RescanRunner:
    """The body of one rescan session (runs on a daemon thread, or inline with ``wait=True``)."""

    def __init__(
        self,
        ctx: ServerContext,
        group_id: str,
        session_id: str,
        machine_ids: list[str] | None,
        *,
        deploy: bool = True,
        upgrade: bool = False,
    ) -> None:
        self.ctx, self.group_id, self.session_id, self.machine_ids = ctx, group_id, session_id, machine_ids
        self.deploy, self.upgrade = deploy, upgrade
        self.stats: dict[str, Any] = _empty_stats() | ({"upgrade": True} if upgrade else {})
        self._stats_lock = threading.Lock()
        self._once_lock = threading.Lock()
        self._server_queue: dict[str, Any] | None = None
        self._published: bundles.PublishedBundle | None = None
        self._stop = threading.Event()

    def run(self) -> None:
        renewer = threading.Thread(target=self._renew_lease, name=f"lease-{self.session_id[:8]}", daemon=True)
        renewer.start()
        provider: CloudProvider | None = None
        state, reason = "failed", ""
        began = utcnow()
        try:
            with self.ctx.db() as session:
                group = session.get(ProtectionGroup, self.group_id)
                assert group is not None
                session.expunge(group)
            provider = self.ctx.provider_for(group.credential_id)
            state, reason = self._rescan(group, provider)
        except CloudkeepError as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("rescan session %s failed", self.session_id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._stop.set()
            if provider is not None:
                provider.close()
            with self.ctx.db() as session:
                row = session.get(JobSession, self.session_id)
                assert row is not None
                row.state, row.reason, row.ended_at, row.stats = (
                    state,
                    reason,
                    utcnow(),
                    dict(self.stats),
                )
                group_row = session.get(ProtectionGroup, self.group_id)
                if group_row is not None:
                    group_row.last_rescan_at = utcnow()
            leases.release(self.ctx, lease_name(self.group_id), self.session_id)
            seconds = (utcnow() - began).total_seconds()
            metrics.record_session("rescan", state, seconds, 0, 0)
            event(log, "rescan_ended", level=logging.INFO if state == "success" else logging.WARNING,
                  session=self.session_id, protection_group=self.group_id, state=state,
                  seconds=round(seconds, 3), reason=reason or None)  # fmt: skip

    def _renew_lease(self) -> None:
        while not self._stop.wait(LEASE_TTL_SECONDS / 3):
            leases.acquire(
                self.ctx, lease_name(self.group_id), self.session_id, ttl_seconds=LEASE_TTL_SECONDS
            )

    # --- the session ---------------------------------------------------------------------------

    def _rescan(self, group: ProtectionGroup, provider: CloudProvider) -> tuple[str, str]:
        scope = InventoryScope(
            regions=tuple(group.regions), machine_ids=tuple(group.machine_ids),
            include_tags=dict(group.include_tags), exclude_ids=tuple(group.exclude_ids),
            exclude_tags=dict(group.exclude_tags),
        )  # fmt: skip
        found = list(provider.inventory.list_machines(scope))
        rows = self._record_discovery(found)
        if self.machine_ids is not None:
            wanted = set(self.machine_ids)
            names = {m.id: m.name for m in found}
            rows = {cid: rid for cid, rid in rows.items() if wanted & {cid, rid, names[cid]}}
        targets = [m for m in found if m.id in rows]
        self._update(found=len(targets))
        problems = provider.check_configuration() if targets else []
        if problems:  # the provider cannot run commands: no machine is to blame for that
            return "failed", f"{problems[0]} (no machine was contacted; `cloudkeep doctor` checks this)"
        manifest, folder = bundles.current_bundle(self.ctx)
        location = self._distribution_location(group)
        confirm, heartbeat_fresh = make_confirm(self.ctx)
        env = RescanEnvironment(
            ctx=self.ctx, provider=provider, session_id=self.session_id,
            auto_update=group.auto_update or self.upgrade,
            deploy=self.deploy, install_python=group.install_python,
            bundle_version=manifest.version, ensure_server_queue=lambda: self._ensure_server_queue(provider),
            publish_bundle=lambda: self._publish(provider, location, manifest, folder),
            discard_archive=lambda platform: self._discard(provider, platform),
            confirm=confirm,
            heartbeat_fresh=heartbeat_fresh, pacer=pacer_for(group.credential_id, provider.facts),
        )  # fmt: skip
        if provider.commands.batch_size > 1 and not self._stop_requested():
            self._set_status([rows[m.id] for m in targets if m.state == "running"], "probing")
            probe_in_batches(env, targets)
        workers = max(1, min(self.ctx.settings.rescan_concurrency, len(targets) or 1))
        with ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"rescan-{self.session_id[:6]}"
        ) as pool:
            for future in [pool.submit(self._one, env, m, rows[m.id]) for m in targets]:
                future.result()
        if self.machine_ids is None:
            self._handle_disappeared(group, provider, {m.id for m in found})
        if self._stop_requested():
            return "stopped", "stopped by the administrator"
        return self._verdict()

    def _one(self, env: RescanEnvironment, machine: Machine, row_id: str) -> None:
        if self._stop_requested():
            return
        deployment = MachineDeployment(env, machine, row_id)
        status = deployment.run()
        with self._stats_lock:
            self.stats["processed"] += 1
            self.stats["seen"] += (
                deployment.probe is not None
            )  # the machine answered through its command channel
            self.stats["installed"] += deployment.installed
            if status in COUNTED:
                self.stats[status] += 1
            self._flush()

    def _set_status(self, row_ids: list[str], status: str) -> None:
        with self.ctx.db() as session:
            for start in range(0, len(row_ids), 500):  # bounded IN lists (SQLite's variable limit)
                chunk = row_ids[start : start + 500]
                session.execute(
                    update(DiscoveredMachine).where(DiscoveredMachine.id.in_(chunk)).values(status=status)
                    .execution_options(synchronize_session=False)
                )  # fmt: skip

    def _record_discovery(self, found: list[Machine]) -> dict[str, str]:
        """Create or refresh a DiscoveredMachine row per machine found; returns cloud id -> row id."""
        now = utcnow()
        ids: dict[str, str] = {}
        with self.ctx.db() as session:
            existing = {m.cloud_id: m for m in self._group_machines(session)}
            for machine in found:
                row = existing.get(machine.id)
                if row is None:
                    row = DiscoveredMachine(
                        id=new_id(), protection_group_id=self.group_id, cloud_id=machine.id
                    )
                    session.add(row)
                row.name, row.platform, row.region = machine.name, machine.platform.value, machine.region
                row.cloud_state, row.tags, row.last_seen_at = machine.state, dict(machine.tags), now
                row.facts = {**(row.facts or {}), **_inventory_facts(machine)}
                ids[machine.id] = row.id
            total = len(set(existing) | set(ids))
        self._update(total=total)
        return ids

    def _handle_disappeared(self, group: ProtectionGroup, provider: CloudProvider, seen: set[str]) -> None:
        """Machines no longer found: ``keep`` reports them missing; ``unmanage`` drops queue and marker."""
        now = utcnow().isoformat(timespec="seconds")
        with self.ctx.db() as session:
            gone = [
                m for m in self._group_machines(session)
                if m.cloud_id not in seen and m.status not in ("foreign", "unmanaged")
            ]  # fmt: skip
            for row in gone:
                if group.on_disappear == "unmanage":
                    queue = row.agent_queue or agent_queue_name(self.ctx.server_id, row.id)
                    cloud_id = row.cloud_id
                    _quietly(provider.queues.delete_queue, queue)
                    _quietly(provider.inventory.remove_tag, cloud_id, OWNER_TAG)
                    row.status, row.agent_queue = "unmanaged", None
                    row.status_reason = (
                        f"not found by the rescan of {now}; unmanaged (queue deleted, marker removed)"
                    )
                else:
                    row.status = "missing"
                    row.status_reason = f"not found by the rescan of {now}; kept (on_disappear=keep)"
            missing = len(gone)
        self._update(missing=missing)

    def _group_machines(self, session: Session) -> list[DiscoveredMachine]:
        query = select(DiscoveredMachine).where(DiscoveredMachine.protection_group_id == self.group_id)
        return list(session.scalars(query))

    # --- shared, once per session --------------------------------------------------------------

    def _ensure_server_queue(self, provider: CloudProvider) -> dict[str, Any]:
        with self._once_lock:
            if self._server_queue is None:
                name = server_queue_name(self.ctx.server_id)
                provider.queues.ensure_queue(name)
                # add-only where the cloud can express it: no machine can read/delete others' reports
                self._server_queue = provider.queues.connection_info(name, access="send")
            return self._server_queue

    def _publish(
        self, provider: CloudProvider, location: str, manifest: Any, folder: Any
    ) -> bundles.PublishedBundle:
        with self._once_lock:
            if self._published is None:
                self._published = bundles.publish(provider.storage, location, manifest, folder)
            return self._published

    def _discard(self, provider: CloudProvider, platform: str) -> None:
        with self._once_lock:
            if self._published is not None:
                _quietly(bundles.discard, provider.storage, self._published, platform)

    def _distribution_location(self, group: ProtectionGroup) -> str:
        from cloudkeep.server.db.models import Repository

        with self.ctx.db() as session:
            repo = session.get(Repository, group.distribution_repository_id)
            if repo is None:
                raise NotFoundError(f"the distribution repository of group {group.name} does not exist")
            if repo.credential_id != group.credential_id:
                log.info(
                    "distribution repository %s uses another credential than group %s", repo.name, group.name
                )
            return repo.location

    # --- progress --------------------------------------------------------------------------------

    def _update(self, **values: int) -> None:
        with self._stats_lock:
            self.stats.update(values)
            self._flush()

    def _flush(self) -> None:
        with self.ctx.db() as session:
            row = session.get(JobSession, self.session_id)
            if row is not None:
                row.stats = dict(self.stats)

    def _stop_requested(self) -> bool:
        with self.ctx.db() as session:
            row = session.get(JobSession, self.session_id)
            return bool(row and row.stop_requested)

    def _verdict(self) -> tuple[str, str]:
        counts = Counter({k: self.stats[k] for k in COUNTED})
        summary = ", ".join(f"{counts[k]} {k}" for k in COUNTED if counts[k]) or "no machines found"
        if counts["failed"] and not counts["deployed"] and counts["failed"] == self.stats["found"]:
            return "failed", summary
        if counts["failed"] or counts["skipped"] or counts["foreign"] or counts["outdated"]:
            return "warning", summary
        return "success", summary


def _inventory_facts(machine: Machine) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "hostname": machine.hostname,
        "private_ip": machine.private_ip,
        "boot_mode": machine.boot_mode,
        "secure_boot_api": machine.secure_boot,
    }
    return {k: v for k, v in facts.items() if v is not None}


def _quietly(action: Callable[..., object], *args: Any) -> None:
    try:
        action(*args)
    except Exception as exc:
        log.info("clean-up step failed: %s", exc)
