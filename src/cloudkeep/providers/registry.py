"""Imports each built-in provider so that it registers itself."""

from cloudkeep.providers import aws, azure, local  # noqa: F401
