"""Fixtures shared by the unit and integration suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_support import PostgresServer, postgres_or_skip


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the module (``tests/postgres_support.py``),
    or the test is skipped when none can be started."""
    server = postgres_or_skip()
    try:
        yield server
    finally:
        server.remove()
