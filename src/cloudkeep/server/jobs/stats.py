"""Session statistics from the agent's figures: ratios, speed, and the bottleneck.

The agent reports raw counters; the server derives what an administrator reads: how much was
read and sent, how much deduplication and compression saved, the speed, and which stage held
the backup back — ``source`` (reading the machine's disks), ``network`` (sending to object
storage) or ``target`` (the storage acknowledging writes/commits). Missing figures stay missing
rather than being guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

# Names the engine may use for each figure, most specific first.
_READ = ("bytes_read", "total_bytes_processed", "bytes_processed", "total_bytes")
_PROCESSED = ("bytes_total", "bytes_processed", "total_bytes_processed")
_SENT = ("bytes_uploaded", "bytes_transferred", "data_added_packed", "stored_bytes")
_STORED = ("bytes_stored", "data_added_packed")
_NEW = ("data_added", "bytes_new", "new_bytes", "unique_bytes")
_FILES = ("files", "files_total", "total_files_processed", "files_processed")
_TIMING_STAGE = {
    "source": "source",
    "read": "source",
    "read_seconds": "source",
    "network": "network",
    "upload": "network",
    "upload_seconds": "network",
    "target": "target",
    "write": "target",
    "commit": "target",
    "commit_seconds": "target",
}


def _first(stats: Mapping[str, Any], names: Iterable[str]) -> int | None:
    for name in names:
        value = stats.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def bottleneck(timings: Mapping[str, Any] | None) -> str | None:
    """The stage with the largest busy time; None when the agent reported no timings."""
    if not timings:
        return None
    per_stage: dict[str, float] = {}
    for name, seconds in timings.items():
        stage = _TIMING_STAGE.get(name)
        if stage and isinstance(seconds, int | float):
            per_stage[stage] = per_stage.get(stage, 0.0) + float(seconds)
    if not per_stage or max(per_stage.values()) <= 0:
        return None
    return max(per_stage, key=lambda stage: per_stage[stage])


def task_stats(agent_stats: Mapping[str, Any], duration_seconds: float) -> dict[str, Any]:
    """Figures for a SessionTask (and the restore point) from one backup result's ``stats``."""
    read = _first(agent_stats, _READ)
    sent = _first(agent_stats, _SENT)
    new = _first(agent_stats, _NEW)
    out: dict[str, Any] = {"duration_seconds": round(duration_seconds, 3)}
    engine_seconds = agent_stats.get("duration_s")  # the engine's own time, without queue latency
    if isinstance(engine_seconds, int | float) and engine_seconds > 0:
        out["processing_seconds"] = engine_seconds
        duration_seconds = float(engine_seconds)
    if read is not None:
        out["bytes_read"] = read
        if duration_seconds > 0:
            out["speed_bytes_per_second"] = round(read / duration_seconds, 1)
    if sent is not None:
        out["bytes_transferred"] = sent
    processed = _first(agent_stats, _PROCESSED)
    if processed is not None:
        out["bytes_processed"] = processed
    # The engine's own ratios win (it knows unchanged files and pack overhead); else derive them.
    dedup = agent_stats.get("dedup_ratio")
    if isinstance(dedup, int | float):
        out["dedup_ratio"] = dedup
    elif (processed or read) and new:
        out["dedup_ratio"] = round((processed or read or 0) / new, 3)
    compression = agent_stats.get("compression_ratio")
    if isinstance(compression, int | float):
        out["compression_ratio"] = compression
    elif new is not None and (stored := _first(agent_stats, _STORED) or sent):
        out["compression_ratio"] = round(new / stored, 3)
    files = _first(agent_stats, _FILES)
    if files is not None:
        out["files"] = files
    timings = agent_stats.get("timings")
    neck = bottleneck(timings if isinstance(timings, Mapping) else None)
    if neck:
        out["bottleneck"] = neck
    return out


def session_stats(tasks: Iterable[Mapping[str, Any]], duration_seconds: float) -> dict[str, Any]:
    """Totals over tasks (each a dict with ``state`` and ``stats``)."""
    states: Counter[str] = Counter()
    read = sent = 0
    necks: Counter[str] = Counter()
    for task in tasks:
        states[task["state"]] += 1
        stats = task.get("stats") or {}
        read += int(stats.get("bytes_read", 0))
        sent += int(stats.get("bytes_transferred", 0))
        if stats.get("bottleneck"):
            necks[stats["bottleneck"]] += 1
    out: dict[str, Any] = {
        "machines": sum(states.values()),
        "states": dict(states),
        "bytes_read": read,
        "bytes_transferred": sent,
        "duration_seconds": round(duration_seconds, 3),
    }
    if duration_seconds > 0:
        out["speed_bytes_per_second"] = round(read / duration_seconds, 1)
    if sent:
        out["reduction_ratio"] = round(read / sent, 3)
    if necks:
        out["bottleneck"] = necks.most_common(1)[0][0]
    return out
