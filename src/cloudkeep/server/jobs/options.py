"""The one typed shape of a backup job's ``options``: every known option, its type, unit and bounds.

Administrators write options loosely (``bandwidth_limit=10MiB``, ``task_timeout_seconds=2h``); the
service validates them here and stores the normalised form (bytes, seconds), and the runner,
scheduler and notifications read them back through :func:`read_job_options`, typed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cloudkeep.errors import ConfigurationError

log = logging.getLogger(__name__)

_BYTES = TypeAdapter(ByteSize)
_SIZE = re.compile(r"\d+(?:\.\d+)?\s*[A-Za-z]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    """``10MiB`` (binary), ``10MB`` (decimal), ``10MB/s`` or a number of bytes → bytes."""
    text = value.strip().removesuffix("/s") if isinstance(value, str) else value
    # pydantic's ByteSize reads the units but ignores trailing text ("10 MiB MiB"): hold it to one
    well_formed = isinstance(text, int) or (isinstance(text, str) and _SIZE.fullmatch(text))
    try:
        if well_formed and not isinstance(text, bool):
            return int(_BYTES.validate_python(text))
    except ValidationError:
        pass
    raise ValueError(f"{value!r} is not a size: use e.g. 10MiB, 10MB or a number of bytes")


def parse_duration(value: Any) -> float:
    """``90m``, ``2h``, ``1h30m``, ``500ms`` or a number of seconds → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip() if isinstance(value, str) else ""
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(_DURATION_PART.sub("", text).split()):
        raise ValueError(f"{value!r} is not a duration: use e.g. 90m, 2h, 45s or a number of seconds")
    return sum(float(number) * _UNIT_SECONDS[unit.lower()] for number, unit in parts)


def parse_share(value: Any) -> float:
    """``"5%"``, ``"0.05"`` or ``0.05`` → 0.05."""
    text = str(value).strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a share: use e.g. 5% or 0.05") from None


def _absolute_mounts(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(m, str) and m.startswith("/") for m in value):
        raise ValueError("must be a list of absolute mount points, e.g. ['/srv']")
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _plainly(parse: Callable[[Any], Any]) -> BeforeValidator:
    """Use ``parse`` as a field validator whose message is its own (no "Value error, " prefix)."""

    def validate(value: Any) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise PydanticCustomError("invalid_option_value", str(exc)) from None

    return BeforeValidator(validate)


Size = Annotated[int, _plainly(parse_size)]
Seconds = Annotated[float, _plainly(parse_duration)]
Share = Annotated[float, _plainly(parse_share), Field(gt=0, le=1)]
SealedHex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]+$")]


class _Options(BaseModel):
    """Refuses an unknown key by name, listing the known ones (pydantic's own message lists none)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
            unknown = sorted(str(k) for k in data if k not in known)
            if unknown:
                listed = ", ".join(sorted(f.alias or n for n, f in cls.model_fields.items()))
                raise PydanticCustomError(
                    "unknown_option",
                    "unknown option {unknown}; known options: {known}",
                    {"unknown": ", ".join(unknown), "known": listed},
                )
        return data


class EmailOptions(_Options):
    to: Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1)]
    sender: str | None = Field(default=None, alias="from")
    smtp_host: str = Field(min_length=1)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    starttls: bool | None = None
    username: str | None = None
    password: str | None = Field(default=None, description="Write-only: stored as password_sealed.")
    password_sealed: SealedHex | None = None
    timeout: Seconds | None = Field(default=None, gt=0, le=600)


class WebhookOptions(_Options):
    url: str = Field(pattern=r"^https?://\S+$")
    headers: dict[str, str] | None = None
    timeout: Seconds | None = Field(default=None, gt=0, le=600)


class NotificationOptions(_Options):
    on: list[Literal["success", "warning", "failed", "stopped"]] | None = None
    email: EmailOptions | None = None
    webhook: WebhookOptions | None = None


class HealthCheckOptions(_Options):
    every_days: float = Field(gt=0, le=3650)
    read_data_subset: Share | None = None


class JobOptions(_Options):
    """Every option a job may carry; durations in seconds, sizes in bytes once validated."""

    bandwidth_limit: Size | None = Field(default=None, ge=1, description="Upload bytes per second.")
    compression_level: int | None = Field(default=None, ge=1, le=22, description="zstd level.")
    pre_script: str | None = Field(default=None, max_length=100_000)
    post_script: str | None = Field(default=None, max_length=100_000)
    script_timeout: Seconds | None = Field(default=None, gt=0, le=7 * 86400)
    fsfreeze: Annotated[list[str], _plainly(_absolute_mounts)] | None = None
    parallel_machines: int | None = Field(default=None, ge=1, le=256)
    credentials_ttl_seconds: Seconds | None = Field(default=None, ge=1, le=12 * 3600)
    task_timeout_seconds: Seconds | None = Field(default=None, gt=0, le=30 * 86400)
    poll_slice_seconds: Seconds | None = Field(default=None, gt=0, le=60)
    cancel_grace_seconds: Seconds | None = Field(default=None, ge=0, le=86400)
    prune: bool | None = None
    password: str | None = Field(
        default=None, min_length=8, description="Write-only: the job's own repository password."
    )
    password_sealed: SealedHex | None = None
    notifications: NotificationOptions | None = None
    health_check: HealthCheckOptions | None = None

    def stored(self) -> dict[str, Any]:
        """The normalised JSON kept in the database (secrets still plain: the service seals them)."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


def describe(exc: ValidationError, prefix: str = "option ") -> str:
    """One line naming the first bad field and what is expected (never echoing the input)."""
    errors = exc.errors(include_input=False)
    if not errors:
        return f"{prefix.strip()} is not valid"
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{prefix}{where}: {message}{more}" if where else f"{message}{more}"


def validate_job_options(raw: Mapping[str, Any] | JobOptions | None) -> JobOptions:
    """Validate options given by an administrator; a mistake is a ConfigurationError naming it."""
    if isinstance(raw, JobOptions):
        return raw
    try:
        return JobOptions.model_validate(dict(raw or {}))
    except ValidationError as exc:
        raise ConfigurationError(describe(exc), hint="see `cloudkeep job create --help`") from None


def read_job_options(job_name: str, raw: Mapping[str, Any] | None) -> JobOptions:
    """Stored options, typed. Keys saved before validation existed that no code reads are dropped
    with a warning; a value that cannot work fails the job's session with a clear error."""
    data = dict(raw or {})
    unknown = sorted(k for k in data if k not in JobOptions.model_fields)
    if unknown:
        log.warning("job %s: ignoring unknown stored option(s) %s", job_name, ", ".join(unknown))
        data = {k: v for k, v in data.items() if k not in unknown}
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(
            f"job {job_name!r}: {describe(exc)}",
            hint=f"correct it: cloudkeep job update {job_name} --option KEY=VALUE",
        ) from None
