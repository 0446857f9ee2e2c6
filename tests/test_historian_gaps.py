"""The gap bookkeeping (``edge.historian.gaps``) under the orders two workers deliver in: a lost tail is found
whichever boot's messages commit first, no gap is made up, a gap the other worker fills in flight leaves no
row behind, and the listing the page and ``reedge historian gaps`` read is the open and explained gaps only,
bounded."""

from __future__ import annotations

import json
import random
import time

import pytest

from edge.historian import gaps as G
from edge.historian.gaps import gap_rows
from edge.historian.ingest import Received, ingest
from edge.historian.store import Store, open_store
from edge.historian.web import fleet_html, gap_list
from edge.timestamps import rfc3339_ms
from tests.historian_messages import Station

ORDERS = 240        # seeded: the same orders every run (the hidden tail showed in about one order in ten)


def _seq(m: Received) -> tuple[str, str, int]:
    doc = json.loads(m.payload)
    return doc["boot_id"], doc["stream"], doc["seq"]


def _two_boots(rng: random.Random, station: str) -> tuple[list[Received], tuple[str, int] | None]:
    """Boot A's messages (one of them maybe lost, its tail maybe thinned), then boot B's birth naming A or not
    (and maybe its retained copy), B's thinning reports, events and telemetry; and what was lost."""
    a, b = Station(station=station, boot="boot-a"), Station(station=station, boot="boot-b")
    b.t_ns = a.t_ns + 10**12
    nt, ne = rng.randint(2, 6), rng.randint(2, 4)
    tail_thinned = nt >= 3 and rng.random() < 0.3
    sent = [a.telemetry(i) for i in range(1, nt + 1 - (2 if tail_thinned else 0))]
    sent += [a.event(i) for i in range(1, ne + 1)]
    lost = rng.choice([m for m in sent if _seq(m)[2] > 1]) if rng.random() < 0.7 else None
    msgs = [a.birth()] + [m for m in sent if m is not lost]
    named = "boot-a" if rng.random() < 0.6 else None
    msgs.append(b.birth({"telemetry": nt, "event": ne}, previous_boot=named))
    e, first_t = ne + 1, nt + 1
    if rng.random() < 0.3:
        msgs.append(b.thinned(e, "telemetry", nt + 1, nt + 2))
        e, first_t = e + 1, nt + 3
    if tail_thinned:
        msgs.append(b.thinned(e, "telemetry", nt - 1, nt))
        e += 1
    if rng.random() < 0.2:
        msgs.append(b.birth({"telemetry": nt, "event": ne}, previous_boot=named, retained=True))
    msgs += [b.event(i) for i in range(e, e + rng.randint(1, 2))]
    msgs += [b.telemetry(i) for i in range(first_t, first_t + rng.randint(1, 3))]
    return msgs, None if lost is None else _seq(lost)[1:]


def test_in_any_order_two_workers_commit_the_lost_message_and_only_it_is_an_open_gap(tmp_path: object) -> None:
    """Seeded orders of two boots' messages in batches of 1 to 4 (two workers: the new boot's first message
    of a class may commit before any of the old boot's on that stream); after all, the open gaps are
    exactly the message left out, in the old boot: no lost tail hidden, no gap made up."""
    wrong = []
    with open_store(f"sqlite://{tmp_path}/h.db") as store:
        for order in range(ORDERS):
            rng = random.Random(order)
            station = f"s-{order}"
            msgs, lost = _two_boots(rng, station)
            rng.shuffle(msgs)
            i = 0
            while i < len(msgs):
                k = rng.randint(1, 4)
                ingest(store, msgs[i:i + k])
                i += k
            found = [(g.boot_id, g.stream, g.first_seq, g.last_seq) for g in gap_rows(store, open_only=True)
                     if g.station == station]
            expected = [] if lost is None else [("boot-a", lost[0], lost[1], lost[1])]
            if found != expected:
                wrong.append((order, expected, found))
    assert wrong == [], f"{len(wrong)} of {ORDERS} orders wrong, e.g. {wrong[:3]}"


def test_a_lost_tail_is_found_when_the_new_boot_committed_first(store: Store) -> None:
    """Boot B's birth and first event and telemetry commit before anything of boot A (the other worker held
    A's): the birth's claim waits, and A's first messages find A's lost tail (event 3, telemetry 4..5)."""
    a, b = Station(boot="boot-a"), Station(boot="boot-b")
    b.t_ns = a.t_ns + 10**12
    ingest(store, [b.birth({"telemetry": 5, "event": 3}, previous_boot="boot-a"), b.event(4), b.telemetry(6)])
    assert gap_rows(store, open_only=True) == []
    r = ingest(store, [a.birth(), a.telemetry(1), a.telemetry(2), a.event(1)])
    assert sorted((g.boot_id, g.stream, g.kind) for g in r.opened) == [
        ("boot-a", "event", "lost_tail"), ("boot-a", "telemetry", "lost_tail")]
    assert [(g.boot_id, g.stream, g.first_seq, g.last_seq) for g in gap_rows(store, open_only=True)] == [
        ("boot-a", "event", 2, 3), ("boot-a", "telemetry", 3, 5)]
    ingest(store, [a.telemetry(3), a.event(2)])        # in flight, not lost
    assert [(g.stream, g.first_seq, g.last_seq) for g in gap_rows(store, open_only=True)] == [
        ("event", 3, 3), ("telemetry", 4, 5)]


def test_a_windows_heads_find_a_lost_last_message_of_a_quiet_stream_within_the_boot(store: Store) -> None:
    """Schema 1.4: boot B's events 41 and 42 are stored, 43 (its last: a trip, say) is lost at the broker. The
    next window names event 43: the lost tail is an open gap at once, not at B's next event or next boot; it
    closes when 43 comes (re-sent). A stream B stored nothing of starts where B's birth said A ended: B's batch
    record 7 lost shows as 7; one B never used (its head is A's last) is no gap; nor are heads already held."""
    b = Station(boot="boot-b")
    ingest(store, [b.birth({"event": 40, "batch": 6, "state": 9}, previous_boot="boot-a"), b.event(41), b.event(42),
                   b.telemetry(1, heads={"event": 42, "batch": 6, "state": 9})])
    assert gap_rows(store, open_only=True) == []
    lost = b.event(43)
    r = ingest(store, [b.telemetry(2, heads={"event": 43, "batch": 7, "state": 9, "description": 1})])
    assert sorted((g.stream, g.first_seq, g.last_seq, g.kind) for g in r.opened) == [
        ("batch", 7, 7, "lost_tail"), ("description", 1, 1, "lost_tail"), ("event", 43, 43, "lost_tail")]
    assert "a telemetry window of this boot said the stream reached #43" in " ".join(
        g.detail for g in gap_rows(store, open_only=True))
    r = ingest(store, [b.telemetry(3, heads={"event": 43, "batch": 7, "state": 9, "description": 1}), lost])
    assert r.opened == [] and [(g.stream, g.first_seq) for g in r.closed] == [("event", 43)]
    assert sorted((g.stream, g.first_seq, g.last_seq) for g in gap_rows(store, open_only=True)) == [
        ("batch", 7, 7), ("description", 1, 1)]


def test_heads_without_a_birth_known_only_extend_what_the_boot_stored(store: Store) -> None:
    """No live birth of the boot stored (a retained one, published before we subscribed): what the boot sent
    before is not ours to miss, so only the streams it stored something of are judged by the heads."""
    st = Station(boot="boot-c")
    r = ingest(store, [st.birth({"event": 2, "batch": 1}, previous_boot="boot-0", retained=True), st.event(5),
                       st.telemetry(1, heads={"event": 7, "batch": 3})])
    assert [(g.stream, g.first_seq, g.last_seq) for g in r.opened] == [("event", 6, 7)]


def test_a_reconnects_birth_seen_live_after_subscribing_mid_boot_claims_nothing_before_we_came(store: Store) -> None:
    """Subscribed mid-boot (B's birth of connection 1 came retained), then B reconnected (connection 2, live):
    numbers B gave before we subscribed are not ours to miss, by its heads nor by the birth (review). What is
    lost after, on a stream we hold, still shows."""
    b = Station(boot="boot-b")
    prev = {"event": 40, "batch": 10, "reply": 3, "state": 9}
    heads = {"event": 60, "batch": 12, "reply": 5, "state": 10}
    r = ingest(store, [b.birth(prev, previous_boot="boot-a", retained=True), b.event(60),
                       b.telemetry(100, heads=heads)])
    assert r.opened == []
    r = ingest(store, [b.birth(prev, previous_boot="boot-a"), b.telemetry(101, heads=heads)])
    assert r.opened == []
    r = ingest(store, [b.telemetry(102, heads={**heads, "event": 62})])
    assert [(g.stream, g.first_seq, g.last_seq) for g in r.opened] == [("event", 61, 62)]


def test_round_robin_halves_leave_no_gap_row_behind(store: Store) -> None:
    """Two workers of a shared subscription get every second message: each commit opens a gap the other's
    closes a moment later. Filled within ``SETTLE_S``, such a row is deleted, not kept closed."""
    st = Station()
    msgs = [st.telemetry(n) for n in range(1, 401)]
    closed = 0
    for k in range(0, len(msgs), 40):
        chunk = msgs[k:k + 40]
        ingest(store, chunk[0::2])                   # worker A commits first,
        closed += len(ingest(store, chunk[1::2]).closed)      # then B, with the numbers A's commit missed
    assert closed == 190                             # 19 a chunk, each said closed
    assert store.query("SELECT count(*) FROM gaps") == [(0,)]
    assert store.query("SELECT first_seq, last_seq FROM coverage") == [(1, 400)]


def test_a_gap_filled_after_it_settled_stays_closed_and_the_listing_leaves_it_out(store: Store) -> None:
    st = Station()
    ingest(store, [st.telemetry(1), st.telemetry(3), st.telemetry(6)])
    with store.transaction() as tx:                  # opened 20 s ago: it had settled, the log said it
        tx.execute("UPDATE gaps SET opened = ?", (rfc3339_ms(time.time_ns() - 20 * 10**9),))
    ingest(store, [st.telemetry(2), st.telemetry(4)])
    assert store.query("SELECT first_seq, closed IS NOT NULL, detail FROM gaps ORDER BY first_seq") == [
        (2, True, "1 missing; the missing arrived late"), (5, False, "2 missing")]
    assert [(g.first_seq, g.last_seq) for g in gap_rows(store)] == [(5, 5)]
    assert [(g.first_seq, g.last_seq) for g in gap_rows(store, open_only=True)] == [(5, 5)]


def test_the_page_and_the_listing_read_the_open_and_explained_gaps_only_the_open_first_bounded(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of closed rows (an older database) are not read; at most ``MAX_LISTED`` rows are, the open
    ones first, then the newest explained; ``open_only`` still reads every open one."""
    now = time.time_ns()
    row = ("pilot-line", "hd-01", "boot-a", "telemetry")
    with store.transaction() as tx:
        tx.executemany("INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, '1 missing; arrived late', NULL)",
                       [(*row, n, n, rfc3339_ms(now - 10**12 + n * 10**6), rfc3339_ms(now - 10**11))
                        for n in range(1000, 6000)])
        tx.executemany("INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL)", [
            (*row, 10, 10, rfc3339_ms(now - 10**12), None, "1 missing"),          # open, the oldest
            (*row, 20, 21, rfc3339_ms(now - 10**9), None, "2 missing"),           # open, settling
            *[(*row, n, n, rfc3339_ms(now - 10**11 + n * 10**9), "thinned", "1 missing") for n in (30, 31, 32)]])
    assert [g.first_seq for g in gap_rows(store)] == [10, 30, 31, 32, 20]        # oldest first
    assert [g.first_seq for g in gap_rows(store, limit=3)] == [10, 32, 20]
    assert [g.first_seq for g in gap_rows(store, open_only=True)] == [10, 20]
    monkeypatch.setattr(G, "MAX_LISTED", 4)
    assert [(g["first_seq"], g["state"]) for g in gap_list(store, now)] == [
        (20, "settling"), (10, "open"), (32, "explained"), (31, "explained")]
    html = fleet_html(store)
    assert "0 batches, 1 open gaps" in html and html.count("explained: thinned") == 2 and "arrived late" not in html
    monkeypatch.setattr(G, "MAX_LISTED", 1)        # only the settling gap is listed: the count is still of all
    assert [g["first_seq"] for g in gap_list(store, now)] == [20]
    assert "0 batches, 1 open gaps" in fleet_html(store)
    assert G.open_gap_count(store) == (2, 3) and G.open_gap_count(store, settled_before=G.settled(now)) == (1, 1)
