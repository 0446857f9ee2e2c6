"""The fleet page: what the historian holds, read-only over HTTP (``reedge historian run --http HOST:PORT``).

Pages (plain server-side HTML with a small CSS, no script) and their JSON twins:

- ``/``: every station (status, phase, last seen, interlocks tripped now and trips recorded,
  unacknowledged alarms with their last message, the current batch), the plant figures of the
  latest month (:mod:`edge.historian.figures`), the batches with their per-kg figures, each linked
  to its one-page report, and the open, unrecoverable and explained gaps;
- ``/batch/SITE/STATION/BATCH_ID``: a batch's one-page report, drawn by the station's own report code
  (:func:`edge.batch.report.report_html`) from the stored end record; its process plot is drawn from the
  telemetry windows the historian stored for the batch's time (each channel's window mean: the
  station's ``trend.csv`` itself never travels over MQTT, and the setpoint and heater duty columns are
  not in the telemetry, so the plot lacks those two lines);
- ``/api/stations``, ``/api/batches``, ``/api/gaps``, ``/api/figures``: the same data as JSON.

**Read-only by construction**: GET only (every other method is answered 405 with ``Allow: GET``), no
query parameter changes anything, and the page opens its own store per request, never the consumer's.
**Everything shown is escaped** (station and batch ids, messages, gap details): a message's text never
reaches the page as markup, and a batch id in a link is percent-encoded.

The server is stdlib ``http.server``, a thread per connection (:func:`start_page`): a client that connects
and sends nothing (or stalls) holds only its own thread, for ``REQUEST_TIMEOUT_S`` at most, never the
other screens nor the historian's shutdown (the threads are daemons; ``close`` does not wait for them). A
batch report once drawn is kept by what it is drawn from: the end record's revision, the station's
channels, and how many telemetry windows of the batch's time each has (telemetry stored late draws it anew).
"""

from __future__ import annotations

import html
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from edge.batch.message import local_end_body
from edge.historian import gaps
from edge.historian.figures import (
    PER_KG,
    Batch,
    Month,
    as_json,
    finished_batches,
    plant_figures,
    record_body,
)
from edge.timestamps import parse_time

if TYPE_CHECKING:
    from edge.batch.report.view import Trend
    from edge.historian.store import Store

ADDRESS_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")
MAX_BATCHES = 200            # batches listed on the page (newest first); the JSON has them all
MAX_TREND_WINDOWS = 3000     # telemetry windows a report's plot is drawn from (thinned evenly beyond)
REQUEST_TIMEOUT_S = 10.0     # a connection silent this long is closed (module docstring)
REPORT_CACHE = 16
SHOWN_MONTHS = 3            # months of plant figures on the page (the JSON and the report have all)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0: any free one) as (host, port); ValueError, one line."""
    found = ADDRESS_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if found is None or int(found.group(2)) > 65535:
        raise ValueError(f"--http must be HOST:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8080, [::1]:8080), got {text!r:.60}")
    return found.group(1).strip("[]"), int(found.group(2))


# ---------------------------------------------------------------------------- what the pages show

def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def stations(store: Store) -> list[dict[str, Any]]:
    """Every station the historian has seen, with its latest state and its alarms and trips (a few indexed
    queries per station: the page's cost grows with the stations, not with the years of states)."""
    trips = {(site, station): int(count or 0) for site, station, count in store.query(
        "SELECT site, station, SUM(trips) FROM batches GROUP BY site, station")}

    def alarm_message(site: str, station: str, name: str) -> str:
        """The message of the alarm's latest event (the state names an alarm; its event says what it is)."""
        found = store.query("SELECT message FROM events WHERE site = ? AND station = ? AND kind = 'alarm' AND "
                            "name = ? ORDER BY ts DESC LIMIT 1", [site, station, name])
        return str(found[0][0] or "") if found else ""
    batches = {(r[0], r[1], r[2]): r for r in store.query(
        "SELECT site, station, batch_id, started, end_record IS NOT NULL FROM batches")}
    out = []
    for site, station, first_seen, last_seen, status, boot_id, software in store.query(
            "SELECT site, station, first_seen, last_seen, status, boot_id, software FROM stations "
            "ORDER BY site, station"):
        latest = store.query("SELECT site, station, ts, run, phase, batch_id, body FROM states WHERE site = ? AND "
                             "station = ? ORDER BY ts DESC, seq DESC LIMIT 1", [site, station])   # by its index
        state = latest[0] if latest else None
        body = _dict(as_json(state[6])) if state else {}
        locks, alarms = _dict(body.get("interlocks")), _dict(body.get("alarms"))
        batch = _dict(body.get("batch"))
        batch_id = batch.get("id") if batch else None
        known = batches.get((site, station, batch_id)) if batch_id else None
        out.append({
            "site": site, "station": station, "status": status or "unknown", "first_seen": first_seen,
            "last_seen": last_seen, "boot_id": boot_id, "software": software,
            "run": state[3] if state else None, "phase": state[4] if state else None,
            "held": body.get("held"), "state_ts": state[2] if state else None,
            "tripped": list(locks.get("tripped") or []), "first_out": locks.get("first_out"),
            "trips_in_batches": trips.get((site, station), 0),
            "unacknowledged_alarms": [{"name": a, "message": alarm_message(site, station, str(a))}
                                      for a in alarms.get("unacknowledged") or []],
            "current_batch": None if not batch_id else {
                "batch_id": batch_id, "recipe": batch.get("recipe"), "operator": batch.get("operator"),
                "started": known[3] if known else None, "finished": bool(known and known[4])},
        })
    return out


def _per_kg(batch: Batch, key: str, meter: str) -> dict[str, Any]:
    """A batch's per-kg figure as the record gives it; ``complete`` false: a lower bound or an estimate; ``why``
    there is none."""
    acc = _dict(batch.body.get("accounting"))
    value = _dict(acc.get("per_kg")).get({"kwh_per_kg": "kwh", "nl_h2_per_kg": "nl_h2",
                                          "kg_co2e_per_kg": "kg_co2e"}[key])
    q = _dict(acc.get("meters")).get(meter)
    why = None if value is not None else "not weighed" if batch.mass_in_kg is None else \
        "not metered" if q is None else "no figure"
    return {"value": value, "complete": value is not None and _dict(q).get("complete") is True, "why": why}


def batch_rows(store: Store, limit: int | None = None) -> list[dict[str, Any]]:
    """The batches, newest start first (``limit``: that many): finished ones with their figures, running ones as
    far as their start record tells."""
    rows = store.query("SELECT site, station, batch_id, process, recipe, started, ended, outcome, revision, "
                       "start_record, end_record FROM batches ORDER BY started DESC NULLS LAST, site, station, "
                       "batch_id" + (" LIMIT ?" if limit is not None else ""), [] if limit is None else [limit])
    out = []
    for site, station, batch_id, process, recipe, started, ended, outcome, revision, start_record, end_record in rows:
        b = None
        if end_record is not None:
            body = local_end_body(record_body(end_record), site=site, station=station)
            b = Batch(site, station, str(batch_id), parse_time(body.get("ended")), body)
        else:
            body = record_body(start_record)
        row: dict[str, Any] = {
            "site": site, "station": station, "batch_id": str(batch_id), "process": process or body.get("process"),
            "recipe": recipe or _dict(body.get("recipe")).get("name"), "started": started or body.get("started"),
            "ended": ended, "outcome": outcome if b else "running", "revision": revision,
            "mass_in_kg": b.mass_in_kg if b else _dict(body.get("feed")).get("mass_in_kg"),
            "trips": b.trips if b else None,
            "report": report_path(site, station, str(batch_id)) if b else None,
        }
        for key, _, meter, _ in PER_KG:
            row[key] = _per_kg(b, key, meter) if b else None
        out.append(row)
    return out


def gap_list(store: Store, now_ns: int | None = None) -> list[dict[str, Any]]:
    """The open and the unrecoverable gaps (the station said it no longer holds them), then the explained ones,
    newest first (a gap the late messages filled is gone). An open gap younger than ``SETTLE_S`` may be a
    message another worker still holds: it is shown as settling."""
    now = time.time_ns() if now_ns is None else now_ns
    out = []
    for g in reversed(gaps.gap_rows(store)):
        if g.closed is not None and g.explained is None:
            continue
        state = "explained" if g.explained is not None else "unrecoverable" if g.unrecoverable is not None else \
            "open" if gaps.age_s(g.opened, now) >= gaps.SETTLE_S else "settling"
        out.append({"site": g.site, "station": g.station, "boot_id": g.boot_id, "stream": g.stream,
                    "first_seq": g.first_seq, "last_seq": g.last_seq, "missing": g.count, "opened": g.opened,
                    "closed": g.closed, "explained": g.explained, "unrecoverable": g.unrecoverable,
                    "detail": g.detail, "state": state})
    out.sort(key=lambda r: r["state"] == "explained")
    return out


def figures_rows(store: Store) -> list[dict[str, Any]]:
    return [m.as_dict() for m in plant_figures(finished_batches(store))]


def report_path(site: str, station: str, batch_id: str) -> str:
    return "/batch/" + "/".join(quote(part, safe="") for part in (site, station, batch_id))


# ---------------------------------------------------------------------------- a batch's report

def _channels(store: Store, site: str, station: str) -> list[str]:
    """The station's channel names, from every description it sent (a small table: the telemetry is not scanned)."""
    names: set[str] = set()
    for (body,) in store.query("SELECT body FROM descriptions WHERE site = ? AND station = ?", [site, station]):
        channels = _dict(as_json(body)).get("channels")
        names.update(str(c) for c in (channels if isinstance(channels, dict) else {}))
    return sorted(names)


def telemetry_trend(store: Store, batch: Batch) -> tuple[Trend | None, str]:
    """The batch's process trend from the stored telemetry windows (each channel's mean), or (None, why).

    One indexed query per channel the station's descriptions name (site, station, channel, time: the index the
    store keeps), every n-th window when the batch has more than ``MAX_TREND_WINDOWS``."""
    import numpy as np

    from edge.batch.report.view import Trend

    start, end = batch.body.get("started"), batch.body.get("ended")
    if parse_time(start) is None or parse_time(end) is None:
        return None, "no trend: the record's start or end time is unknown"
    channels = _channels(store, batch.site, batch.station)
    where = "site = ? AND station = ? AND channel = ? AND end_utc >= ? AND end_utc <= ?"
    span = store.query(f"SELECT COUNT(*) FROM telemetry WHERE {where}",
                       [batch.site, batch.station, channels[0], start, end]) if channels else [(0,)]
    if not span[0][0]:
        return None, "no trend: the historian holds no telemetry of this batch's time"
    every = max(1, int(span[0][0]) // MAX_TREND_WINDOWS)
    times: dict[str, dict[str, float]] = {}
    units: dict[str, str] = {}
    for channel in channels:
        for end_utc, unit, mean, valid in store.query(
                f"SELECT end_utc, unit, mean, valid FROM telemetry WHERE {where} AND seq - (seq / ?) * ? = 0",
                [batch.site, batch.station, channel, start, end, every, every]):
            ok = isinstance(mean, int | float) and (valid is None or valid > 0)
            times.setdefault(str(end_utc), {})[channel] = float(mean) if ok else math.nan
            if unit:
                units[channel] = str(unit)
    stamps = sorted(times)
    t = np.array([parse_time(s).timestamp() for s in stamps])  # type: ignore[union-attr]
    shown = [c for c in channels if any(c in row for row in times.values())]
    columns = {c: np.array([times[s].get(c, math.nan) for s in stamps], dtype=float) for c in shown}
    return Trend(t, columns, units), ""


@dataclass
class _ReportCache:
    """Drawn reports by what they are drawn from (``batch_report``): drawing one takes a second. Requests
    come on threads of their own: the dict is touched under a lock (two drawing one report at once is only
    work done twice)."""

    pages: OrderedDict[tuple[Any, ...], str]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[Any, ...], draw: Callable[[], str]) -> str:
        with self.lock:
            page = self.pages.get(key)
        if page is None:
            page = draw()
            with self.lock:
                self.pages[key] = page
                while len(self.pages) > REPORT_CACHE:
                    self.pages.popitem(last=False)
        return page


def batch_report(store: Store, site: str, station: str, batch_id: str, cache: _ReportCache) -> str | None:
    """The one-page report of a finished batch as HTML, or None when the historian has no end record of it."""
    from edge.batch.report import report_html

    rows = store.query("SELECT end_record, revision FROM batches WHERE site = ? AND station = ? AND batch_id = ? "
                       "AND end_record IS NOT NULL", [site, station, batch_id])
    if not rows:
        return None
    stored = _dict(as_json(rows[0][0]))
    body = local_end_body(_dict(stored.get("body")) if "schema" in stored else stored, site=site, station=station)
    batch = Batch(site, station, batch_id, parse_time(body.get("ended")), body)

    def draw() -> str:
        trend, note = telemetry_trend(store, batch)
        page = report_html({"body": body}, trend, note)
        banner = ('<p class="note">From the plant historian: the end record as the station sent it (revision '
                  f'{html.escape(str(body.get("revision")))}); the process plot from the telemetry windows stored '
                  'for its time (window means; no setpoint or heater duty line). '
                  '<a href="/">Back to the fleet page</a></p>')
        return page.replace('<main class="page">', '<main class="page">' + banner, 1)

    return cache.get((site, station, batch_id, rows[0][1], *_trend_key(store, batch)), draw)


def _trend_key(store: Store, batch: Batch) -> tuple[Any, ...]:
    """What the report's plot is drawn from, short: the channels and each one's count of telemetry windows in
    the batch's time (a stored window never changes; late ones add to the count). One indexed count each."""
    start, end = batch.body.get("started"), batch.body.get("ended")
    if parse_time(start) is None or parse_time(end) is None:
        return ()
    key: list[Any] = []
    for channel in _channels(store, batch.site, batch.station):
        n = store.query("SELECT COUNT(*) FROM telemetry WHERE site = ? AND station = ? AND channel = ? "
                        "AND end_utc >= ? AND end_utc <= ?", [batch.site, batch.station, channel, start, end])
        key += [channel, int(n[0][0])]
    return tuple(key)


# ---------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: "DejaVu Sans", "Segoe UI", Arial, sans-serif; font-size: 10pt; margin: 1em 2em; color: #111; }
h1 { font-size: 16pt; margin: 0 0 0.2em 0; } h2 { font-size: 12pt; color: #1f3b63; margin: 1.2em 0 0.3em 0;
  border-bottom: 1px solid #1f3b63; }
.sub { color: #555; margin: 0 0 0.8em 0; }
table { border-collapse: collapse; width: 100%; } th { text-align: left; border-bottom: 1px solid #888; }
th, td { padding: 0.15em 0.5em; vertical-align: top; } tr:nth-child(even) td { background: #f6f7f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.online { color: #1a7f37; font-weight: bold; } .offline { color: #b00020; font-weight: bold; }
.trip { color: #b00020; font-weight: bold; } .alarm { color: #8a4b00; }
.incomplete { color: #9a4a00; font-weight: bold; } .missing { color: #6e6e6e; font-style: italic; }
.explained { color: #555; } .note { color: #555; font-style: italic; } tr.site td { font-weight: bold; }
pre { font-size: 9pt; background: #f6f7f9; padding: 0.5em; overflow-x: auto; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: Any) -> str:
    """A stored time as the page shows it: ``2027-01-15 08:00`` (UTC, the page says so once)."""
    t = parse_time(value)
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else "-"


def _td(value: Any, cls: str = "") -> str:
    return f'<td class="{cls}">{_e(value)}</td>' if cls else f"<td>{_e(value)}</td>"


def _figure_cell(fig: dict[str, Any] | None) -> str:
    if fig is None:
        return _td("running", "missing")
    value = fig.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _td(fig.get("why") or "-", "missing")
    if fig.get("complete"):
        return _td(f"{value:.3g}", "num")
    return f'<td class="num incomplete" title="a lower bound or an estimate">≥ {_e(f"{value:.3g}")}</td>'


def _month_rows(months: Sequence[Month]) -> list[str]:
    out = []
    for m in months:
        cells = [_td(m.who, "site" if m.station is None else ""), _td(m.month),
                 _td(f"{m.batches}" + (f" ({m.aborted} aborted)" if m.aborted else ""), "num"),
                 _td(m.kg_in_text(), "num" if m.kg_in_complete else "num incomplete")]
        for key, *_ in PER_KG:
            fig = m.per_kg[key]
            cells.append(_td(fig.text(), "num incomplete" if fig.flagged and fig.value is not None else
                             "missing" if fig.value is None else "num"))
        cells.append(_td(m.trips, "num trip" if m.trips else "num"))
        out.append(f'<tr class="{"site" if m.station is None else ""}">' + "".join(cells) + "</tr>")
    return out


def _station_rows(items: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in items:
        status = str(s["status"])
        tripped = ", ".join(s["tripped"])
        alarms = "; ".join(f"{a['name']}: {a['message']}" if a["message"] else a["name"]
                           for a in s["unacknowledged_alarms"])
        cb = s["current_batch"]
        batch = "none" if not cb else cb["batch_id"] + (" (finished)" if cb["finished"] else "")
        link = (f'<a href="{_e(report_path(s["site"], s["station"], cb["batch_id"]))}">{_e(batch)}</a>'
                if cb and cb["finished"] else _e(batch))
        out.append("<tr>" + _td(f"{s['site']}/{s['station']}") + _td(status, status if status in
                                                                      ("online", "offline") else "")
                   + _td(s["phase"] or "-") + _td(s["run"] or "-") + _td(_when(s["last_seen"]))
                   + _td(tripped or "none", "trip" if tripped else "") + _td(s["trips_in_batches"], "num")
                   + _td(alarms or "none", "alarm" if alarms else "") + f"<td>{link}</td>" + "</tr>")
    return out


def _batch_rows(items: list[dict[str, Any]]) -> list[str]:
    out = []
    for b in items:
        outcome = str(b["outcome"] or "")
        link = f'<a href="{_e(b["report"])}">report</a>' if b["report"] else '<span class="missing">open</span>'
        mass = b["mass_in_kg"]
        out.append("<tr>" + _td(f"{b['site']}/{b['station']}") + _td(b["batch_id"]) + _td(b["process"])
                   + _td(outcome, "trip" if outcome == "aborted" else "missing" if outcome == "running" else "")
                   + _td(_when(b["started"])) + _td(_when(b["ended"]))
                   + (_td(f"{mass:g}", "num") if isinstance(mass, int | float) else _td("not weighed", "missing"))
                   + "".join(_figure_cell(b[k]) for k, *_ in PER_KG)
                   + _td("-" if b["trips"] is None else b["trips"], "trip" if b["trips"] else "num")
                   + f"<td>{link}</td></tr>")
    return out


def _gap_rows(items: list[dict[str, Any]]) -> list[str]:
    out = []
    for g in items:
        state = {"open": "open: lost unless it arrives (asked for again, with an identity)",
                 "settling": "open, just now: may still be on its way",
                 "unrecoverable": "unrecoverable: the station no longer holds it",
                 "explained": f"explained: {g['explained']}"}[g["state"]]
        out.append("<tr>" + _td(f"{g['site']}/{g['station']}") + _td(str(g["boot_id"])[:12]) + _td(g["stream"])
                   + _td(f"{g['first_seq']}..{g['last_seq']}") + _td(g["missing"], "num") + _td(_when(g["opened"]))
                   + _td(state, "explained" if g["state"] == "explained" else "trip") + _td(g["detail"]) + "</tr>")
    return out


def _table(headers: Sequence[str], rows: list[str], empty: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="missing">{_e(empty)}</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _months_back(store: Store, months: int) -> str | None:
    """The start of the month ``months - 1`` before the latest month with a finished batch (None: none yet)."""
    latest = parse_time(store.query("SELECT MAX(ended) FROM batches WHERE end_record IS NOT NULL")[0][0])
    if latest is None:
        return None
    index = latest.year * 12 + latest.month - 1 - (months - 1)
    return f"{index // 12:04d}-{index % 12 + 1:02d}-01T00:00:00.000Z"


def fleet_html(store: Store) -> str:
    """The fleet page."""
    st, batches, gap_items = stations(store), batch_rows(store, MAX_BATCHES), gap_list(store)
    months = sorted(plant_figures(finished_batches(store, since=_months_back(store, SHOWN_MONTHS))),
                    key=lambda m: m.month, reverse=True)
    n_batches = store.query("SELECT COUNT(*) FROM batches")[0][0]
    notes = [n for m in months if m.station is not None for n in m.incomplete]
    open_gaps = gaps.open_gap_count(store, settled_before=gaps.settled(time.time_ns()))[0]   # not only the listed
    gone = gaps.unrecoverable_count(store)[0]
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Fleet: the plant historian</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Fleet</h1>",
        f'<p class="sub">{len(st)} stations, {n_batches} batches, {open_gaps} open gaps'
        + (f", {gone} unrecoverable" if gone else "") + ' · all times UTC · '
        'JSON: <a href="/api/stations">stations</a> <a href="/api/batches">batches</a> '
        '<a href="/api/gaps">gaps</a> <a href="/api/figures">figures</a></p>',
        '<section id="stations"><h2>Stations</h2>',
        _table(("station", "status", "phase", "run", "last seen", "tripped now", "trips in batches",
                "unacknowledged alarms",
                "current batch"), _station_rows(st), "no station seen yet"),
        '</section><section id="figures"><h2>Plant figures per month</h2>',
        _table(("station", "month", "batches", "kg in", *(h for _, h, _, _ in PER_KG), "trips"), _month_rows(months),
               "no finished batch yet"),
        '<p class="note">A month holds the batches that ended in it. Per-kg figures are mass-weighted over the '
        'batches with a complete figure and a weighed feed; (n of m): only n of the month\'s m batches counted'
        + (", the others left out:" if notes else ".") + "</p>",
        "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else "",
        f'<p class="note">The last {SHOWN_MONTHS} months here; <code>reedge historian report --db URL</code> prints '
        'every month, <code>--csv</code> the LCA table of every batch.</p>',
        '</section><section id="batches"><h2>Batches'
        + (f" (the newest {MAX_BATCHES})" if n_batches > MAX_BATCHES else "") + "</h2>",
        _table(("station", "batch", "process", "outcome", "started", "ended", "kg in",
                *(h for _, h, _, _ in PER_KG), "trips", "report"), _batch_rows(batches), "no batch yet"),
        '<p class="note">≥: the record marks the figure a lower bound (a meter gap) or an estimate.</p>',
        '</section><section id="gaps"><h2>Gaps</h2>',
        _table(("station", "boot", "stream", "numbers", "missing", "opened", "state", "detail"), _gap_rows(gap_items),
               "no open or explained gap"),
        "</section></body></html>\n",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- the server

class _Handler(BaseHTTPRequestHandler):
    server: _PageServer
    server_version = "reedge-historian"
    timeout = REQUEST_TIMEOUT_S       # the socket's: a silent client is dropped, its thread ends

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            status, kind, body = self.server.respond(path)
        except Exception as exc:     # the database went away, a damaged row: one line, the page stays up
            status, kind = HTTPStatus.SERVICE_UNAVAILABLE, "text/plain; charset=utf-8"
            body = f"the historian's database cannot be read just now: {type(exc).__name__}: {exc}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):      # POST, PUT, DELETE, HEAD, any other: this page has no write path
            return self._refuse
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the historian's own log says what matters."""


class _PageServer(ThreadingHTTPServer):
    daemon_threads = True             # a handler still waiting on a client never holds up close() or the exit
    def __init__(self, address: tuple[str, int], db_url: str) -> None:
        import socket

        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.db_url = db_url
        self.reports = _ReportCache(OrderedDict())

    def respond(self, path: str) -> tuple[HTTPStatus, str, bytes]:
        from edge.historian.store import open_store

        api = {"/api/stations": stations, "/api/batches": batch_rows, "/api/gaps": gap_list,
               "/api/figures": figures_rows}
        page = "text/html; charset=utf-8"
        if path not in api and path not in ("/", "/index.html") and not path.startswith("/batch/"):
            return HTTPStatus.NOT_FOUND, page, _not_found(f"no page {path}")
        with open_store(self.db_url, migrate=False) as store:
            if path in api:
                return HTTPStatus.OK, "application/json", json.dumps(api[path](store), indent=1).encode()
            if path.startswith("/batch/"):
                parts = [unquote(p) for p in path[len("/batch/"):].split("/")]
                if len(parts) != 3 or not all(parts):
                    return HTTPStatus.NOT_FOUND, page, _not_found("a report is /batch/SITE/STATION/BATCH_ID")
                report = batch_report(store, parts[0], parts[1], parts[2], self.reports)
                if report is None:
                    return HTTPStatus.NOT_FOUND, page, _not_found(f"no finished batch {'/'.join(parts)}")
                return HTTPStatus.OK, page, report.encode()
            return HTTPStatus.OK, page, fleet_html(store).encode()


def _not_found(text: str) -> bytes:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Not found</title></head><body>'
            f'<p>{_e(text)}</p><p><a href="/">The fleet page</a></p></body></html>\n').encode()


class FleetPage:
    """The page's server, running in its own thread until :meth:`close`."""

    def __init__(self, db_url: str, address: str) -> None:
        host, port = parse_address(address)
        self._server = _PageServer((host, port), db_url)
        bound_host, bound_port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="historian-page", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FleetPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_page(db_url: str, address: str) -> FleetPage:
    """Serve the fleet page of the database ``db_url`` on ``address`` (HOST:PORT) until ``close()``."""
    return FleetPage(db_url, address)
