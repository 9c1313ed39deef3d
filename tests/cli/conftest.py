"""The CLI tests use the server-core fixtures (state store on SQLite/PostgreSQL, live server)."""

from tests.server.core.fixtures import *  # noqa: F403
