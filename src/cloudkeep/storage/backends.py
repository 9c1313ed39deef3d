"""Imports every built-in backend so that each registers its scheme."""

from cloudkeep.storage import azure_blob, local, memory, s3  # noqa: F401
