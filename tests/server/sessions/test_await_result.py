"""The session runtime's one wait for a command's result (``await_result``), with each caller's hooks:
a restore only notices a stop; a backup also cancels with a grace, refreshes credentials and asks
whether the command still runs. The sender is an in-process STAND-IN answering a scripted sequence of
slices (each a payload or an exception), so every branch runs in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cloudkeep.errors import UnreachableError
from cloudkeep.server.sessions import WaitHooks, await_result


class ScriptedSender:
    """Answers ``wait`` from a script; an exhausted script keeps timing out (a command still running)."""

    def __init__(self, *answers: dict[str, Any] | Exception) -> None:
        self.answers: Iterator[dict[str, Any] | Exception] = iter(answers)
        self.waits: list[float] = []

    def send(self, machine_id: str, kind: str, body: dict[str, Any], **_: Any) -> str:
        raise AssertionError("await_result sends nothing itself")

    def wait(self, command_id: str, *, timeout: float, **_: Any) -> dict[str, Any]:
        self.waits.append(timeout)
        answer = next(self.answers, TimeoutError(f"{command_id} still running"))
        if isinstance(answer, Exception):
            raise answer
        return answer


class Flags:
    def __init__(self, *, stop: bool = False, grace: float = 60.0) -> None:
        self.stop, self.grace = stop, grace
        self.cancels = self.refreshes = 0

    def cancel(self) -> float:
        self.cancels += 1
        return self.grace

    def refresh(self) -> None:
        self.refreshes += 1


def test_a_result_after_slices_that_ran_out_is_returned() -> None:
    sender = ScriptedSender(TimeoutError("slice"), TimeoutError("slice"), {"bytes": 3})
    hooks = WaitHooks(stop_requested=lambda: False, slice_seconds=0.5)
    assert await_result(sender, "c1", timeout=60, hooks=hooks) == {"bytes": 3}
    assert sender.waits == [0.5, 0.5, 0.5]  # short slices, so a stop is noticed between them


def test_a_stop_without_cancel_ends_the_wait_at_once() -> None:
    sender = ScriptedSender({"bytes": 3})
    assert await_result(sender, "c1", timeout=60, hooks=WaitHooks(stop_requested=lambda: True)) is None
    assert sender.waits == []


def test_after_cancel_a_result_within_the_grace_still_counts_and_cancel_is_sent_once() -> None:
    flags = Flags()
    sender = ScriptedSender(TimeoutError("slice"), TimeoutError("slice"), {"snapshot_id": "s1"})
    hooks = WaitHooks(stop_requested=lambda: True, cancel=flags.cancel, still_running=lambda: True)
    assert await_result(sender, "c1", timeout=60, hooks=hooks) == {"snapshot_id": "s1"}
    assert flags.cancels == 1


def test_after_cancel_an_ended_command_or_a_spent_grace_is_a_stop() -> None:
    flags = Flags()
    failed = ScriptedSender(UnreachableError("cancelled by the server"))
    hooks = WaitHooks(stop_requested=lambda: True, cancel=flags.cancel, still_running=lambda: False)
    assert await_result(failed, "c1", timeout=60, hooks=hooks) is None
    silent = Flags(grace=0.0)  # the cancel could not be sent: stop waiting at once
    hooks = WaitHooks(stop_requested=lambda: True, cancel=silent.cancel, still_running=lambda: True)
    assert await_result(ScriptedSender(), "c1", timeout=60, hooks=hooks) is None


def test_refresh_runs_when_due_and_a_failure_passes_through() -> None:
    flags = Flags()
    sender = ScriptedSender(TimeoutError("slice"), TimeoutError("slice"), UnreachableError("queue gone"))
    running = iter([True, True, False])  # the command record: open, open, then ended by the failure
    hooks = WaitHooks(
        stop_requested=lambda: False,
        refresh=flags.refresh,
        refresh_every=0.0,
        still_running=lambda: next(running),
    )
    with pytest.raises(UnreachableError, match="queue gone"):
        await_result(sender, "c1", timeout=60, hooks=hooks)
    assert flags.refreshes == 3  # due before every slice


@pytest.mark.parametrize("still_running", [None, lambda: True])
def test_no_result_within_the_timeout_is_a_timeout_error(still_running: Any) -> None:
    hooks = WaitHooks(stop_requested=lambda: False, still_running=still_running, slice_seconds=0.05)
    with pytest.raises(TimeoutError):
        await_result(ScriptedSender(), "c1", timeout=0.2, hooks=hooks)
