"""The server tests' shared fixtures live in ``fixtures.py`` (shared with ``tests/cli``); a test module's
own fixture of the same name (``ctx``, ``database_url``) takes precedence over these."""

from tests.server.fixtures import *  # noqa: F403
