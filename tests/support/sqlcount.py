"""Count the SQL statements and transactions an engine runs while a block runs (issue 18).

SQLAlchemy's own engine events (``before_cursor_execute``, ``begin``) see every statement of
every thread on that engine — the runner's, the dispatcher's and the consumers' — so the counts
are what the database serves, not what one function asked for. ``by_caller`` (off by default:
a stack walk per statement is slow) files each statement under the nearest cloudkeep function
that issued it, to tell which code a count comes from. ``waiting``: the functions (``module.name``)
whose statements are counted apart, e.g. a result wait that polls as often as the timing allows.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType, TracebackType

from sqlalchemy import Engine, event


@dataclass
class StatementCounter:
    engine: Engine
    by_caller: bool = False
    waiting: tuple[str, ...] = ()
    statements: int = 0
    transactions: int = 0
    waiting_statements: int = 0  # of ``statements``: issued under one of ``waiting``
    waiting_transactions: int = 0
    callers: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _on_statement(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        where = _caller(sys._getframe(1)) if self.by_caller else ""
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        waiting = self._waiting(sys._getframe(1))
        with self._lock:
            self.statements += 1
            self.waiting_statements += waiting
            if self.by_caller:
                self.callers[f"{verb:<6} {where}"] += 1

    def _on_begin(self, conn: object) -> None:
        waiting = self._waiting(sys._getframe(1))
        with self._lock:
            self.transactions += 1
            self.waiting_transactions += waiting

    def _waiting(self, frame: FrameType | None) -> bool:
        while self.waiting and frame is not None:
            module = frame.f_globals.get("__name__", "")
            if f"{module.rsplit('.', 1)[-1]}.{frame.f_code.co_name}" in self.waiting:
                return True
            frame = frame.f_back
        return False

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._on_statement)
        event.listen(self.engine, "begin", self._on_begin)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_statement)
        event.remove(self.engine, "begin", self._on_begin)

    def report(self, per: int, top: int = 30) -> str:
        lines = [
            f"{self.statements / per:.1f} statements, {self.transactions / per:.1f} transactions each; "
            f"waiting: {self.waiting_statements / per:.1f} statements, {self.waiting_transactions / per:.1f}"
        ]
        for where, n in self.callers.most_common(top):
            lines.append(f"{n / per:6.2f}  {where}")
        return "\n".join(lines)


def _caller(frame: FrameType | None) -> str:
    """The innermost cloudkeep frames (outside the database plumbing) that led to a statement."""
    names: list[str] = []
    while frame is not None and len(names) < 3:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("cloudkeep.") and not module.startswith("cloudkeep.server.db"):
            names.append(f"{module.rsplit('.', 1)[-1]}.{frame.f_code.co_name}")
        frame = frame.f_back
    return " < ".join(names) or "?"
