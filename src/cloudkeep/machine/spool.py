"""The local channel between the message service and the Agent / Transport Service: spool folders.

Why a spool and not a socket: the hand-off must survive a restart of *either* side. A command is
a file renamed into ``inbox/`` (atomic), claimed by the worker with another rename into
``work/`` (so two worker processes can never both run it), and answered by files in ``outbox/``
that stay there until the message service has stored them. If the message service dies mid-
backup, the agent keeps going and the restarted service finds the result waiting; if the agent
dies, the restarted agent finds the claimed file and reports the task as interrupted rather
than running it twice. Files carry the original *signed* envelope, so secrets stay sealed at rest.

Layout under ``$STATE/spool/<service>/``: ``inbox/<id>.json``, ``work/<id>.json``,
``outbox/<id>.progress.json``, ``outbox/<id>.result.json``, ``control/<command id>.json`` (fresh
credentials), ``control/<command id>.cancel`` (the signed ``cancel`` envelope: stop that command).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Spool:
    root: Path  # $STATE/spool/<service>

    @classmethod
    def for_service(cls, state_dir: Path, service: str) -> Spool:
        spool = cls(state_dir / "spool" / service)
        for sub in ("inbox", "work", "outbox", "control"):
            (spool.root / sub).mkdir(parents=True, exist_ok=True)
        return spool

    # --- message service side -------------------------------------------------------------------

    def submit(self, command_id: str, envelope_text: str) -> None:
        target = self.root / "inbox" / f"{command_id}.json"
        if not (target.exists() or (self.root / "work" / target.name).exists()):
            write_atomic(target, envelope_text)

    def is_submitted(self, command_id: str) -> bool:
        name = f"{command_id}.json"
        return (
            any((self.root / sub / name).exists() for sub in ("inbox", "work"))
            or self.result_path(command_id).exists()
        )

    def send_control(self, command_id: str, envelope_text: str) -> None:
        write_atomic(self.root / "control" / f"{command_id}.json", envelope_text)

    def send_cancel(self, command_id: str, envelope_text: str) -> None:
        """Ask the worker to stop ``command_id`` at its next boundary (a separate file: credentials stay)."""
        write_atomic(self.root / "control" / f"{command_id}.cancel", envelope_text)

    def results(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for path in sorted((self.root / "outbox").glob("*.result.json")):
            try:
                found.append((path.name.removesuffix(".result.json"), json.loads(path.read_text())))
            except (OSError, ValueError):
                continue  # being written; next pass
        return found

    def progress(self) -> list[tuple[str, dict[str, Any], float]]:
        found = []
        for path in (self.root / "outbox").glob("*.progress.json"):
            try:
                command_id = path.name.removesuffix(".progress.json")
                found.append((command_id, json.loads(path.read_text()), path.stat().st_mtime))
            except (OSError, ValueError):
                continue
        return found

    def forget(self, command_id: str) -> None:
        """The result is stored in the ledger: drop every file of this command."""
        for path in (
            self.root / "outbox" / f"{command_id}.result.json",
            self.root / "outbox" / f"{command_id}.progress.json",
            self.root / "work" / f"{command_id}.json",
            self.root / "control" / f"{command_id}.json",
            self.root / "control" / f"{command_id}.cancel",
        ):
            path.unlink(missing_ok=True)

    # --- worker side ----------------------------------------------------------------------------

    def claim_next(self) -> tuple[str, str] | None:
        """Atomically move the oldest inbox file to ``work/``; None when the inbox is empty."""
        for path in sorted((self.root / "inbox").glob("*.json"), key=_mtime):
            target = self.root / "work" / path.name
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue  # another worker took it
            return path.stem, target.read_text()
        return None

    def claimed(self) -> list[str]:
        return [p.stem for p in (self.root / "work").glob("*.json")]

    def result_path(self, command_id: str) -> Path:
        return self.root / "outbox" / f"{command_id}.result.json"

    def write_progress(self, command_id: str, progress: dict[str, Any]) -> None:
        write_atomic(self.root / "outbox" / f"{command_id}.progress.json", json.dumps(progress))

    def write_result(self, command_id: str, result: dict[str, Any]) -> None:
        write_atomic(self.result_path(command_id), json.dumps(result))

    def cancel_requested(self, command_id: str) -> bool:
        return (self.root / "control" / f"{command_id}.cancel").exists()

    def control_for(self, command_id: str) -> tuple[str, float] | None:
        path = self.root / "control" / f"{command_id}.json"
        try:
            return path.read_text(), path.stat().st_mtime
        except FileNotFoundError:
            return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
