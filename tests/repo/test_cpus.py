"""How many CPUs a backup counts: the affinity mask and cgroup CPU quotas, read from the real kernel
where this machine lets a test set them (a child process pinned to one CPU; a cgroup of its own), and
the cgroup v1 / v2 file layouts read from folders made here."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep.repo.cpus import MAX_POOL_THREADS, cgroup_cpu_quota, pool_threads, usable_cpus

ROOT = Path(__file__).resolve().parents[2]
CGROUP = Path("/sys/fs/cgroup")


def _child(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_process_pinned_to_one_cpu_counts_one() -> None:
    first = min(os.sched_getaffinity(0))
    out = _child(
        f"import os; os.sched_setaffinity(0, {{{first}}})\n"
        "from cloudkeep.repo.cpus import usable_cpus; print(usable_cpus(), os.cpu_count())"
    )
    usable, host = map(int, out.split())
    assert usable == 1 and host == os.cpu_count()


@pytest.fixture
def quota_cgroup() -> Iterator[Path]:
    """A cgroup of half a CPU under the cpu controller (v1) or the unified hierarchy (v2)."""
    v1 = CGROUP / "cpu"
    parent = v1 if (v1 / "cpu.cfs_quota_us").exists() else CGROUP
    group = parent / f"ck-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"no cgroup to make here ({exc.strerror}); the file layouts are tested below")
    try:
        try:
            if parent == v1:
                (group / "cpu.cfs_quota_us").write_text("50000")
            else:  # absent unless the parent delegates the cpu controller
                (group / "cpu.max").write_text("50000 100000")
        except OSError as exc:
            pytest.skip(f"no CPU quota to set here ({exc.strerror}); the file layouts are tested below")
        yield group
    finally:
        group.rmdir()  # its only process, if any, has exited


def test_a_cgroup_quota_of_half_a_cpu_counts_one(quota_cgroup: Path) -> None:
    out = _child(
        f"import os; open({str(quota_cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
        "from cloudkeep.repo.cpus import usable_cpus; print(usable_cpus())"
    )
    assert out == "1"


def _v2(root: Path, limits: dict[str, str]) -> None:
    for folder, cpu_max in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(cpu_max + "\n")


def test_the_tightest_v2_quota_on_the_way_up_counts(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/machine.slice/app.scope\n")
    fs = tmp_path / "fs"
    _v2(fs, {".": "max 100000", "machine.slice": "150000 100000", "machine.slice/app.scope": "max 100000"})
    assert cgroup_cpu_quota(proc, fs) == 1.5
    _v2(fs, {"machine.slice/app.scope": "400000 100000"})
    assert cgroup_cpu_quota(proc, fs) == 1.5  # the parent's is tighter
    _v2(fs, {"machine.slice": "max 100000"})
    assert cgroup_cpu_quota(proc, fs) == 4.0


def test_v1_quotas_and_what_is_no_quota(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    group = tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_period_us").write_text("100000\n")
    (group / "cpu.cfs_quota_us").write_text("250000\n")
    assert cgroup_cpu_quota(proc, tmp_path / "fs") == 2.5
    (group / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cgroup_cpu_quota(proc, tmp_path / "fs") is None
    (group.parent / "cpu.cfs_period_us").write_text("100000\n")  # a parent's quota binds too
    (group.parent / "cpu.cfs_quota_us").write_text("150000\n")
    assert cgroup_cpu_quota(proc, tmp_path / "fs") == 1.5
    (group.parent / "cpu.cfs_quota_us").write_text("-1\n")
    proc.write_text("3:cpu,cpuacct:/docker/elsewhere\n")  # not under this mount: its root counts
    (tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_quota(proc, tmp_path / "fs") == 3.0
    (tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    proc.write_text("3:cpu,cpuacct:/docker/abc\n")
    (group / "cpu.cfs_quota_us").write_text("garbage\n")
    assert cgroup_cpu_quota(proc, tmp_path / "fs") is None
    assert cgroup_cpu_quota(tmp_path / "absent", tmp_path / "fs") is None
    assert usable_cpus(tmp_path / "absent", tmp_path / "fs") == len(os.sched_getaffinity(0))


def test_a_big_machine_gets_a_bounded_pool() -> None:
    assert [pool_threads(n) for n in (1, 2, 3, 8, 64)] == [2, 2, 3, MAX_POOL_THREADS, MAX_POOL_THREADS]
