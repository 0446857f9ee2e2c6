"""``ingest`` on SQLite and on a real PostgreSQL (each test runs on both): every stream into its rows,
exactly once, invalid messages quarantined with the reason, and gaps as data (open, split, closed,
explained by thinning, a lost tail found from a birth), also with two writers interleaving one stream."""

from __future__ import annotations

import copy
import functools
import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.historian.gaps import gap_rows
from edge.historian.ingest import Received, ingest, ingest_isolating
from edge.historian.store import DatabaseUnavailable, SqliteStore, Store, StoreError, open_store
from edge.telemetry import envelope as E
from tests.historian_messages import Station


def gaps(store: Store, *, open_only: bool = True) -> list[tuple[str, str, int, int, str | None]]:
    return [(g.boot_id, g.stream, g.first_seq, g.last_seq, g.explained)
            for g in sorted(gap_rows(store, open_only=open_only), key=lambda g: (g.boot_id, g.stream, g.first_seq))]


def test_every_stream_goes_into_its_rows(store: Store) -> None:
    st = Station()
    desc = st.description(1, unit="K")
    r = ingest(store, [st.birth({"telemetry": 5}), desc, st.telemetry(6, description_sha256=st.description_sha256),
                       st.event(1), st.state(1, phase="degassing"), st.batch_start(1, "b-7"),
                       st.batch_end(2, "b-7", mass_out_kg=24.5), st.reply(1)])
    assert (r.stored, r.duplicate, r.quarantined, r.ignored) == (8, 0, 0, 0)
    assert store.query("SELECT status, boot_id, software, description_sha256 FROM stations") == [
        ("online", "boot-a", "reedge 0.1.0", st.description_sha256)]
    ((prev, started),) = store.query("SELECT previous_last_seq, boot_started FROM boots")
    assert json.loads(prev) == {"telemetry": 5} and started.endswith("Z")
    rows = store.query("SELECT channel, unit, last, status, start_utc, end_utc FROM telemetry ORDER BY channel")
    assert rows == [("chamber_pressure", "bar", 1.482, "", "2025-03-14T09:26:52.589Z", "2025-03-14T09:26:53.589Z"),
                    ("chamber_temp", "K", 612.4, "", "2025-03-14T09:26:52.589Z", "2025-03-14T09:26:53.589Z"),
                    ("chamber_temp_safety", "degC", None, "FAULT", "2025-03-14T09:26:52.589Z",
                     "2025-03-14T09:26:53.589Z")]
    assert store.query("SELECT kind, name FROM events") == [("alarm", "chamber_temp_deviation")]
    assert store.query("SELECT phase, batch_id FROM states") == [("degassing", "hd-2025-0314-01")]
    ((batch,),) = [store.query("SELECT batch_id, recipe, mass_in_kg, mass_out_kg, kwh_per_kg, revision, outcome,"
                               " start_record, end_record FROM batches")]
    assert batch[:7] == ("b-7", "HD of sintered NdFeB scrap, 25 kg", 25.0, 24.5, 1.723594, 1, "done")
    assert json.loads(batch[7])["record"] == "start" and json.loads(batch[8])["accounting"]["h2_nl"] == 1415.37
    assert store.query("SELECT count(*) FROM received") == [(8,)]
    assert gaps(store) == []


def test_the_same_messages_twice_in_one_batch_and_again_later_are_stored_once(store: Store) -> None:
    st = Station()
    msgs = [st.birth(), st.telemetry(1), st.telemetry(2), st.event(1), st.state(1, retained=True)]
    r = ingest(store, msgs + msgs)
    assert (r.stored, r.duplicate) == (5, 5)
    r = ingest(store, list(reversed(msgs)))
    assert (r.stored, r.duplicate, r.quarantined) == (0, 5, 0)
    assert store.query("SELECT count(*) FROM received") == [(5,)]
    assert store.query("SELECT count(*) FROM telemetry") == [(6,)]
    assert store.query("SELECT count(*) FROM events") == [(1,)]


def test_invalid_messages_are_quarantined_with_the_reason_and_the_rest_is_stored(store: Store) -> None:
    st = Station()
    good = st.telemetry(1)
    doc = json.loads(st.telemetry(2).payload)
    doc["body"]["channels"]["chamber_temp"]["mean"] = "hot"
    wrong_schema = Received(st.topics.telemetry, json.dumps(doc).encode())
    conflict = Received(st.topics.telemetry, good.payload.replace(b"612.4", b"612.5"))
    on_wrong_topic = Received(st.topics.event, st.telemetry(3).payload)
    command = Received(st.topics.cmd("hold", "operator"), b'{"whatever": 1}')
    huge = Received(st.topics.event, b"[" * 10 + b" " * (3 << 20))
    r = ingest(store, [good, Received(st.topics.telemetry, b"{not json"), wrong_schema, conflict, on_wrong_topic,
                       Received("reedge/v1/pilot-line/HD 01/telemetry", good.payload), command, huge,
                       st.telemetry(4)])
    assert (r.stored, r.duplicate, r.quarantined, r.ignored) == (2, 0, 6, 1)
    reasons = [x[0] for x in store.query("SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == 6
    assert any(x.endswith(f"(payload of {len(huge.payload)} bytes: the first 1048576 kept)") for x in reasons)
    assert any("not JSON" in x for x in reasons)
    assert any("/body/channels/chamber_temp/mean" in x for x in reasons)
    assert any("envelope says pilot-line/hd-01/telemetry, the topic pilot-line/hd-01/event" in x for x in reasons)
    assert any("cannot be an MQTT topic level" in x for x in reasons)
    assert any(x.startswith("conflict: telemetry #1 of boot boot-a is already stored with different bytes")
               for x in reasons)
    payloads = {bytes(x[0]) for x in store.query("SELECT payload FROM quarantine")}
    assert conflict.payload in payloads and b"{not json" in payloads and huge.payload[:1 << 20] in payloads
    assert (st.topics.telemetry,) in store.query("SELECT topic FROM quarantine WHERE reason LIKE 'conflict%'")
    assert store.query("SELECT seq FROM received ORDER BY seq") == [(1,), (4,)]
    assert store.query("SELECT last FROM telemetry WHERE channel = 'chamber_temp' AND seq = 1") == [(612.4,)]


def test_a_gap_opens_splits_and_closes_as_the_late_messages_come(store: Store) -> None:
    st = Station()
    r = ingest(store, [st.telemetry(1), st.telemetry(2), st.telemetry(7)])
    assert [(g.first_seq, g.last_seq, g.kind) for g in r.opened] == [(3, 6, "gap")]
    assert gaps(store) == [("boot-a", "telemetry", 3, 6, None)]
    ingest(store, [st.telemetry(4)])
    assert gaps(store) == [("boot-a", "telemetry", 3, 3, None), ("boot-a", "telemetry", 5, 6, None)]
    r = ingest(store, [st.telemetry(3), st.telemetry(5)])
    assert [(g.first_seq, g.kind) for g in r.closed] == [(3, "late")]
    assert gaps(store) == [("boot-a", "telemetry", 6, 6, None)]
    ingest(store, [st.telemetry(6), st.telemetry(8)])
    assert gaps(store) == []
    assert store.query("SELECT count(*) FROM gaps") == [(0,)]         # filled in flight: no row left


def test_a_thinning_report_explains_the_gap_it_covers_before_or_after_it_opened(store: Store) -> None:
    st = Station()
    ingest(store, [st.thinned(1, "telemetry", 3, 4), st.telemetry(1), st.telemetry(2), st.telemetry(6)])
    assert gaps(store, open_only=False) == [("boot-a", "telemetry", 3, 4, "thinned"),
                                            ("boot-a", "telemetry", 5, 5, None)]
    ingest(store, [st.telemetry(9)])                     # 7..8 lost, then reported thinned
    assert gaps(store) == [("boot-a", "telemetry", 5, 5, None), ("boot-a", "telemetry", 7, 8, None)]
    ingest(store, [st.thinned(2, "telemetry", 8, 20)])
    assert gaps(store) == [("boot-a", "telemetry", 5, 5, None), ("boot-a", "telemetry", 7, 7, None)]
    assert ("boot-a", "telemetry", 8, 8, "thinned") in gaps(store, open_only=False)


def test_a_birth_finds_the_lost_tail_of_the_previous_boot_and_late_messages_close_it(store: Store) -> None:
    a = Station(boot="boot-a")
    ingest(store, [a.birth(), a.telemetry(1), a.telemetry(2), a.telemetry(3), a.event(1)])
    b = Station(boot="boot-b", t0_ns=a.t_ns)
    # boot-a had reached telemetry 5 and event 2: event 2 is due before boot-b's first event, telemetry 4..5
    # before boot-b's first telemetry (the outbox sends the other streams first)
    r = ingest(store, [b.birth({"telemetry": 5, "event": 2}, previous_boot="boot-a"), b.event(3)])
    assert gaps(store) == [("boot-a", "event", 2, 2, None)]
    assert [g.kind for g in r.opened] == ["lost_tail"]
    r = ingest(store, [b.telemetry(6)])
    assert gaps(store) == [("boot-a", "event", 2, 2, None), ("boot-a", "telemetry", 4, 5, None)]
    assert "lost tail" in gap_rows(store, open_only=True)[-1].detail
    ingest(store, [a.telemetry(5), a.telemetry(4), a.event(2)])     # the backlog came after all
    assert gaps(store) == []


def test_a_birth_without_the_previous_boot_id_and_a_retained_birth(store: Store) -> None:
    a = Station(boot="boot-a")
    ingest(store, [a.telemetry(1), a.telemetry(2)])
    b = Station(boot="boot-b", t0_ns=a.t_ns)
    ingest(store, [b.birth({"telemetry": 4}), b.telemetry(5)])    # the outbox no longer knew boot-a's id
    assert gaps(store) == [("boot-a", "telemetry", 3, 4, None)]
    # a retained birth was published before we subscribed: what came before it is not ours to miss
    c = Station(boot="boot-c", t0_ns=b.t_ns)
    ingest(store, [c.birth({"telemetry": 40}, retained=True), c.telemetry(50)])
    assert gaps(store) == [("boot-a", "telemetry", 3, 4, None)]


def test_the_highest_revision_of_a_batch_end_record_wins_in_any_order(store: Store) -> None:
    st = Station()
    ingest(store, [st.batch_end(3, "b-1", revision=2, mass_out_kg=24.9)])
    ingest(store, [st.batch_end(2, "b-1", revision=1, mass_out_kg=20.0), st.batch_start(1, "b-1")])
    assert store.query("SELECT revision, mass_out_kg, mass_in_kg, started FROM batches") == [
        (2, 24.9, 25.0, "2027-01-15T08:05:14.025Z")]
    assert json.loads(store.query("SELECT start_record FROM batches")[0][0])["record"] == "start"


def test_two_writers_with_interleaved_halves_of_one_stream_store_it_once_and_leave_no_gap(store: Store,
                                                                                         db_url: str) -> None:
    st = Station()
    msgs = [st.telemetry(n) for n in range(1, 201)] + [st.event(n) for n in range(1, 41)]
    halves = [msgs[0::2], msgs[1::2]]
    errors: list[BaseException] = []
    together = threading.Barrier(2, timeout=10)     # each pair of batches starts at once: their transactions overlap

    def writer(items: list[Received]) -> None:
        try:
            with open_store(db_url) as s:
                for i in range(0, len(items), 10):
                    together.wait()
                    ingest(s, items[i:i + 10] + items[max(0, i - 3):i])     # and a few re-sent
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert store.query("SELECT count(*), count(DISTINCT seq) FROM received WHERE stream = 'telemetry'") == [(200, 200)]
    assert store.query("SELECT count(*) FROM telemetry") == [(600,)]
    assert gaps(store) == []
    assert store.query("SELECT stream, first_seq, last_seq FROM coverage ORDER BY stream") == [
        ("event", 1, 40), ("telemetry", 1, 200)]


def test_a_status_message_under_a_known_number_is_a_duplicate_not_a_conflict(store: Store) -> None:
    st = Station()
    birth = st.birth()
    will = Received(st.topics.status, E.will(site=st.site, station=st.station, boot_id=st.boot, connection=1,
                                             now_ns=st.t_ns + 10**9))
    shutdown = Received(st.topics.status, E.will(site=st.site, station=st.station, boot_id=st.boot, connection=1,
                                                 now_ns=st.t_ns + 10**9, reason="shutdown"))
    r = ingest(store, [birth, shutdown, will])
    assert (r.stored, r.duplicate, r.quarantined) == (2, 1, 0)
    assert store.query("SELECT status FROM stations") == [("offline",)]


def test_the_compiled_schema_check_agrees_with_jsonschema_on_every_example() -> None:
    """The fast yes/no of ``edge.telemetry.schemas.errors`` (jsonschema_rs, the historian's extra) must never
    call valid what jsonschema calls invalid: every example and every invalid example, against its schema."""
    from edge.spec import resources
    from edge.telemetry import schemas

    cases: list[tuple[str, Any, bool]] = []
    for path in sorted((resources.schemas_dir() / "examples").glob("*.json")):
        doc = json.loads(path.read_text())
        cases.append((doc["schema"], doc, True))
    for path in sorted((resources.schemas_dir() / "examples" / "invalid").glob("*.json")):
        doc = json.loads(path.read_text())
        cases.append((doc["schema"], doc["payload"], False))
    assert len(cases) > 30
    for name, doc, valid in cases:
        fast = schemas._fast_is_valid(name)
        assert fast is not None, "jsonschema_rs is not installed (pip install -e '.[dev]')"
        assert fast(doc) is valid and (schemas.errors(doc, name) == []) is valid, (name, doc)
        assert (list(schemas.validator(name).iter_errors(doc)) == []) is valid, name


def test_reedge_historian_gaps_lists_them_and_exits_1_while_any_is_lost(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.app.cli import main

    db = str(tmp_path / "plant.db")
    st = Station()
    with open_store(db) as s:
        ingest(s, [st.thinned(1, "telemetry", 2, 2), st.telemetry(1), st.telemetry(4), st.telemetry(6)])
        ingest(s, [st.telemetry(5)])
    assert main(["historian", "gaps", "--db", db]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split(": ")[:2] for line in lines] == [
        ["pilot-line/hd-01 telemetry #2 boot boot-a", "explained"],
        ["pilot-line/hd-01 telemetry #3 boot boot-a", "OPEN; opened 20" + lines[1].split("opened 20")[1]]]
    assert "2 gap(s); 1 open: 1 message(s) missing and unexplained" in out.err
    assert main(["historian", "gaps", "--db", db, "--open"]) == 1
    assert capsys.readouterr().out.splitlines() == lines[1:2]
    with open_store(db) as s:
        ingest(s, [st.telemetry(3)])
    assert main(["historian", "gaps", "--db", db, "--open"]) == 0


def test_a_message_the_database_cannot_hold_is_quarantined_alone_and_the_rest_stored(store: Store) -> None:
    from edge.historian.ingest import ingest_isolating

    st = Station()
    huge = st.message("event", 2**70, json.loads(Station().event(1).payload)["body"])
    batch = [st.telemetry(1), st.telemetry(2), huge, st.event(3), st.telemetry(3)]
    r = ingest_isolating(store, batch)
    assert (r.stored, r.quarantined) == (4, 1)
    ((topic, payload, reason),) = store.query("SELECT topic, payload, reason FROM quarantine")
    assert topic == st.topics.event and bytes(payload) == huge.payload and reason.startswith("could not be stored: ")
    assert store.query("SELECT count(*) FROM received") == [(4,)]


def test_a_window_value_no_column_type_holds_is_quarantined_with_its_reason(store: Store) -> None:
    """A window is stored as JSON and read through the view's casts (migration 0006), so what a bigint or a
    double column would refuse is refused at ingest, never stored to fail a reader: a count beyond 64 bits,
    either in the usual form or written as a float; a number beyond a double (``1e400`` reads as infinity) is
    refused by the checks before. Each costs its own message only."""
    st = Station()

    def window(seq: int, old: bytes, new: bytes) -> Received:      # the first channel's value changed
        w = st.telemetry(seq)
        assert old in w.payload
        return Received(w.topic, w.payload.replace(old, new, 1))

    count = json.loads(st.telemetry(1).payload)["body"]["channels"]["chamber_temp"]["count"]
    bad = [window(2, f'"count":{count}'.encode(), b'"count":9223372036854775808'),
           window(3, f'"count":{count}'.encode(), b'"count":1e19'),
           window(4, b'"last":612.4', b'"last":1e400')]
    r = ingest_isolating(store, [st.telemetry(1), *bad, st.telemetry(5)])
    assert (r.stored, r.quarantined) == (2, 3)
    reasons = dict(store.query("SELECT topic, reason FROM quarantine WHERE payload = ?", (bad[0].payload,))
                   + store.query("SELECT 'float', reason FROM quarantine WHERE payload = ?", (bad[1].payload,))
                   + store.query("SELECT 'inf', reason FROM quarantine WHERE payload = ?", (bad[2].payload,)))
    assert "count 9223372036854775808 is beyond a 64-bit integer" in reasons[st.topics.telemetry]
    assert "count 10000000000000000000 is beyond a 64-bit integer" in reasons["float"]
    assert "chamber_temp/last: inf is not a JSON number (a number beyond a double reads as inf)" in reasons["inf"]
    assert store.query("SELECT DISTINCT seq FROM telemetry ORDER BY seq") == [(1,), (5,)]


def test_a_time_utc_cannot_write_is_quarantined_with_its_reason_and_a_checks_bug_costs_one_message(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """9999-12-31T23:59:59.999-23:59 passes the schema but is in year 10000 in UTC: quarantined as not a time
    (it used to raise from the UTC conversion). And whatever a check raises is that message's, found by
    halving: the checks run inside the isolation, so a worker never retries one bad message for ever."""
    st = Station()

    def year_10000(doc: dict[str, Any]) -> None:
        doc["ts"] = "9999-12-31T23:59:59.999-23:59"

    r = ingest_isolating(store, [st.event(1), _edited(st.event(2), year_10000), st.event(3)])
    assert (r.stored, r.quarantined) == (2, 1)
    assert "'9999-12-31T23:59:59.999-23:59'" in store.query("SELECT reason FROM quarantine")[0][0]
    import edge.historian.ingest as ingest_module

    real = ingest_module._times
    poisoned = st.event(5)

    def fails_on_one(env: Any) -> dict[str, str | None]:
        if env.seq == 5:
            raise KeyError("a bug in a check")
        return real(env)

    monkeypatch.setattr(ingest_module, "_times", fails_on_one)
    r = ingest_isolating(store, [st.event(4), poisoned, st.event(6)])
    assert (r.stored, r.quarantined) == (2, 1)
    reasons = [x[0] for x in store.query("SELECT reason FROM quarantine")]
    assert any("KeyError" in x and "a bug in a check" in x for x in reasons), reasons


def test_a_window_gets_its_units_from_the_description_it_names_else_the_latest_else_none(store: Store) -> None:
    st = Station()
    ingest(store, [st.description(1, unit="K")])
    kelvin = st.description_sha256
    ingest(store, [st.description(2, unit="degF")])
    other = Station(station="hd-02")
    ingest(store, [st.telemetry(1, description_sha256=kelvin), st.telemetry(2, description_sha256="ab" * 32),
                   st.telemetry(3), other.telemetry(1)])
    rows = store.query("SELECT station, seq, unit FROM telemetry WHERE channel = 'chamber_temp' ORDER BY station, seq")
    assert rows == [("hd-01", 1, "K"), ("hd-01", 2, "degF"), ("hd-01", 3, "degF"), ("hd-02", 1, None)]


@functools.cache
def _examples() -> list[tuple[str, Any]]:
    from edge.spec import resources

    folder = resources.schemas_dir() / "examples"
    out = [(d["schema"], d) for d in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))]
    return out + [(d["schema"], d["payload"]) for d in (json.loads(p.read_text())
                                                         for p in sorted((folder / "invalid").glob("*.json")))]


ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 1.0, 25.0, -0.0, 1e300, 0.5]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.sampled_from(["", "x\n", "hd-01\n", "1.2\n", "a" * 65, "é", "2025-03-14T09:26:53.589Z\n", "HD-01"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _places(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``doc``: where a mutation can go."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            out.append((node, k))
            stack.append(node[k])
    return out


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_compiled_check_never_calls_valid_what_jsonschema_rejects_on_mutated_messages(data: Any) -> None:
    """Differential: envelopes of every stream and commands, mutated (wrong types, trailing newlines for the
    patterns, huge and integral numbers, keys removed or added): the compiled yes/no says valid only where
    jsonschema does, so ``errors`` decides as jsonschema alone (the station, which lacks jsonschema_rs) does."""
    from edge.telemetry import schemas

    name, doc = data.draw(st.sampled_from(_examples()))
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = data.draw(st.sampled_from(_places(doc)))
        action = data.draw(st.sampled_from(["replace", "delete", "add", "newline"]))
        if action == "delete" and isinstance(container, dict):
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[data.draw(st.sampled_from(["extra", "x", key + "_"] if isinstance(key, str) else ["extra"]))] = 1
        elif action == "newline" and isinstance(container[key], str):
            container[key] += "\n"
        else:
            container[key] = data.draw(ODD_VALUES)
    fast = schemas._fast_is_valid(name)
    assert fast is not None
    try:
        fast_valid = fast(doc)
    except Exception:
        fast_valid = False
    slow_valid = schemas.validator(name).is_valid(doc)
    assert slow_valid or not fast_valid, (name, doc)     # then errors() (fast yes, else jsonschema) = jsonschema


def _edited(msg: Received, change: Any) -> Received:
    """``msg`` with its envelope changed by ``change(doc)``."""
    doc = json.loads(msg.payload)
    change(doc)
    return Received(msg.topic, json.dumps(doc).encode(), msg.retained)


def test_a_full_sqlite_disk_quarantines_nothing_and_keeps_the_batch_for_later(tmp_path: Any) -> None:
    """SQLite failing for a reason of its own (disk full) is not the messages' fault: the batch raises
    (unacknowledged, retried), nothing is quarantined; with room again all of it is stored."""
    with open_store(str(tmp_path / "h.db")) as store:
        assert isinstance(store, SqliteStore)
        st = Station()
        ingest_isolating(store, [st.birth(), st.telemetry(1)])
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages + 8}")         # the disk is nearly full
        batch = [st.telemetry(n) for n in range(2, 202)]      # more than 8 pages hold
        with pytest.raises(DatabaseUnavailable, match="database or disk is full"):
            ingest_isolating(store, batch)
        assert store.query("SELECT count(*) FROM quarantine") == [(0,)]
        assert store.query("SELECT count(*) FROM received") == [(2,)]
        store.conn.execute("PRAGMA max_page_count = 1073741823")          # room again
        r = ingest_isolating(store, batch)
        assert (r.stored, r.quarantined) == (200, 0)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("errcode", "error"), [("insufficient_privilege", StoreError),
                                                ("read_only_sql_transaction", StoreError),
                                                ("disk_full", DatabaseUnavailable)])
def test_postgresql_refusing_for_a_reason_of_its_own_quarantines_nothing(store: Store, errcode: str,
                                                                         error: type[StoreError]) -> None:
    with store.transaction() as tx:     # the events table refuses every row, as a revoked grant or a full disk
        tx.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                   f" $$ BEGIN RAISE EXCEPTION 'refused here' USING ERRCODE = '{errcode}'; END $$")
        tx.execute("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse()")
    try:
        st = Station()
        with pytest.raises(StoreError, match="refused here") as caught:
            ingest_isolating(store, [st.telemetry(1), st.event(1), st.telemetry(2)])
        assert type(caught.value) is error
        assert store.query("SELECT count(*) FROM quarantine") == [(0,)]
        assert store.query("SELECT count(*) FROM received") == [(0,)]
    finally:
        with store.transaction() as tx:
            tx.execute("DROP TRIGGER refuse ON events")
            tx.execute("DROP FUNCTION refuse()")


def test_a_message_quarantined_is_kept_once_however_often_it_comes(store: Store) -> None:
    st = Station()
    good = st.telemetry(1)
    invalid = Received(st.topics.telemetry, b'{"not": "an envelope"}')
    conflict = Received(st.topics.telemetry, good.payload.replace(b"612.4", b"612.5"))
    huge = st.message("event", 2**70, json.loads(Station().event(1).payload)["body"])   # the database refuses it
    ingest(store, [good, invalid, conflict])
    ingest_isolating(store, [huge])
    for _ in range(2):                                     # redelivered after reconnects, in one batch or several
        r = ingest_isolating(store, [invalid, conflict, huge, invalid])
        assert (r.stored, r.duplicate, r.quarantined) == (0, 0, 4)
    rows = store.query("SELECT topic, payload FROM quarantine ORDER BY id")
    assert [bytes(p) for _, p in rows] == [invalid.payload, conflict.payload, huge.payload]
    same_bytes_elsewhere = Received(st.topics.event, invalid.payload)
    assert ingest(store, [same_bytes_elsewhere]).quarantined == 1
    assert store.query("SELECT count(*) FROM quarantine") == [(4,)]


def test_both_engines_store_the_same_times_and_numbers_and_refuse_the_same_messages(store: Store) -> None:
    """Times at any offset are stored as UTC with milliseconds, a time that is not one (30 February) is
    quarantined, integral numbers written 1000.0 are integers, JSON's non-numbers are refused."""
    st = Station()

    def at_offset(doc: dict[str, Any]) -> None:
        doc["ts"] = "2025-03-14T10:27:00.1234+01:00"

    def counts_as_floats(doc: dict[str, Any]) -> None:
        for ch in doc["body"]["channels"].values():
            ch["count"] = float(ch["count"])
        doc["body"]["window"]["end_utc"] = "2025-03-14T09:26:53.589Z"

    def trips_as_float(doc: dict[str, Any]) -> None:
        doc["body"]["accounting"]["trips"] = 1.0
        doc["body"]["ended"] = "2027-01-15T11:42:07+02:00"

    def impossible_end(doc: dict[str, Any]) -> None:
        doc["body"]["ended"] = "2025-02-30T00:00:00Z"

    nan = st.telemetry(2)
    nan = Received(nan.topic, nan.payload.replace(b'"last":612.4', b'"last":NaN'))
    assert b"NaN" in nan.payload
    r = ingest(store, [_edited(st.event(1), at_offset), _edited(st.telemetry(1), counts_as_floats),
                       _edited(st.batch_end(1, "b-1"), trips_as_float), _edited(st.batch_end(2, "b-2"), impossible_end),
                       nan])
    assert (r.stored, r.quarantined) == (3, 2)
    assert store.query("SELECT ts FROM events") == [("2025-03-14T09:27:00.123Z",)]
    assert store.query("SELECT ts FROM received WHERE stream = 'event'") == [("2025-03-14T09:27:00.123Z",)]
    assert store.query("SELECT last_seen FROM stations") == [("2025-03-14T09:27:00.123Z",)]
    counts = store.query("SELECT count, valid FROM telemetry WHERE channel = 'chamber_temp'")
    assert counts == [(1000, 1000)] and all(type(x) is int for x in counts[0])
    assert store.query("SELECT batch_id, trips, ended FROM batches") == [("b-1", 1, "2027-01-15T09:42:07.000Z")]
    reasons = sorted(x[0] for x in store.query("SELECT reason FROM quarantine"))
    assert reasons[0].startswith("body/ended '2025-02-30T00:00:00Z': day is out of range for month")
    assert "NaN is not a JSON number" in reasons[1]


@pytest.mark.parametrize("text", [
    "2025-03-14T09:26:53.589Z", "2024-02-29T23:59:59.999Z", "1970-01-01T00:00:00.000Z",
    "2025-03-14T10:26:53.589+01:00", "2025-03-14T09:26:53Z", "2025-03-14T09:26:53.5891Z",
    "2025-02-30T00:00:00.000Z", "2023-02-29T12:00:00.000Z", "2025-03-14T24:00:00.000Z",
    "2016-12-31T23:59:60.000Z", "2025-13-01T00:00:00.000Z", "2025-03-14 09:26:53.589Z", "", None, 17])
def test_a_stored_time_is_what_the_general_conversion_gives_or_the_same_error(text: object) -> None:
    """The fast path for times already in the stored form (``ingest._utc_ms``) gives exactly what
    ``rfc3339_ms(parse_rfc3339(...))`` gives, and refuses exactly what it refuses."""
    from edge.historian.ingest import _utc_ms
    from edge.timestamps import TimestampError, parse_rfc3339, rfc3339_ms

    try:
        want: str | type[TimestampError] = rfc3339_ms(parse_rfc3339(text, "t"))
    except TimestampError:
        want = TimestampError
    for _ in range(2):       # the second time from the cache of seconds
        try:
            got: str | type[TimestampError] = _utc_ms(text, "t")
        except TimestampError:
            got = TimestampError
        assert got == want
