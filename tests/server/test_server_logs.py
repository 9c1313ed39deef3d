"""Server log lines: one per event, key=value (logfmt) or JSON, configured from settings at the edge."""

from __future__ import annotations

import json
import logging
import shlex

import pytest

from cloudkeep.server.logs import JsonFormatter, KeyValueFormatter, event, logging_config, normalize_level


def _record(logger: logging.Logger, fmt: logging.Formatter, emit: object) -> str:
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(fmt.format(record))

    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert callable(emit)
        emit()
    finally:
        logger.removeHandler(handler)
    assert len(lines) == 1
    return lines[0]


def test_event_renders_key_value_fields_on_one_line() -> None:
    log = logging.getLogger("cloudkeep.test.kv")
    line = _record(
        log,
        KeyValueFormatter(),
        lambda: event(log, "dispatch", channel="local", reason="last heartbeat sent 75s ago\nx", task=None),
    )
    assert "\n" not in line
    pairs = dict(part.split("=", 1) for part in shlex.split(line))
    assert (pairs["event"], pairs["level"], pairs["logger"]) == ("dispatch", "info", "cloudkeep.test.kv")
    assert pairs["channel"] == "local"
    assert pairs["reason"] == "last heartbeat sent 75s ago\\nx"  # quoted, escaped, still one line
    assert "task" not in pairs  # None fields are left out
    assert pairs["ts"].endswith("+00:00")


def test_json_format_carries_the_same_fields_and_the_traceback() -> None:
    log = logging.getLogger("cloudkeep.test.json")

    def fail() -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("session_crashed", extra={"ck_fields": {"session": "s1"}})

    data = json.loads(_record(log, JsonFormatter(), fail))
    assert data["event"] == "session_crashed" and data["level"] == "error" and data["session"] == "s1"
    assert "RuntimeError: boom" in data["error"]


def test_logging_config_applies_level_and_format() -> None:
    config = logging_config("debug", "json")
    assert config["loggers"]["cloudkeep"]["level"] == "DEBUG"
    assert config["handlers"]["stderr"]["formatter"] == "json"
    assert config["loggers"]["uvicorn.access"]["propagate"] is True
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        normalize_level("loud")
