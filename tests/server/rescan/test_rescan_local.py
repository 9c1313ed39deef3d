"""Rescan against the local provider: simulated machines, the SQLite queue, the signed-URL server.

Every deployment is real: the bundle is built from this package, downloaded through a signed
URL, verified and installed by ``install.sh`` into the machine's root, and the three services
run as processes that must answer a ping through the queues.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.server.rescan_support import RescanWorld, wait_for

from cloudkeep.providers.local import Lab
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.rescan import (
    bundles,
    deploy,
    scripts,
    set_bundle_version,
    start_rescan,
    wait_for_session,
)
from cloudkeep.server.rescan.deploy import OWNER_TAG
from cloudkeep.server.scheduling.rescans import due_rescans

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path, lab: Lab) -> Iterator[RescanWorld]:
    w = RescanWorld.create(tmp_path / "home", lab)
    yield w
    w.close()


def _pid(machine_root: Path, service: str = "message") -> int:
    return int((machine_root / f"var/run/cloudkeep/cloudkeep-{service}.pid").read_text())


def test_rescan_deploys_linux_machines_then_a_second_rescan_changes_nothing(world: RescanWorld) -> None:
    web1, web2 = world.linux("web1"), world.linux("web2")

    first = start_rescan(world.ctx, world.group_id, wait=True)

    session = world.session(first)
    assert session.state == "success", session.reason
    assert (
        session.stats.items()
        >= {"found": 2, "total": 2, "seen": 2, "deployed": 2, "installed": 2, "failed": 0}.items()
    )
    machines = world.machines()
    for name, simulated in (("web1", web1), ("web2", web2)):
        row = machines[name]
        assert row.status == "deployed", row.status_reason
        assert row.agent_version == "0.1.0" and row.agent_queue
        assert {"signing_public_key", "encryption_public_key"} <= set(eval_json(row.agent_public_key))
        assert [s for s, outcome, _ in world.steps(name) if outcome == "ok"] == [
            "probe", "ownership", "prerequisites", "queues", "upload", "install", "confirm",
        ]  # fmt: skip
        assert simulated.info()["tags"][OWNER_TAG] == world.ctx.server_id
        assert (simulated.root / "opt/cloudkeep/VERSION").read_text().strip() == "0.1.0"
        assert (simulated.root / "etc/cloudkeep/machine.json").stat().st_mode & 0o077 == 0
    assert "ping answered through the queues" in world.steps("web1")[-1][2]
    pid_before, steps_before = _pid(web1.root), world.step_count()

    second = start_rescan(world.ctx, world.group_id, wait=True)

    again = world.session(second)
    assert again.state == "success", again.reason
    assert again.stats["installed"] == 0 and again.stats["deployed"] == 2
    assert world.step_count() == steps_before  # steps are updated in place, never duplicated
    assert len(world.machines()) == 2
    assert [o for s, o, _ in world.steps("web1") if s in ("upload", "install")] == ["skipped", "skipped"]
    assert _pid(web1.root) == pid_before  # nothing reinstalled or restarted
    assert again.ended_at and again.started_at and first != second


def eval_json(text: str | None) -> dict[str, str]:
    import json

    assert text
    value: dict[str, str] = json.loads(text)
    return value


def test_every_refusal_path_has_a_clear_reason(world: RescanWorld) -> None:
    world.linux("foreign", tags={OWNER_TAG: "ck-another-server"})
    world.linux("stopped", state="stopped")
    world.linux("secureboot", secure_boot=True)
    world.linux("nopython", env={"CLOUDKEEP_PYTHON": "/nonexistent/python3"})
    world.lab.create_machine("oldps", platform="windows", powershell_version="5.0.10586.117")
    world.lab.create_machine("blocked", platform="windows", execution_policy="Restricted")

    session = world.session(start_rescan(world.ctx, world.group_id, wait=True))

    assert session.state == "warning"
    machines = world.machines()
    expected = {
        "foreign": ("foreign", "managed by another backup server (cloudkeep:server=ck-another-server)"),
        "stopped": ("skipped", "the machine is stopped, not running"),
        "secureboot": ("skipped", "no Linux agent on UEFI Secure Boot machines"),
        "nopython": ("skipped", "no Python ≥ 3.9 on the machine (found none): install Python 3.9 or later"),
        "oldps": ("skipped", "Windows PowerShell 5.1 or later is required (found 5.0.10586.117)"),
        "blocked": ("failed", "scripts are blocked by the PowerShell execution policy"),
    }
    for name, (status, reason) in expected.items():
        assert machines[name].status == status, (name, machines[name].status_reason)
        assert reason in machines[name].status_reason, (name, machines[name].status_reason)
    assert "running scripts is disabled" in machines["blocked"].status_reason
    assert (
        session.stats.items() >= {"found": 6, "skipped": 4, "foreign": 1, "failed": 1, "deployed": 0}.items()
    )
    # Only a machine being taken is marked; the foreign one keeps its owner.
    for name in expected:
        tags = world.lab.get(name).info()["tags"]  # type: ignore[union-attr]
        assert tags.get(OWNER_TAG) == ("ck-another-server" if name == "foreign" else None), name
    assert world.steps("foreign")[-1][:2] == ("ownership", "skipped")
    assert world.steps("oldps")[-1][:2] == ("prerequisites", "skipped")
    assert world.steps("blocked")[-1][:2] == ("probe", "failed")


def test_windows_machine_is_skipped_at_prerequisites_until_a_service_host_exists(world: RescanWorld) -> None:
    world.lab.create_machine("win", platform="windows")

    start_rescan(world.ctx, world.group_id, wait=True)

    row = world.machines()["win"]
    assert row.status == "skipped"
    assert "Windows machines are not supported yet: cloudkeep has no Windows service" in row.status_reason
    assert [(s, o) for s, o, _ in world.steps("win")] == [
        ("probe", "ok"),
        ("ownership", "ok"),
        ("prerequisites", "skipped"),
    ]
    assert OWNER_TAG not in world.lab.get("win").info()["tags"]  # type: ignore[union-attr]


def test_two_rescans_of_one_group_at_once_share_one_session(world: RescanWorld) -> None:
    world.linux("web1")
    results: list[str] = []
    barrier = threading.Barrier(2)

    def rescan() -> None:
        barrier.wait()
        results.append(start_rescan(world.ctx, world.group_id, wait=True))

    threads = [threading.Thread(target=rescan) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(results) == 2 and results[0] == results[1]
    with world.ctx.db() as session:
        assert session.query(JobSession).filter_by(kind="rescan").count() == 1
    assert world.session(results[0]).state == "success"
    assert len(world.steps("web1")) == 7


def test_progress_is_live_and_a_newer_bundle_upgrades_with_auto_update(world: RescanWorld) -> None:
    web1 = world.linux("web1")
    session_id = start_rescan(world.ctx, world.group_id)  # returns at once
    assert world.session(session_id).state == "running"
    wait_for(lambda: world.session(session_id).stats.get("found") == 1, what="discovery in the stats")
    assert wait_for_session(world.ctx, session_id, timeout=120) == "success"
    keys_before, pid_before = world.machines()["web1"].agent_public_key, _pid(web1.root)

    set_bundle_version(world.ctx, "0.1.0.post1")
    upgraded = world.session(start_rescan(world.ctx, world.group_id, wait=True))

    assert upgraded.state == "success", upgraded.reason
    assert upgraded.stats["installed"] == 1
    row = world.machines()["web1"]
    assert row.agent_version == "0.1.0.post1"
    assert (web1.root / "opt/cloudkeep/VERSION").read_text().strip() == "0.1.0.post1"
    assert row.agent_public_key == keys_before  # keys survive an upgrade
    assert _pid(web1.root) != pid_before  # upgraded in place: stopped and started again


def test_without_auto_update_a_machine_on_an_older_bundle_is_reported_outdated(world: RescanWorld) -> None:
    web1 = world.linux("web1")
    start_rescan(world.ctx, world.group_id, wait=True)
    world.update_group(auto_update=False)
    set_bundle_version(world.ctx, "0.1.0.post2")

    session = world.session(start_rescan(world.ctx, world.group_id, wait=True))

    row = world.machines()["web1"]
    assert row.status == "outdated" and "auto-update is off" in row.status_reason
    assert session.state == "warning" and session.stats["outdated"] == 1
    assert (web1.root / "opt/cloudkeep/VERSION").read_text().strip() == "0.1.0"


def test_a_tampered_bundle_in_the_repository_fails_the_install_then_heals(world: RescanWorld) -> None:
    world.linux("web1")
    start_rescan(world.ctx, world.group_id, wait=True)
    archive = world.lab.path / "storage/distribution/bundles/0.1.0/cloudkeep-0.1.0-linux.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a checksum can tell
    archive.write_bytes(bytes(data))
    world.linux("web2")

    start_rescan(world.ctx, world.group_id, wait=True)

    machines = world.machines()
    assert machines["web1"].status == "deployed"  # already current: downloads nothing
    assert machines["web2"].status == "failed"
    assert "checksum mismatch" in machines["web2"].status_reason
    assert "tampered bundle" in machines["web2"].status_reason
    assert not archive.exists()  # discarded, so the next rescan uploads a good copy

    start_rescan(world.ctx, world.group_id, wait=True)
    assert world.machines()["web2"].status == "deployed"


def test_an_expired_signed_url_fails_the_install_clearly(
    world: RescanWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.linux("web1")
    monkeypatch.setattr(bundles, "URL_EXPIRES_SECONDS", -5)

    start_rescan(world.ctx, world.group_id, wait=True)

    row = world.machines()["web1"]
    assert row.status == "failed"
    assert "download of the bundle was refused" in row.status_reason
    assert "403" in row.status_reason
    assert world.steps("web1")[-1][:2] == ("install", "failed")


def test_machines_that_disappear_are_kept_as_missing_or_unmanaged(world: RescanWorld) -> None:
    world.linux("gone", state="stopped")
    world.linux("leaving", state="stopped", tags={"backup": "yes", OWNER_TAG: world.ctx.server_id})
    start_rescan(world.ctx, world.group_id, wait=True)
    world.lab.remove("gone")

    start_rescan(world.ctx, world.group_id, wait=True)
    assert world.machines()["gone"].status == "missing"
    assert "on_disappear=keep" in world.machines()["gone"].status_reason

    world.update_group(on_disappear="unmanage", include_tags={"backup": "no"})
    session = world.session(start_rescan(world.ctx, world.group_id, wait=True))
    leaving = world.machines()["leaving"]
    assert leaving.status == "unmanaged"
    assert OWNER_TAG not in world.lab.get("leaving").info()["tags"]  # type: ignore[union-attr]
    assert session.stats["missing"] == 2 and session.stats["found"] == 0


def test_rescan_of_selected_machines_only(world: RescanWorld) -> None:
    world.linux("a", state="stopped")
    world.linux("b", state="stopped")

    session = world.session(start_rescan(world.ctx, world.group_id, machine_ids=["b"], wait=True))

    assert session.stats["found"] == 1
    machines = world.machines()
    assert machines["b"].status == "skipped"
    assert machines["a"].status == "discovered"  # found by discovery, not processed


def test_due_rescans_follow_the_group_schedule(world: RescanWorld) -> None:
    now = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    assert due_rescans(world.ctx, now) == []  # no schedule
    world.update_group(
        rescan_schedule={"kind": "periodic", "every_hours": 1}, last_rescan_at=now - timedelta(hours=2)
    )
    assert due_rescans(world.ctx, now) == [world.group_id]
    world.update_group(last_rescan_at=now)  # next run at 11:00
    assert due_rescans(world.ctx, now + timedelta(minutes=10)) == []
    assert due_rescans(world.ctx, now + timedelta(minutes=31)) == [world.group_id]
    world.update_group(enabled=False)
    assert due_rescans(world.ctx, now + timedelta(minutes=31)) == []


def test_discovery_only_rescan_checks_without_deploying(world: RescanWorld) -> None:
    web1 = world.linux("web1")
    world.lab.create_machine("oldps", platform="windows", powershell_version="4.0")

    session = world.session(start_rescan(world.ctx, world.group_id, deploy=False, wait=True))

    machines = world.machines()
    assert (
        machines["web1"].status == "ready"
        and "deployment was not requested" in machines["web1"].status_reason
    )
    assert machines["oldps"].status == "skipped"
    assert [s for s, _, _ in world.steps("web1")] == ["probe", "ownership", "prerequisites"]
    assert not (web1.root / "opt/cloudkeep").exists() and OWNER_TAG not in web1.info()["tags"]
    assert session.stats["ready"] == 1 and session.state == "warning"

    start_rescan(world.ctx, world.group_id, wait=True)  # now deploy it
    start_rescan(world.ctx, world.group_id, deploy=False, wait=True)
    assert world.machines()["web1"].status == "deployed"  # a discovery-only rescan keeps it deployed
    assert len(world.steps("web1")) == 7


def test_a_tampered_signed_url_is_refused_by_the_local_url_server(world: RescanWorld) -> None:
    web1 = world.linux("web1")
    start_rescan(world.ctx, world.group_id, deploy=True, wait=True)  # publishes the bundle
    manifest, _ = bundles.current_bundle(world.ctx)
    provider = world.ctx.provider_for(world.credential_id)
    try:
        key = f"bundles/{manifest.version}/{manifest.archives['linux'].file}"
        good = provider.storage.signed_url("distribution", key, method="GET", expires_seconds=600)
        for url in (good.replace("sig=", "sig=0"), good.replace(manifest.version, "9.9.9")):
            script = scripts.linux_bootstrap(
                version=manifest.version, url=url, sha256=manifest.archives["linux"].sha256, config={}
            )
            machine = provider.inventory.get_machine(web1.id)
            assert machine is not None
            result = provider.commands.run(machine, script, timeout=120)
            outcome = scripts.read_install(result.exit_code, result.stdout, result.stderr)
            assert not outcome.ok and "download of the bundle was refused" in outcome.reason, url
            assert "403" in outcome.reason
    finally:
        provider.close()


def test_a_stop_request_leaves_the_remaining_machines_alone(
    world: RescanWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        world.linux(name, state="stopped")
    world.ctx.settings.rescan_concurrency = 1
    original = deploy.MachineDeployment.run

    def run_then_stop(self: deploy.MachineDeployment) -> str:
        with world.ctx.db() as session:  # the administrator presses stop during the first machine
            row = session.get(JobSession, self.env.session_id)
            assert row is not None
            row.stop_requested = True
        return original(self)

    monkeypatch.setattr(deploy.MachineDeployment, "run", run_then_stop)

    session = world.session(start_rescan(world.ctx, world.group_id, wait=True))

    assert session.state == "stopped" and session.stats["processed"] == 1
    assert sorted(m.status for m in world.machines().values()) == ["discovered", "discovered", "skipped"]


def test_a_rescan_left_running_by_a_dead_worker_is_ended_by_the_next(world: RescanWorld) -> None:
    with world.ctx.db() as session:
        session.add(
            JobSession(id="deadbeef", kind="rescan", protection_group_id=world.group_id, state="running")
        )

    new = start_rescan(world.ctx, world.group_id, wait=True)  # no lease is held: the old worker is gone

    assert new != "deadbeef" and world.session(new).state == "success"
    old = world.session("deadbeef")
    assert old.state == "failed" and "interrupted" in old.reason


def test_machines_are_handled_concurrently_up_to_the_bound(
    world: RescanWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        world.linux(f"m{i}", state="stopped")
    world.ctx.settings.rescan_concurrency = 2
    original = deploy.MachineDeployment.run
    lock, active, peak = threading.Lock(), [0], [0]
    both_running = threading.Barrier(2, timeout=10)

    def tracked(self: deploy.MachineDeployment) -> str:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        both_running.wait()  # two machines at once, or the barrier times out and the test fails
        try:
            return original(self)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(deploy.MachineDeployment, "run", tracked)

    session = world.session(start_rescan(world.ctx, world.group_id, wait=True))

    assert session.stats["processed"] == 6 and session.stats["skipped"] == 6
    assert peak[0] == 2


def test_an_old_machine_config_is_refreshed_without_reinstalling_the_code(world: RescanWorld) -> None:
    web1 = world.linux("web1")
    start_rescan(world.ctx, world.group_id, wait=True)
    row = world.machines()["web1"]
    written = row.facts["config_written_at"]
    old = (datetime.now(UTC) - deploy.CONFIG_REFRESH - timedelta(hours=1)).isoformat(timespec="seconds")
    with world.ctx.db() as session:
        stored = session.get(type(row), row.id)
        assert stored is not None
        stored.facts = {**stored.facts, "config_written_at": old}
    pid = _pid(web1.root)

    session = world.session(start_rescan(world.ctx, world.group_id, wait=True))

    assert session.state == "success" and session.stats["installed"] == 0  # same code, same config
    install = dict((s, (o, d)) for s, o, d in world.steps("web1"))["install"]
    assert install[0] == "ok" and "verified (unchanged)" in install[1]
    assert world.machines()["web1"].facts["config_written_at"] >= written
    assert _pid(web1.root) == pid  # the config did not change, so nothing restarted


def test_uninstall_stops_the_services_and_removes_cloudkeep_but_keeps_the_logs(world: RescanWorld) -> None:
    web1 = world.linux("web1")
    assert world.session(start_rescan(world.ctx, world.group_id, wait=True)).state == "success"
    pids = [_pid(web1.root, svc) for svc in ("message", "agent", "transport")]
    provider = world.ctx.provider_for(world.credential_id)
    try:
        machine = provider.inventory.get_machine(web1.id)
        assert machine is not None
        first = provider.commands.run(machine, scripts.linux_uninstall_script(), timeout=120)
        again = provider.commands.run(machine, scripts.linux_uninstall_script(), timeout=120)
    finally:
        provider.close()

    assert first.ok and "CLOUDKEEP-UNINSTALLED" in first.stdout, first.stderr
    assert again.ok and "CLOUDKEEP-UNINSTALLED" in again.stdout  # idempotent
    for folder in ("opt/cloudkeep", "etc/cloudkeep", "var/lib/cloudkeep", "var/run/cloudkeep"):
        assert not (web1.root / folder).exists(), folder
    assert (web1.root / "var/log/cloudkeep").is_dir()
    wait_for(lambda: not any(_running(pid) for pid in pids), what="the services to stop")


def _running(pid: int) -> bool:
    """The services are the installer's children (reparented), never ours: no zombies to reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
