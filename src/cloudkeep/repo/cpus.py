"""How many CPUs a backup or restore may use here, and how much of them it takes by default.

``os.cpu_count()`` counts the host's CPUs: an agent pinned by ``taskset`` or a cpuset, or in a
container given two CPUs of a 64-core host (a cgroup CPU quota), would start a pool thread and a
worker process per host CPU. The affinity mask and the quota say what it may really use. (joblib's
``loky.cpu_count`` does the same; one function does not warrant a process-pool library on every
machine.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# A backup runs beside the machine's own work and each worker process holds ~35 MiB (PSS; ~60 MiB
# RSS) of its own, so the defaults stop growing here whatever the core count: past this many pool
# threads and worker processes a backup is bound by the disk and the network, not by CPU.
MAX_POOL_THREADS = 8
MAX_PROCESSES = 4


def pool_threads(cpus: int) -> int:
    """A backup's file-reading threads by default on ``cpus`` usable CPUs: one per CPU (more
    only add GIL hand-offs), at least two (one waits on the disk while the other works), at most
    ``MAX_POOL_THREADS``."""
    return max(2, min(cpus, MAX_POOL_THREADS))


def usable_cpus(
    proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup CPU quota (rounded
    up), at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(proc_cgroup: Path, cgroup_root: Path) -> float | None:
    """The tightest CPU quota, in CPUs, of this process's cgroup and its ancestors (cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is none or it
    cannot be read. In a container the path the kernel names may not exist under the mount (which
    is then the container's own cgroup): the walk up reaches the mount's root all the same."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        controllers, _, path = line.partition(":")[2].partition(":")  # "id:controllers:path"
        relative = path.strip().lstrip("/")
        if controllers == "":  # v2: the unified hierarchy
            quotas += [q for folder in _up(cgroup_root, relative) for q in _v2_quota(folder / "cpu.max")]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            mount = next((m for m in (cgroup_root / "cpu,cpuacct", cgroup_root / "cpu") if m.is_dir()), None)
            if mount is not None:
                quotas += [q for folder in _up(mount, relative) for q in _v1_quota(folder)]
    return min(quotas) if quotas else None


def _up(root: Path, relative: str) -> list[Path]:
    """``root / relative`` and every folder above it up to ``root``."""
    folder = root / relative
    folders = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        folders.append(folder)
    return folders


def _v2_quota(cpu_max: Path) -> list[float]:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return [int(quota) / int(period)] if quota != "max" and int(period) > 0 else []
    except (OSError, ValueError):
        return []


def _v1_quota(folder: Path) -> list[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []
