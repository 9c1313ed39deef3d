"""End to end on the local provider: a backup job over three simulated machines whose real
machine-side processes (message service, agent, transport) write to the repository, then every
kind of restore verified byte for byte, and the bad-input paths.

Nothing here is faked: the real dispatcher and server-queue consumers, the SQLite queues, the
signed/sealed protocol, the engine on the machine side (``tests.machine.harness``).
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.machine.harness import Harness, MachineHandle, wait_for
from tests.support.paths import in_machine, tree_bytes

from cloudkeep.errors import AuthenticationError, ConfigurationError
from cloudkeep.repo import Repository as EngineRepository
from cloudkeep.server.db.models import (
    BackupJob,
    CommandRecord,
    DiscoveredMachine,
    JobSession,
    Repository,
    RestorePoint,
)
from cloudkeep.server.jobs import start_job
from cloudkeep.server.restore import (
    browse,
    download_files,
    export_image,
    search,
    start_file_restore,
    start_volume_restore,
)

pytestmark = pytest.mark.slow
PASSWORD = "e2e repository password"


def populate(machine: MachineHandle, seed: int) -> Path:
    data = machine.sim.root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "notes.txt").write_text(f"machine {machine.name}\n" * 100)
    (data / "sub" / f"blob-{seed}.bin").write_bytes(os.urandom(300_000))
    (data / "shared.bin").write_bytes(b"same on every machine " * 20_000)  # deduplicated
    (data / "empty").write_bytes(b"")
    os.chmod(data / "notes.txt", 0o640)
    os.utime(data / "notes.txt", (1_600_000_000, 1_600_000_000))
    return data


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("jobs-e2e")
    harness = Harness.create(tmp, heartbeat_timeout=30.0)
    provider = harness.provider
    store = provider.storage.open_store("backups")
    EngineRepository.create(store, PASSWORD).close()
    with harness.ctx.db() as db:
        repo = Repository(
            name="e2e", purpose="backup", credential_id=harness.credential_id, location="backups",
            password=harness.ctx.secrets.seal(PASSWORD),
        )  # fmt: skip
        db.add(repo)
        db.flush()
        repository_id = repo.id
    machines = [harness.add_machine(f"vm{i}") for i in range(3)]
    sources = {m.row_id: populate(m, i) for i, m in enumerate(machines)}
    disk = machines[0].sim.root / "disk.img"
    with disk.open("wb") as fh:
        fh.write(os.urandom(1_500_000))
        fh.seek(3 * 2**20 - 7)  # a sparse tail, and a size that is not a multiple of 512
        fh.write(b"the end")
    from cloudkeep.server.dispatcher import ensure_consumers

    ensure_consumers(harness.ctx)
    for m in machines:
        for service in ("message-service", "agent", "transport"):
            m.start(service)
    for m in machines:
        wait_for(lambda m=m: harness.heartbeat_age(m) is not None, timeout=60, what=f"{m.name} heartbeat")
    with harness.ctx.db() as db:
        job = BackupJob(
            name="files", repository_id=repository_id, protection_group_ids=[harness.group_id],
            mode="file", includes=["/data"], retention={"keep_last": 5},
        )  # fmt: skip
        volume_job = BackupJob(
            name="volume", repository_id=repository_id, machine_ids=[machines[0].row_id],
            mode="volume", includes=["/disk.img"],
        )  # fmt: skip
        db.add_all([job, volume_job])
        db.flush()
        ids = {"job": job.id, "volume_job": volume_job.id}
    yield {
        "harness": harness, "machines": machines, "sources": sources, "disk": disk,
        "repository_id": repository_id, **ids,
    }  # fmt: skip
    harness.close()


def session_state(env: dict, session_id: str) -> JobSession:
    with env["harness"].ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        _ = session.tasks
        return session


def latest_point(env: dict, machine_id: str, job_id: str) -> RestorePoint:
    with env["harness"].ctx.db() as db:
        stmt = (
            select(RestorePoint)
            .where(RestorePoint.machine_id == machine_id, RestorePoint.job_id == job_id)
            .order_by(RestorePoint.created_at.desc())
        )
        point = db.scalars(stmt).first()
        assert point is not None
        return point


@pytest.fixture(scope="module")
def backed_up(env: dict) -> dict:
    session_id = start_job(env["harness"].ctx, env["job"], wait=True)
    env["files_session"] = session_id
    return env


def test_job_over_three_machines_writes_three_restore_points(backed_up: dict) -> None:
    session = session_state(backed_up, backed_up["files_session"])
    assert session.state == "success", [(t.state, t.reason) for t in session.tasks]
    assert {t.state for t in session.tasks} == {"success"}
    for task in session.tasks:
        assert task.bytes_read >= 600_000 and task.stats["snapshot_id"]
        assert task.progress == 1.0
        assert task.stats["compression_ratio"] > 1.0 and task.stats["dedup_ratio"] > 0.9
        assert task.stats["bytes_transferred"] == task.bytes_transferred > 0
    assert session.stats["machines"] == 3 and session.stats["bytes_read"] >= 1_800_000


def test_a_second_run_without_changes_is_incremental(backed_up: dict) -> None:
    first = {
        t.machine_id: t.bytes_transferred for t in session_state(backed_up, backed_up["files_session"]).tasks
    }
    second = session_state(backed_up, start_job(backed_up["harness"].ctx, backed_up["job"], wait=True))
    assert second.state == "success"
    for task in second.tasks:
        assert task.bytes_transferred < first[task.machine_id] / 10  # metadata only: nothing re-sent


def test_download_restores_every_machine_byte_for_byte(backed_up: dict, tmp_path: Path) -> None:
    ctx = backed_up["harness"].ctx
    for machine in backed_up["machines"]:
        point = latest_point(backed_up, machine.row_id, backed_up["job"])
        dest = tmp_path / machine.name
        result = download_files(ctx, point.id, None, dest)
        source = backed_up["sources"][machine.row_id]
        restored = dest / in_machine(source)  # restore points hold the machine's paths
        assert tree_bytes(restored) == tree_bytes(source)
        assert result["files"] == 4 and result["verified"] == 4
        restored_notes = (restored / "notes.txt").stat()  # with permissions and times
        assert (restored_notes.st_mode & 0o777, int(restored_notes.st_mtime)) == (0o640, 1_600_000_000)


def test_file_restore_to_another_folder_through_the_transport_service(backed_up: dict) -> None:
    ctx = backed_up["harness"].ctx
    machine = backed_up["machines"][1]
    source = backed_up["sources"][machine.row_id]
    point = latest_point(backed_up, machine.row_id, backed_up["job"])
    # commands name paths as the machine sees them; the snapshot keeps the full backed-up path
    session_id = start_file_restore(
        ctx, point.id, paths=["/data/sub"], target_machine_id=None, target_path="/restored", wait=True
    )
    session = session_state(backed_up, session_id)
    assert session.state == "success", session.reason
    restored = machine.sim.root / "restored" / in_machine(source / "sub")
    assert tree_bytes(restored) == tree_bytes(source / "sub")
    assert not (machine.sim.root / "restored" / in_machine(source / "notes.txt")).exists()


def test_file_restore_to_a_different_machine(backed_up: dict) -> None:
    ctx = backed_up["harness"].ctx
    origin, target = backed_up["machines"][0], backed_up["machines"][2]
    point = latest_point(backed_up, origin.row_id, backed_up["job"])
    session_id = start_file_restore(
        ctx, point.id, paths=None, target_machine_id=target.row_id, target_path="/from-vm0", wait=True
    )
    assert session_state(backed_up, session_id).state == "success"
    source = backed_up["sources"][origin.row_id]
    assert tree_bytes(target.sim.root / "from-vm0" / in_machine(source)) == tree_bytes(source)


def test_file_restore_in_place_puts_the_originals_back(backed_up: dict) -> None:
    ctx = backed_up["harness"].ctx
    machine = backed_up["machines"][2]
    source = backed_up["sources"][machine.row_id]
    before = tree_bytes(source)
    (source / "notes.txt").write_text("damaged by ransomware")
    (source / "sub" / "blob-2.bin").unlink()
    point = latest_point(backed_up, machine.row_id, backed_up["job"])
    session_id = start_file_restore(
        ctx, point.id, paths=None, target_machine_id=None, target_path=None, in_place=True, wait=True
    )
    assert session_state(backed_up, session_id).state == "success"
    assert tree_bytes(source) == before


def test_browse_through_the_machine_and_locally_and_search_across_points(backed_up: dict) -> None:
    ctx = backed_up["harness"].ctx
    machine = backed_up["machines"][0]
    point = latest_point(backed_up, machine.row_id, backed_up["job"])
    remote = browse(ctx, point.id, "/data", via_machine=machine.row_id)  # the machine's own view
    local = browse(ctx, point.id, "/data")  # the repository's view, read here: the same machine paths
    names = sorted(e["path"].rsplit("/", 1)[-1] for e in remote["entries"])
    assert names == ["empty", "notes.txt", "shared.bin", "sub"]
    assert sorted(e["path"] for e in remote["entries"])[0] == "/data/empty"
    assert sorted(e["path"] for e in local["entries"]) == sorted(e["path"] for e in remote["entries"])
    assert sorted(e["path"].rsplit("/", 1)[-1] for e in local["entries"]) == names
    sizes = {e["path"].rsplit("/", 1)[-1]: e["size"] for e in local["entries"]}
    assert sizes["shared.bin"] == len(b"same on every machine ") * 20_000
    found = search(ctx, "blob-*.bin", job_id=backed_up["job"])
    # one hit per restore point holding the file: two runs so far, three machines each
    names = [f["path"].rsplit("/", 1)[-1] for f in found]
    assert sorted(set(names)) == ["blob-0.bin", "blob-1.bin", "blob-2.bin"] and len(names) == 6
    assert len({f["restore_point_id"] for f in found}) == 6
    assert {f["machine_id"] for f in found} == {m.row_id for m in backed_up["machines"]}


def test_volume_backup_restore_and_export_byte_for_byte(backed_up: dict, tmp_path: Path) -> None:
    ctx = backed_up["harness"].ctx
    machine = backed_up["machines"][0]
    session_id = start_job(ctx, backed_up["volume_job"], wait=True)
    assert session_state(backed_up, session_id).state == "success"
    point = latest_point(backed_up, machine.row_id, backed_up["volume_job"])
    assert point.mode == "volume"
    original = backed_up["disk"].read_bytes()
    # to an image file on the machine, through its Transport Service
    restore_id = start_volume_restore(ctx, point.id, target_path="/restored-disk.img", wait=True)
    assert session_state(backed_up, restore_id).state == "success"
    assert (machine.sim.root / "restored-disk.img").read_bytes() == original
    # exported here as a raw image and as a fixed VHD
    raw = export_image(ctx, point.id, tmp_path / "disk.raw")
    assert (tmp_path / "disk.raw").read_bytes() == original and raw["disk_bytes"] == len(original)
    vhd = export_image(ctx, point.id, tmp_path / "disk.vhd", image_format="vhd")
    data = (tmp_path / "disk.vhd").read_bytes()
    disk_size = vhd["disk_bytes"]
    assert disk_size % 2**20 == 0 and len(data) == disk_size + 512
    assert data[: len(original)] == original and data[len(original) : disk_size].count(0) == disk_size - len(
        original
    )
    footer = data[disk_size:]
    assert footer[:8] == b"conectix" and struct.unpack(">Q", footer[48:56])[0] == disk_size
    assert struct.unpack(">I", footer[60:64])[0] == 2  # fixed disk
    checksum = struct.unpack(">I", footer[64:68])[0]
    assert checksum == (~sum(footer[:64] + b"\0\0\0\0" + footer[68:])) & 0xFFFFFFFF
    with pytest.raises(ConfigurationError, match="already exists"):
        export_image(ctx, point.id, tmp_path / "disk.raw")
    files_point = latest_point(backed_up, machine.row_id, backed_up["job"])
    with pytest.raises(ConfigurationError, match="only volume restore points export"):
        export_image(ctx, files_point.id, tmp_path / "nope.raw")


def test_wrong_password_at_restore_is_clear_and_writes_nothing(backed_up: dict, tmp_path: Path) -> None:
    ctx = backed_up["harness"].ctx
    point = latest_point(backed_up, backed_up["machines"][0].row_id, backed_up["job"])
    dest = tmp_path / "dl"
    with pytest.raises(AuthenticationError, match="wrong password"):
        download_files(ctx, point.id, None, dest, password="not the password")
    assert not dest.exists()
    # the repository's stored password is wrong (e.g. changed elsewhere): the server, which checks the
    # restore point's manifest before sending anything, says so and no command goes out
    with ctx.db() as db:
        repo = db.get(Repository, backed_up["repository_id"])
        assert repo is not None
        repo.password = ctx.secrets.seal("stale password")
    try:
        with pytest.raises(AuthenticationError, match="wrong password"):
            start_file_restore(
                ctx, point.id, paths=None, target_machine_id=None, target_path="/wrongpw", wait=True
            )
        assert not (backed_up["machines"][0].sim.root / "wrongpw").exists() or not any(
            (backed_up["machines"][0].sim.root / "wrongpw").rglob("*.bin")
        )
    finally:
        with ctx.db() as db:
            repo = db.get(Repository, backed_up["repository_id"])
            assert repo is not None
            repo.password = ctx.secrets.seal(PASSWORD)


def test_undeployed_machine_is_skipped_and_restore_to_it_is_refused(backed_up: dict) -> None:
    ctx = backed_up["harness"].ctx
    machine = backed_up["machines"][1]
    with ctx.db() as db:
        row = db.get(DiscoveredMachine, machine.row_id)
        assert row is not None
        row.status, row.status_reason = "skipped", "UEFI Secure Boot is enabled: no Linux agent"
    try:
        session_id = start_job(ctx, backed_up["job"], wait=True)
        session = session_state(backed_up, session_id)
        assert session.state == "warning"
        (skipped,) = [t for t in session.tasks if t.state == "skipped"]
        assert "vm1 is not deployed (status skipped: UEFI Secure Boot is enabled" in skipped.reason
        point = latest_point(backed_up, machine.row_id, backed_up["job"])
        with pytest.raises(ConfigurationError, match="vm1 cannot receive a restore: it is not deployed"):
            start_file_restore(ctx, point.id, paths=None, target_machine_id=None, target_path="/x")
    finally:
        with ctx.db() as db:
            row = db.get(DiscoveredMachine, machine.row_id)
            assert row is not None
            row.status, row.status_reason = "deployed", ""


def test_repository_unreachable_mid_session_is_reported_and_nothing_is_lost(
    backed_up: dict, tmp_path: Path
) -> None:
    ctx = backed_up["harness"].ctx
    storage = backed_up["harness"].lab.path / "storage" / "backups"
    for machine in backed_up["machines"]:  # new data, so the agents must write packs
        (backed_up["sources"][machine.row_id] / "new.bin").write_bytes(os.urandom(200_000))
    points_before = {
        m.row_id: latest_point(backed_up, m.row_id, backed_up["job"]).id for m in backed_up["machines"]
    }
    # Each agent writes its packs under its own namespace, writers/<machine id>/data/.
    blocked = sorted((storage / "writers").glob("*/data"))
    assert len(blocked) == len(backed_up["machines"])
    for data in blocked:
        data.rename(data.with_name("data.away"))
        data.write_text("storage is not accepting writes")  # every pack upload now fails
    try:
        session_id = start_job(ctx, backed_up["job"], wait=True)
    finally:
        for data in blocked:
            data.unlink()
            data.with_name("data.away").rename(data)
    session = session_state(backed_up, session_id)
    assert session.state == "failed"
    assert all(t.state == "failed" and t.reason.startswith("vm") for t in session.tasks)
    assert "no machine backed up (0 of 3)" in session.reason
    # nothing lost: the earlier restore points are still the latest and restore byte for byte
    for machine in backed_up["machines"]:
        point_id = latest_point(backed_up, machine.row_id, backed_up["job"]).id
        assert point_id == points_before[machine.row_id]
        dest = tmp_path / f"after-{machine.name}"
        download_files(ctx, point_id, None, dest)
        source = backed_up["sources"][machine.row_id]
        expected = {k: v for k, v in tree_bytes(source).items() if k != "new.bin"}
        assert tree_bytes(dest / in_machine(source)) == expected
    # and the next run succeeds
    rerun = start_job(ctx, backed_up["job"], wait=True)
    assert session_state(backed_up, rerun).state == "success"
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.moto
def test_job_over_three_machines_on_aws_sqs_and_s3(moto_server, unique_name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same flow on the AWS provider against the moto server: agent queues on SQS, the
    repository in an S3 bucket, per-task scoped credentials from STS; restored byte for byte."""
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1", "machine_credentials": keys}
    harness = Harness.create(
        tmp_path, provider_kind="aws", secret=keys, options=options, heartbeat_timeout=30.0
    )
    try:
        harness.provider.storage.ensure_container(unique_name)
        EngineRepository.create(harness.provider.storage.open_store(unique_name), PASSWORD).close()
        with harness.ctx.db() as db:
            repo = Repository(
                name="s3", purpose="backup", credential_id=harness.credential_id, location=unique_name,
                password=harness.ctx.secrets.seal(PASSWORD),
            )  # fmt: skip
            db.add(repo)
            db.flush()
            job = BackupJob(
                name="aws-files", repository_id=repo.id, protection_group_ids=[harness.group_id],
                mode="file", includes=["/data"],
            )  # fmt: skip
            db.add(job)
            db.flush()
            job_id = job.id
        machines = [harness.add_machine(f"ec2-{i}") for i in range(3)]
        sources = {m.row_id: populate(m, i) for i, m in enumerate(machines)}
        from cloudkeep.server.dispatcher import ensure_consumers

        ensure_consumers(harness.ctx)
        for m in machines:
            for service in ("message-service", "agent", "transport"):
                m.start(service)
        for m in machines:
            wait_for(lambda m=m: harness.heartbeat_age(m) is not None, timeout=60, what=f"{m.name} heartbeat")
        session_id = start_job(harness.ctx, job_id, wait=True)
        with harness.ctx.db() as db:
            session = db.get(JobSession, session_id)
            assert session is not None
            states = [(t.state, t.reason) for t in session.tasks]
            assert session.state == "success", states
            channels = {
                r.channel for r in db.scalars(select(CommandRecord).where(CommandRecord.kind == "backup"))
            }
        assert channels == {"queue"}
        for machine in machines:  # packs for S3 were staged under the agent's state folder, and are gone
            staging = list((machine.config.state_dir / "tmp").glob("cloudkeep-staging-*"))
            assert len(staging) == 1 and list(staging[0].iterdir()) == []
        env = {"harness": harness}
        for machine in machines:
            point = latest_point(env, machine.row_id, job_id)
            dest = tmp_path / f"dl-{machine.name}"
            download_files(harness.ctx, point.id, None, dest)
            source = sources[machine.row_id]
            assert tree_bytes(dest / in_machine(source)) == tree_bytes(source)
        # a restore through one machine's Transport Service, reading S3 with scoped credentials
        point = latest_point(env, machines[1].row_id, job_id)
        restore_id = start_file_restore(
            harness.ctx, point.id, paths=["/data/sub"], target_machine_id=None, target_path="/r", wait=True
        )
        with harness.ctx.db() as db:
            restore_session = db.get(JobSession, restore_id)
            assert restore_session is not None and restore_session.state == "success", restore_session.reason
        source = sources[machines[1].row_id]
        assert tree_bytes(machines[1].sim.root / "r" / in_machine(source / "sub")) == tree_bytes(
            source / "sub"
        )
    finally:
        harness.close()


def test_retention_on_the_server_removes_old_points_and_the_catalog_follows(
    backed_up: dict, tmp_path: Path
) -> None:
    from cloudkeep.errors import NotFoundError

    ctx = backed_up["harness"].ctx
    machine = backed_up["machines"][2]
    with ctx.db() as db:
        job = BackupJob(
            name="keep-one", repository_id=backed_up["repository_id"], machine_ids=[machine.row_id],
            mode="file", includes=["/data/sub"], retention={"keep_last": 1},
        )  # fmt: skip
        db.add(job)
        db.flush()
        job_id = job.id
    first = start_job(ctx, job_id, wait=True)
    (backed_up["sources"][machine.row_id] / "sub" / "later.txt").write_text("added after the first run")
    second = start_job(ctx, job_id, wait=True)
    assert session_state(backed_up, first).state == session_state(backed_up, second).state == "success"
    with ctx.db() as db:
        points = list(
            db.scalars(
                select(RestorePoint).where(RestorePoint.job_id == job_id).order_by(RestorePoint.created_at)
            )
        )
    assert [p.removed_at is not None for p in points] == [True, False]
    log = [line["message"] for line in session_state(backed_up, second).tasks[0].log]
    assert "retention removed 1 restore point(s)" in log, log
    assert "error" not in session_state(backed_up, second).stats["prune"]  # the server pruned, once
    # the other job's restore points of the same machine are untouched by this job's keep_last=1
    with ctx.db() as db:
        others = list(
            db.scalars(
                select(RestorePoint).where(
                    RestorePoint.job_id == backed_up["job"], RestorePoint.machine_id == machine.row_id
                )
            )
        )
    assert len(others) >= 3 and all(p.removed_at is None for p in others)
    with pytest.raises(NotFoundError, match="was removed by retention"):
        download_files(ctx, points[0].id, None, tmp_path / "old")
    download_files(ctx, points[1].id, None, tmp_path / "new")  # the kept point restores after prune
    source = backed_up["sources"][machine.row_id] / "sub"
    assert tree_bytes(tmp_path / "new" / in_machine(source)) == tree_bytes(source)


def test_health_check_on_an_agent_finds_a_damaged_pack(backed_up: dict) -> None:
    from cloudkeep.server.jobs.health import start_health_check

    ctx = backed_up["harness"].ctx
    healthy = session_state(
        backed_up, start_health_check(ctx, backed_up["job"], read_data_subset="100%", wait=True)
    )
    assert healthy.kind == "check" and healthy.state == "success", healthy.reason
    storage = backed_up["harness"].lab.path / "storage" / "backups"
    packs = [p for p in storage.glob("writers/*/data/*/*") if p.is_file()]  # agents' own namespaces
    pack = max(packs, key=lambda p: p.stat().st_size)
    original = pack.read_bytes()
    pack.write_bytes(original[:100] + bytes(b ^ 0xFF for b in original[100:200]) + original[200:])
    try:
        damaged = session_state(
            backed_up, start_health_check(ctx, backed_up["job"], read_data_subset=1.0, wait=True)
        )
    finally:
        pack.write_bytes(original)
    assert damaged.state == "failed" and "problem(s)" in damaged.reason
    assert pack.name in damaged.reason or damaged.stats["problems"]
