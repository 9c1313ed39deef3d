"""Error types shared by every layer.

Each carries a message an administrator can act on; the CLI and API render them without a
traceback. Layers subclass these rather than inventing parallel hierarchies.
"""

from __future__ import annotations


class CloudkeepError(Exception):
    """Base of every expected failure; ``hint`` says what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigurationError(CloudkeepError):
    """Settings or input that can never work as given."""


class NotFoundError(CloudkeepError):
    """A named thing (object, machine, job, restore point …) does not exist."""


class ConflictError(CloudkeepError):
    """The request clashes with existing state (duplicate name, lost conditional write)."""


class PermissionDeniedError(CloudkeepError):
    """The credentials in use lack a permission; the message names the action."""


class UnreachableError(CloudkeepError):
    """A peer (storage endpoint, cloud API, queue) cannot be reached after retries."""


class ThrottledError(UnreachableError):
    """A cloud API refused a call for its rate limit (after the SDK's own retries): slow down."""


class IntegrityError(CloudkeepError):
    """Data read back does not match what was written (corruption, tampering, wrong key)."""


class AuthenticationError(CloudkeepError):
    """Wrong password, bad token, or invalid signature."""


class InsufficientSpaceError(CloudkeepError):
    """A disk or volume ran out of space (restore target, local store, cache)."""


class RepositoryWriteError(CloudkeepError):
    """The repository's store refused a write (disk full, permission denied, the service failing
    after retries). Unlike a source file that cannot be read, this fails the whole backup or
    maintenance step: nothing it half-wrote becomes visible, and a rerun reuses what landed."""

    @classmethod
    def refused(cls, store: str, reason: str, *, hint: str | None = None) -> RepositoryWriteError:
        """``store`` (its location) refused a write for ``reason``."""
        return cls(f"repository write failed: {store}: {reason}", hint=hint)


class RestoreIncompleteError(CloudkeepError):
    """A restore ended with entries it refused or could not write; ``errors`` names each one.

    What could be restored safely was restored; the restore as a whole is not a success.
    """

    def __init__(self, message: str, *, errors: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errors = list(errors or [])


def incomplete_restore(what: str, errors: list[str], *, shown: int = 5) -> RestoreIncompleteError:
    """The error for a restore that refused or failed ``errors`` entries, naming the first few."""
    listed = "; ".join(errors[:shown]) + (f"; and {len(errors) - shown} more" if len(errors) > shown else "")
    return RestoreIncompleteError(
        f"{what}: {len(errors)} entr{'y' if len(errors) == 1 else 'ies'} not restored: {listed}",
        errors=errors,
        hint="everything else was restored; names a restore point may not hold (.., '/', links "
        "out of the target) are refused on purpose: check the machine that wrote it",
    )


class NotSupportedError(ConfigurationError):
    """The peer does not implement what was asked (HTTP 501, an S3-compatible store without STS
    or Object Lock): retrying will not help; the message names the missing feature."""
