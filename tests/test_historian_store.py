"""The historian's store on SQLite and on a real PostgreSQL: migrations applied once and recorded, a newer
database refused, the same values out of both engines, clear one-line errors for bad URLs and a server
that is not there."""

from __future__ import annotations

import json
import pathlib

import pytest

from edge.historian.store import (
    DatabaseUnavailable,
    Store,
    StoreError,
    apply_migrations,
    migrations,
    open_store,
)
from tests.mqtt_broker import free_port


def test_migrations_are_applied_once_and_recorded(store: Store, db_url: str) -> None:
    rows = store.query("SELECT version, name, applied FROM schema_migrations")
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in migrations(store.dialect)]
    assert rows[0][2].endswith("Z")
    assert apply_migrations(store) == []                       # a second migrate is a no-op
    assert store.query("SELECT count(*) FROM schema_migrations") == [(len(rows),)]
    open_store(db_url).close()
    assert store.query("SELECT count(*) FROM schema_migrations") == [(len(rows),)]


def test_a_database_from_a_newer_historian_is_refused_and_left_alone(store: Store, db_url: str) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                   (99, "from_the_future", "2030-01-01T00:00:00.000Z"))
    for migrate in (True, False):
        with pytest.raises(StoreError, match=r"schema version 99, newer than this historian knows \(1\)"):
            open_store(db_url, migrate=migrate)
    assert store.query("SELECT max(version) FROM schema_migrations") == [(99,)]


def test_an_unmigrated_database_is_refused_without_migrate(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StoreError, match="schema version 0, this historian needs 1: run reedge historian migrate"):
        open_store(str(tmp_path / "new.db"), migrate=False)
    open_store(str(tmp_path / "new.db")).close()
    open_store(str(tmp_path / "new.db"), migrate=False).close()


def test_times_and_json_come_back_the_same_from_both_engines(store: Store) -> None:
    body = {"kind": "alarm", "message": "ünïcode", "n": [1, 2.5, None]}
    with store.transaction() as tx:
        tx.execute("INSERT INTO events (site, station, boot_id, seq, ts, kind, name, message, body)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   ("s", "st", "b", 1, "2025-03-14T09:26:53.589Z", "alarm", None, "m", json.dumps(body)))
        tx.execute("INSERT INTO events (site, station, boot_id, seq, ts, kind, name, message, body)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   ("s", "st", "b", 2, "2025-03-14T09:26:54.000Z", "alarm", None, "100% done?", "{}"))
    rows = store.query("SELECT seq, ts, body, message FROM events WHERE ts > ? ORDER BY seq",
                       ("2025-03-14T09:26:53.000Z",))
    assert [(r[0], r[1], json.loads(r[2]), r[3]) for r in rows] == [
        (1, "2025-03-14T09:26:53.589Z", body, "m"), (2, "2025-03-14T09:26:54.000Z", {}, "100% done?")]


def test_a_failed_transaction_changes_nothing(store: Store) -> None:
    with pytest.raises(ZeroDivisionError), store.transaction() as tx:
        tx.execute("INSERT INTO quarantine (received, topic, payload, reason) VALUES (?, ?, ?, ?)",
                   ("2025-03-14T09:26:53.589Z", "t", b"\x00\xff", "r"))
        _ = 1 / 0
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://db/plant", "unknown scheme 'mysql'"),
    ("sqlite://relative.db", "expected sqlite:///ABSOLUTE/PATH.db"),
    ("postgresql:///plant", "names no host"),
    ("postgresql://u:secret@/plant", r"postgresql://u:\*\*\*@"),
    ("/no/such/folder/h.db", "its folder /no/such/folder does not exist"),
    ("", "no database given"),
])
def test_a_bad_database_url_is_one_clear_line(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected) as caught:
        open_store(url)
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)


def test_a_postgresql_that_is_not_there_is_unavailable_in_one_line() -> None:
    url = f"postgresql://postgres:pw@127.0.0.1:{free_port()}/plant"
    with pytest.raises(DatabaseUnavailable, match=r"cannot reach PostgreSQL at postgresql://postgres:\*\*\*@") as e:
        open_store(url)
    assert "\n" not in str(e.value) and "pw@" not in str(e.value)


def test_reedge_historian_migrate_applies_once_then_has_nothing_to_do(tmp_path: pathlib.Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from edge.app.cli import main

    db = str(tmp_path / "plant.db")
    assert main(["historian", "migrate", "--db", db]) == 0
    assert "applied 0001_initial; now at version 1" in capsys.readouterr().out
    assert main(["historian", "migrate", "--db", db]) == 0
    assert "at version 1, nothing to apply" in capsys.readouterr().out
