"""One machine's rescan: a recorded, idempotent state machine with a clear reason at every stop.

Steps, in order: probe → ownership → prerequisites → queues → upload → install → confirm. Each
writes one ``DeploymentStep`` row per machine (updated in place on the next rescan, so rescans
never pile up rows) and sets ``DiscoveredMachine.status`` / ``status_reason``. A machine already
running the current bundle skips upload and install; an older one is upgraded only when its
group has auto-update on (otherwise it is reported ``outdated``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, select

from cloudkeep.errors import CloudkeepError
from cloudkeep.providers.base import CloudProvider, CommandCapacity, CommandResult, Machine, Platform
from cloudkeep.server.agent_compat import outdated_reason, split_registration
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DeploymentStep, DiscoveredMachine
from cloudkeep.server.pacing import ApiPacer
from cloudkeep.server.rescan import prerequisites, scripts
from cloudkeep.server.rescan.bundles import PublishedBundle

log = logging.getLogger(__name__)

T = TypeVar("T")
STEPS = ("probe", "ownership", "prerequisites", "queues", "upload", "install", "confirm")
OWNER_TAG = "cloudkeep:server"
PROBE_TIMEOUT = 120.0
INSTALL_TIMEOUT = 900.0
# The machine config carries queue credentials that expire (Azure queue SAS: 30 days); a machine
# already on the current bundle is re-installed (same code, new config) when its config is older.
CONFIG_REFRESH = timedelta(days=7)
CONFIRM_TIMEOUT = 60.0


class StepStop(Exception):
    """Ends a machine's state machine at the current step with a final status and reason."""

    def __init__(self, status: str, reason: str, outcome: str = "failed") -> None:
        super().__init__(reason)
        self.status, self.reason, self.outcome = status, reason, outcome


def server_queue_name(server_id: str) -> str:
    return f"ck-{server_id}-server"


def agent_queue_name(server_id: str, machine_id: str) -> str:
    return f"ck-{server_id}-{machine_id[:12]}"


@dataclass
class RescanEnvironment:
    """What every machine of one rescan session shares (provider, bundle, group options, hooks)."""

    ctx: ServerContext
    provider: CloudProvider
    session_id: str
    auto_update: bool
    bundle_version: str
    ensure_server_queue: Callable[[], dict[str, Any]]  # once per session; returns connection info
    publish_bundle: Callable[[], PublishedBundle]  # once per session
    discard_archive: Callable[[str], None]  # a platform archive failed verification on a machine
    confirm: Callable[[DiscoveredMachine, Machine, datetime | None], str]  # raises StepStop; returns detail
    heartbeat_fresh: Callable[[DiscoveredMachine], bool]
    heartbeat_seconds: float = 30.0
    deploy: bool = True  # False: discovery and checks only (probe, ownership, prerequisites)
    install_python: bool = False  # the group lets the installer add Python with the OS package manager
    pacer: ApiPacer | None = None  # the cloud API's rate limits (None: not paced)
    # Probe results gathered for many machines at once (``probe_in_batches``), by cloud id
    probes: dict[str, CommandResult | CloudkeepError] = field(default_factory=dict)

    def paced(self, kind: str, machine: Machine, action: Callable[[], T]) -> T:
        """Run one cloud API call (``kind`` "read"/"write") within the account's published limits."""
        return action() if self.pacer is None else self.pacer.call(kind, machine.region, action)


def probe_in_batches(env: RescanEnvironment, machines: list[Machine]) -> None:
    """Probe the running machines with as few calls as the command channel allows (SSM: 50
    machines a SendCommand, so a token of the write budget per batch, even a batch of one; its
    status reads are paced reads, one listing per batch), filling ``env.probes``; each
    machine's state machine then reads its own result. Nothing happens for a channel that takes
    one machine a call (Azure), where the probe stays in each machine's own step."""
    commands = env.provider.commands
    if commands.batch_size <= 1:
        return
    by_platform: dict[Platform, list[Machine]] = {}
    for machine in machines:
        if machine.state == "running":
            by_platform.setdefault(machine.platform, []).append(machine)
    for platform, group in by_platform.items():
        script = scripts.probe_script(platform)
        try:
            found = commands.run_many(group, script, timeout=PROBE_TIMEOUT, pacer=env.pacer)
        except CloudkeepError as exc:  # the whole channel failed: every machine says so
            found = {machine.id: exc for machine in group}
        env.probes.update(found)


class MachineDeployment:
    """Runs the steps for one machine; ``run`` returns the final status."""

    def __init__(self, env: RescanEnvironment, machine: Machine, machine_row_id: str) -> None:
        self.env = env
        self.machine = machine
        self.row_id = machine_row_id
        self.seq = 0
        self.probe: scripts.ProbeFacts | None = None
        self.current = False  # already at the bundle version: install steps skipped
        self.outdated = False
        self.outdated_why: str | None = None  # the agent's level is below what this server needs
        self.published: PublishedBundle | None = None
        self.installed = False  # this rescan installed or upgraded the code
        self.started_at: datetime | None = None  # when this rescan started the services
        self.capacity: CommandCapacity | None = None  # the machine's command slots, where limited

    # --- recording ------------------------------------------------------------------------------

    def _record(self, step: str, outcome: str, detail: str, *, status: str | None = None,
                reason: str | None = None, **fields: Any) -> None:  # fmt: skip
        seq = STEPS.index(step) + 1
        self.seq = max(self.seq, seq)
        with self.env.ctx.db() as session:
            row = session.scalar(
                select(DeploymentStep).where(
                    DeploymentStep.machine_id == self.row_id, DeploymentStep.step == step
                )
            )
            if row is None:
                row = DeploymentStep(machine_id=self.row_id, step=step, seq=seq)
                session.add(row)
            row.session_id, row.outcome, row.detail, row.at = (
                self.env.session_id,
                outcome,
                detail,
                utcnow(),
            )
            machine = session.get(DiscoveredMachine, self.row_id)
            assert machine is not None
            if status is not None:
                machine.status = status
            if reason is not None:
                machine.status_reason = reason
            for key, value in fields.items():
                setattr(machine, key, value)

    def _status(self, status: str) -> None:
        with self.env.ctx.db() as session:
            machine = session.get(DiscoveredMachine, self.row_id)
            assert machine is not None
            machine.status = status

    def _row(self) -> DiscoveredMachine:
        with self.env.ctx.db() as session:
            machine = session.get(DiscoveredMachine, self.row_id)
            assert machine is not None
            session.expunge(machine)
            return machine

    # --- the state machine -------------------------------------------------------------------------

    def run(self) -> str:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("probe", self.step_probe),
            ("ownership", self.step_ownership),
            ("prerequisites", self.step_prerequisites),
            ("queues", self.step_queues),
            ("upload", self.step_upload),
            ("install", self.step_install),
            ("confirm", self.step_confirm),
        ]
        final = "deployed"
        try:
            for name, step in steps[:-1]:
                self._status(_ACTIVE[name])
                detail = step()
                outcome = "skipped" if detail.startswith("skipped:") else "ok"
                if name == "prerequisites" and not self.env.deploy:
                    return self._checks_only(detail)
                self._record(name, outcome, detail.removeprefix("skipped: "))
            self._status(_ACTIVE["confirm"])
            detail = self.step_confirm()
            if self.outdated:
                final = "outdated"
                installed = self.probe.installed_version if self.probe else "?"
                available = self.env.bundle_version
                behind = self.outdated_why or f"bundle {installed} installed, {available} available"
                reason = f"{behind}; auto-update is off"
            else:
                reason = f"deployed: bundle {self.env.bundle_version}, services answer"
            self._record("confirm", "ok", detail, status=final, reason=reason)
        except StepStop as stop:
            final = stop.status
            self._record(STEPS[self.seq] if self.seq < len(STEPS) else STEPS[-1], stop.outcome, stop.reason,
                         status=stop.status, reason=stop.reason)  # fmt: skip
        except Exception as exc:
            log.exception("rescan of %s failed", self.machine.id)
            final = "failed"
            at = STEPS[self.seq] if self.seq < len(STEPS) else STEPS[-1]
            message = (
                str(exc)
                if isinstance(exc, CloudkeepError)
                else f"internal error: {type(exc).__name__}: {exc}"
            )
            self._record(at, "failed", message, status="failed", reason=f"{at}: {message}")
        self._forget_later_steps()
        return final

    def _checks_only(self, detail: str) -> str:
        """Discovery-only rescan: report the checks; a machine already on the bundle stays deployed."""
        if self.current:
            status = "deployed"
            reason = f"bundle {self.env.bundle_version} installed (services not checked: discovery only)"
        else:
            status, reason = "ready", "checks passed; deployment was not requested (discovery only)"
        self._record("prerequisites", "ok", detail, status=status, reason=reason)
        return status

    def _forget_later_steps(self) -> None:
        """Rows of steps this rescan did not reach would describe an older attempt: drop them."""
        with self.env.ctx.db() as session:
            session.execute(
                delete(DeploymentStep)
                .where(DeploymentStep.machine_id == self.row_id, DeploymentStep.seq > self.seq)
                .execution_options(synchronize_session=False)
            )

    def step_probe(self) -> str:
        machine = self.machine
        if machine.state != "running":
            raise StepStop(
                "skipped", f"the machine is {machine.state}, not running; rescan when it runs", "skipped"
            )
        try:
            # Asked before probing: the probe itself may need the capacity (Azure's run-command slots).
            commands = self.env.provider.commands
            self.capacity = self.env.paced("read", machine, lambda: commands.command_capacity(machine))
        except CloudkeepError as exc:
            raise StepStop("failed", f"cannot list the machine's managed run commands: {exc}") from exc
        if self.capacity is not None and self.capacity.refusal:
            return f"skipped: not run, {self.capacity.refusal}"
        try:
            result = self.env.probes.get(machine.id)
            if result is None:
                asked = scripts.probe_script(machine.platform)
                result = commands.run(machine, asked, timeout=PROBE_TIMEOUT, pacer=self.env.pacer)
            elif isinstance(result, CloudkeepError):
                raise result
        except CloudkeepError as exc:
            raise StepStop("failed", f"the command channel cannot reach the machine: {exc}") from exc
        if result.timed_out:
            raise StepStop(
                "failed",
                f"the probe got no answer within {PROBE_TIMEOUT:.0f} s: the cloud agent on the machine "
                "(SSM agent / Azure VM agent) is missing or offline",
            )
        probe = scripts.read_probe(machine.platform, result.exit_code, result.stdout, result.stderr)
        if not probe.ok:
            raise StepStop("failed", probe.reason)
        self.probe = probe
        with self.env.ctx.db() as session:
            row = session.get(DiscoveredMachine, self.row_id)
            assert row is not None
            row.facts = {**row.facts, **probe.facts}
        facts = ", ".join(f"{k}={v}" for k, v in sorted(probe.facts.items()))
        return f"the command channel ran the probe ({facts or 'no facts'})"

    def step_ownership(self) -> str:
        owner = next((v for k, v in self.machine.tags.items() if k.lower() == OWNER_TAG), None)
        if owner and owner != self.env.ctx.server_id:
            raise StepStop(
                "foreign",
                f"managed by another backup server ({OWNER_TAG}={owner}); left untouched — remove the tag "
                "there first to move the machine to this server",
                "skipped",
            )
        return "already marked by this server" if owner else "not managed by any other server"

    def step_prerequisites(self) -> str:
        machine, facts = self.machine, (self.probe.facts if self.probe else {})
        capacity = self.capacity
        if capacity is not None and capacity.refusal:
            raise StepStop("skipped", f"{capacity.refusal}; {capacity.remedy}", "skipped")
        if machine.platform == Platform.WINDOWS:
            version = facts.get("powershell_version")
            if scripts.powershell_too_old(version):
                raise StepStop(
                    "skipped",
                    f"Windows PowerShell 5.1 or later is required (found {version or 'unknown'})",
                    "skipped",
                )
            # The Windows installer exists, but no Windows service host runs the services yet: say
            # so here instead of failing after the upload.
            raise StepStop("skipped", prerequisites.windows_reason(version), "skipped")
        secure_boot = machine.secure_boot if machine.secure_boot is not None else facts.get("secure_boot")
        if secure_boot:
            reason = "no Linux agent on UEFI Secure Boot machines (Secure Boot is on)"
            raise StepStop("skipped", reason, "skipped")
        blocker = prerequisites.linux_blocker(facts, install_python=self.env.install_python)
        if blocker:
            raise StepStop("skipped", blocker, "skipped")
        chosen = prerequisites.pick_python(facts)
        python = f"Python {chosen[1]} ({chosen[0]})" if chosen else "no Python ≥ 3.9: the installer adds one"
        detail = f"Secure Boot off, {python}"
        if facts.get("os"):
            detail += f", {facts['os']} {facts.get('os_version', '')}".rstrip()
        if facts.get("glibc"):
            detail += f", glibc {facts['glibc']}"
        if capacity is not None:
            detail += f", {capacity.in_use}"
        row = self._row()
        installed = self.probe.installed_version if self.probe else None
        if installed is None and machine.platform == Platform.WINDOWS:
            installed = row.agent_version  # the Windows probe cannot read files on the simplest hosts
        too_old = outdated_reason(row.agent_level) if row.agent_public_key else None
        if too_old and installed:
            self.outdated_why = too_old
            if self.env.auto_update:
                detail += f"; {too_old}: upgrading to bundle {self.env.bundle_version}"
            else:
                self.outdated = True
                detail += f"; {too_old}, auto-update off"
        elif installed == self.env.bundle_version and row.agent_public_key and not _config_stale(row):
            self.current = True
            detail += f"; bundle {installed} already installed"
        elif installed == self.env.bundle_version and row.agent_public_key:
            age = CONFIG_REFRESH.days
            detail += f"; bundle {installed} installed, config older than {age} days: refreshing it"
        elif installed and row.agent_public_key and not self.env.auto_update:
            self.outdated = True
            detail += f"; bundle {installed} installed, {self.env.bundle_version} available, auto-update off"
        return detail

    def step_queues(self) -> str:
        ctx, provider = self.env.ctx, self.env.provider
        owner = next((v for k, v in self.machine.tags.items() if k.lower() == OWNER_TAG), None)
        if owner != ctx.server_id:
            machine_id, server_id = self.machine.id, ctx.server_id
            self.env.paced(
                "write", self.machine, lambda: provider.inventory.set_tag(machine_id, OWNER_TAG, server_id)
            )
        self.env.ensure_server_queue()
        name = agent_queue_name(ctx.server_id, self.row_id)
        provider.queues.ensure_queue(name)
        with ctx.db() as session:
            row = session.get(DiscoveredMachine, self.row_id)
            assert row is not None
            row.agent_queue = name
        marked = "marked" if owner != ctx.server_id else "already marked"
        server_queue = server_queue_name(ctx.server_id)
        return f"{marked} {OWNER_TAG}={ctx.server_id}; server queue {server_queue}, agent queue {name}"

    def step_upload(self) -> str:
        if self.current or self.outdated:
            why = "current" if self.current else "auto-update off"
            return f"skipped: bundle {self.env.bundle_version} not needed ({why})"
        published = self.env.publish_bundle()
        self.published = published
        platform = self.machine.platform.value
        return (f"bundle {published.manifest.version} ({published.keys[platform]}) "
                f"{'uploaded to' if published.uploaded else 'already in'} {published.location}")  # fmt: skip

    def step_install(self) -> str:
        if self.current or self.outdated:
            why = "already installed" if self.current else "not installed: auto-update is off"
            return f"skipped: bundle {self.env.bundle_version} {why}"
        ctx, provider, published = self.env.ctx, self.env.provider, self.published
        assert published is not None
        platform = self.machine.platform.value
        archive = published.manifest.archives[platform]
        config = {
            "machine_id": self.row_id,
            "cloud_id": self.machine.id,
            "server_id": ctx.server_id,
            "server_public_key": ctx.public_key_b64,
            "agent_queue": provider.queues.connection_info(agent_queue_name(ctx.server_id, self.row_id)),
            "server_queue": self.env.ensure_server_queue(),
            "heartbeat_seconds": self.env.heartbeat_seconds,
        }
        url = published.signed_url(provider.storage, platform)
        version, sha256 = published.manifest.version, archive.sha256
        if self.machine.platform == Platform.WINDOWS:  # kept for when a Windows service host exists
            script = scripts.windows_bootstrap(version=version, url=url, sha256=sha256, config=config)
        else:
            facts = self.probe.facts if self.probe else {}
            chosen = prerequisites.pick_python(facts)
            script = scripts.linux_bootstrap(
                version=version, url=url, sha256=sha256, config=config, python=chosen[0] if chosen else None,
                install_python=prerequisites.python_install_script(facts) if self.env.install_python else "",
            )  # fmt: skip
        self._status("installing")
        try:
            result = provider.commands.run(
                self.machine, script, timeout=INSTALL_TIMEOUT, pacer=self.env.pacer
            )
        except CloudkeepError as exc:
            raise StepStop("failed", f"the command channel failed during install: {exc}") from exc
        outcome = scripts.read_install(result.exit_code, result.stdout, result.stderr)
        if not outcome.ok:
            if outcome.tampered:
                self.env.discard_archive(platform)
            raise StepStop("failed", f"install failed: {outcome.reason}")
        # The key is registered before the services start, so their first heartbeat is accepted.
        with ctx.db() as session:
            row = session.get(DiscoveredMachine, self.row_id)
            assert row is not None
            keys, row.agent_level = split_registration(outcome.keys or {})
            row.agent_public_key = json.dumps(keys, sort_keys=True)
            row.agent_version = outcome.version or published.manifest.version
            row.facts = {**row.facts, "config_written_at": utcnow().isoformat(timespec="seconds")}
        self.installed = outcome.changed
        mode = self._start_services()
        verb = "installed" if outcome.changed else "verified (unchanged)"
        return f"bundle {outcome.version} {verb}; agent key registered; services started ({mode})"

    def _start_services(self) -> str:
        """Start (restart after an upgrade) the three services.

        When the message service was (re)started, confirm waits for a heartbeat newer than that.
        """
        started_at = utcnow()
        try:
            start = scripts.start_script(self.machine.platform)
            commands = self.env.provider.commands
            result = commands.run(self.machine, start, timeout=INSTALL_TIMEOUT, pacer=self.env.pacer)
        except CloudkeepError as exc:
            raise StepStop(
                "failed", f"the command channel failed while starting the services: {exc}"
            ) from exc
        started = next((ln for ln in result.stdout.splitlines() if ln.startswith("CLOUDKEEP-STARTED")), None)
        if not result.ok or started is None:
            error = next(
                (ln.removeprefix("CLOUDKEEP-ERROR ") for ln in result.stdout.splitlines()
                 if ln.startswith("CLOUDKEEP-ERROR ")),
                scripts.tail(result.stderr or result.stdout),
            )  # fmt: skip
            raise StepStop("failed", f"the services did not start: {error}")
        fields = dict(part.split("=", 1) for part in started.split()[1:] if "=" in part)
        if fields.get("message-service") != "no":
            self.started_at = started_at
        return fields.get("services", "?")

    def step_confirm(self) -> str:
        """Heartbeat, then a ping answered through the queues; a silent deployed machine is restarted once."""
        row = self._row()
        healed = ""
        if self.started_at is None and not self.env.heartbeat_fresh(row):
            healed = f"services restarted ({self._start_services()}); "
        return healed + self.env.confirm(row, self.machine, self.started_at)


def _config_stale(row: DiscoveredMachine) -> bool:
    written = (row.facts or {}).get("config_written_at")
    if not written:
        return False  # deployed before this was recorded: refresh on the next upgrade
    try:
        at = datetime.fromisoformat(str(written))
    except ValueError:
        return True
    return utcnow() - at > CONFIG_REFRESH


_ACTIVE = {
    "probe": "probing",
    "ownership": "checking",
    "prerequisites": "checking",
    "queues": "preparing",
    "upload": "uploading",
    "install": "installing",
    "confirm": "confirming",
}
