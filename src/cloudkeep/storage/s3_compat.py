"""What differs between Amazon S3 and S3-compatible stores (MinIO, Ceph, Wasabi …), in one place.

Shared by the S3 backend and the AWS provider: the checksum settings that keep uploads readable
by stores that do not understand aws-chunked framing. How to recognise "this endpoint does not
implement X" is part of error translation, in ``cloudkeep.providers.aws.errors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHECKSUM_WHEN = ("when_supported", "when_required")


def checksum_settings(
    endpoint_url: str | None, request: str | None = None, response: str | None = None
) -> dict[str, str]:
    """botocore ``Config`` arguments for request checksum calculation and response validation.

    botocore ≥ 1.36 sends upload bodies over HTTPS in aws-chunked framing with a trailing
    checksum; a store that does not understand it keeps the framing as the object's bytes. So
    for a custom endpoint the default is ``when_required`` (no framing; cloudkeep sends
    Content-MD5 itself), and on AWS botocore's own default (``when_supported``).
    """
    default = "when_required" if endpoint_url else "when_supported"
    settings = {
        "request_checksum_calculation": request or default,
        "response_checksum_validation": response or default,
    }
    for name, value in settings.items():
        if value not in CHECKSUM_WHEN:
            from cloudkeep.errors import ConfigurationError

            raise ConfigurationError(f"{name} must be one of {', '.join(CHECKSUM_WHEN)}, not {value!r}")
    return settings


def config_args(settings: dict[str, str]) -> dict[str, str]:
    """The settings as botocore ``Config`` arguments, where this botocore knows them (≥ 1.36; older
    versions never frame uploads, and cloudkeep's own Content-MD5 still applies)."""
    from botocore.config import Config

    return {k: v for k, v in settings.items() if k in Config.OPTION_DEFAULTS}


def response_checksum_echoed(response: Mapping[str, Any]) -> bool:
    """The store answered with a flexible checksum of what it stored: it decoded and checked it."""
    return any(key.startswith("Checksum") and key != "ChecksumType" and response[key] for key in response)
