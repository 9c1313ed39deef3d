"""The CLI tests use the server fixtures (state store on SQLite/PostgreSQL, live server)."""

from tests.server.fixtures import *  # noqa: F403
