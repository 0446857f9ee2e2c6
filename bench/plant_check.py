"""What the historian stored against what the simulated plant sent (``bench.plant_load``): exactly once?

The outboxes say what was sent: per (site, station, boot, stream) every sequence number from 1 to the last
one given. The historian's ``received`` ledger must hold each of them once and nothing else; its content
tables must agree (10 telemetry rows per window, one events row per event, one states row per state, one
batches row per batch, with the per-kg figures of each ended one), and nothing may be in quarantine (every
message the plant sends is valid). ``query`` runs one SQL statement on the historian's database
(``Store.query``, or a psycopg cursor's): the check works on either dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.plant_load import CHANNELS, Sent, expected_rows

Query = Callable[[str], Sequence[Sequence[Any]]]


@dataclass
class Check:
    """``stored``: sent numbers found in the ledger; ``lost``: sent, not found; ``duplicate``: ledger rows beyond
    one per sent number (its key forbids them; counted all the same); ``problems``: any other disagreement."""

    expected: int
    stored: int
    lost: int
    duplicate: int
    problems: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.duplicate == 0 and not self.problems


def check_stored(query: Query, sent: Iterable[Sent]) -> Check:
    """Only the sites of ``sent`` are looked at (a broker used before keeps other plants' retained messages)."""
    sent = list(sent)
    want = expected_rows(sent)
    sites = " AND site IN (" + ", ".join(sorted({f"'{s.site}'" for s in sent})) + ")"
    seqs: dict[tuple[str, str, str, str], list[int]] = {}
    # status messages are the session's (numbered per connection, not by the outbox): not what was sent
    for site, station, boot, stream, seq in query("SELECT site, station, boot_id, stream, seq FROM received"
                                                  " WHERE stream <> 'status'" + sites):
        seqs.setdefault((site, station, boot, stream), []).append(int(seq))
    lost = dup = stored = 0
    problems: list[str] = []
    for key, last in want.items():
        got = seqs.pop(key, [])
        inside = {s for s in got if 1 <= s <= last}
        stored += len(inside)
        lost += last - len(inside)
        dup += len(got) - len(inside)
        if last > len(inside) and len(problems) < 10:
            problems.append(f"{'/'.join(key)}: {last - len(inside)} of 1..{last} missing: {_ranges(inside, last)}")
    for key, extra in seqs.items():
        dup += len(extra)
        problems.append(f"{len(extra)} ledger row(s) of a stream nobody sent: {'/'.join(key)}")

    def count(table: str) -> int:
        return int(query(f"SELECT count(*) FROM {table} WHERE true{sites}")[0][0])

    windows = sum(v for k, v in want.items() if k[3] == "telemetry")
    if count("telemetry") != windows * len(CHANNELS):
        problems.append(f"telemetry rows {count('telemetry')}, expected {windows * len(CHANNELS)}")
    for table, stream in (("events", "event"), ("states", "state")):
        n = sum(v for k, v in want.items() if k[3] == stream)
        if count(table) != n:
            problems.append(f"{table} rows {count(table)}, expected {n}")
    # the plant starts a batch at its first second and ends one and starts the next at each boundary (start, then
    # end + start...): (n + 1) // 2 batches, (n - 1) // 2 of them ended, with their per-kg figures as columns
    starts = sum((s.last.get("batch", 0) + 1) // 2 for s in sent)
    ends = sum(max(0, s.last.get("batch", 0) - 1) // 2 for s in sent)
    if count("batches") != starts:
        problems.append(f"batches rows {count('batches')}, expected {starts}")
    ended = int(query("SELECT count(*) FROM batches WHERE ended IS NOT NULL AND kwh_per_kg IS NOT NULL"
                      f" AND kg_co2e_per_kg IS NOT NULL{sites}")[0][0])
    if ended != ends:
        problems.append(f"ended batches with their figures {ended}, expected {ends}")
    quarantined = int(query("SELECT count(*) FROM quarantine")[0][0])
    if quarantined:
        problems.append(f"{quarantined} message(s) quarantined: {query('SELECT reason FROM quarantine LIMIT 3')}")
    return Check(sum(want.values()), stored, lost, dup, problems)


def open_gaps(query: Query) -> list[tuple[Any, ...]]:
    """Gaps still open and not explained (lost, so far)."""
    return [tuple(r) for r in query("SELECT site, station, boot_id, stream, first_seq, last_seq FROM gaps"
                                    " WHERE closed IS NULL AND explained IS NULL")]


def _ranges(have: set[int], last: int) -> str:
    """The numbers of 1..last not in ``have``, as ranges ("4-9, 12")."""
    out: list[str] = []
    lo = None
    for n in range(1, last + 2):
        missing = n <= last and n not in have
        if missing and lo is None:
            lo = n
        elif not missing and lo is not None:
            out.append(str(lo) if lo == n - 1 else f"{lo}-{n - 1}")
            lo = None
    return ", ".join(out[:20])
