"""Fixtures for the server-core tests live in ``fixtures.py`` (shared with ``tests/cli``)."""

from tests.server.core.fixtures import *  # noqa: F403
