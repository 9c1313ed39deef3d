"""The ``backup`` command a job sends to each machine: what to read, how, and under which name."""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Any

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.db.models import BackupJob, DiscoveredMachine
from cloudkeep.server.jobs.options import read_job_options

JOB_MODE_TO_COMMAND = {"file": "files", "files": "files", "volume": "volume", "entire": "entire"}
_GLOB_CHARS = set("*?[")


def backup_set(machine_id: str, job_id: str) -> str:
    """The repository-side identity of one job's restore points of one machine (snapshot "hostname").

    Retention on the agent applies per hostname, so each (machine, job) pair gets its own: a job's
    keep_last can never remove another job's restore points of the same machine.
    """
    return f"{machine_id}-{job_id}"


def build_backup_body(
    job: BackupJob, machine: DiscoveredMachine, retain_until: datetime | None
) -> dict[str, Any]:
    """The ``backup`` command body (secrets excluded: the repository goes in the sealed field)."""
    mode = JOB_MODE_TO_COMMAND.get(job.mode)
    if mode is None:
        raise ConfigurationError(
            f"job {job.name!r} has unknown mode {job.mode!r}", hint="use entire, volume or file"
        )
    options = read_job_options(job.name, job.options)
    includes = list(job.includes or [])
    masks: list[str]
    if mode == "entire":
        sources, masks = ["/"], []
    elif mode == "volume":
        sources, masks = includes, []
    else:
        masks = [i for i in includes if _GLOB_CHARS & set(i)]
        sources = [i for i in includes if i not in masks] or ["/"]
    body: dict[str, Any] = {
        "mode": mode,
        "sources": sources,
        "includes": masks,
        "excludes": list(job.excludes or []),
        "hostname": backup_set(machine.id, job.id),
        "tags": [f"job:{job.id}", f"machine:{machine.name}"],
        "retain_until": retain_until.isoformat() if retain_until else None,
    }
    for key in ("bandwidth_limit", "compression_level", "pre_script", "post_script", "script_timeout"):
        if (value := getattr(options, key)) is not None:
            body[key] = value
    _add_fsfreeze(body, options.fsfreeze, machine)
    return body


def _add_fsfreeze(body: dict[str, Any], mounts: list[str] | None, machine: DiscoveredMachine) -> None:
    """``options.fsfreeze: ["/srv"]``: freeze those Linux file systems around the backup.

    The freeze wraps the user's pre/post scripts (freeze after the application is quiesced, thaw
    before it resumes); a thaw always runs, even when the backup fails.
    """
    if not mounts:
        return
    if machine.platform == "windows":
        return  # Windows consistency comes from the agent's VSS snapshot
    quoted = " ".join(shlex.quote(m) for m in mounts)
    freeze = f'for m in {quoted}; do fsfreeze -f "$m" || exit 1; done'
    thaw = f'for m in {quoted}; do fsfreeze -u "$m"; done'
    body["pre_script"] = "\n".join(filter(None, [body.get("pre_script"), freeze]))
    body["post_script"] = "\n".join(filter(None, [thaw, body.get("post_script")]))
