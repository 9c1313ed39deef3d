"""The agent's key file: checked at a worker's start, turned into key objects only when used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.keys import KEY_FILE, AgentKeys, read_raw


def test_keys_round_trip_through_the_file(tmp_path: Path) -> None:
    created = AgentKeys.load_or_create(tmp_path)
    assert AgentKeys.load(tmp_path).public() == created.public()
    assert AgentKeys.load_or_create(tmp_path).public() == created.public()  # never replaced
    assert oct((tmp_path / KEY_FILE).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "do not exist"),
        ("not json", "unreadable"),
        ('{"signing": "00"}', "unreadable"),
        ('{"signing": "zz", "encryption": "00"}', "unreadable"),
        (json.dumps({"signing": "00" * 31, "encryption": "00" * 32}), "not 32 bytes"),
        ('["a list"]', "unreadable"),
    ],
)
def test_a_missing_or_broken_key_file_is_a_clear_configuration_error(
    tmp_path: Path, content: str | None, says: str
) -> None:
    if content is not None:
        (tmp_path / KEY_FILE).write_text(content)
    with pytest.raises(ConfigurationError, match=says):
        read_raw(tmp_path)
    with pytest.raises(ConfigurationError, match=says):
        AgentKeys.load(tmp_path)


def test_an_idle_worker_has_not_loaded_cryptography(tmp_path: Path) -> None:
    """Starting the agent's worker checks the key but defers the library (a quarter of an idle
    worker's RSS, tests/machine/test_light.py) to the first command, which loads it."""
    queue = {"provider": "local", "database": str(tmp_path / "queues.db"), "queue": "q"}
    config = {
        "machine_id": "m1", "server_id": "s1", "server_public_key": "",
        "agent_queue": queue, "server_queue": queue,
    }  # fmt: skip
    (tmp_path / "machine.json").write_text(json.dumps(config))
    AgentKeys.load_or_create(MachineConfig.load(tmp_path / "machine.json").state_dir)
    script = f"""
import sys
from pathlib import Path
from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.worker import TaskWorker
worker = TaskWorker(MachineConfig.load(Path({str(tmp_path / "machine.json")!r})), "agent")
print(any(name.startswith("cryptography") for name in sys.modules))
worker.keys.signing
print(any(name.startswith("cryptography") for name in sys.modules))
"""
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": src},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
