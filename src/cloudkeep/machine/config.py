"""The machine's configuration, written by the installer to ``$ROOT/etc/cloudkeep/machine.json``.

ROOT is ``/`` on a real machine and the simulated machine's root folder in the lab; it is derived
from the config file's location, so the same code runs in both without reading the environment.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudkeep.errors import ConfigurationError

CONFIG_RELATIVE = Path("etc/cloudkeep/machine.json")


@dataclass
class MachineConfig:
    """A plain dataclass, checked by hand: the three idle services load it, and pydantic alone
    would add ~15 MB to each of them."""

    machine_id: str  # the server's DiscoveredMachine.id: what messages are addressed to
    server_id: str
    server_public_key: str  # b64 Ed25519: the only key commands are accepted from
    agent_queue: dict[str, Any]
    server_queue: dict[str, Any]
    cloud_id: str = ""
    heartbeat_seconds: float = 30.0  # > 0
    clock_skew_seconds: float = 300.0  # >= 0
    receive_wait_seconds: float = 20.0  # >= 0: long-poll wait per receive
    root: Path = field(default_factory=lambda: Path("/"))

    @classmethod
    def from_dict(cls, data: Any, *, root: Path) -> MachineConfig:
        """Check types and ranges of a decoded config (unknown keys are ignored); ValueError when bad."""
        if not isinstance(data, dict):
            raise ValueError("the config is not a JSON object")
        values: dict[str, Any] = {"root": Path(root)}
        for item in dataclasses.fields(cls):
            if item.name == "root" or item.name not in data:
                if item.name != "root" and item.default is dataclasses.MISSING:
                    raise ValueError(f"{item.name}: missing")
                continue
            value = data[item.name]
            if item.type == "str" and not isinstance(value, str):
                raise ValueError(f"{item.name}: expected a string, got {type(value).__name__}")
            if item.type == "dict[str, Any]" and not isinstance(value, dict):
                raise ValueError(f"{item.name}: expected an object, got {type(value).__name__}")
            if item.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{item.name}: expected a number, got {type(value).__name__}")
                value = float(value)
                if value < 0 or (item.name == "heartbeat_seconds" and value == 0):
                    raise ValueError(f"{item.name}: out of range ({value})")
            values[item.name] = value
        return cls(**values)

    @classmethod
    def load(cls, path: Path | str) -> MachineConfig:
        path = Path(path).resolve()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigurationError(
                f"machine config {path} does not exist", hint="run the installer (rescan) for this machine"
            ) from None
        except ValueError as exc:
            raise ConfigurationError(f"machine config {path} is not valid JSON: {exc}") from None
        root = path.parents[2] if path.parts[-3:] == CONFIG_RELATIVE.parts else path.parent
        try:
            return cls.from_dict(data, root=root)
        except ValueError as exc:
            raise ConfigurationError(f"machine config {path} is invalid: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without ``root``: it is where the file lies, not what it says)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "root"}

    def write(self) -> Path:
        path = self.root / CONFIG_RELATIVE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/cloudkeep"

    @property
    def log_dir(self) -> Path:
        return self.root / "var/log/cloudkeep"

    @property
    def run_dir(self) -> Path:
        return self.root / "var/run/cloudkeep"

    def host_path(self, path: str) -> Path:
        """A path as the machine sees it (``/etc``), mapped onto this host (``$ROOT/etc``)."""
        return self.root / path.lstrip("/") if str(self.root) != "/" else Path(path)

    def version(self) -> str:
        version_file = self.root / "opt/cloudkeep/VERSION"
        if version_file.is_file():
            return version_file.read_text().strip()
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("cloudkeep")
        except PackageNotFoundError:
            return "0+unknown"
