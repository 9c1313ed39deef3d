"""Settings built once at the edge (CLI flags, environment, file) and passed down.

Nothing below the CLI/API layer reads the environment: it receives a ``Settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

API_PREFIX = "/api/v1"  # where the REST API is mounted under a server's base URL


def default_home() -> Path:
    return Path.home() / ".cloudkeep"


class Settings(BaseSettings):
    """Where the server keeps its state and how it talks to the world."""

    model_config = SettingsConfigDict(env_prefix="CLOUDKEEP_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Server state: database, keys, lab.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to SQLite (WAL) under home."
    )
    master_key_file: Path | None = Field(
        default=None, description="Server master key (encrypts secrets at rest); defaults under home."
    )
    api_url: str | None = Field(
        default=None, description="Talk to a running server instead of embedded mode."
    )
    api_token: str | None = None
    heartbeat_timeout_seconds: float = 60.0
    metrics_late_machines: int = Field(
        default=100,
        ge=0,
        description=(
            "/metrics names at most this many late machines (heartbeat older than "
            "heartbeat_timeout_seconds), the oldest first; the rest are counted."
        ),
    )
    metrics_min_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        description="/metrics renders at most once in this many seconds; scrapes in between get that render.",
    )
    log_level: str = Field(default="INFO", description="Server log level (env CLOUDKEEP_LOG_LEVEL).")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Server log lines: key=value text or JSON (env CLOUDKEEP_LOG_FORMAT)."
    )
    rescan_concurrency: int = 16
    parallel_machines: int = Field(
        default=32,
        ge=1,
        le=256,
        description=(
            "Machines one server process works on at once across all its jobs (a job's own "
            "parallel_machines is capped by it), and fallback commands it runs at once; sizes the "
            "process's database pool (env CLOUDKEEP_PARALLEL_MACHINES)."
        ),
    )

    @field_validator("api_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        """The server's base URL: the one it prints (``…/api/v1``) and a trailing slash are accepted."""
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if value.endswith(API_PREFIX):
            value = value[: -len(API_PREFIX)].rstrip("/")
        return value or None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'cloudkeep.db'}"

    @property
    def effective_master_key_file(self) -> Path:
        return self.master_key_file or self.home / "master.key"
