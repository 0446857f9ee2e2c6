"""The one-page batch report: ``report.html``, ``report.png`` and ``report.pdf`` of one batch record.

Input is a record folder ``STATE_DIR/batches/ID/`` (``record.json`` and ``trend.csv``, written by
:mod:`edge.batch.record`). Output is one A4 portrait page a person reads: who ran what on which
station, how it went (the process plot: temperature and setpoint, pressure, heater, flows, with
the phases, trips, alarms and power losses marked), what it consumed and emitted (the accounting
table), the phases and the events. The three files show the same content:

- **HTML**: one self-contained file (inline CSS, the plot as a base64 PNG data URI), printable on
  A4. Every text from the record is HTML-escaped: operator and feed texts are typed by people.
- **PNG**: the whole page drawn with matplotlib, A4 at :data:`PAGE_DPI`: what gets attached to an
  email or a ticket.
- **PDF**: the same figure through matplotlib's own PDF backend.

**Figures are never prettier than the record.** A meter figure whose ``complete`` is false is a
lower bound (a meter gap at the start or end, a counter reset): it is shown as ``≥ 12.3 kWh`` with
the reason (``incomplete: meter gap 14:02–14:20``) and flagged in colour. A figure the record does
not have is shown as ``not metered`` (or ``not weighed``), never as 0.

**An open record** (``record == "open"``) is a batch still running or one that stopped without
closing its record (a power loss it has not been recovered from yet). The page says which: IN
PROGRESS while the record's last sign of life (last trend row, event or phase change) is less
than :data:`STALE_S` old, INTERRUPTED after that. Its figures are the figures so far.

All times are UTC, and the page says so. matplotlib and numpy are imported only when a page is
drawn, through the object API with the Agg canvas (the process-wide pyplot backend is untouched).
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.batch.record import RECORD_FILE, RecordError, read_record
from edge.files import write_atomic

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.figure import Figure

    FloatArray = npt.NDArray[np.float64]


PAGE_IN = (8.27, 11.69)  # A4 portrait
PAGE_DPI = 150  # 1240 x 1754 px: sharp enough to read the tables in an email
PLOT_IN = (7.6, 4.25)  # the plot alone, for the HTML page (188 mm wide there: 105 mm tall)
MARGIN_IN = 0.45
STALE_S = 15 * 60  # an open record not updated for this long is an interrupted batch, not a running one
MAX_EVENTS = 15  # events listed on the page; the rest are counted ("... and 12 more")
MAX_PHASES = 14
MAX_ALARM_LINES = 40  # more alarms are marked on the phase strip only, not drawn as lines through the plot
SEEN_S = 60.0  # a meter whose first reading came later than this after the start missed some of the batch
MAX_PLOT_POINTS = 4000  # per line; more cannot be seen on a page and make the PDF heavy
FONT = "DejaVu Sans"

PROCESS_NAMES = {"hd": "HD (hydrogen decrepitation)", "sintering": "Sintering"}
BADGE_COLOUR = {"done": "#1a7f37", "aborted": "#c62828", "running": "#1f5fa8", "interrupted": "#d9822b"}
INCOMPLETE_FG, INCOMPLETE_BG = "#9a4a00", "#fff1dc"
MISSING_FG = "#6e6e6e"
TRIP_FG, TRIP_BG = "#b00020", "#fde8ea"
ALARM_FG = "#d9822b"
PRESSURE_TO_BAR = {"bar": 1.0, "mbar": 1e-3, "hPa": 1e-3, "kPa": 1e-2, "Pa": 1e-5, "Torr": 1.333224e-3}


@dataclass(frozen=True)
class ReportFiles:
    """The files one report consists of."""

    html: Path
    png: Path
    pdf: Path


# ---------------------------------------------------------------------------- reading


def load_record(batch_dir: Path) -> dict[str, Any]:
    """The checked record document of a batch folder (:func:`edge.batch.record.read_record`: format, version
    and sha256); :class:`RecordError` with one clear sentence when the folder is missing or the record is
    unreadable, damaged or has no body."""
    batch_dir = Path(batch_dir)
    if not batch_dir.is_dir():
        raise RecordError(f"{batch_dir}: no such batch folder")
    doc = read_record(batch_dir)
    if not isinstance(doc.get("body"), dict):
        raise RecordError(f"{batch_dir / RECORD_FILE}: record damaged (it has no body)")
    return doc


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time of the record as an aware UTC datetime; None for null or garbage."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


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


def _stamp(dt: datetime | None) -> str:
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
        text = f"Interrupted: the record was not closed and has had no update since {_stamp(last)}"
        return Cell(text + (f" ({reason})" if reason else "") + ".", "incomplete")
    if badge_kind == "running":
        return Cell(f"Running (last update {_stamp(last)})" + (f": {reason}" if reason else "") + ".")
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


def _more_events_text(more: int, unlisted: int) -> str:
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
        ("Started", Cell(_stamp(start)), False),
        ("Product", product_cell, False),
        ("Ended", Cell(_stamp(ended)) if ended else Cell("not yet" if badge_kind == "running" else "not recorded",
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
              + f" · record sha256 {str(doc.get('sha256') or '')[:12]} · rendered {_stamp(now)} · all times UTC")
    warnings = []
    if trend is None:
        warnings.append(trend_note)
    return View(
        batch_id=batch_id, title=f"Batch {batch_id}", badge=badge, badge_kind=badge_kind,
        subtitle=f"{process_name} · site {site} · station {station} · all times UTC",
        facts=facts, accounting=accounting, accounting_notes=acc_notes,
        phases=phase_rows, phases_more=phases_more, events=event_rows, events_more=events_more,
        events_unlisted=unlisted, footer=footer,
        plot=PlotData(process=process, start=start, end_h=end_h, trend=trend, trend_note=trend_note,
                      phases=plot_phases, events=plot_events, interruptions=plot_inter),
        warnings=warnings)


# ---------------------------------------------------------------------------- the process plot


def _envelope(t: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """At most MAX_PLOT_POINTS points keeping each bucket's minimum and maximum in time order (NaN stays a gap)."""
    import numpy as np

    if len(t) <= MAX_PLOT_POINTS:
        return t, y
    n_buckets = MAX_PLOT_POINTS // 2
    k = math.ceil(len(t) / n_buckets)
    pad = (-len(t)) % k
    tp = np.concatenate([t, np.full(pad, t[-1])]).reshape(-1, k)
    yp = np.concatenate([y, np.full(pad, np.nan)]).reshape(-1, k)
    missing = np.isnan(yp)
    imin = np.argmin(np.where(missing, np.inf, yp), axis=1)
    imax = np.argmax(np.where(missing, -np.inf, yp), axis=1)
    rows = np.arange(tp.shape[0])
    first, second = np.minimum(imin, imax), np.maximum(imin, imax)
    return (np.stack([tp[rows, first], tp[rows, second]], axis=1).ravel(),
            np.stack([yp[rows, first], yp[rows, second]], axis=1).ravel())


def _with_breaks(t: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """A NaN between two rows further apart than the trend's rhythm allows, so a power loss is a gap in the line."""
    import numpy as np

    if len(t) < 3:
        return t, y
    dt = np.diff(t)
    limit = max(5.0 * float(np.median(dt)), 60.0 / 3600.0)
    cut = np.nonzero(dt > limit)[0] + 1
    if not len(cut):
        return t, y
    return np.insert(t, cut, np.nan), np.insert(y, cut, np.nan)


def _unit(trend: Trend, name: str) -> str:
    unit = trend.units.get(name)
    if unit is not None:
        return unit
    if name.endswith("_c") or name.endswith("_temp"):
        return "degC"
    if name.endswith("_duty"):
        return "1"
    return ""


def _is_flow(unit: str) -> bool:
    u = unit.replace(" ", "")
    return "/min" in u or "/h" in u or "/s" in u or u.lower() in ("sccm", "slm", "slpm")


@dataclass
class _Line:
    name: str
    values: FloatArray
    style: str = "-"
    width: float = 1.1
    colour: str | None = None


@dataclass
class _Panel:
    title: str
    unit: str
    lines: list[_Line]
    log: bool = False
    ylim: tuple[float, float] | None = None
    right: _Panel | None = None
    no_data: list[str] = field(default_factory=list)  # columns without a single value: named, not drawn


def _without_empty_columns(panel: _Panel) -> _Panel | None:
    """The panel without its columns that have no value at all (an instrument not fitted, or dead all batch):
    their names go in the legend as 'no data'. A side left empty gives way to the other; None if both are."""
    import numpy as np

    sides = [p for p in (panel, panel.right) if p is not None]
    empty = [ln.name for p in sides for ln in p.lines if not np.isfinite(ln.values).any()]
    for p in sides:
        p.lines = [ln for ln in p.lines if np.isfinite(ln.values).any()]
    kept = [p for p in sides if p.lines]
    if not kept:
        return None
    left = kept[0]
    left.right = kept[1] if len(kept) > 1 else None
    left.no_data = empty
    return left


def _panels(trend: Trend, process: str) -> list[_Panel]:
    """Temperature, pressure, heater and flows panels from the trend's columns and units."""
    import numpy as np

    cols = trend.columns
    panels: list[_Panel] = []
    temps = [c for c in cols if _unit(trend, c) == "degC" and not c.startswith("cj")]
    temps.sort(key=lambda c: (c != "chamber_temp", c == "setpoint_c", c))
    lines = []
    for c in temps:
        if c == "setpoint_c":
            lines.append(_Line("setpoint", cols[c], "--", 1.0, "black"))
        else:
            lines.append(_Line(c, cols[c], "-", 1.4 if c == "chamber_temp" else 0.9,
                               "#d62728" if c == "chamber_temp" else None))
    if lines:
        panels.append(_Panel("temperature", "°C", lines))

    pressures = [c for c in cols if _unit(trend, c) in PRESSURE_TO_BAR]
    if pressures:
        unit = "mbar" if process == "sintering" else "bar"
        scale = 1.0 / PRESSURE_TO_BAR[unit]
        lines = [_Line(c, cols[c] * PRESSURE_TO_BAR[_unit(trend, c)] * scale) for c in pressures]
        positive = np.concatenate([ln.values[np.isfinite(ln.values) & (ln.values > 0)] for ln in lines])
        log = process == "sintering" or (len(positive) > 0 and float(positive.max()) > 100 * float(positive.min()))
        panels.append(_Panel("pressure", f"{unit} abs", lines, log=log))

    heater: _Panel | None = None
    if "heater_duty" in cols:
        heater = _Panel("heater duty", "%", [_Line("heater duty", cols["heater_duty"] * 100.0, "-", 0.9, "#ff7f0e")],
                        ylim=(-3.0, 103.0))
    to_kw = {"kW": 1.0, "W": 1e-3}         # a meter reads W (the SDM630), a model may say kW
    powers = [c for c in cols if _unit(trend, c) in to_kw]
    if powers:
        power = _Panel("power", "kW", [_Line(c, cols[c] * to_kw[_unit(trend, c)], "-", 0.9, "#8c564b")
                                       for c in powers])
        if heater is None:
            heater = power
        else:
            heater.right = power
    if heater is not None:
        panels.append(heater)

    flow_units: dict[str, list[str]] = {}
    for c in cols:
        if _is_flow(_unit(trend, c)):
            flow_units.setdefault(_unit(trend, c), []).append(c)
    # gas flows (normal litres) on the left, others (cooling water) on the right
    groups = sorted(flow_units.items(), key=lambda kv: (not kv[0].upper().startswith("N"), kv[0]))[:2]
    if groups:
        unit, names = groups[0]
        flows = _Panel("flow", unit, [_Line(c, cols[c]) for c in names])
        if len(groups) > 1:
            unit2, names2 = groups[1]
            flows.right = _Panel("flow", unit2, [_Line(c, cols[c], "--") for c in names2])
        panels.append(flows)
    return [p for p in map(_without_empty_columns, panels) if p is not None]


def _label(name: str, values: FloatArray) -> str:
    import numpy as np

    finite = np.isfinite(values)
    if not finite.any():
        return f"{name} (no data)"
    if not finite.all():
        missing = 100 * (1 - float(finite.mean()))
        if missing >= 1:
            return f"{name} ({missing:.0f}% no value)"
    return name


def _draw_panel(ax: Axes, t_h: FloatArray, panel: _Panel, fs: float, colour_start: int) -> int:
    import numpy as np

    axes: list[tuple[Axes, _Panel]] = [(ax, panel)]
    if panel.right is not None:
        axes.append((ax.twinx(), panel.right))
    handles = []
    colour = colour_start
    for axis, p in axes:
        any_positive = False
        for line in p.lines:
            y = line.values
            label = line.name if line.name == "setpoint" else _label(line.name, y)  # no setpoint: heaters off
            if p.log:
                y = np.where(y > 0, y, np.nan)
                any_positive = any_positive or bool(np.isfinite(y).any())
            x, v = _with_breaks(*_envelope(t_h, y))
            c = line.colour
            if c is None:
                c = f"C{colour % 10}"
                colour += 1
            (h,) = axis.plot(x, v, line.style, lw=line.width, color=c, label=label)
            handles.append(h)
        if p.log and any_positive:
            axis.set_yscale("log")
        if p.ylim is not None:
            axis.set_ylim(*p.ylim)
        axis.set_ylabel(f"{p.title}\n[{p.unit}]", fontsize=fs, labelpad=2, linespacing=1.0)
        axis.tick_params(labelsize=fs - 0.8, pad=1.5, length=2.5)
    ax.grid(True, which="major", alpha=0.25, lw=0.5)
    if panel.no_data:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], lw=0, label=f"no data: {', '.join(panel.no_data)}"))
    if len(axes) > 1:  # the legend lives on the left axes: draw it above the right axes' lines
        ax.set_zorder(axes[1][0].get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.legend(handles=handles, loc="best", fontsize=fs - 1.2, framealpha=0.85, borderpad=0.3, labelspacing=0.2,
              handlelength=1.6, borderaxespad=0.3, edgecolor="0.8")
    return colour


def _text_width_in(text: str, fontsize: float, bold: bool = False) -> float:
    """Width of ``text`` in inches at ``fontsize``, as the Agg renderer draws it at the page's dpi."""
    from matplotlib.font_manager import FontProperties

    prop = FontProperties(family=FONT, size=fontsize, weight="bold" if bold else "normal")
    w, _, _ = _measuring_renderer().get_text_width_height_descent(text, prop, ismath=False)  # type: ignore[no-untyped-call]
    return float(w) / PAGE_DPI


@functools.cache
def _measuring_renderer() -> RendererAgg:
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(8, 8, PAGE_DPI)  # type: ignore[no-untyped-call]


def fit_text(text: str, width_in: float, fontsize: float, bold: bool = False) -> str:
    """``text`` cut (with an ellipsis) to fit ``width_in`` inches."""
    if _text_width_in(text, fontsize, bold) <= width_in:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_width_in(text[:mid].rstrip() + "…", fontsize, bold) <= width_in:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


def draw_process(fig: Figure, box: tuple[float, float, float, float], data: PlotData, fs: float = 7.5) -> None:
    """The process plot into ``box`` (left, bottom, width, height in inches from the figure's bottom left).

    A phase strip on top (numbered bands, named where the name fits), then the panels stacked on
    hours from the batch start, then the x label and the key of the marks.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fw, fh = fig.get_size_inches()
    left, bottom, width, height = box
    strip_h, key_h, xlabel_h, gap = 0.2, 0.2, 0.3, 0.08
    trend = data.trend
    panels = _panels(trend, data.process) if trend is not None else []
    span = max(data.end_h, 1e-3)
    pad = 0.01 * span

    area_h = height - strip_h - key_h - xlabel_h
    weights = [1.45 if p.title == "temperature" else 1.0 for p in panels] or [1.0]
    n = len(weights)
    unit_h = (area_h - gap * (n - 1)) / sum(weights)
    axes: list[Axes] = []
    y = bottom + height - strip_h
    strip = fig.add_axes((left / fw, y / fh, width / fw, strip_h / fh))
    for w in weights:
        h = w * unit_h
        y -= h
        ax = fig.add_axes((left / fw, y / fh, width / fw, h / fh), sharex=axes[0] if axes else None)
        axes.append(ax)
        y -= gap
    if trend is not None and data.start is not None:
        t_h = (trend.t - data.start.timestamp()) / 3600.0
        colour = 0
        for ax, panel in zip(axes, panels, strict=False):
            colour = _draw_panel(ax, t_h, panel, fs, colour)
    message = data.trend_note if trend is None else "trend has no plottable columns" if not panels else ""
    if message:
        axes[0].text(0.5, 0.5, message, transform=axes[0].transAxes, ha="center", va="center", fontsize=fs + 1.5,
                     color="0.3", parse_math=False, zorder=6,
                     bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": "0.6", "lw": 0.5})
        axes[0].set_yticks([])
    for ax in axes:
        ax.tick_params(labelsize=fs - 0.8, pad=1.5, length=2.5)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlim(-pad, span + pad)
    if data.start is None:
        axes[-1].set_xticks([])
        axes[-1].set_xlabel("no start time recorded: no time axis", fontsize=fs, labelpad=2)
    else:
        axes[-1].set_xlabel(f"hours from the batch start ({_stamp(data.start)})", fontsize=fs, labelpad=2)

    # phase strip and bands
    strip.set_xlim(-pad, span + pad)
    strip.set_ylim(0, 1)
    strip.set_xticks([])
    strip.set_yticks([])
    for s in strip.spines.values():
        s.set_linewidth(0.5)
        s.set_color("0.6")
    inch_per_h = width / (span + 2 * pad)
    for i, (num, name, a, b) in enumerate(data.phases):
        shade = ("#e3ecf7", "#f4f7fb")[i % 2]
        strip.axvspan(a, b, color=shade, lw=0)
        if i % 2 == 0:
            for ax in axes:
                ax.axvspan(a, b, color="#eef3fa", lw=0, zorder=0)
        for ax in [strip, *axes]:
            ax.axvline(a, color="0.55", lw=0.5, zorder=0.6)
        room = (b - a) * inch_per_h - 0.04
        label = f"{num} {name}"
        fsize = fs - 1.0
        if _text_width_in(label, fsize) > room:
            label = num if _text_width_in(num, fsize) <= room + 0.06 else ""
        if label:
            strip.text((a + b) / 2, 0.5, label, ha="center", va="center", fontsize=fsize, color="#1f3b63",
                       parse_math=False, clip_on=False)

    # power losses: hatched across every panel, labelled in the top panel
    for a, b, outage in data.interruptions:
        for ax in [strip, *axes]:
            ax.axvspan(a, b, facecolor="#d0d0d0", edgecolor="#808080", hatch="////", lw=0, alpha=0.6, zorder=0.7)
        label = "power loss" + (f"\n{fmt_duration(outage)}" if outage is not None else "")
        axes[0].text((a + b) / 2, 0.97, label, transform=axes[0].get_xaxis_transform(), ha="center", va="top",
                     fontsize=fs - 1.3, color="#333333", zorder=5, parse_math=False,
                     bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#808080", "lw": 0.5, "alpha": 0.9})

    # trips and alarms: lines through every panel (alarms only while they are few enough to tell apart);
    # trips named in the top panel
    alarm_lines = sum(k == "alarm" for _, k, _ in data.events) <= MAX_ALARM_LINES
    for t, kind, name in data.events:
        trip = kind == "trip"
        for ax in axes if trip or alarm_lines else []:
            ax.axvline(t, color=TRIP_FG if trip else ALARM_FG, ls="-" if trip else ":", lw=1.2 if trip else 0.9,
                       zorder=3 if trip else 2)
        strip.plot([t], [1.0], marker="v" if trip else "o", ms=5 if trip else 3.2, color=TRIP_FG if trip else ALARM_FG,
                   zorder=4, clip_on=False, markeredgewidth=0)
        if trip and name:
            axes[0].text(t, 0.04, name, transform=axes[0].get_xaxis_transform(), rotation=90, ha="center",
                         va="bottom", fontsize=fs - 1.3, color=TRIP_FG, weight="bold", zorder=5, parse_math=False,
                         bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})

    handles: list[Any] = []
    if data.phases:
        handles.append(Patch(facecolor="#e3ecf7", edgecolor="0.6", lw=0.5,
                             label="phases (numbers as in the Phases table)"))
    kinds = {k for _, k, _ in data.events}
    if "trip" in kinds:
        handles.append(Line2D([], [], color=TRIP_FG, lw=1.2, marker="v", ms=4, label="trip"))
    if "alarm" in kinds:
        handles.append(Line2D([], [], color=ALARM_FG, lw=0.9 if alarm_lines else 0, ls=":", marker="o", ms=3,
                              label="alarm" if alarm_lines else "alarm (too many for lines: marks on top)"))
    if data.interruptions:
        handles.append(Patch(facecolor="#d0d0d0", edgecolor="#808080", hatch="////", lw=0, label="power loss"))
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(left / fw, bottom / fh), ncol=len(handles),
                   fontsize=fs - 1, frameon=False, borderaxespad=0, handlelength=1.8, columnspacing=1.4)


# ---------------------------------------------------------------------------- the drawn page


def _cell_colour(style: str) -> str:
    return {"incomplete": INCOMPLETE_FG, "missing": MISSING_FG, "trip": TRIP_FG, "alarm": "#8a4b00"}.get(style,
                                                                                                         "black")


class _PageWriter:
    """Text and tables on a figure, placed in inches from the top left of the page."""

    def __init__(self, fig: Figure) -> None:
        self.fig = fig
        self.w, self.h = (float(v) for v in fig.get_size_inches())

    def text(self, x: float, y: float, text: str, fs: float, *, width: float | None = None, bold: bool = False,
             colour: str = "black", **kw: Any) -> None:
        shown = fit_text(text, width, fs, bold) if width is not None else text
        self.fig.text(x / self.w, 1 - y / self.h, shown, fontsize=fs, weight="bold" if bold else "normal",
                      color=colour, va="baseline", ha="left", family=FONT, parse_math=False, **kw)

    def band(self, x: float, y_top: float, width: float, height: float, colour: str) -> None:
        from matplotlib.patches import Rectangle

        self.fig.add_artist(Rectangle((x / self.w, 1 - (y_top + height) / self.h), width / self.w, height / self.h,
                                      transform=self.fig.transFigure, facecolor=colour, edgecolor="none", zorder=0))

    def rule(self, x: float, y: float, width: float, colour: str = "0.6", lw: float = 0.6) -> None:
        from matplotlib.lines import Line2D

        self.fig.add_artist(Line2D([x / self.w, (x + width) / self.w], [1 - y / self.h, 1 - y / self.h],
                                   transform=self.fig.transFigure, color=colour, lw=lw))

    def heading(self, x: float, y: float, text: str, width: float) -> float:
        self.text(x, y, text, 9.5, bold=True, colour="#1f3b63")
        self.rule(x, y + 0.06, width, "#1f3b63", 0.8)
        return y + 0.24

    def table(self, x: float, y: float, widths: Sequence[float], header: Sequence[str],
              rows: Sequence[Sequence[Cell]], fs: float, row_h: float) -> float:
        """Rows under a bold header; a row whose cells include a trip or an incomplete figure gets a band."""
        total = sum(widths)
        cx = [x + sum(widths[:i]) for i in range(len(widths))]
        for c, head in zip(cx, header, strict=True):
            self.text(c + 0.03, y, head, fs, bold=True, colour="0.25")
        self.rule(x, y + 0.05, total, "0.5", 0.5)
        y += row_h
        for row in rows:
            styles = {cell.style for cell in row}
            if "trip" in styles:
                self.band(x, y - row_h + 0.045, total, row_h, TRIP_BG)
            elif "incomplete" in styles:
                self.band(x, y - row_h + 0.045, total, row_h, INCOMPLETE_BG)
            for c, w, cell in zip(cx, widths, row, strict=True):
                bold = cell.style == "trip" or (cell.style == "incomplete" and c != cx[-1])
                self.text(c + 0.03, y, cell.text, fs, width=w - 0.06, bold=bold, colour=_cell_colour(cell.style),
                          style="italic" if cell.style == "missing" else "normal")
            y += row_h
        return y


def draw_page(view: View) -> Figure:
    """The whole report as one A4 portrait figure (not yet saved).

    Laid out top to bottom in inches from the top of the page: header (title, badge, facts),
    the process plot, the accounting table, then phases (left) beside events (right), footer.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    fig = Figure(figsize=PAGE_IN, dpi=PAGE_DPI)
    FigureCanvasAgg(fig)
    page = _PageWriter(fig)
    m = MARGIN_IN
    inner = PAGE_IN[0] - 2 * m
    fs = 7.5

    # header: title, badge, subtitle, facts
    y = 0.62
    title_fs = 17
    title_w = inner - 1.9
    page.text(m, y, view.title, title_fs, bold=True, width=title_w)
    badge_x = m + min(_text_width_in(view.title, title_fs, True), title_w) + 0.18
    badge_w = _text_width_in(view.badge, 10.5, True) + 0.2
    colour = BADGE_COLOUR.get(view.badge_kind, "#555555")
    fig.add_artist(FancyBboxPatch((badge_x / page.w, 1 - (y + 0.06) / page.h), badge_w / page.w, 0.27 / page.h,
                                  boxstyle="round,pad=0,rounding_size=0.004", transform=fig.transFigure, fc=colour,
                                  ec=colour))
    page.text(badge_x + 0.1, y - 0.015, view.badge, 10.5, bold=True, colour="white")
    y += 0.26
    page.text(m, y, view.subtitle, 9, colour="0.3", width=inner)
    y += 0.27
    col_w, label_w, line_h = inner / 2, 0.95, 0.175
    column = 0
    for label, cell, wide in view.facts:
        if wide and column:
            y, column = y + line_h, 0
        fx = m + column * col_w
        width = (inner if wide else col_w) - label_w - 0.1
        outcome = label == "Outcome"
        page.text(fx, y, label, 8, bold=True, colour="0.3")
        page.text(fx + label_w, y, cell.text, 8, width=width, colour=_cell_colour(cell.style),
                  bold=outcome or cell.style == "trip")
        if wide or column:
            y, column = y + line_h, 0
        else:
            column = 1
    y += line_h * column - line_h

    # process plot
    y = page.heading(m, y + 0.27, "Process", inner)
    plot_h = 3.85
    draw_process(fig, (m + 0.55, PAGE_IN[1] - (y + plot_h), inner - 1.1, plot_h), view.plot, fs)
    y += plot_h

    # accounting
    y = page.heading(m, y + 0.2, "Consumption and emissions", inner)
    widths = [1.45, 1.1, 1.25, inner - 3.8]
    y = page.table(m, y, widths, ["Quantity", "Total", "Per kg feed", "Basis / note"],
                   [list(r) for r in view.accounting], fs, 0.17)
    for note in view.accounting_notes:
        page.text(m + 0.03, y - 0.03, note, fs - 0.8, colour="0.35", width=inner, style="italic")
        y += 0.14

    # phases (left) and events (right), as many rows as there is room for above the footer
    footer_y = PAGE_IN[1] - 0.3
    fs_list, row_h = 7.0, 0.145
    ph_w, gap = 2.4, 0.25
    ev_x, ev_w = m + ph_w + gap, inner - ph_w - gap
    y_ph = page.heading(m, y + 0.12, "Phases", ph_w)
    y_ev = page.heading(ev_x, y + 0.12, "Events", ev_w)
    room = int((footer_y - 0.18 - y_ev) / row_h)  # rows below the header line
    rows = [[Cell(a), Cell(b), Cell(c), Cell(d, "missing" if d in ("running", "not ended") else "")]
            for a, b, c, d in view.phases]
    more = view.phases_more
    if len(rows) + (1 if more else 0) > room:
        more += len(rows) - (room - 1)
        rows = rows[:room - 1]
    if more:
        rows.append([Cell(""), Cell(f"... and {more} more", "missing"), Cell(""), Cell("")])
    if not rows:
        rows = [[Cell(""), Cell("none recorded", "missing"), Cell(""), Cell("")]]
    page.table(m, y_ph, [0.22, 1.0, 0.5, 0.68], ["#", "Phase", "Start", "Duration"], rows, fs_list, row_h)
    erows = [list(e) for e in view.events]
    more = view.events_more
    if len(erows) + (1 if more else 0) > room:
        more += len(erows) - (room - 1)
        erows = erows[:room - 1]
    if more:
        erows.append([Cell(""), Cell(""), Cell(_more_events_text(more, view.events_unlisted), "missing")])
    if not erows:
        erows = [[Cell(""), Cell(""), Cell("no events recorded", "missing")]]
    page.table(ev_x, y_ev, [0.6, 0.68, ev_w - 1.28], ["Time", "Kind", "Message"], erows, fs_list, row_h)

    page.rule(m, footer_y - 0.13, inner, "0.7", 0.5)
    page.text(m, footer_y, view.footer, 6.5, colour="0.4", width=inner)
    return fig


def draw_plot_only(view: View) -> Figure:
    """The process plot alone (for the HTML page), at a size that reads well next to HTML text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_IN, dpi=PAGE_DPI)
    FigureCanvasAgg(fig)
    draw_process(fig, (0.55, 0.02, PLOT_IN[0] - 1.1, PLOT_IN[1] - 0.06), view.plot, 7.5)
    return fig


# ---------------------------------------------------------------------------- HTML

_CSS = """
@page { size: A4 portrait; margin: 10mm 11mm; }
* { box-sizing: border-box; }
body { margin: 0; font-family: "DejaVu Sans", "Segoe UI", Arial, sans-serif; font-size: 8pt; line-height: 1.25;
  color: #111; }
.page { max-width: 188mm; margin: 0 auto; padding: 4mm 0; }
h1 { font-size: 16pt; margin: 0 0 1mm 0; line-height: 1.2; }
.badge { display: inline-block; color: #fff; font-size: 10pt; padding: 0.5mm 2mm; border-radius: 1mm;
  vertical-align: middle; margin-left: 2mm; }
.sub { color: #555; margin: 0 0 2mm 0; font-size: 9pt; }
h2 { font-size: 10pt; color: #1f3b63; border-bottom: 0.3mm solid #1f3b63; margin: 2.5mm 0 1mm 0; }
dl.facts { display: grid; grid-template-columns: 22mm 1fr 22mm 1fr; gap: 0.3mm 2mm; margin: 0; }
dl.facts dt { font-weight: bold; color: #444; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
dl.facts .wide { grid-column: 2 / 5; }
dl.facts .outcome { font-weight: bold; }
img.plot { width: 100%; display: block; }
table { border-collapse: collapse; width: 100%; font-size: 7.5pt; }
th { text-align: left; color: #333; border-bottom: 0.3mm solid #888; padding: 0.2mm 1mm; }
td { padding: 0.15mm 1mm; vertical-align: top; overflow-wrap: anywhere; }
.incomplete { color: #9a4a00; font-weight: bold; }
tr.incomplete td { background: #fff1dc; }
.missing { color: #6e6e6e; font-style: italic; }
.trip { color: #b00020; font-weight: bold; }
tr.trip td { background: #fde8ea; }
.alarm { color: #8a4b00; }
.note { color: #555; font-style: italic; margin: 0.8mm 0 0 0; }
.warning { color: #9a4a00; font-size: 8.5pt; }
.cols { display: grid; grid-template-columns: 34% 1fr; gap: 5mm; }
table.list { table-layout: fixed; }
table.list td { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
footer { color: #666; font-size: 7pt; border-top: 0.2mm solid #aaa; margin-top: 2mm; padding-top: 1mm; }
@media print { .page { padding: 0; } h2 { break-after: avoid; } tr { break-inside: avoid; } }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _td(cell: Cell, title: bool = False) -> str:
    cls = f' class="{cell.style}"' if cell.style else ""
    tip = f' title="{_e(cell.text)}"' if title and len(cell.text) > 40 else ""
    return f"<td{cls}{tip}>{_e(cell.text)}</td>"


def _row_class(cells: Sequence[Cell]) -> str:
    styles = {c.style for c in cells}
    return ' class="trip"' if "trip" in styles else ' class="incomplete"' if "incomplete" in styles else ""


def render_html(view: View, plot_png: bytes) -> str:
    """The page as one self-contained HTML document, every record text escaped."""
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_e(view.title)} — batch report</title>", f"<style>{_CSS}</style></head>",
           '<body><main class="page">', "<header>",
           f'<h1>{_e(view.title)}<span class="badge" style="background:{BADGE_COLOUR.get(view.badge_kind, "#555")}">'
           f"{_e(view.badge)}</span></h1>", f'<p class="sub">{_e(view.subtitle)}</p>', '<dl class="facts">']
    for label, cell, wide in view.facts:
        classes = " ".join(c for c in ("wide" if wide else "", cell.style, "outcome" if label == "Outcome" else "")
                           if c)
        cls = f' class="{classes}"' if classes else ""
        out.append(f"<dt>{_e(label)}</dt><dd{cls}>{_e(cell.text)}</dd>")
    out.append("</dl></header>")
    warnings = "".join(f' <span class="warning">— {_e(w)}</span>' for w in view.warnings)
    out.append(f"<section><h2>Process{warnings}</h2>")
    data = base64.b64encode(plot_png).decode("ascii")
    out.append(f'<img class="plot" alt="process plot of batch {_e(view.batch_id)}: temperature, pressure, heater '
               f'and flows over hours from the start" src="data:image/png;base64,{data}"></section>')
    out.append("<section><h2>Consumption and emissions</h2><table><thead><tr><th>Quantity</th><th>Total</th>"
               "<th>Per kg feed</th><th>Basis / note</th></tr></thead><tbody>")
    for acc_row in view.accounting:
        out.append(f"<tr{_row_class(acc_row)}>{''.join(_td(c) for c in acc_row)}</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="note">{_e(n)}</p>' for n in view.accounting_notes]
    out.append('</section><div class="cols"><section><h2>Phases</h2><table class="list"><colgroup>'
               '<col style="width:6mm"><col><col style="width:12mm"><col style="width:17mm"></colgroup>'
               "<thead><tr><th>#</th><th>Phase</th><th>Start</th><th>Duration</th></tr></thead><tbody>")
    for num, name, start, duration in view.phases:
        dcls = ' class="missing"' if duration in ("running", "not ended") else ""
        out.append(f"<tr><td>{_e(num)}</td><td>{_e(name)}</td><td>{_e(start)}</td><td{dcls}>{_e(duration)}</td></tr>")
    if view.phases_more:
        out.append(f'<tr><td></td><td colspan="3" class="missing">... and {view.phases_more} more</td></tr>')
    if not view.phases:
        out.append('<tr><td></td><td colspan="3" class="missing">no phases recorded</td></tr>')
    out.append('</tbody></table></section><section><h2>Events</h2><table class="list"><colgroup>'
               '<col style="width:16.5mm"><col style="width:16mm"><col></colgroup>'
               "<thead><tr><th>Time</th><th>Kind</th><th>Message</th></tr></thead><tbody>")
    for row in view.events:  # one line per event, so the list stays on the page; the whole text on hover
        out.append(f"<tr{_row_class(row)}>{''.join(_td(c, title=True) for c in row)}</tr>")
    if view.events_more:
        text = _more_events_text(view.events_more, view.events_unlisted)
        out.append(f'<tr><td></td><td></td><td class="missing">{_e(text)}</td></tr>')
    if not view.events:
        out.append('<tr><td></td><td></td><td class="missing">no events recorded</td></tr>')
    out.append(f"</tbody></table></section></div><footer>{_e(view.footer)}</footer></main></body></html>\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------- files


def _save(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=PAGE_DPI, metadata={"Creator": f"reedge {__version__}"} if fmt == "pdf" else None)
    return buf.getvalue()


def render_report(batch_dir: Path, out_dir: Path | None = None, *, now: datetime | None = None) -> ReportFiles:
    """Write ``report.html``, ``report.png`` and ``report.pdf`` of the batch in ``batch_dir`` into ``out_dir``.

    ``out_dir`` defaults to the batch folder. ``now`` (default: the clock) decides whether an open
    record is IN PROGRESS or INTERRUPTED. Raises :class:`RecordError` when the record is missing,
    unreadable or damaged; a missing or empty trend only makes the page say so.
    """
    batch_dir = Path(batch_dir)
    doc = load_record(batch_dir)
    trend, note = read_trend(batch_dir, _dict(doc.get("trend")))
    view = build_view(doc, trend, note, now)
    out = Path(out_dir) if out_dir is not None else batch_dir
    page = draw_page(view)
    png, pdf = _save(page, "png"), _save(page, "pdf")
    plot_png = _save(draw_plot_only(view), "png")
    files = ReportFiles(html=out / "report.html", png=out / "report.png", pdf=out / "report.pdf")
    write_atomic(files.png, png)
    write_atomic(files.pdf, pdf)
    write_atomic(files.html, render_html(view, plot_png).encode("utf-8"))
    return files
