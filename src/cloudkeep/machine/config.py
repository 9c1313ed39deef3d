"""The machine's configuration, written by the installer to ``$ROOT/etc/cloudkeep/machine.json``.

ROOT is ``/`` on a real machine and the simulated machine's root folder in the lab; it is derived
from the config file's location, so the same code runs in both without reading the environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudkeep.errors import ConfigurationError

CONFIG_RELATIVE = Path("etc/cloudkeep/machine.json")


class MachineConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    machine_id: str  # the server's DiscoveredMachine.id: what messages are addressed to
    cloud_id: str = ""
    server_id: str
    server_public_key: str  # b64 Ed25519: the only key commands are accepted from
    agent_queue: dict[str, Any]
    server_queue: dict[str, Any]
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    clock_skew_seconds: float = Field(default=300.0, ge=0)
    receive_wait_seconds: float = Field(default=20.0, ge=0)  # long-poll wait per receive
    root: Path = Path("/")

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
            return cls.model_validate({**data, "root": root})
        except ValidationError as exc:
            raise ConfigurationError(f"machine config {path} is invalid: {exc}") from None

    def write(self) -> Path:
        path = self.root / CONFIG_RELATIVE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json", exclude={"root"}), indent=2, sort_keys=True))
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
