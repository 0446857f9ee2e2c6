"""Fixtures of the historian's own tests: one real PostgreSQL for the session (the store, ingest and consumer
modules share it: 2 s each to start on a busy box), and a ``store`` per test on SQLite and on PostgreSQL
alike (the same test runs on both).

tests/conftest.py imports the fixtures, so they are the suite's: ``pg_server`` is started once per pytest
process (per xdist worker), whichever historian test module asks first. Test modules name them as arguments
and import nothing (an import would make a module-level copy of the fixture: one more server).

Each PostgreSQL test gets the database emptied (a new database would cost 0.3 s, emptying a few ms);
each SQLite test its own file.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from edge.historian.store import Store, migrations, open_store
from tests.pg_server import PgServer

TABLES = ("stations", "boots", "received", "coverage", "telemetry", "events", "states", "batches", "descriptions",
          "gaps", "explained", "quarantine", "resend_requests")


@pytest.fixture(scope="session", name="pg_server")
def pg_server_fixture() -> Iterator[PgServer]:
    server = PgServer().start()
    try:
        yield server
    finally:
        server.close()


def empty_pg(url: str) -> None:
    """The module's database as after a first migrate (a test may have left a future version in it)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() != (None,):
            conn.execute("DELETE FROM schema_migrations WHERE version > %s", (len(migrations("postgresql")),))
            for table in TABLES:          # DELETE: faster than TRUNCATE on a few rows (no new files)
                conn.execute(f"DELETE FROM {table}")


@pytest.fixture(params=["sqlite", "postgresql"], name="db_url")
def db_url_fixture(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """An empty, migrated historian database: a new SQLite file, or the module's PostgreSQL emptied."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'historian.db'}"
    url: str = request.getfixturevalue("pg_server").url
    empty_pg(url)
    return url


@pytest.fixture(name="store")
def store_fixture(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    try:
        yield s
    finally:
        s.close()
