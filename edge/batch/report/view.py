"""What a batch report shows, computed once from the record and its trend: the view model.

:func:`build_view` turns a verified record document (:func:`edge.batch.record.read_record`) and its
trend (:func:`read_trend`) into a :class:`View`: every text of the page with how it is to look
(complete, incomplete, missing, trip, alarm), and the :class:`PlotData` the process plot draws.
The drawn page and the HTML page (:mod:`edge.batch.report.page`) both show this view and nothing else.

**Figures are never prettier than the record.** A meter figure whose ``complete`` is false is a
lower bound (a meter gap at the start or end, a counter reset): it is shown as ``≥ 12.3 kWh`` with
the reason (``incomplete: meter gap 14:02–14:20``). A figure the record does not have is shown as
``not metered`` (or ``not weighed``), never as 0.

**An open record** (``record == "open"``) is a batch still running or one that stopped without
closing its record (a power loss it has not been recovered from yet). The view says which: IN
PROGRESS while the record's last sign of life (last trend row, event or phase change) is less
than :data:`STALE_S` old, INTERRUPTED after that. Its figures are the figures so far.

All times are UTC. numpy is imported only when a trend is read.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.timestamps import parse_time

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]


STALE_S = 15 * 60  # an open record not updated for this long is an interrupted batch, not a running one
MAX_EVENTS = 15  # events listed on the page; the rest are counted ("... and 12 more")
MAX_PHASES = 14
SEEN_S = 60.0  # a meter whose first reading came later than this after the start missed some of the batch
PROCESS_NAMES = {"hd": "HD (hydrogen decrepitation)", "sintering": "Sintering"}


# ---------------------------------------------------------------------------- reading


def _number(value: Any) -> float | None:
    """A finite number of the record, else None (bools, text, NaN are not figures)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


@dataclass
class Trend:
    """The trend table: unix seconds, and one float column per name (NaN: no valid value)."""

    t: FloatArray
    columns: dict[str, FloatArray]
    units: dict[str, str]


def _float_cell(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def read_trend(batch_dir: Path, trend_meta: dict[str, Any]) -> tuple[Trend | None, str]:
    """The trend of a batch folder sorted by time, or (None, why there is none).

    A repeated header line (a writer that started the file again after a power loss) re-maps the
    columns; rows without a valid time are dropped; an empty cell is NaN.
    """
    import numpy as np

    name = str(trend_meta.get("file") or "trend.csv")
    path = Path(batch_dir) / Path(name).name  # the record names a file in its own folder, nowhere else
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        return None, f"no trend recorded ({path.name} is missing)"
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return None, f"trend unreadable ({path.name}: {exc})"
    header: list[str] = []
    times: list[float] = []
    cols: dict[str, list[float]] = {}
    for row in lines:
        if not row:
            continue
        if row[0].strip() == "unix_s":
            header = [c.strip() for c in row]
            for c in header[1:]:
                cols.setdefault(c, [math.nan] * len(times))
            continue
        if not header:
            continue
        t = _float_cell(row[0])
        if math.isnan(t):
            continue
        times.append(t)
        values = dict(zip(header[1:], row[1:], strict=False))
        for c, column in cols.items():
            column.append(_float_cell(values[c]) if c in values else math.nan)
    if not times:
        return None, f"no trend recorded ({path.name} has no rows)"
    order = np.argsort(np.array(times), kind="stable")
    units = {str(k): str(v) for k, v in _dict(trend_meta.get("units")).items()}
    return Trend(np.array(times)[order], {c: np.array(v, dtype=float)[order] for c, v in cols.items()}, units), ""


# ---------------------------------------------------------------------------- formatting


def fmt_number(value: float) -> str:
    """A figure for people: 4 significant digits or so, no exponent for everyday magnitudes."""
    a = abs(value)
    if a >= 1000:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    if a == 0:
        return "0"
    return f"{value:.3g}"


def fmt_duration(seconds: float | None) -> str:
    """``12 h 04 min``, ``42 min``, ``45 s``; None as a dash."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _clock(dt: datetime | None, day0: datetime | None, seconds: bool = False) -> str:
    """Time of day in UTC; with the date when it is not the batch's first day."""
    if dt is None:
        return "?"
    text = dt.strftime("%H:%M:%S" if seconds else "%H:%M")
    if day0 is not None and dt.date() != day0.date():
        text = dt.strftime("%d %b ") + text
    return text


def stamp(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "—"


def _one_line(value: Any) -> str:
    """Free text on one line: runs of whitespace (newlines, tabs) become one space."""
    return re.sub(r"\s+", " ", str(value)).strip()


@dataclass(frozen=True)
class Cell:
    """One piece of text of the page and how it is to look: ``""``, ``incomplete``, ``missing``, ``trip``, ``alarm``."""

    text: str
    style: str = ""


@dataclass
class View:
    """Everything the page shows, as text, built once from the record; the HTML and the drawn page both use it."""

    batch_id: str
    title: str
    badge: str
    badge_kind: str
    subtitle: str
    facts: list[tuple[str, Cell, bool]]  # (label, text, wide: a line of its own); narrow ones go two to a line
    accounting: list[tuple[Cell, Cell, Cell, Cell]]
    accounting_notes: list[str]
    quality: list[tuple[str, Cell]]  # (label, text): what the batch is judged by, two to a line on the page
    phases: list[tuple[str, str, str, str]]
    phases_more: int
    events: list[tuple[Cell, Cell, Cell]]
    events_more: int
    events_unlisted: int  # of those, how many the record itself only counted (past its own limit)
    footer: str
    plot: PlotData
    warnings: list[str] = field(default_factory=list)


@dataclass
class PlotData:
    """What the process plot draws, times in hours from the batch start."""

    process: str
    start: datetime | None
    end_h: float
    trend: Trend | None
    trend_note: str
    phases: list[tuple[str, str, float, float]]  # (number, name, start h, end h)
    events: list[tuple[float, str, str]]  # (t h, kind, name)
    interruptions: list[tuple[float, float, float | None]]  # (from h, to h, outage s)


def _meter_reason(q: dict[str, Any], start: datetime | None, end: datetime | None) -> str:
    """Why a meter figure is a lower bound, in a few words: the stretch at the start or the end the meter did
    not see (first reading after the start, last one before the end), else the record's notes (a counter reset).

    Gaps in the middle are not a reason: the meter's own totaliser counts through them.
    """
    first, last = parse_time(_dict(q.get("first")).get("ts")), parse_time(_dict(q.get("last")).get("ts"))
    spans = []
    if start is not None and first is not None and (first - start).total_seconds() > SEEN_S:
        spans.append((start, first))
    if end is not None and last is not None and (end - last).total_seconds() > SEEN_S:
        spans.append((last, end))
    bits = []
    if spans:
        bits.append(("meter gap " if len(spans) == 1 else "meter gaps ")
                    + ", ".join(f"{_clock(a, start)}–{_clock(b, start)}" for a, b in spans))
    else:
        bits += [_one_line(n) for n in _list(q.get("notes"))[:2] if str(n).strip()]
    if not bits:
        bits.append("the meter did not see the whole batch" if q.get("complete") is False
                    else "the record does not say the figure is complete")
    return "incomplete: " + "; ".join(bits)


def _quantity(q: Any, unit: str, start: datetime | None, end: datetime | None) -> tuple[Cell, str, bool | None]:
    """(total cell, note, complete) of one meter figure; complete is None when there is no figure."""
    q = _dict(q)
    value = _number(q.get("value"))
    unit = str(q.get("unit") or unit)
    if value is None:  # no meter, or one that never answered during the batch: its notes say which
        return Cell("not metered", "missing"), "; ".join(_one_line(n) for n in _list(q.get("notes"))[:1]), None
    if q.get("complete") is not True:  # false, or not said: never shown as if it were the true figure
        return Cell(f"≥ {fmt_number(value)} {unit}", "incomplete"), _meter_reason(q, start, end), False
    readings = q.get("readings")
    note = "metered" + (f", {readings} readings" if isinstance(readings, int) and readings > 0 else "")
    rollovers = q.get("rollovers")
    if isinstance(rollovers, int) and rollovers > 0:
        note += f", {rollovers} counter roll-over{'s' if rollovers > 1 else ''} counted"
    gaps = _list(q.get("gaps"))
    if gaps:      # inside the batch the meter's own totaliser counted through them: the figure is whole
        note += f", {len(gaps)} gap{'s' if len(gaps) > 1 else ''} bridged by its totaliser"
    return Cell(f"{fmt_number(value)} {unit}"), note, True


def _per_kg(value: Any, unit: str, complete: bool | None, mass_in: float | None) -> Cell:
    v = _number(value)
    if mass_in is None:
        return Cell("feed not weighed", "missing")
    if v is None:
        return Cell("—" if complete is None else "not computed", "missing")
    if complete is False:
        return Cell(f"≥ {fmt_number(v)} {unit}/kg", "incomplete")
    return Cell(f"{fmt_number(v)} {unit}/kg")


def _energy_basis(acc: dict[str, Any]) -> tuple[str, float | None, bool | None]:
    """(basis, kWh, complete) of the electricity figure: the meter when it has one, else the heater model."""
    meters = _dict(acc.get("meters"))
    q = _dict(meters.get("energy"))
    metered = _number(q.get("value"))
    if metered is not None:
        return "metered", metered, q.get("complete") is True
    model = _number(acc.get("heater_model_kwh"))
    if model is not None and meters.get("energy") is None:     # no meter at all: an estimate, never complete
        return "heater model (estimate)", model, False
    return "not metered", None, None


def _accounting(body: dict[str, Any], start: datetime | None,
                end: datetime | None) -> tuple[list[tuple[Cell, Cell, Cell, Cell]], list[str]]:
    acc = _dict(body.get("accounting"))
    meters = _dict(acc.get("meters"))
    per_kg = _dict(acc.get("per_kg"))
    mass_in = _number(_dict(body.get("feed")).get("mass_in_kg"))
    rows: list[tuple[Cell, Cell, Cell, Cell]] = []

    def note_cell(text: str, complete: bool | None) -> Cell:
        return Cell(text, "incomplete" if complete is False else "")

    energy, note, e_complete = _quantity(meters.get("energy"), "kWh", start, end)
    rows.append((Cell("Electricity, metered"), energy, _per_kg(per_kg.get("kwh"), "kWh", e_complete, mass_in),
                 note_cell(note, e_complete)))
    model = _number(acc.get("heater_model_kwh"))
    rated = _number(acc.get("heater_rated_kw"))
    model_note = (f"{fmt_number(rated)} kW rated" if rated is not None else "rated power") + " × heater on-time"
    metered = _number(_dict(meters.get("energy")).get("value"))
    if model is not None and metered is not None and model > 0:
        ratio = f"{'≥ ' if e_complete is False else ''}{metered / model:.2f}"
        model_note += f"; metered/model {ratio}"
    rows.append((Cell("Electricity, heater model"),
                 Cell(f"{fmt_number(model)} kWh") if model is not None else Cell("not computed", "missing"),
                 Cell("cross-check", "missing"), Cell(model_note)))
    h2, note, h2_complete = _quantity(meters.get("h2"), "NL", start, end)
    rows.append((Cell("Hydrogen fed"), h2, _per_kg(per_kg.get("nl_h2"), "NL", h2_complete, mass_in),
                 note_cell(note, h2_complete)))
    absorbed = _number(acc.get("h2_absorbed_nl"))
    if body.get("process") == "hd" or absorbed is not None:
        rows.append((Cell("Hydrogen absorbed"),
                     Cell(f"{fmt_number(absorbed)} NL") if absorbed is not None else Cell("not estimated", "missing"),
                     Cell(f"{fmt_number(absorbed / mass_in)} NL/kg") if absorbed is not None and mass_in
                     else Cell("—", "missing"),
                     Cell("controller's estimate: H2 fed minus H2 left as gas")))
    ar, note, ar_complete = _quantity(meters.get("ar"), "NL", start, end)
    rows.append((Cell("Argon"), ar, _per_kg(per_kg.get("nl_ar"), "NL", ar_complete, mass_in),
                 note_cell(note, ar_complete)))
    water, note, w_complete = _quantity(meters.get("cooling_water"), "L", start, end)
    rows.append((Cell("Cooling water"), water, Cell("—", "missing"), note_cell(note, w_complete)))
    grid = _number(acc.get("grid_kg_co2e_per_kwh"))
    co2e = _number(acc.get("kg_co2e"))
    basis, _, c_complete = _energy_basis(acc)
    grid_text = f"grid factor {grid:g} kg CO2e/kWh" if grid is not None else "grid factor not stated"
    if co2e is None:
        co2_cell = Cell("not computed", "missing")
    elif c_complete is False:
        co2_cell = Cell(f"≥ {fmt_number(co2e)} kg CO2e", "incomplete")
    else:
        co2_cell = Cell(f"{fmt_number(co2e)} kg CO2e")
    co2_note = grid_text + (f" × {basis} electricity" if co2e is not None and basis != "not metered" else
                            "; no figure without metered energy" if co2e is None and grid is not None else "")
    co2_per = per_kg.get("kg_co2e")
    rows.append((Cell("CO2e of the electricity"), co2_cell, _per_kg(co2_per, "kg CO2e", c_complete, mass_in)
                 if _number(co2_per) is not None or mass_in is None else Cell("—", "missing"),
                 note_cell(co2_note, c_complete)))
    notes = []
    if any(r[1].style == "incomplete" for r in rows):
        notes.append("≥: a lower bound (the meter did not see the whole batch); the true figure is higher.")
    if acc.get("complete") is True and not notes:
        notes.append("All metered figures are complete.")
    return rows, notes


# the record's quality figures (edge/batch/quality.py) as the page shows them: key, label, text of a value,
# and the processes that have the step (others leave the row out)
QUALITY_ROWS: tuple[tuple[str, str, Any, tuple[str, ...]], ...] = (
    ("leak_rise_mbar_per_min", "Leak test", lambda v: f"pressure rise {v:.2g} mbar/min, pump isolated", ("hd",)),
    ("o2_after_purge_pct", "O2 after purge", lambda v: f"{v:.2g} %", ("hd",)),
    ("soak_in_band_s", "Soak in band", lambda v: f"{fmt_duration(v)} within 5 °C of the soak setpoint",
     ("hd", "sintering")),
    ("final_vacuum_mbar", "Final vacuum", lambda v: f"{v:.2g} mbar", ("hd", "sintering")),
    ("h2_top_ups", "H2 top-ups", lambda v: f"{int(v)}", ("hd",)),
    ("nuisance_alarms", "Nuisance alarms", lambda v: f"{int(v)} (chattering or fleeting, ISA-18.2)",
     ("hd", "sintering")),
    ("deviation_alarm_rests", "Deviation alarm rests", lambda v: f"{int(v)} (program faster than the plant)",
     ("hd", "sintering")),
)


def quality_rows(body: dict[str, Any]) -> list[tuple[str, Cell]]:
    """The page's quality lines: each figure of the record's ``quality`` the process has, then the interlock trips
    (an explicit "none"). A record written before quality figures existed says so."""
    process = str(body.get("process") or "")
    quality = body.get("quality")
    rows: list[tuple[str, Cell]] = []
    for key, label, text, processes in QUALITY_ROWS:
        if process and process not in processes:
            continue
        value = _number(_dict(quality).get(key))
        if value is not None:
            rows.append((label, Cell(text(value))))
        else:
            rows.append((label, Cell("not recorded (an older record)" if not isinstance(quality, dict)
                                     else "not measured (the batch did not get there)", "missing")))
    trips = [_one_line(e.get("name") or e.get("message") or "?") for e in map(_dict, _list(body.get("events")))
             if e.get("kind") == "trip"]
    counted = _dict(quality).get("interlock_trips")
    n = counted if isinstance(counted, int) and not isinstance(counted, bool) else len(trips)
    if n == 0:
        rows.append(("Interlock trips", Cell("no interlock trips")))
    else:
        names = ", ".join(dict.fromkeys(trips))
        rows.append(("Interlock trips", Cell(f"{n} interlock trip{'s' if n > 1 else ''}"
                                             + (f": {names}" if names else ""), "trip")))
    return rows


def _status(body: dict[str, Any], last: datetime | None, now: datetime) -> tuple[str, str]:
    """(badge text, badge kind) of the record."""
    outcome = str(body.get("outcome") or "")
    if body.get("record") == "end":
        if outcome == "done":
            return "DONE", "done"
        if outcome == "aborted":
            return "ABORTED", "aborted"
        return (outcome.upper() or "ENDED"), "aborted"
    if last is not None and (now - last).total_seconds() > STALE_S:
        return "INTERRUPTED", "interrupted"
    return "IN PROGRESS", "running"


def _outcome_words(body: dict[str, Any], badge_kind: str, last: datetime | None) -> Cell:
    outcome = str(body.get("outcome") or "")
    reason = _one_line(body.get("reason") or "").rstrip(".")
    if badge_kind == "interrupted":
        text = f"Interrupted: the record was not closed and has had no update since {stamp(last)}"
        return Cell(text + (f" ({reason})" if reason else "") + ".", "incomplete")
    if badge_kind == "running":
        return Cell(f"Running (last update {stamp(last)})" + (f": {reason}" if reason else "") + ".")
    if outcome == "done":
        return Cell("Completed" + (f": {reason}" if reason else " normally") + ".")
    if outcome == "aborted":
        return Cell(f"Aborted: {reason or 'no reason recorded'}.", "trip")
    return Cell(f"{outcome or 'unknown outcome'}" + (f": {reason}" if reason else ""))


def _last_activity(body: dict[str, Any], trend: Trend | None) -> datetime | None:
    """The newest time the record shows: the end, else the last trend row, event, phase change or interruption."""
    ended = parse_time(body.get("ended"))
    if ended is not None:
        return ended
    times = [parse_time(body.get("started"))]
    times += [parse_time(_dict(e).get("ts")) for e in _list(body.get("events"))]
    times += [parse_time(_dict(p).get("started")) for p in _list(body.get("phases"))]
    times += [parse_time(_dict(p).get("ended")) for p in _list(body.get("phases"))]
    times += [parse_time(_dict(i).get("to")) for i in _list(body.get("interruptions"))]
    if trend is not None and len(trend.t):
        times.append(datetime.fromtimestamp(float(trend.t[-1]), UTC))
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _hours(dt: datetime | None, start: datetime | None) -> float | None:
    if dt is None or start is None:
        return None
    return (dt - start).total_seconds() / 3600.0


def more_events_text(more: int, unlisted: int) -> str:
    if not unlisted:
        return f"... and {more} more (all are in record.json)"
    if unlisted >= more:
        return f"... and {more} more (the record only counted them)"
    return f"... and {more} more (in record.json; {unlisted} of them only counted there)"


def _select_events(events: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], int]:
    """At most ``limit`` events in time order: every trip first (up to the limit), then the earliest others."""
    if len(events) <= limit:
        return events, 0
    trips = [i for i, e in enumerate(events) if e.get("kind") == "trip"][:limit]
    others = [i for i, e in enumerate(events) if e.get("kind") != "trip"][:limit - len(trips)]
    keep = sorted(trips + others)
    return [events[i] for i in keep], len(events) - len(keep)


def build_view(doc: dict[str, Any], trend: Trend | None, trend_note: str, now: datetime | None = None) -> View:
    """The page's content from a verified record document and its trend."""
    body = _dict(doc.get("body"))
    now = now or datetime.now(UTC)
    start = parse_time(body.get("started"))
    if start is None and trend is not None and len(trend.t):
        start = datetime.fromtimestamp(float(trend.t[0]), UTC)
    ended = parse_time(body.get("ended"))
    last = _last_activity(body, trend)
    badge, badge_kind = _status(body, last, now)
    batch_id = _one_line(body.get("batch_id") or "?")
    process = str(body.get("process") or "")
    process_name = PROCESS_NAMES.get(process, process or "unknown process")
    site, station = _one_line(body.get("site") or "?"), _one_line(body.get("station") or "?")

    recipe = _dict(body.get("recipe"))
    r_version = recipe.get("version")
    r_text = _one_line(recipe.get("name") or "unnamed recipe")
    if r_version is not None and str(r_version) != "":
        r_text += f", version {_one_line(r_version)}"
    sha = str(recipe.get("sha256") or "")
    if sha:
        r_text += f" (sha256 {sha[:12]})"
    feed = _dict(body.get("feed"))
    product = _dict(body.get("product"))
    mass_in, mass_out = _number(feed.get("mass_in_kg")), _number(product.get("mass_out_kg"))
    feed_text = _one_line(feed.get("description") or "") or "not described"
    feed_text += f"; {fmt_number(mass_in)} kg in" if mass_in is not None else "; mass in not weighed"
    if mass_out is None:
        product_cell = Cell("mass out not weighed (yet)", "missing")
    else:
        y = _number(product.get("yield_pct"))
        product_cell = Cell(f"{fmt_number(mass_out)} kg out" + (f", yield {y:.1f} %" if y is not None else ""))
    duration = _number(body.get("duration_s"))
    open_record = body.get("record") != "end"
    if duration is None and start is not None and (ended or last) is not None:
        duration = ((ended or last) - start).total_seconds()  # type: ignore[operator]
    dur_text = fmt_duration(duration) + (" so far" if badge_kind == "running" else
                                         " until the last update" if badge_kind == "interrupted" else "")
    interruptions = [_dict(i) for i in _list(body.get("interruptions"))]
    if interruptions:
        parts = [f"power loss {_clock(parse_time(i.get('from')), start)}–{_clock(parse_time(i.get('to')), start)} "
                 f"({fmt_duration(_number(i.get('outage_s')))})" for i in interruptions[:2]]
        if len(interruptions) > 2:
            parts.append(f"and {len(interruptions) - 2} more")
        inter_cell = Cell(", ".join(parts) + ", recovered", "incomplete")
    else:
        inter_cell = Cell("none")
    facts = [
        ("Recipe", Cell(r_text), True),
        ("Feed", Cell(feed_text), True),
        ("Operator", Cell(_one_line(body.get("operator") or "") or "not recorded",
                          "" if body.get("operator") else "missing"), False),
        ("Started", Cell(stamp(start)), False),
        ("Product", product_cell, False),
        ("Ended", Cell(stamp(ended)) if ended else Cell("not yet" if badge_kind == "running" else "not recorded",
                                                           "missing"), False),
        ("Interruptions", inter_cell, False),
        ("Duration", Cell(dur_text), False),
        ("Outcome", _outcome_words(body, badge_kind, last), True),
    ]

    accounting, acc_notes = _accounting(body, start, ended)
    if open_record:
        acc_notes.insert(0, "The record is open: the figures are those so far.")

    phases_raw = [_dict(p) for p in _list(body.get("phases"))]
    phase_rows: list[tuple[str, str, str, str]] = []
    plot_phases: list[tuple[str, str, float, float]] = []
    end_h = _hours(ended or last, start) or 0.0
    for n, p in enumerate(phases_raw, 1):
        p_start, p_end = parse_time(p.get("started")), parse_time(p.get("ended"))
        d = _number(p.get("duration_s"))
        if p_end is None:
            d_text = "running" if badge_kind == "running" else "not ended"
        else:
            d_text = fmt_duration(d if d is not None else (p_end - p_start).total_seconds() if p_start else None)
        phase_rows.append((str(n), _one_line(p.get("phase") or "?"), _clock(p_start, start), d_text))
        a, b = _hours(p_start, start), _hours(p_end, start)
        if a is not None:
            plot_phases.append((str(n), _one_line(p.get("phase") or "?"), a, b if b is not None else max(end_h, a)))
    phases_more = max(0, len(phase_rows) - MAX_PHASES)
    if phases_more:
        phase_rows = phase_rows[:MAX_PHASES - 1]
        phases_more = len(phases_raw) - len(phase_rows)

    events_raw = [_dict(e) for e in _list(body.get("events"))]
    shown, events_more = _select_events(events_raw, MAX_EVENTS)
    unlisted = body.get("events_not_listed")
    unlisted = unlisted if isinstance(unlisted, int) and not isinstance(unlisted, bool) and unlisted > 0 else 0
    events_more += unlisted
    event_rows = []
    for e in shown:
        kind = str(e.get("kind") or "?")
        style = "trip" if kind == "trip" else "alarm" if kind == "alarm" else ""
        name, message = _one_line(e.get("name") or ""), _one_line(e.get("message") or "")
        text = f"{name}: {message}" if name and name not in message else message or name or "—"
        event_rows.append((Cell(_clock(parse_time(e.get("ts")), start, seconds=True), style),
                           Cell(kind.upper() if kind == "trip" else kind, style), Cell(text, style)))
    plot_events = []
    for e in events_raw:
        h = _hours(parse_time(e.get("ts")), start)
        if h is not None and e.get("kind") in ("trip", "alarm"):
            plot_events.append((h, str(e.get("kind")), _one_line(e.get("name") or e.get("message") or "")))
    plot_inter = []
    for i in interruptions:
        a, b = _hours(parse_time(i.get("from")), start), _hours(parse_time(i.get("to")), start)
        if a is not None and b is not None:
            plot_inter.append((a, b, _number(i.get("outage_s"))))
    if trend is not None and start is not None and len(trend.t):
        end_h = max(end_h, (float(trend.t[-1]) - start.timestamp()) / 3600.0)
    end_h = max([end_h, *(b for *_, b in plot_phases), *(t for t, *_ in plot_events), *(b for _, b, _ in plot_inter)])

    revision = body.get("revision")
    footer = (f"reedge {__version__} · record revision {revision}"
              + (" (amended)" if isinstance(revision, int) and revision > 1 else "")
              + f" · record sha256 {str(doc.get('sha256') or '')[:12]} · rendered {stamp(now)} · all times UTC")
    warnings = []
    if trend is None:
        warnings.append(trend_note)
    return View(
        batch_id=batch_id, title=f"Batch {batch_id}", badge=badge, badge_kind=badge_kind,
        subtitle=f"{process_name} · site {site} · station {station} · all times UTC",
        facts=facts, accounting=accounting, accounting_notes=acc_notes, quality=quality_rows(body),
        phases=phase_rows, phases_more=phases_more, events=event_rows, events_more=events_more,
        events_unlisted=unlisted, footer=footer,
        plot=PlotData(process=process, start=start, end_h=end_h, trend=trend, trend_note=trend_note,
                      phases=plot_phases, events=plot_events, interruptions=plot_inter),
        warnings=warnings)
