"""The historian's store on SQLite and on a real PostgreSQL: migrations applied once and recorded, a newer
database refused, the same values out of both engines, clear one-line errors for bad URLs and a server
that is not there."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edge.historian import store as store_module
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
        with pytest.raises(StoreError, match=rf"schema version 99, newer than this historian knows"
                                             rf" \({len(migrations(store.dialect))}\)"):
            open_store(db_url, migrate=migrate)
    assert store.query("SELECT max(version) FROM schema_migrations") == [(99,)]


def test_an_unmigrated_database_is_refused_without_migrate(tmp_path: pathlib.Path) -> None:
    sqlite3.connect(tmp_path / "new.db").close()             # a database, empty
    with pytest.raises(StoreError, match=f"schema version 0, this historian needs {len(migrations('sqlite'))}:"
                                         " run reedge historian migrate"):
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


def test_rows_relations_give_the_same_rows_in_order_from_both_engines_and_one_statement_text_on_postgresql(
        store: Store) -> None:
    """``rows_relations``: the rows as given (order, types, text with quotes, percent signs, question marks and
    non-ASCII, the ends of bigint, times) from SQLite and PostgreSQL alike, in an INSERT and in an IN; on
    PostgreSQL one relation whose text is the same for 1 row as for 400 (psycopg converts it once, the server
    plans it once), the rows in one parameter; on SQLite as many as its limit of parameters needs; none for no
    rows."""
    rows = [(f"st-{i:03d}", 399 - i, f"2025-03-14T09:26:{i % 60:02d}.{i % 1000:03d}Z") for i in range(400)]
    rows[0] = ("it's 100% done? ünï \"q\"", 2**63 - 1, "2025-03-14T09:26:53.589Z")
    rows[1] = ("b", -(2**63), "2025-03-14T09:26:53.000Z")
    types = ("text", "bigint", "timestamptz")
    assert list(store_module.rows_relations(store.dialect, [], types)) == []
    (one_sql, one_params), = store_module.rows_relations(store.dialect, rows[:1], types)
    relations = list(store_module.rows_relations(store.dialect, rows, types))
    if store.dialect == "postgresql":
        assert len(relations) == 1 and relations[0][0] == one_sql and len(relations[0][1]) == len(one_params) == 1
    else:
        assert [len(params) for _, params in relations] == [999, 3 * 400 - 999]   # SQLite's limit: 333 rows a part
    got: list[tuple[Any, ...]] = []
    with store.transaction() as tx:
        for sql, params in relations:
            tx.execute("INSERT INTO coverage (site, station, boot_id, stream, first_seq, last_seq)"
                       f" SELECT column1, 'st', 'b', 'telemetry', column2, column2 FROM ({sql}) AS r", params)
            got += tx.query(f"SELECT r.* FROM ({sql}) AS r", params)
        (keys, key_params), = store_module.rows_relations(store.dialect, [(r[0],) for r in rows[:5]], ("text",))
        found = tx.query(f"SELECT site, first_seq FROM coverage WHERE site IN ({keys}) ORDER BY site", key_params)
    assert got == rows                           # times come back as the text they went in as (both engines)
    assert found == sorted((a, b) for a, b, _ in rows[:5])


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
    assert ("applied 0001_initial, 0002_quarantine_once, 0003_resend, 0004_telemetry_one_index, 0005_resend_rest,"
            " 0006_telemetry_windows; now at version 6" in capsys.readouterr().out)
    assert main(["historian", "migrate", "--db", db]) == 0
    assert "at version 6, nothing to apply" in capsys.readouterr().out


def test_a_reader_opens_and_reads_beside_a_writers_open_transaction(tmp_path: pathlib.Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The page, gaps and report check the version with plain reads: they never queue for the write lock
    the consumer holds (WAL lets them read beside it)."""
    db = tmp_path / "h.db"
    open_store(str(db)).close()
    monkeypatch.setattr(store_module, "SQLITE_BUSY_MS", 300)     # a wait for the write lock fails fast
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")                             # the consumer's transaction, open
    try:
        with open_store(str(db), migrate=False) as reader:
            assert reader.query("SELECT count(*) FROM gaps") == [(0,)]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_reader_given_a_path_with_no_database_says_so_and_makes_no_file(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.app.cli import main

    typo = tmp_path / "typo.db"
    for argv in (["historian", "gaps", "--db", str(typo)], ["historian", "report", "--db", f"sqlite://{typo}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"there is no SQLite database {typo}: check the path" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def _digests(store: Store) -> list[tuple[str, str]]:
    return [(bytes(p).decode(), d) for p, d in store.query("SELECT payload, digest FROM quarantine ORDER BY id")]


@contextlib.contextmanager
def _database_at_version(kind: str, version: int, tmp_path: pathlib.Path, pg_server: Any,
                         monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A new database as the historian of schema ``version`` left it (its first ``version`` migrations, by
    ``apply_migrations`` itself); on PostgreSQL a database of its own, dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite://{tmp_path / 'old.db'}"
    else:
        import psycopg

        name = f"v{version}_{os.getpid()}_{time.monotonic_ns()}"
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    every = store_module.migrations
    with monkeypatch.context() as m:
        m.setattr(store_module, "migrations", lambda dialect: every(dialect)[:version])
        s = store_module.connect(url)
        assert [mig.version for mig in apply_migrations(s)] == list(range(1, version + 1))
    try:
        yield s
    finally:
        s.close()
        if kind == "postgresql":
            with psycopg.connect(pg_server.url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {name}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_2_folds_the_copies_quarantined_before_it_into_one(kind: str, tmp_path: pathlib.Path,
                                                                     request: pytest.FixtureRequest,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A database at version 1 with one message quarantined three times: after migrating it is there once,
    with the digest ``ingest`` gives it, so a later copy adds nothing."""
    from edge.historian.ingest import Received, ingest

    topic = "reedge/v1/s/st/event"
    pg = request.getfixturevalue("pg_server") if kind == "postgresql" else None
    with _database_at_version(kind, 1, tmp_path, pg, monkeypatch) as s:
        with s.transaction() as tx:
            for payload in (b"{not json", b"{not json", b"[]", b"{not json"):
                tx.execute("INSERT INTO quarantine (received, topic, payload, reason) VALUES (?, ?, ?, ?)",
                           ("2026-01-01T00:00:00.000Z", topic, payload, "not JSON"))
        assert [m.version for m in apply_migrations(s)] == list(range(2, len(migrations(s.dialect)) + 1))
        assert _digests(s) == [("{not json", store_module.quarantine_digest(topic, b"{not json")),
                               ("[]", store_module.quarantine_digest(topic, b"[]"))]
        r = ingest(s, [Received(topic, b"{not json"), Received(topic, b"[]"), Received(topic, b"{}")])
        assert r.quarantined == 3
        assert [p for p, _ in _digests(s)] == ["{not json", "[]", "{}"]


#: telemetry rows as a historian of schema 5 stored them: what a double needs 17 digits for, both ends of
#: bigint, the largest and smallest doubles, NULLs, units and status flags (one window without UTC times)
_V5_TELEMETRY = [
    ("s", "st-1", "boot-a", 1, "chamber_temp", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z", "°C",
     0.1 + 0.2, -273.15, 1e308, 612.4, 1000, 999, "open_circuit stale"),
    ("s", "st-1", "boot-a", 1, "chamber_pressure", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z", None,
     None, None, None, None, 2 ** 63 - 1, 0, ""),
    ("s", "st-1", "boot-a", 2, "chamber_temp", "2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z", "°C",
     5e-324, -1.7976931348623157e308, 2.0, 1 / 3, 1, -2 ** 63, "a 'quoted' \\ \"flag\""),
    ("s", "st-2", "boot-b", 7, "h2_room", None, None, "%LEL", 0.5, 0.45, 0.55, 0.5, 10, 10, ""),
]
#: the telemetry table's columns (and the view's since 0006), and an order for comparing its rows
_COLUMNS = "site, station, boot_id, seq, channel, start_utc, end_utc, unit, last, min, max, mean, count, valid, status"
_ORDER = " ORDER BY site, station, boot_id, seq, channel"


def test_migration_4_leaves_telemetry_one_unique_index_and_every_row(tmp_path: pathlib.Path, pg_server: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL at version 3 (two telemetry indexes), telemetry stored: 0004 to 0006 keep every row, and the
    table of those rows (``telemetry_channels`` since 0006) then has one index, unique, which a lookup by
    channel and time through the view uses."""
    with _database_at_version("postgresql", 3, tmp_path, pg_server, monkeypatch) as s:
        with s.transaction() as tx:
            tx.executemany(f"INSERT INTO telemetry ({_COLUMNS}) VALUES ({', '.join('?' * 15)})", _V5_TELEMETRY)
        before = s.query(f"SELECT {_COLUMNS} FROM telemetry{_ORDER}")
        assert [m.version for m in apply_migrations(s)] == [4, 5, 6]
        assert s.query(f"SELECT {_COLUMNS} FROM telemetry{_ORDER}") == before
        indexes = s.query("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'telemetry_channels'")
        assert [name for name, _ in indexes] == ["telemetry_by_channel_time"]
        assert indexes[0][1].startswith("CREATE UNIQUE INDEX")
        assert "(site, station, channel, end_utc, boot_id, seq)" in indexes[0][1]
        with s.transaction() as tx:      # a small table is scanned whole unless told not to
            tx.execute("SET LOCAL enable_seqscan = off")
            plan = " ".join(r[0] for r in tx.query(
                "EXPLAIN SELECT mean FROM telemetry WHERE site = 's' AND station = 'x' AND channel = 'c'"
                " AND end_utc >= now() - interval '1 hour'"))
        assert "telemetry_by_channel_time" in plan


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_6_keeps_the_rows_stored_before_and_the_view_reads_old_and_new_alike(
        kind: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database at version 5 with telemetry stored a row per channel: after 0006 the view ``telemetry`` gives
    every row back with the same values and types (doubles to the last bit), windows ingested since are one
    row each and read back as exactly the numbers sent, a channel looked up by time uses the windows' index,
    ingest goes on exactly once, and deleting through the view deletes the old row or the new window."""
    from edge.historian.ingest import ingest
    from tests.historian_messages import Station

    pg = request.getfixturevalue("pg_server") if kind == "postgresql" else None
    with _database_at_version(kind, 5, tmp_path, pg, monkeypatch) as s:
        with s.transaction() as tx:
            tx.executemany(f"INSERT INTO telemetry ({_COLUMNS}) VALUES ({', '.join('?' * 15)})", _V5_TELEMETRY)
        before = s.query(f"SELECT {_COLUMNS} FROM telemetry{_ORDER}")
        assert [m.version for m in apply_migrations(s)] == [6]
        after = s.query(f"SELECT {_COLUMNS} FROM telemetry{_ORDER}")
        assert after == before
        assert [[type(v) for v in row] for row in after] == [[type(v) for v in row] for row in before]

        st = Station(site="s", station="st-3")
        windows = [st.telemetry(n) for n in range(1, 6)]
        body = json.loads(windows[0].payload)["body"]
        extremes = {"chamber_temp": (0.1 + 0.2, -1.7976931348623157e308, 1.7976931348623157e308, 5e-324,
                                     2 ** 63 - 1, 0, ["FAULT", "STALE"]),
                    "chamber_pressure": (None, None, None, None, 1, 0, [])}
        fields = ("last", "min", "max", "mean", "count", "valid", "status")
        body["channels"] = {name: dict(zip(fields, values, strict=True)) for name, values in extremes.items()}
        windows[0] = st.message("telemetry", 1, body)
        ingest(s, [st.birth(), st.description(1), *windows[:3]])
        assert s.query("SELECT reason FROM quarantine") == []
        r = ingest(s, windows[1:])            # 2 and 3 again (byte-identical copies), 4 and 5 new
        assert (r.stored, r.duplicate) == (2, 2)
        assert s.query("SELECT count(*) FROM telemetry_windows") == [(5,)]
        assert s.query("SELECT channel, last, min, max, mean, count, valid, status FROM telemetry"
                       " WHERE station = 'st-3' AND seq = 1 ORDER BY channel") == [
            ("chamber_pressure", None, None, None, None, 1, 0, ""),
            ("chamber_temp", 0.1 + 0.2, -1.7976931348623157e308, 1.7976931348623157e308, 5e-324, 2 ** 63 - 1, 0,
             "FAULT STALE")]
        channels = s.query("SELECT count(DISTINCT channel) FROM telemetry WHERE station = 'st-3' AND seq = 2")[0][0]
        assert channels >= 2
        assert s.query("SELECT count(*) FROM telemetry WHERE station = 'st-3'") == [(2 + 4 * channels,)]

        if kind == "postgresql":
            with s.transaction() as tx:      # a small table is scanned whole unless told not to
                tx.execute("SET LOCAL enable_seqscan = off")
                plan = " ".join(r[0] for r in tx.query(
                    "EXPLAIN SELECT mean FROM telemetry WHERE site = 's' AND station = 'x' AND channel = 'c'"
                    " AND end_utc >= now() - interval '1 hour'"))
        else:
            plan = " ".join(str(r) for r in s.query(
                "EXPLAIN QUERY PLAN SELECT mean FROM telemetry WHERE site = 's' AND station = 'x'"
                " AND channel = 'c' AND end_utc >= '2026-01-01'"))
        assert "telemetry_windows_by_time" in plan and "telemetry_by_channel_time" in plan

        with s.transaction() as tx:
            tx.execute("DELETE FROM telemetry WHERE station IN ('st-1', 'st-3') AND channel = 'chamber_temp'")
        assert s.query(f"SELECT {_COLUMNS} FROM telemetry{_ORDER}") == [before[0], before[-1]]
        assert s.query("SELECT count(*) FROM telemetry_windows") == [(0,)]
        with s.transaction() as tx:         # a row without UTC times (before schema 1.2) is found too
            tx.execute("DELETE FROM telemetry WHERE station = 'st-2'")
        assert s.query(f"SELECT {_COLUMNS} FROM telemetry{_ORDER}") == [before[0]]


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """The server process ``pid`` stops answering (a hung host; its kernel still answers TCP, so keepalives
    and tcp_user_timeout see nothing), and goes on afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as e:
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_postgresql_that_stops_answering_fails_the_call_at_its_deadline_then_is_used_again(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.historian.ingest import ingest
    from tests.historian_messages import Station

    monkeypatch.setattr(store_module, "PG_ANSWER_S", 0.5)
    assert isinstance(store, store_module.PgStore) and store._conn is not None
    params = store._conn.info.get_parameters()
    assert (params["keepalives"], params["keepalives_idle"], params["tcp_user_timeout"]) == ("1", "10", "30000")
    assert [store.query(f"SHOW {p}")[0][0] for p in ("lock_timeout", "statement_timeout",
                                                      "idle_in_transaction_session_timeout")] == ["10s", "30s", "30s"]
    st = Station()
    with _stopped(store.query("SELECT pg_backend_pid()")[0][0]):
        started = time.monotonic()
        thread, out = _in_thread(lambda: ingest(store, [st.telemetry(1)]))
        thread.join(10)
        took = time.monotonic() - started
        assert not thread.is_alive(), "the ingest still waits for a server that does not answer"
    assert took < 5 and isinstance(out[0], DatabaseUnavailable), out
    assert "no answer in 0.5 s; the connection was cut" in str(out[0])
    assert ingest(store, [st.telemetry(1)]).stored == 1           # a new connection; nothing was half stored
    assert store.query("SELECT count(*) FROM received") == [(1,)]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_close_does_not_wait_for_a_call_the_server_does_not_answer(store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(store, store_module.PgStore)
    inside = threading.Event()
    connect = store._connect

    def connect_then_say_so() -> Any:
        conn = connect()
        inside.set()                 # the call holds the store from here on
        return conn

    monkeypatch.setattr(store, "_connect", connect_then_say_so)
    with _stopped(store.query("SELECT pg_backend_pid()")[0][0]):
        inside.clear()
        caller, out = _in_thread(lambda: store.query("SELECT 1"))
        assert inside.wait(5)
        closer, _ = _in_thread(store.close)
        closer.join(5)
        assert not closer.is_alive(), "close waits for the call the server does not answer"
        caller.join(5)
        assert not caller.is_alive() and isinstance(out[0], DatabaseUnavailable), out
    assert "the store was closed; the connection was cut" in str(out[0])


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_transaction_left_open_by_a_silent_client_gives_its_locks_up(db_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that goes quiet mid-transaction (hung, its link cut) holds its station's lock: another one
    waiting for it gives up after lock_timeout (and retries), and the server ends the idle transaction, so
    the lock does not wait for TCP to notice (hours)."""
    from edge.historian.ingest import ingest
    from tests.historian_messages import Station

    monkeypatch.setattr(store_module, "PG_LOCK_TIMEOUT_MS", 200)
    monkeypatch.setattr(store_module, "PG_IDLE_IN_TRANSACTION_MS", 600)
    st = Station()
    locked, release = threading.Event(), threading.Event()
    with open_store(db_url) as quiet, open_store(db_url) as other:
        def hold() -> None:
            with quiet.transaction() as tx:
                tx.lock_station(st.site, st.station)
                locked.set()
                release.wait(10)                     # silent, mid-transaction

        holder, held = _in_thread(hold)
        try:
            assert locked.wait(5)
            with pytest.raises(DatabaseUnavailable, match="lock timeout"):
                ingest(other, [st.event(1)])
            deadline = time.monotonic() + 5           # the server ends the quiet one's transaction after 0.6 s
            while True:
                try:
                    assert ingest(other, [st.event(1)]).stored == 1
                    break
                except DatabaseUnavailable:           # each try waits its 0.2 s for the lock
                    assert time.monotonic() < deadline, "the silent transaction still holds the lock"
        finally:
            release.set()
            holder.join(5)
        assert isinstance(held[0], DatabaseUnavailable), held    # its session was ended: nothing it wrote stays
