"""Running a backup job: one JobSession, one SessionTask per machine, a ``backup`` command each.

The machines are resolved at every start from the job's protection groups plus its explicit
machines, so a machine discovered later joins the next run by itself. A machine that is not
deployed gets a ``skipped`` task saying why. Each agent receives scoped, expiring credentials
(refreshed for long tasks with ``update_credentials``) and writes straight to object storage;
the server only records the result: a ``RestorePoint`` per success, statistics, then retention.

Session state: ``success`` when every machine succeeded, ``warning`` when some did (or an agent
reported warnings), ``failed`` when none did, ``stopped`` when the administrator stopped it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudkeep.errors import CloudkeepError, ConfigurationError, IntegrityError, NotFoundError
from cloudkeep.protocol.bodies import BackupResult
from cloudkeep.providers.base import CloudProvider
from cloudkeep.repo.repository import Repository as FormatRepository
from cloudkeep.repo.retention import RetentionPolicy
from cloudkeep.server import manifest_pins
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import (
    BackupJob,
    CommandRecord,
    DiscoveredMachine,
    JobSession,
    RestorePoint,
    SessionTask,
)
from cloudkeep.server.jobs import notifications, session_end
from cloudkeep.server.jobs import retention as ret
from cloudkeep.server.jobs.backup_body import backup_set, build_backup_body
from cloudkeep.server.jobs.options import JobOptions, read_job_options
from cloudkeep.server.jobs.session_end import finish_session, stop_reason_of, terminating_window
from cloudkeep.server.jobs.slots import Slots, machine_slots
from cloudkeep.server.jobs.stats import task_stats
from cloudkeep.server.logs import event
from cloudkeep.server.scheduling.schedule import Schedule, in_window
from cloudkeep.server.sessions import (
    CommandSender,
    SessionLease,
    TaskFailed,
    TaskStopped,
    WaitHooks,
    await_result,
    default_dispatcher,
    read_result,
    run_end_hooks,
    update_task,
    utcnow,
)
from cloudkeep.server.sessions.access import (
    DEFAULT_CREDENTIALS_TTL,
    MachineKeys,
    agent_access,
    close_opened,
    load_repository,
    machine_keys,
    open_with_full_keys,
    repository_password,
)
from cloudkeep.server.sessions.runtime import append_log

log = logging.getLogger(__name__)


def _parse_time(value: Any, default: datetime) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except ValueError:
            return default
    return default


class SessionRunner:
    """Runs one backup session to its end; safe to construct anywhere, runs in the calling thread."""

    def __init__(
        self,
        ctx: ServerContext,
        session_id: str,
        dispatcher: CommandSender | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ctx = ctx
        self.session_id = session_id
        self._dispatcher = dispatcher
        self.clock = clock
        self.provider: CloudProvider | None = None
        self.options = JobOptions()  # the job's, typed, once the session starts
        self.window: Schedule | None = None  # set for scheduled runs whose window terminates them
        self._manifests: manifest_pins.ManifestReader | None = None  # opened on the first result
        self._manifest_repo: FormatRepository | None = None
        self._manifests_lock = threading.Lock()
        self._maintenance: ret.ServerMaintenance | None = None  # forget/prune here, set per run

    @property
    def dispatcher(self) -> CommandSender:
        if self._dispatcher is None:
            self._dispatcher = default_dispatcher(self.ctx)
        return self._dispatcher

    def stop_requested(self) -> bool:
        with self.ctx.db() as db:
            return self._stopped(db) is not None

    def _stopped(self, db: Session) -> JobSession | None:
        """The session row when it is to stop (in ``db``'s transaction), else None."""
        session = db.get(JobSession, self.session_id)
        if session is None:
            return None
        closed = self.window is not None and not in_window(self.window, self.clock())
        if closed and not session.stop_requested:  # the window closed: stop as an administrator would
            session.stop_requested = True
            session.stats = {**(session.stats or {}), "stopped_by": "backup window"}
        return session if session.stop_requested else None

    def _stop_reason(self) -> str:
        with self.ctx.db() as db:
            return stop_reason_of(db.get(JobSession, self.session_id))

    def run(self) -> None:
        with SessionLease(self.ctx, self.session_id):
            self._run()

    def _run(self) -> None:
        started = self.clock()
        with self.ctx.db() as db:
            session = db.get(JobSession, self.session_id)
            assert session is not None
            session.state, session.started_at = "running", started
            job = db.get(BackupJob, session.job_id)
            assert job is not None
            task_ids = [(t.id, t.machine_id) for t in session.tasks]
            self.window = terminating_window(job, session.trigger)
            event(log, "session_started", session=self.session_id, job=job.name, trigger=session.trigger,
                  attempt=session.attempt, machines=len(task_ids))  # fmt: skip
        try:
            if not task_ids:
                raise ConfigurationError(
                    f"job {job.name!r} has no machines",
                    hint="add a protection group with deployed machines, or run a rescan",
                )
            self.repository = load_repository(self.ctx, job.repository_id)
            self.password = repository_password(self.ctx, self.repository, job)
            self.provider = self.ctx.provider_for(self.repository.credential_id)
            self.job = job
            self.options = read_job_options(job.name, job.options)
            # The job's own parallelism, capped by the server's; all sessions share the process's slots.
            parallel = min(self.options.parallel_machines or 4, self.ctx.settings.parallel_machines)
            slots = machine_slots(self.ctx.settings.parallel_machines)
            self._maintenance = ret.ServerMaintenance(self.provider, self.repository.location, self.password)
            with ThreadPoolExecutor(max_workers=min(parallel, len(task_ids))) as pool:
                list(pool.map(lambda pair: self._run_task_in(slots, *pair), task_ids))
            self._end_steps([machine_id for _, machine_id in task_ids])
            finish_session(self.ctx, self.session_id, started, self.clock(), None)
        except CloudkeepError as exc:
            finish_session(self.ctx, self.session_id, started, self.clock(), str(exc))
        except Exception as exc:  # a bug must still end the session, never leave it "running"
            log.exception("session %s crashed", self.session_id)
            error = f"internal error: {type(exc).__name__}: {exc}"
            finish_session(self.ctx, self.session_id, started, self.clock(), error)
        finally:
            if self._manifest_repo is not None:
                close_opened(self._manifest_repo)
            if self._maintenance is not None:
                self._maintenance.close()
            if self.provider is not None:
                self.provider.close()
        self._after()

    def _end_steps(self, machine_ids: list[str]) -> None:
        """Lock, vouch, prune (``session_end``); vouch and prune not after a stop, prune not when the
        job opts out."""
        maintenance = self._maintenance
        assert maintenance is not None
        if self.repository.immutability_days:
            session_end.lock_new(self.ctx, self.session_id, maintenance, machine_ids, self.clock())
        if self.stop_requested():
            return
        session_end.vouch(self.ctx, self.session_id, maintenance)
        if self.options.prune is not False and not self.stop_requested():
            session_end.prune(self.ctx, self.session_id, maintenance, self.clock())

    # --- one machine ---

    def _run_task_in(self, slots: Slots, task_id: str, machine_id: str) -> None:
        """One machine's task once the process has a slot for it (``machine_slots``)."""
        with slots:
            self._run_task(task_id, machine_id)

    def _run_task(self, task_id: str, machine_id: str) -> None:
        started = self.clock()
        machine = self._start_task(task_id, machine_id, started)
        if machine is None:
            return
        # The task's statistics, end state and end time go in one write when it ends (issue 18).
        stats: dict[str, Any] = {}
        message, fields = "", {}
        try:
            result = self._backup(task_id, machine)
            point_id, warnings, stats = self._record_success(task_id, machine, result, started)
            warnings += self._apply_retention(task_id, machine)
            state = "warning" if warnings else "success"
            message, fields = (
                f"restore point {point_id} recorded",
                {"state": state, "reason": "; ".join(warnings)},
            )
        except TaskStopped:
            message, fields = "stopped", {"state": "stopped", "reason": self._stop_reason()}
        except CloudkeepError as exc:
            message, fields = str(exc), {"state": "failed", "reason": str(exc)}
        except Exception as exc:
            log.exception("task %s crashed", task_id)
            message, fields = (
                f"internal error: {exc}",
                {"state": "failed", "reason": f"internal error: {exc}"},
            )
        finally:
            self._end_task(task_id, message, fields, stats)

    def _start_task(self, task_id: str, machine_id: str, started: datetime) -> DiscoveredMachine | None:
        """Read the machine and the stop flag and mark the task running, stopped or skipped, in one
        transaction; the machine when it is to be backed up."""
        with self.ctx.db() as db:
            machine = db.get(DiscoveredMachine, machine_id)
            assert machine is not None
            stopped = self._stopped(db)
            task = db.get(SessionTask, task_id)
            if stopped is not None:
                reason = stop_reason_of(stopped) + " before this machine started"
                fields: dict[str, Any] = {"state": "stopped", "reason": reason, "ended_at": self.clock()}
            elif machine.status != "deployed":
                why = f": {machine.status_reason}" if machine.status_reason else ""
                reason = (
                    f"machine {machine.name} is not deployed (status {machine.status}{why}); "
                    "run a rescan of its protection group to deploy it"
                )
                fields = {"state": "skipped", "reason": reason, "ended_at": self.clock()}
            else:
                reason, fields = f"backing up {machine.name}", {"state": "running", "started_at": started}
            if task is not None:
                for key, value in fields.items():
                    setattr(task, key, value)
                append_log(task, reason)
            return machine if fields["state"] == "running" else None

    def _end_task(self, task_id: str, message: str, fields: dict[str, Any], stats: dict[str, Any]) -> None:
        """The task's last write: its statistics (merged into what progress reports left), end state,
        log line and end time."""
        with self.ctx.db() as db:
            task = db.get(SessionTask, task_id)
            if task is None:
                return
            if stats:
                task.stats = {**(task.stats or {}), **stats}
                task.bytes_read = int(stats.get("bytes_read", task.bytes_read or 0))
                task.bytes_transferred = int(stats.get("bytes_transferred", task.bytes_transferred or 0))
                task.files = int(stats.get("files", task.files or 0))
                task.progress = 1.0
            for key, value in fields.items():
                setattr(task, key, value)
            if message:
                append_log(task, message, "error" if fields.get("state") == "failed" else "info")
            task.ended_at = self.clock()

    def _access(self, machine_id: str) -> tuple[dict[str, Any], int]:
        assert self.provider is not None
        ttl = int(self.options.credentials_ttl_seconds or DEFAULT_CREDENTIALS_TTL)
        try:
            self._manifest_reader()  # the repository opened with full keys, once a run
        except NotFoundError:  # not initialised yet: the machine creates it on first use, as before
            keys = MachineKeys(password=self.password)
        else:
            assert self._manifest_repo is not None
            # Format 3: a writer bundle, with the key of this machine's own index files.
            keys = machine_keys(self._manifest_repo, self.password, machine_id=machine_id)
        access = agent_access(self.provider, self.repository, machine_id, keys, expires_seconds=ttl)
        return access, ttl

    def _backup(self, task_id: str, machine: DiscoveredMachine) -> BackupResult:
        days = self.repository.immutability_days
        retain_until = self.clock() + timedelta(days=days) if days else None
        body = build_backup_body(self.job, machine, retain_until)
        access, ttl = self._access(machine.id)
        timeout = self.options.task_timeout_seconds or 24 * 3600.0
        command_id = self.dispatcher.send(
            machine.id, "backup", body, sealed=access, task_id=task_id, ttl=timeout
        )
        update_task(self.ctx, task_id, f"backup command {command_id} sent", command_id=command_id)
        payload = self._await(task_id, machine, command_id, timeout=timeout, refresh_every=ttl * 2 / 3)
        return read_result(BackupResult, machine.name, payload)

    def _await(
        self,
        task_id: str,
        machine: DiscoveredMachine,
        command_id: str,
        *,
        timeout: float,
        refresh_every: float,
    ) -> dict[str, Any]:
        """The session runtime's wait, with this runner's cancel, grace and credential refresh."""
        hooks = WaitHooks(
            stop_requested=self.stop_requested,
            cancel=lambda: self._cancel(task_id, machine, command_id),
            refresh=lambda: self._refresh_credentials(task_id, machine, command_id),
            refresh_every=refresh_every,
            still_running=lambda: self._still_running(command_id),
            slice_seconds=self.options.poll_slice_seconds or 2.0,
        )
        try:
            payload = await_result(self.dispatcher, command_id, timeout=timeout, hooks=hooks)
        except TimeoutError as exc:
            raise TaskFailed(f"{machine.name} did not finish the backup within {timeout:.0f} s") from exc
        except CloudkeepError as exc:
            raise TaskFailed(f"{machine.name}: {exc.message}", hint=exc.hint) from exc
        except Exception as exc:
            raise TaskFailed(f"{machine.name}: {exc}") from exc
        if payload is None:
            raise TaskStopped()
        return payload

    def _cancel(self, task_id: str, machine: DiscoveredMachine, command_id: str) -> float:
        """Tell the machine to stop ``command_id``; returns how many seconds to wait for its answer."""
        grace = self.options.cancel_grace_seconds
        grace = 120.0 if grace is None else grace
        try:
            self.dispatcher.send(machine.id, "cancel", {"command_id": command_id}, ttl=max(grace, 60.0))
            update_task(self.ctx, task_id, f"stop requested: cancel sent to {machine.name}")
        except CloudkeepError as exc:
            update_task(self.ctx, task_id, f"could not send cancel to {machine.name}: {exc}")
            return 0.0
        return grace

    def _still_running(self, command_id: str) -> bool:
        with self.ctx.db() as db:
            record = db.get(CommandRecord, command_id)
            return record is not None and record.state in ("sent", "running")

    def _refresh_credentials(self, task_id: str, machine: DiscoveredMachine, command_id: str) -> None:
        access, _ttl = self._access(machine.id)
        try:
            self.dispatcher.send(
                machine.id,
                "update_credentials",
                {"command_id": command_id},
                sealed=access,
                ttl=600,
            )
            update_task(self.ctx, task_id, "storage credentials refreshed")
        except CloudkeepError as exc:  # the task may still finish with the old ones
            update_task(self.ctx, task_id, f"could not refresh storage credentials: {exc}")

    def _record_success(
        self, task_id: str, machine: DiscoveredMachine, result: BackupResult, started: datetime
    ) -> tuple[str, list[str], dict[str, Any]]:
        """Record the restore point (with any notes on its pin in the task's log, same transaction);
        the point's id, the agent's warnings and the task's statistics (written when the task ends)."""
        snapshot_id = result.snapshot_id
        if not snapshot_id:
            raise TaskFailed(f"{machine.name} reported success without a restore point id")
        ended = self.clock()
        stats = task_stats(result.stats, (ended - started).total_seconds())
        created = _parse_time(result.snapshot_time, ended)
        days = self.repository.immutability_days
        notes: list[str] = []
        pin = self._pin_manifest(machine, snapshot_id, result, notes.append)
        with self.ctx.db() as db:
            existing = db.scalar(
                select(RestorePoint).where(
                    RestorePoint.repository_id == self.repository.id, RestorePoint.snapshot_id == snapshot_id
                )
            )
            point = existing or RestorePoint(
                repository_id=self.repository.id,
                machine_id=machine.id,
                job_id=self.job.id,
                session_id=self.session_id,
                snapshot_id=snapshot_id,
                mode=self.job.mode,
                created_at=created,
                # what the point holds (every file's size), not what this incremental had to read
                size=int(stats.get("bytes_processed", stats.get("bytes_read", 0))),
                files=int(stats.get("files", 0)),
                retain_until=created + timedelta(days=days) if days else None,
                gfs=[],
                manifest_digest=pin.digest if pin else None,
                root_tree=pin.tree if pin else None,
            )
            db.add(point)
            if notes:
                task = db.get(SessionTask, task_id)
                if task is not None:
                    for note in notes:
                        append_log(task, note)
            db.flush()
            point_id = point.id
        return point_id, list(result.warnings), {**stats, "snapshot_id": snapshot_id}

    def _pin_manifest(
        self, machine: DiscoveredMachine, snapshot_id: str, result: BackupResult, note: Callable[[str], None]
    ) -> manifest_pins.ManifestPin | None:
        try:
            return manifest_pins.pin_backup(
                self._manifest_reader, machine.id, snapshot_id, result.model_dump(mode="json"), note
            )
        except (IntegrityError, NotFoundError) as exc:  # not what the machine reported: record nothing
            raise TaskFailed(f"{machine.name}: {exc.message}", hint=exc.hint) from None

    def _manifest_reader(self) -> manifest_pins.ManifestReader:
        with self._manifests_lock:
            if self._manifests is None:
                assert self.provider is not None
                repo = open_with_full_keys(
                    self.provider, self.repository.location, self.password, load_index=False
                )
                self._manifest_repo = repo
                self._manifests = manifest_pins.ManifestReader.over_repository(repo)
            return self._manifests

    def _apply_retention(self, task_id: str, machine: DiscoveredMachine) -> list[str]:
        """Flag GFS points and forget, here on the server, what the policy no longer keeps.

        The machine takes no part: its credentials cannot delete (docs/security.md). Warnings only.
        """
        try:
            policy = RetentionPolicy.from_mapping(self.job.retention)
            points = ret.catalog_points(self.ctx, self.job.id, machine.id)
            plan = ret.plan_points(points, policy, self.clock())
            ret.record_gfs_flags(self.ctx, plan, points)
            if not plan.remove:
                return []
            body = ret.retention_command_body(
                points, plan, prune=False, hostname=backup_set(machine.id, self.job.id)
            )
            assert self._maintenance is not None
            outcome = self._maintenance.forget(
                machine.id, body["forget"], hostname=body["hostname"], now=self.clock()
            )
            touched = ret.mark_removed(self.ctx, self.repository.id, outcome.removed, self.clock())
            update_task(self.ctx, task_id, f"retention removed {len(touched)} restore point(s)")
            return []
        except TaskStopped:
            raise
        except CloudkeepError as exc:
            return [f"retention not applied: {exc}"]

    def _after(self) -> None:
        """Notifications, then the session-end hooks (retries, chained jobs): each may fail alone."""
        try:
            notifications.notify_session(self.ctx, self.session_id)
        except Exception:
            log.exception("a post-session hook failed for %s", self.session_id)
        run_end_hooks(self.ctx, self.session_id, self._dispatcher)
