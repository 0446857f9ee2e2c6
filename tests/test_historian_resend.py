"""The historian asks for its settled gaps (``edge.historian.resend``), on SQLite and PostgreSQL alike: what it
asks, once however many workers look, again only when the answer says so and the time has come, never
beyond the limits; the station's answer matched by command id, its missing numbers unrecoverable (the page,
``reedge historian gaps``), its re-sent copies closing the gap. The clock is the ``now_ns`` given: no waiting."""

from __future__ import annotations

import json
import pathlib
import threading
import time
import uuid
from typing import Any

import pytest

from edge.historian import resend as R
from edge.historian.gaps import gap_rows, open_gap_count, unrecoverable_count
from edge.historian.ingest import Received, ingest
from edge.historian.store import Store, open_store
from edge.historian.web import fleet_html, gap_list
from edge.telemetry.outbox import MAX_RESEND
from edge.telemetry.schemas import errors as schema_errors
from edge.telemetry.topics import command_schema
from tests.historian_messages import Station

SETTLE = 15.0
S = 10**9


def _gap(store: Store, st: Station, lo: int, hi: int, last: int) -> list[Received]:
    """Telemetry 1..``last`` of ``st`` stored but ``lo..hi``; returns the missing ones (as the station sent them)."""
    msgs = [st.telemetry(n) for n in range(1, last + 1)]
    ingest(store, [m for n, m in enumerate(msgs, 1) if not lo <= n <= hi])
    return [m for n, m in enumerate(msgs, 1) if lo <= n <= hi]


def _later(s: float) -> int:
    return time.time_ns() + int(s * S)


def _reply(st: Station, seq: int, command_id: str, code: str = "ok", *, missing: list[list[int]] | None = None,
           requeued: int = 0, rest_from: int | None = None) -> Received:
    body: dict[str, Any] = {"command_id": command_id, "verb": "resend", "result": "accepted" if code == "ok" else
                            "rejected", "code": code, "message": f"answered {code}", "replayed": False}
    if code == "ok":
        body["data"] = {"requeued": requeued, "pending": 0, "missing": missing or [],
                        "missing_count": sum(b - a + 1 for a, b in missing or [])}
        if rest_from is not None:
            body["data"]["rest_from"] = rest_from
    return st.message("reply", seq, body, topic=st.topics.reply("resend"))


def _requests(store: Store) -> list[tuple[Any, ...]]:
    return store.query("SELECT command_id, first_seq, last_seq, attempts, code, requeued, missing FROM resend_requests"
                       " ORDER BY asked_at, first_seq")


def test_a_settled_gap_is_asked_for_once_with_a_valid_command_on_the_identitys_topic(db_url: str) -> None:
    store = open_store(db_url)
    other = open_store(db_url)            # a second worker's connection
    try:
        st = Station()
        _gap(store, st, 4, 6, 10)
        assert R.ask_due(store, _later(SETTLE - 1), settle_s=SETTLE) == []     # not settled: maybe in flight
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        assert (r.site, r.station, r.boot_id, r.stream, r.first_seq, r.last_seq, r.attempts) == (
            "pilot-line", "hd-01", "boot-a", "telemetry", 4, 6, 1)
        assert r.topic("historian") == "reedge/v1/pilot-line/hd-01/cmd/historian/resend"
        doc = json.loads(r.payload("historian"))
        assert schema_errors(doc, command_schema("resend")) == []
        assert doc["command_id"] == r.command_id and str(uuid.UUID(doc["command_id"], version=4)) == r.command_id
        assert doc["issuer"] == "historian"
        assert doc["args"] == {"boot_id": "boot-a", "stream": "telemetry", "first_seq": 4, "last_seq": 6}
        # the other worker, and this one again, before the answer is due: nothing more
        assert R.ask_due(other, _later(SETTLE + 2), settle_s=SETTLE) == []
        assert R.ask_due(store, _later(SETTLE + 60), settle_s=SETTLE) == []
        assert len(_requests(store)) == 1
    finally:
        store.close()
        other.close()


def test_two_workers_looking_at_once_ask_once(db_url: str) -> None:
    """Both find the gap due in their plain read; the station's lock makes the second see the first's row."""
    stores = [open_store(db_url) for _ in range(3)]
    try:
        st = Station()
        _gap(stores[0], st, 4, 6, 10)
        now = _later(SETTLE + 1)

        def look(store: Store, go: threading.Barrier, now: int, asked: list[list[R.Request]]) -> None:
            go.wait()
            asked.append(R.ask_due(store, now, settle_s=SETTLE))

        for _ in range(5):
            go = threading.Barrier(2)
            asked: list[list[R.Request]] = []
            threads = [threading.Thread(target=look, args=(s, go, now, asked)) for s in stores[1:]]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            now += int((R.RESEND_AFTER_S + 1) * S)          # the next round: due again (no answer)
            assert sorted(len(a) for a in asked) == [0, 1], asked
        assert [row[3] for row in _requests(stores[0])] == [1, 2, 3, 4, 5]
    finally:
        for s in stores:
            s.close()


def test_the_answer_marks_what_the_station_no_longer_holds_unrecoverable_and_the_resent_copies_close_the_rest(
        db_url: str) -> None:
    store = open_store(db_url)
    try:
        st = Station()
        lost = _gap(store, st, 4, 9, 12)
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        result = ingest(store, [_reply(st, 1, r.command_id, missing=[[4, 5], [11, 30]], requeued=4)])
        assert [(a.code, a.requeued, a.missing) for a in result.answers] == [("ok", 4, [(4, 5)])]
        assert [(g.first_seq, g.last_seq, g.kind) for g in result.unrecoverable] == [(4, 5, "unrecoverable")]
        assert _requests(store)[0][3:] == (1, "ok", 4, "[[4, 5]]")      # JSON as its text from both
        assert [(g.first_seq, g.last_seq) for g in gap_rows(store, open_only=True)] == [(6, 9)]
        assert [(g.first_seq, g.last_seq, g.unrecoverable is not None) for g in
                gap_rows(store, open_only=True, unrecoverable=True)] == [(4, 5, True), (6, 9, False)]
        assert open_gap_count(store) == (1, 4)
        assert unrecoverable_count(store) == (1, 2)
        page = {(g["first_seq"], g["state"]) for g in gap_list(store)}
        assert (4, "unrecoverable") in page
        page_html = fleet_html(store)
        assert "unrecoverable: the station no longer holds it" in page_html
        assert "0 open gaps, 1 unrecoverable" in page_html            # the open one is not settled by the clock
        # the re-sent copies (byte-identical) close the rest; the unrecoverable part is never asked for again
        ingest(store, lost[2:])
        assert gap_rows(store, open_only=True) == []
        assert unrecoverable_count(store) == (1, 2)
        assert R.ask_due(store, _later(SETTLE + 10 * R.RESEND_AFTER_S), settle_s=SETTLE) == []
    finally:
        store.close()


def test_a_report_that_comes_after_the_station_said_missing_explains_the_unrecoverable_part(db_url: str) -> None:
    """Numbers the station dropped on purpose (thinned; a refused message likewise) and then called missing when
    asked: its report, arriving later, makes them explained, not a loss; the part outside the report stays
    unrecoverable (review)."""
    store = open_store(db_url)
    try:
        st = Station()
        _gap(store, st, 4, 9, 12)
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        ingest(store, [_reply(st, 1, r.command_id, missing=[[4, 9]])])
        assert unrecoverable_count(store) == (1, 6)
        ingest(store, [st.thinned(1, "telemetry", 4, 7)])
        rows = gap_rows(store, unrecoverable=True)
        assert [(g.first_seq, g.last_seq, g.explained, g.unrecoverable is not None) for g in rows] == [
            (4, 7, "thinned", False), (8, 9, None, True)]
        assert unrecoverable_count(store) == (1, 2)
    finally:
        store.close()


def test_busy_unanswered_or_unfilled_asks_are_made_again_after_their_time_up_to_the_limit(db_url: str) -> None:
    store = open_store(db_url)
    try:
        st = Station()
        _gap(store, st, 4, 6, 10)
        t = _later(SETTLE + 1)
        [first] = R.ask_due(store, t, settle_s=SETTLE)
        ingest(store, [_reply(st, 1, first.command_id, "busy")])
        assert R.ask_due(store, t + int((R.RESEND_AFTER_S - 1) * S), settle_s=SETTLE) == []
        seen = [first]
        reply = 2
        for n in range(2, R.MAX_ATTEMPTS + 1):
            t += int((R.RESEND_AFTER_S + 1) * S)
            [again] = R.ask_due(store, t, settle_s=SETTLE)
            assert (again.attempts, again.first_seq, again.last_seq) == (n, 4, 6)
            assert again.command_id not in {r.command_id for r in seen}       # a station answers an id once
            seen.append(again)
            if n == 3:       # accepted, but nothing came: asked again too
                ingest(store, [_reply(st, reply, again.command_id, "ok", requeued=3)])
                reply += 1
            # n == 2, 4, 5: no answer at all
        t += int((R.RESEND_AFTER_S + 1) * S)
        assert R.ask_due(store, t, settle_s=SETTLE) == []            # MAX_ATTEMPTS asks: no more
        assert [row[3] for row in _requests(store)] == list(range(1, R.MAX_ATTEMPTS + 1))
        # a month later the spent asks are forgotten (the table does not grow for ever) and the gap, still
        # open, is asked for again
        [anew] = R.ask_due(store, t + int(R.KEEP_ASKS_S * S), settle_s=SETTLE)
        assert (anew.attempts, anew.first_seq, anew.last_seq) == (1, 4, 6)
        assert [row[0] for row in _requests(store)] == [anew.command_id]
    finally:
        store.close()


def test_the_rest_of_a_resend_cut_at_its_bytes_is_a_first_ask_made_at_once(db_url: str) -> None:
    """A station moves 2 MiB per resend and says where it stopped (``rest_from``): once what it re-sent has
    arrived, the rest is asked for at once (not after RESEND_AFTER_S) and as a first ask, so a gap of any size
    comes back part by part; the part it looked at is still asked again only after its time, as before."""
    store = open_store(db_url)
    try:
        st = Station()
        lost = _gap(store, st, 4, 30, 31)
        t = _later(SETTLE + 1)
        [first] = R.ask_due(store, t, settle_s=SETTLE)
        assert (first.first_seq, first.last_seq, first.attempts) == (4, 30, 1)
        ingest(store, [_reply(st, 1, first.command_id, requeued=8, rest_from=12), *lost[:8]])   # 4-11 came back
        t += 5 * S
        [rest] = R.ask_due(store, t, settle_s=SETTLE)
        assert (rest.first_seq, rest.last_seq, rest.attempts) == (12, 30, 1)
        # cut again, and one of the numbers it looked at did not arrive (19): that part waits its time, as
        # an ask made again would (the rest beyond it, 21-30, is one span with it: it waits too)
        ingest(store, [_reply(st, 2, rest.command_id, requeued=9, rest_from=21), *lost[8:15], lost[16]])
        assert R.ask_due(store, t + 5 * S, settle_s=SETTLE) == []
        [again] = R.ask_due(store, t + int((R.RESEND_AFTER_S + 1) * S), settle_s=SETTLE)
        assert (again.first_seq, again.last_seq, again.attempts) == (19, 30, 2)
        # an answer that names a rest outside the range asked changes nothing of the kind
        ingest(store, [_reply(st, 3, again.command_id, requeued=0, rest_from=99)])
        assert store.query("SELECT rest_from FROM resend_requests WHERE command_id = ?", (again.command_id,)) == [
            (None,)]
    finally:
        store.close()


def test_a_stale_answer_is_asked_again_and_an_offline_station_only_once_it_is_back(db_url: str) -> None:
    """A command that waited in an offline station's session arrives too old (``stale``): asked again. And a
    station the historian knows offline is not asked at all until its birth says it is back."""
    store = open_store(db_url)
    try:
        st = Station()
        ingest(store, [st.birth()])
        _gap(store, st, 4, 4, 6)
        t = _later(SETTLE + 1)
        [r] = R.ask_due(store, t, settle_s=SETTLE)
        ingest(store, [_reply(st, 1, r.command_id, "stale"), st.offline()])
        t += int((R.RESEND_AFTER_S + 1) * S)
        assert R.ask_due(store, t, settle_s=SETTLE) == []              # offline: the ask would wait, and go stale
        ingest(store, [st.birth()])
        [again] = R.ask_due(store, t, settle_s=SETTLE)
        assert (again.first_seq, again.last_seq, again.attempts) == (4, 4, 2)
    finally:
        store.close()


def test_a_lost_tail_is_asked_of_the_previous_boot(db_url: str) -> None:
    store = open_store(db_url)
    try:
        a, b = Station(boot="boot-a"), Station(boot="boot-b")
        b.t_ns = a.t_ns + 10**12
        ingest(store, [a.birth(), *(a.telemetry(n) for n in (1, 2, 3))])
        ingest(store, [b.birth({"telemetry": 5}, previous_boot="boot-a"), b.telemetry(6)])
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        assert (r.boot_id, r.stream, r.first_seq, r.last_seq) == ("boot-a", "telemetry", 4, 5)
    finally:
        store.close()


def test_a_refusal_is_not_asked_again(db_url: str) -> None:
    store = open_store(db_url)
    try:
        st = Station()
        _gap(store, st, 4, 4, 6)
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        result = ingest(store, [_reply(st, 1, r.command_id, "unauthorised")])
        assert [a.code for a in result.answers] == ["unauthorised"]
        assert R.ask_due(store, _later(SETTLE + 10 * R.RESEND_AFTER_S), settle_s=SETTLE) == []
        assert [(g.first_seq, g.last_seq) for g in gap_rows(store, open_only=True)] == [(4, 4)]   # still open
    finally:
        store.close()


def test_a_reply_to_another_senders_command_or_from_another_station_changes_nothing(db_url: str) -> None:
    store = open_store(db_url)
    try:
        st = Station()
        _gap(store, st, 4, 4, 6)
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        other = Station(station="hd-02")
        result = ingest(store, [_reply(st, 1, str(uuid.uuid4()), missing=[[4, 4]]),
                                _reply(other, 1, r.command_id, missing=[[4, 4]])])
        assert result.stored == 2 and result.answers == [] and result.unrecoverable == []
        assert _requests(store)[0][4] is None
        assert unrecoverable_count(store) == (0, 0)
    finally:
        store.close()


def test_at_most_ten_asks_per_station_per_minute_and_a_huge_gap_in_spans_of_max_resend(db_url: str) -> None:
    store = open_store(db_url)
    try:
        st = Station()
        apart = R.MERGE_HELD + 2                                             # too far apart for one ask
        last = 13 * apart + 1
        msgs = [st.telemetry(n) for n in range(1, last + 1)]
        ingest(store, [m for n, m in enumerate(msgs, 1) if n % apart])      # 13 gaps of one number
        ingest(store, [st.telemetry(last + MAX_RESEND + 5)])                 # and one of MAX_RESEND + 4
        other = Station(station="hd-02")
        _gap(store, other, 2, 2, 3)
        t = _later(SETTLE + 1)
        asked = R.ask_due(store, t, settle_s=SETTLE)
        assert len([r for r in asked if r.station == "hd-01"]) == R.PER_STATION_PER_MINUTE
        assert [(r.first_seq, r.last_seq) for r in asked if r.station == "hd-02"] == [(2, 2)]  # its own budget
        assert R.ask_due(store, t + 59 * S, settle_s=SETTLE) == []
        rest = R.ask_due(store, t + 61 * S, settle_s=SETTLE)
        spans = sorted((r.first_seq, r.last_seq) for r in asked + rest if r.station == "hd-01")
        assert spans == [(n, n) for n in range(apart, last, apart)] + [(last + 1, last + MAX_RESEND),
                                                                      (last + MAX_RESEND + 1, last + MAX_RESEND + 4)]
    finally:
        store.close()


def test_gaps_close_together_are_one_ask_and_the_copies_between_change_nothing(db_url: str) -> None:
    """Round-robin delivery to two workers, one of them losing its share: every other number missing. One ask
    covers them (the station re-sends those between too: duplicates)."""
    store = open_store(db_url)
    try:
        st = Station()
        msgs = [st.telemetry(n) for n in range(1, 21)]
        ingest(store, [m for n, m in enumerate(msgs, 1) if n % 2 or n == 20])
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        assert (r.first_seq, r.last_seq) == (2, 18)
        result = ingest(store, msgs[1:18])
        assert (result.stored, result.duplicate) == (9, 8)
        assert gap_rows(store, open_only=True) == []
    finally:
        store.close()


def test_spans_merge_gaps_up_to_merge_held_apart_within_max_resend() -> None:
    h = R.MERGE_HELD
    assert R.spans([(10, 10), (12, 12), (12 + h + 1, 12 + h + 1)]) == [(10, 12 + h + 1)]
    assert R.spans([(10, 10), (12 + h, 12 + h)]) == [(10, 10), (12 + h, 12 + h)]
    assert R.spans([(1, 2 * MAX_RESEND + 1)]) == [(1, MAX_RESEND), (MAX_RESEND + 1, 2 * MAX_RESEND),
                                                  (2 * MAX_RESEND + 1, 2 * MAX_RESEND + 1)]
    assert R.spans([(1, MAX_RESEND - 2), (MAX_RESEND, MAX_RESEND + 1)]) == [(1, MAX_RESEND - 2),
                                                                             (MAX_RESEND, MAX_RESEND + 1)]
    assert R.spans([]) == []


def test_the_gaps_command_lists_unrecoverable_gaps_and_fails_on_them(tmp_path: pathlib.Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from edge.app.cli import main

    db = str(tmp_path / "plant.db")
    with open_store(db) as store:
        st = Station()
        _gap(store, st, 4, 5, 8)
        [r] = R.ask_due(store, _later(SETTLE + 1), settle_s=SETTLE)
        ingest(store, [_reply(st, 1, r.command_id, missing=[[4, 5]])])
    assert main(["historian", "gaps", "--db", db, "--open"]) == 1
    out, err = capsys.readouterr()
    assert "telemetry #4-5 (2) boot boot-a: UNRECOVERABLE (the station no longer holds it)" in out
    assert "0 open: 0 message(s) missing and unexplained; 1 unrecoverable: 2 message(s)" in err


def test_run_refuses_a_bad_identity_before_anything_is_opened(tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from edge.app.cli import main

    db = tmp_path / "plant.db"
    assert main(["historian", "run", "--broker", "mqtt://127.0.0.1:1", "--db", str(db), "--client-id", "h1",
                 "--identity", "his/torian"]) == 2
    assert "identity 'his/torian' cannot be a command topic level" in capsys.readouterr().err
    assert not db.exists()
