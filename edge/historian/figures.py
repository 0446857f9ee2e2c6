"""The plant's figures: per station and per month, what its finished batches took in and consumed.

A month holds the batches whose **end** falls in it (UTC): a batch is counted once, when its record is
final, with its highest revision (the store keeps that one). Per station and month: batches (and how
many aborted), kg processed (the feed's ``mass_in_kg``), kWh/kg, NL H2/kg, kg CO2e/kg and trips; then
the same per site (every station of the site, the site's total).

**Incomplete accounting is never averaged in.** A per-kg figure of a month is the sum of the figure
over the batches whose figure is complete *and* whose feed was weighed, divided by the sum of their
feed (a mass-weighted mean: the plant's kWh per kg it processed). A batch whose figure is a lower
bound (a meter gap), an estimate (the heater model without an energy meter) or missing, or whose feed
was not weighed, is left out of that figure, and the figure says so: ``1.72 (2 of 3)``, flagged, with
each batch left out and why listed under the table (and in ``incomplete`` of the JSON). The kg
processed of a month with an unweighed batch is a lower bound (``≥ 50``). A figure no batch of the
month has is ``not metered``.

``reedge historian report --db URL [--month YYYY-MM] [--station SITE/STATION]`` prints the table;
with ``--csv`` it writes the LCA exchange table of :mod:`edge.batch.export`, **one block of exchanges
per batch**, byte for byte as ``reedge report --csv`` writes it from the station's own files (the
record is taken back to the station's shape by :func:`edge.batch.message.local_end_body` and written by
:func:`edge.batch.export.write_exchanges`). Not a plant-level aggregate: an LCA tool models each
batch as a process with its exchanges and their basis; a sum would mix lower bounds into complete
figures and lose each figure's basis and completeness, which is what the table exists to carry.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edge.batch.export import write_exchanges
from edge.batch.message import local_end_body
from edge.timestamps import parse_time

if TYPE_CHECKING:
    from edge.historian.store import Store

MONTH_RE = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
STATION_RE = re.compile(r"([^/\s+#]+)/([^/\s+#]+)")
# the per-kg figures: (key in a month's JSON, column heading, meter in the record's accounting, record key)
PER_KG = (("kwh_per_kg", "kWh/kg", "energy", "energy_kwh"), ("nl_h2_per_kg", "NL H2/kg", "h2", "h2_nl"),
          ("kg_co2e_per_kg", "kg CO2e/kg", "energy", "kg_co2e"))


# ---------------------------------------------------------------------------- reading the store

def as_utc(value: Any) -> datetime | None:
    """A stored time as an aware UTC datetime: PostgreSQL gives datetimes, SQLite RFC 3339 text."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return parse_time(value)


def as_json(value: Any) -> Any:
    """A stored JSON value: PostgreSQL's jsonb arrives decoded, SQLite's text does not."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class Batch:
    """A finished batch as the store holds it: its end record in the station's own shape (``body``)."""

    site: str
    station: str
    batch_id: str
    ended: datetime | None
    body: dict[str, Any] = field(repr=False)

    @property
    def month(self) -> str:
        return self.ended.strftime("%Y-%m") if self.ended else "unknown"

    @property
    def mass_in_kg(self) -> float | None:
        mass = _number(_dict(self.body.get("feed")).get("mass_in_kg"))
        return mass if mass is not None and mass > 0 else None

    def figure(self, meter: str, key: str) -> tuple[float | None, str]:
        """(value, '' when complete, else why it is left out of a month's per-kg figure)."""
        acc = _dict(self.body.get("accounting"))
        q = acc.get("meters", {}).get(meter) if isinstance(acc.get("meters"), dict) else None
        value = _number(acc.get(key)) if key == "kg_co2e" else _number(_dict(q).get("value"))
        if q is None:
            estimate = meter == "energy" and _number(acc.get("heater_model_kwh")) is not None
            return None, "heater model only (an estimate)" if estimate else "not metered"
        if value is None:
            return None, "grid factor not stated" if key == "kg_co2e" and _dict(q).get("value") is not None \
                else "meter never answered"
        if _dict(q).get("complete") is not True:
            notes = [str(n) for n in _dict(q).get("notes") or [] if str(n).strip()]
            return value, "a lower bound" + (f" ({notes[0]})" if notes else "")
        return value, ""

    @property
    def trips(self) -> int:
        return sum(1 for e in self.body.get("events") or [] if isinstance(e, dict) and e.get("kind") == "trip")


def record_body(stored: Any) -> dict[str, Any]:
    """The record's body whether the store kept the body or the whole envelope."""
    doc = _dict(as_json(stored))
    return _dict(doc.get("body")) if "schema" in doc and "body" in doc else doc


def finished_batches(store: Store, *, month: str | None = None, station: str | None = None,
                     since: str | None = None) -> list[Batch]:
    """Every batch with an end record, oldest end first; ``month`` 'YYYY-MM', ``station`` 'SITE/STATION' and
    ``since`` (an RFC 3339 UTC time: the batches that ended then or later) filter."""
    sql = "SELECT site, station, batch_id, end_record FROM batches WHERE end_record IS NOT NULL"
    params: list[Any] = []
    if station is not None:
        site_id, station_id = check_station(station)
        sql += " AND site = ? AND station = ?"
        params += [site_id, station_id]
    if month is not None:
        year, number = (int(p) for p in check_month(month).split("-"))
        following = f"{year + number // 12:04d}-{number % 12 + 1:02d}"
        sql += " AND ended >= ? AND ended < ?"
        params += [f"{month}-01T00:00:00.000Z", f"{following}-01T00:00:00.000Z"]
    if since is not None:
        sql += " AND ended >= ?"
        params.append(since)
    out = []
    for site_id, station_id, batch_id, end_record in store.query(sql, params):
        body = local_end_body(record_body(end_record), site=site_id, station=station_id)
        out.append(Batch(site_id, station_id, str(batch_id), parse_time(body.get("ended")), body))
    out.sort(key=lambda b: (b.ended is None, b.ended or datetime.min.replace(tzinfo=UTC), b.site, b.station,
                            b.batch_id))
    return out


def check_month(text: str) -> str:
    if not MONTH_RE.fullmatch(text):
        raise ValueError(f"--month must be YYYY-MM (e.g. 2027-01), got {text!r:.40}")
    return text


def check_station(text: str) -> tuple[str, str]:
    found = STATION_RE.fullmatch(text)
    if found is None:
        raise ValueError(f"--station must be SITE/STATION (e.g. pilot-line/hd-01), got {text!r:.60}")
    return found.group(1), found.group(2)


# ---------------------------------------------------------------------------- a month's figures

@dataclass(frozen=True)
class PerKg:
    """A month's per-kg figure over the batches that count (complete figure, weighed feed)."""

    value: float | None
    counted: int
    of: int

    @property
    def flagged(self) -> bool:
        return self.counted < self.of

    def text(self) -> str:
        if self.value is None:
            return "no complete batch" if self.of else "-"
        shown = f"{self.value:.3g}" if abs(self.value) < 100 else f"{self.value:.0f}"
        return shown + (f" ({self.counted} of {self.of})" if self.flagged else "")

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "batches_counted": self.counted, "batches": self.of}


@dataclass(frozen=True)
class Month:
    """One station's (or, ``station`` None, a whole site's) figures of one month."""

    site: str
    station: str | None
    month: str
    batches: int
    aborted: int
    kg_in: float
    kg_in_complete: bool
    per_kg: dict[str, PerKg]
    trips: int
    incomplete: list[str]          # "BATCH (STATION): kWh/kg left out: a lower bound (...)"

    def kg_in_text(self) -> str:
        """The kg processed as shown: plain digits (a site's year is millions of kg: never an exponent)."""
        kg = f"{self.kg_in:.1f}".removesuffix(".0")
        return kg if self.kg_in_complete else "not weighed" if not self.kg_in else f"≥ {kg}"

    @property
    def who(self) -> str:
        return f"{self.site}/{self.station}" if self.station is not None else f"{self.site} (site)"

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "station": self.station, "month": self.month, "batches": self.batches,
                "aborted": self.aborted, "kg_in": self.kg_in, "kg_in_complete": self.kg_in_complete,
                **{k: v.as_dict() for k, v in self.per_kg.items()}, "trips": self.trips,
                "incomplete": self.incomplete}


def month_figures(site: str, station: str | None, month: str, batches: Sequence[Batch]) -> Month:
    """The figures of ``batches`` (those of one station, or of one site, in one month)."""
    notes: list[str] = []
    weighed = [b for b in batches if b.mass_in_kg is not None]
    for b in batches:
        if b.mass_in_kg is None:
            notes.append(f"{b.batch_id} ({b.station}): feed not weighed: left out of every per-kg figure")
    per_kg = {}
    for key, heading, meter, record_key in PER_KG:
        total = mass = 0.0
        counted = 0
        for b in weighed:
            value, why = b.figure(meter, record_key)
            if why or value is None:
                if why != "not metered" or meter != "h2":   # a furnace without H2 has no H2 figure to miss
                    notes.append(f"{b.batch_id} ({b.station}): {heading} left out: {why}")
                continue
            total += value
            mass += b.mass_in_kg or 0.0
            counted += 1
        metered = [b for b in batches if b.figure(meter, record_key)[1] != "not metered"]
        of = len(batches) if meter != "h2" else len(metered)
        per_kg[key] = PerKg(total / mass if counted and mass > 0 else None, counted, of)
    return Month(site=site, station=station, month=month, batches=len(batches),
                 aborted=sum(1 for b in batches if b.body.get("outcome") == "aborted"),
                 kg_in=sum(b.mass_in_kg or 0.0 for b in weighed), kg_in_complete=len(weighed) == len(batches),
                 per_kg=per_kg, trips=sum(b.trips for b in batches), incomplete=notes)


def plant_figures(batches: Iterable[Batch]) -> list[Month]:
    """Per station and month, then per site and month (the site's total), months in order."""
    by_station: dict[tuple[str, str, str], list[Batch]] = {}
    by_site: dict[tuple[str, str], list[Batch]] = {}
    for b in batches:
        by_station.setdefault((b.month, b.site, b.station), []).append(b)
        by_site.setdefault((b.month, b.site), []).append(b)
    out = []
    for month, site in sorted(by_site):
        for (m, s, station), items in sorted(by_station.items()):
            if (m, s) == (month, site):
                out.append(month_figures(site, station, month, items))
        out.append(month_figures(site, None, month, by_site[(month, site)]))
    return out


# ---------------------------------------------------------------------------- the report

HEADINGS = ("station", "month", "batches", "kg in", *(h for _, h, _, _ in PER_KG), "trips")


def table_lines(months: Sequence[Month]) -> list[str]:
    """The figures as a plain text table, then the batches left out of a figure and why."""
    rows = [HEADINGS]
    for m in months:
        batches = f"{m.batches}" + (f" ({m.aborted} aborted)" if m.aborted else "")
        kg = m.kg_in_text()
        rows.append((m.who, m.month, batches, kg, *(m.per_kg[k].text() for k, *_ in PER_KG), str(m.trips)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADINGS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             .rstrip() for r in rows]
    notes = [n for m in months if m.station is not None for n in m.incomplete]
    if notes:
        lines += ["", "(n of m): the figure counts only n of the month's m batches, those with a complete figure "
                      "and a weighed feed; left out:"]
        lines += [f"  {n}" for n in notes]
    if not months:
        lines.append("(no finished batch)")
    return lines


def write_csv(batches: Iterable[Batch], out: Any) -> tuple[int, int]:
    """The LCA exchange table of ``batches`` (edge.batch.export's format): (batches, rows)."""
    return write_exchanges([b.body for b in batches], out)


def register(subparsers: Any) -> None:
    """``reedge historian report``."""
    p = subparsers.add_parser("report", help="the plant's figures per station and month, or the LCA table (--csv)",
                              description="Per station and month (of the batch's end, UTC): batches, kg processed, "
                              "kWh/kg, NL H2/kg, kg CO2e/kg, trips; then each site's total. --csv: the LCA exchange "
                              "table of every finished batch, as reedge report --csv writes it.")
    p.add_argument("--db", required=True, metavar="URL", help="the historian's database (sqlite:///PATH, a path, or "
                   "postgresql://...)")
    p.add_argument("--csv", action="store_true", help="write the LCA exchange table (one block per batch)")
    p.add_argument("--month", metavar="YYYY-MM", help="only batches that ended in this month (UTC)")
    p.add_argument("--station", metavar="SITE/STATION", help="only this station's batches")
    p.add_argument("--json", action="store_true", help="the figures as JSON")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from edge.historian.store import open_store

    month = check_month(args.month) if args.month else None      # bad arguments: before the database is opened
    station = "/".join(check_station(args.station)) if args.station else None
    if args.csv and args.json:
        raise ValueError("--csv or --json, not both")
    store = open_store(args.db, migrate=False)
    try:
        batches = finished_batches(store, month=month, station=station)
    finally:
        store.close()
    if args.csv:
        write_csv(batches, sys.stdout)
    elif args.json:
        json.dump([m.as_dict() for m in plant_figures(batches)], sys.stdout, indent=1)
        print()
    else:
        for line in table_lines(plant_figures(batches)):
            print(line)
    return 0
