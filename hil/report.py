"""The HIL runner's outputs per scenario: a JSON record, JUnit XML, a PNG plot, a terminal summary.

The record (OpenHTF style: every measurement with its value, unit, limits and outcome) is the
truth; the other three are views of it for a machine (JUnit for CI), an engineer (the plot) and
the terminal (the summary). Nothing here decides an outcome: the runner does, these only show it.

**Files are written atomically** (temporary file in the same directory, fsync, rename, fsync of
the directory), so a CI job that collects artefacts after a killed run sees the previous file or
the new one, never half of one, and a write that fails (an unserialisable value) changes nothing.

**JSON**: sorted keys, indent 2, NaN and infinities as ``null`` (a broken sensor), never the
non-standard ``NaN`` token that other JSON readers reject.

**JUnit**: one ``<testsuite>`` per scenario, one ``<testcase>`` per measurement. A scenario that
ended in error gets one more testcase, ``run``, holding the ``<error>``, so the error is counted
once whatever the measurements say; a record marked failed without a failed measurement gets a
``run`` testcase with a ``<failure>`` for the same reason (nothing is lost silently). Times are wall
seconds (what CI measures); plant time is a property. Measurements are checked at the end of a
run, so a testcase's own time is 0. Characters that XML 1.0 cannot carry (garbage from a serial
line in a message) are written as ``\\xNN`` escapes instead of producing a file no parser reads.

**Plot**: one figure, 14 x 10 in at 100 dpi, panels stacked on plant time, channels grouped by
the record's ``channels[name]["group"]``: ``temperature``, ``pressure``, ``vacuum`` (log axis),
``gas``, ``flow``, and ``other`` for any other group; ``digital`` channels (lid switch, E-stop)
become lanes of the timing panel, next to the outputs, the watchdog relay and cabinet power.
A panel holds at most two units (left and right axis); a group with more is split. Long logs are
reduced to per-bucket minimum and maximum (in their time order), so a one-row spike stays visible.
matplotlib and numpy are imported only by :func:`plot` (the controller's scan never needs them;
``reedge report`` uses them too), through the object API with the Agg canvas, so the
process-wide pyplot backend is not touched.
"""

from __future__ import annotations

import io
import json
import math
import pathlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge.files import write_atomic

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    FloatArray = npt.NDArray[np.float64]

FIG_SIZE_IN = (14.0, 10.0)
FIG_DPI = 100
MAX_PLOT_POINTS = 3000  # per line; a 1400 px wide figure cannot show more
MAX_EVENT_LABELS = 24
LABEL_CHARS = 34
LABEL_ROW_PX = 12  # 7 pt labels are 10 px tall at 100 dpi

# (panel title, y scale) per analog group, in panel order top to bottom
ANALOG_GROUPS: dict[str, tuple[str, str]] = {
    "temperature": ("temperature", "linear"),
    "pressure": ("pressure", "linear"),
    "vacuum": ("vacuum", "log"),
    "gas": ("gas", "linear"),
    "flow": ("flow", "linear"),
    "other": ("other", "linear"),
}
DIGITAL_GROUP = "digital"

# event kind -> (colour, line style, line width, label priority: 0 = always labelled)
EVENT_STYLE: dict[str, tuple[str, str, float, int]] = {
    "fault": ("#d62728", "-", 1.6, 0),
    "trip": ("#7a0000", "-", 1.8, 0),
    "relay": ("#ff8c00", "--", 1.2, 1),
    "power": ("#ff8c00", "--", 1.2, 1),
    "alarm": ("#9467bd", ":", 1.0, 2),
    "phase": ("#7f7f7f", ":", 0.9, 3),
}
OTHER_EVENT_STYLE = ("#4c72b0", ":", 0.8, 3)
OUTCOME_COLOUR = {"pass": "#1a7f37", "fail": "#d62728", "error": "#8b008b"}
LANE_COLOUR = {"output": "#1f77b4", "digital": "#2ca02c", "supply": "#ff8c00"}


# ---------------------------------------------------------------------------- files


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become None (JSON has no such numbers); everything else is left for json to judge."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(record: dict[str, Any], path: pathlib.Path) -> None:
    """Write the record as JSON (sorted keys, indent 2, NaN/inf as null), atomically.

    The text is built before the file is opened, so an unserialisable value raises (TypeError or
    ValueError) and leaves any previous file as it was.
    """
    text = json.dumps(_json_safe(record), sort_keys=True, indent=2, allow_nan=False) + "\n"
    write_atomic(pathlib.Path(path), text.encode())


# ---------------------------------------------------------------------------- text formatting


def format_value(value: Any) -> str:
    """A measured value for people: 6 significant digits, strings bare, None as 'not measured'."""
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def format_limits(limits: Any) -> str:
    """``min 1, max 50`` / ``equals h2_leak`` / ``one of a, b``; keys it does not know are shown as they are."""
    if not isinstance(limits, dict) or not limits:
        return "no limits"
    parts = []
    for key in ("min", "max", "equals"):
        if key in limits:
            parts.append(f"{key} {format_value(limits[key])}")
    if "one_of" in limits:
        choices = limits["one_of"]
        seq = choices if isinstance(choices, list | tuple) else [choices]
        parts.append("one of " + ", ".join(format_value(c) for c in seq))
    parts += [f"{k} {format_value(v)}" for k, v in limits.items() if k not in ("min", "max", "equals", "one_of")]
    return ", ".join(parts)


def _measurement_text(m: dict[str, Any]) -> str:
    """``name = value unit (limits)``."""
    unit = m.get("unit") or ""
    value = format_value(m.get("value"))
    if unit and m.get("value") is not None:
        value += f" {unit}"
    return f"{m.get('name', '?')} = {value} ({format_limits(m.get('limits'))})"


def _outcome(obj: dict[str, Any]) -> str:
    return str(obj.get("outcome") or "unknown").lower()


def _duration_text(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "?"
    if seconds >= 7200:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _run_text(record: dict[str, Any]) -> str:
    """the clock (lockstep, or the real-time rig's time scale), plant time and wall time in one phrase."""
    bits = []
    scale = record.get("time_scale")
    if record.get("clock") == "lockstep":
        bits.append("lockstep")
    elif isinstance(scale, int | float):
        bits.append(f"time scale {scale:g}x")
    if record.get("plant_s") is not None or record.get("wall_s") is not None:
        bits.append(f"plant {_duration_text(record.get('plant_s'))} in {_duration_text(record.get('wall_s'))} wall")
    return ", ".join(bits)


STORY_EVENTS = 20      # events a failed run's summary lists


def summary_lines(record: dict[str, Any]) -> list[str]:
    """What the terminal shows after a scenario: the outcome, the error if any, every measurement."""
    head = f"{record.get('scenario', '?')}: {_outcome(record).upper()}"
    run = _run_text(record)
    lines = [f"{head}  ({run})" if run else head]
    if record.get("error"):
        lines.append(f"  error: {record['error']}")
    measurements = record.get("measurements") or []
    lines += [f"  {_outcome(m).upper()} {_measurement_text(m)}" for m in measurements]
    if not measurements:
        lines.append("  (no measurements)")
    if _outcome(record) != "pass":
        lines += _story(record.get("events") or [])
    return lines


def _story(events: list[dict[str, Any]], last: int = STORY_EVENTS) -> list[str]:
    """A failed run's last events (phases, trips, alarms, aborts, faults...), so a CI log says what happened
    without the work folder (pytest keeps only its last few temp dirs)."""
    told = [e for e in events if e.get("kind") not in ("reply", "ready")]
    if not told:
        return []
    out = [f"  what happened (the last {min(last, len(told))} of {len(told)} events):"]
    for e in told[-last:]:
        t = e.get("t_s")
        when = f"{t:9.0f} s" if isinstance(t, int | float) and math.isfinite(t) else "        ? s"
        out.append(f"    {when}  {e.get('source', '?')} {e.get('kind', '?')}: {_x(e.get('message', ''))[:160]}")
    return out


# ---------------------------------------------------------------------------- JUnit

_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(value: Any) -> str:
    """Text that XML 1.0 can carry: control characters and lone surrogates become ``\\xNN`` escapes."""
    return _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _seconds(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and math.isfinite(value) else "0.000"


def _properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """Versions, config files and their hashes, the clock and time scale: what makes a run reproducible."""
    props: list[tuple[str, str]] = []
    for key, value in sorted((record.get("versions") or {}).items()):
        props.append((f"version.{key}", _x(value)))
    for name in ("station", "recipe"):
        ref = record.get(name)
        if isinstance(ref, dict):
            props += [(f"{name}.{k}", _x(ref[k])) for k in ("path", "sha256") if ref.get(k) is not None]
    for key, prop in (("file", "scenario.file"), ("scenario_sha256", "scenario.sha256"), ("clock", "clock"),
                      ("time_scale", "time_scale"),
                      ("plant_s", "plant_s"), ("started_utc", "started_utc")):
        if record.get(key) is not None:
            props.append((prop, _x(record[key])))
    return props


def _testsuite(record: dict[str, Any]) -> tuple[ET.Element, int, int, int]:
    """One scenario as a testsuite; returns it with its (tests, failures, errors)."""
    name = str(record.get("scenario") or "scenario")
    suite = ET.Element("testsuite", name=_x(name))
    props = ET.SubElement(suite, "properties")
    for key, value in _properties(record):
        ET.SubElement(props, "property", name=key, value=value)
    tests = failures = errors = 0
    classname = f"hil.{name}"
    measurements = record.get("measurements") or []
    if _outcome(record) == "error":
        case = ET.SubElement(suite, "testcase", classname=classname, name="run", time=_seconds(record.get("wall_s")))
        text = str(record.get("error") or "the scenario ended in error (no message)")
        err = ET.SubElement(case, "error", message=_x(text.splitlines()[0] if text else text), type="SpecError")
        err.text = _x(text)
        tests, errors = 1, 1
    elif _outcome(record) != "pass" and all(_outcome(m) == "pass" for m in measurements):
        case = ET.SubElement(suite, "testcase", classname=classname, name="run", time=_seconds(record.get("wall_s")))
        text = f"record outcome is {_outcome(record)!r} but no measurement failed"
        ET.SubElement(case, "failure", message=text, type="ScenarioOutcome").text = text
        tests, failures = 1, 1
    for m in measurements:
        case = ET.SubElement(suite, "testcase", classname=classname, name=_x(m.get("name", "?")), time="0.000")
        mprops = ET.SubElement(case, "properties")
        for key in ("value", "unit", "limits", "description"):
            if key in m:
                shown = json.dumps(_json_safe(m[key]), sort_keys=True) if key == "limits" else format_value(m[key])
                ET.SubElement(mprops, "property", name=key, value=_x(shown))
        tests += 1
        outcome = _outcome(m)
        if outcome == "pass":
            continue
        text = _measurement_text(m)
        detail = "\n".join([text, *([str(m["description"])] if m.get("description") else [])])
        tag = "error" if outcome == "error" else "failure"
        ET.SubElement(case, tag, message=_x(text), type="MeasurementOutOfLimits").text = _x(detail)
        if tag == "error":
            errors += 1
        else:
            failures += 1
    log = [f"{_seconds(f.get('t_s'))} s plant  fault {f.get('name')} {json.dumps(_json_safe(f.get('params', {})))}"
           for f in record.get("faults") or []]
    log += [f"{_seconds(e.get('t_s'))} s plant  {e.get('source', '?')} {e.get('kind', '?')}: {e.get('message', '')}"
            for e in record.get("events") or []]
    if log:
        ET.SubElement(suite, "system-out").text = _x("\n".join(log))
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", _seconds(record.get("wall_s")))
    if record.get("started_utc"):
        suite.set("timestamp", _x(record["started_utc"]))
    return suite, tests, failures, errors


def write_junit(records: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
    """One ``<testsuites>`` holding one ``<testsuite>`` per scenario record, written atomically."""
    root = ET.Element("testsuites", name="reedge-hil")
    totals = [0, 0, 0]
    wall = 0.0
    for record in records:
        suite, *counts = _testsuite(record)
        root.append(suite)
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        w = record.get("wall_s")
        wall += w if isinstance(w, int | float) and math.isfinite(w) else 0.0
    root.set("tests", str(totals[0]))
    root.set("failures", str(totals[1]))
    root.set("errors", str(totals[2]))
    root.set("time", _seconds(wall))
    ET.indent(root)
    buf = io.BytesIO()
    ET.ElementTree(root).write(buf, encoding="utf-8", xml_declaration=True)
    write_atomic(pathlib.Path(path), buf.getvalue())


# ---------------------------------------------------------------------------- plot: data


def _num(value: Any) -> float:
    """A logged value as a float; None, text and the like are 'no reading' (NaN)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return math.nan


def _column(rows: Sequence[dict[str, Any]], section: str | None, name: str) -> FloatArray:
    import numpy as np

    if section is None:
        return np.array([_num(r.get(name)) for r in rows], dtype=float)
    return np.array([_num((r.get(section) or {}).get(name)) for r in rows], dtype=float)


def _bucketed(t: FloatArray, y: FloatArray, n_buckets: int) -> tuple[FloatArray, FloatArray]:
    """(times, values) reshaped to (buckets, k), the last bucket padded with its last time and NaN."""
    import numpy as np

    k = math.ceil(len(t) / n_buckets)
    nb = math.ceil(len(t) / k)
    pad = nb * k - len(t)
    tp = np.concatenate([t, np.full(pad, t[-1])]).reshape(nb, k)
    yp = np.concatenate([y, np.full(pad, np.nan)]).reshape(nb, k)
    return tp, yp


def envelope(t: FloatArray, y: FloatArray, max_points: int = MAX_PLOT_POINTS) -> tuple[FloatArray, FloatArray]:
    """At most ``max_points`` points that keep each bucket's minimum and maximum, in time order.

    A bucket with no reading stays NaN (a gap in the line), as the sensor was.
    """
    import numpy as np

    if len(t) <= max_points:
        return t, y
    tp, yp = _bucketed(t, y, max_points // 2)
    rows = np.arange(tp.shape[0])
    missing = np.isnan(yp)
    imin = np.argmin(np.where(missing, np.inf, yp), axis=1)
    imax = np.argmax(np.where(missing, -np.inf, yp), axis=1)
    first, second = np.minimum(imin, imax), np.maximum(imin, imax)
    x = np.stack([tp[rows, first], tp[rows, second]], axis=1).ravel()
    v = np.stack([yp[rows, first], yp[rows, second]], axis=1).ravel()
    return x, v


def _lane(t: FloatArray, y: FloatArray, max_points: int = MAX_PLOT_POINTS) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(bucket start times, mean, max) of a 0..1 signal: the mean is the duty, the max keeps short pulses."""
    import numpy as np

    if len(t) <= max_points:
        return t, y, y
    tp, yp = _bucketed(t, y, max_points)
    missing = np.isnan(yp)
    count = (~missing).sum(axis=1)
    total = np.where(missing, 0.0, yp).sum(axis=1)
    mean = np.divide(total, count, out=np.full(len(total), np.nan), where=count > 0)
    peak = np.where(count > 0, np.max(np.where(missing, -np.inf, yp), axis=1), np.nan)
    return tp[:, 0], mean, peak


def _time_unit(span_s: float) -> tuple[str, float]:
    """Hours for long runs, minutes for medium ones, seconds for short ones: ticks people can read."""
    if span_s >= 3 * 3600:
        return "h", 3600.0
    if span_s >= 180:
        return "min", 60.0
    return "s", 1.0


def _panels(record: dict[str, Any], rows: Sequence[dict[str, Any]]) -> tuple[list[tuple[str, str, list[list[str]]]],
                                                                             list[str]]:
    """Analog panels as (title, scale, [channels on the left axis, channels on the right]) and digital channels."""
    channels: dict[str, dict[str, Any]] = {k: v if isinstance(v, dict) else {} for k, v in
                                           (record.get("channels") or {}).items()}
    for r in rows:  # a logged channel the record forgot is still shown, under "other"
        for name in r.get("ch") or {}:
            channels.setdefault(name, {})
    by_group: dict[str, dict[str, list[str]]] = {g: {} for g in ANALOG_GROUPS}
    digital: list[str] = []
    for name, info in channels.items():
        group = str(info.get("group") or "other").lower()
        if group == DIGITAL_GROUP:
            digital.append(name)
            continue
        group = group if group in ANALOG_GROUPS else "other"
        by_group[group].setdefault(str(info.get("unit") or ""), []).append(name)
    panels = []
    for group, units in by_group.items():
        title, scale = ANALOG_GROUPS[group]
        unit_lists = list(units.values())
        for i in range(0, len(unit_lists), 2):  # at most two units (two y axes) per panel
            panels.append((title, scale, unit_lists[i:i + 2]))
    return panels, digital


# ---------------------------------------------------------------------------- plot: drawing


def _markers(record: dict[str, Any]) -> list[tuple[float, str, str]]:
    """(plant time, kind, short label) of every event and injected fault (a fault logged as an event once)."""
    out: list[tuple[float, str, str]] = []
    for e in record.get("events") or []:
        t = _num(e.get("t_s"))
        if math.isfinite(t):
            kind = str(e.get("kind") or "event")
            out.append((t, kind, event_label(kind, str(e.get("message", "")))))
    fault_times = [t for t, kind, _ in out if kind in ("fault", "mark", "operator")]
    for f in record.get("faults") or []:     # every fired step: marks and operator steps too, by their kind
        t = _num(f.get("t_s"))
        kind = str(f.get("kind") or "fault")
        kind = kind if kind in ("mark", "operator") else "fault"
        if math.isfinite(t) and not any(abs(t - ft) <= 1e-6 * max(1.0, abs(t)) for ft in fault_times):
            out.append((t, kind, f"{'fault ' if kind == 'fault' else ''}{f.get('name', '?')}"))
    return sorted(out, key=lambda m: m[0])


_INTERLOCK = re.compile(r"interlock (\S+) tripped")
_TRANSITION = re.compile(r"^\S+ -> (\S+?):?(\s|$)")


def event_label(kind: str, message: str) -> str:
    """A marker's label as a reader scans a plot: a phase by its name, a trip by its interlock, a fault by its
    name; anything else its first clause, without the parameters (JSON) the record keeps in full."""
    message = re.sub(r"\s*[{\[].*$", "", message).strip()      # the parameters of a fault or a reply
    if kind == "phase":
        m = _TRANSITION.match(message)
        return m.group(1) if m else message.split(":", 1)[0]
    if kind == "trip" and (m := _INTERLOCK.search(message)):
        return f"TRIP {m.group(1)}"
    if kind == "fault":      # the rig's "ID: KIND", the plant's "KIND on|off", the rig's "ID: cleared"
        name, _, rest = message.partition(":")
        words = name.split()
        if rest.strip() == "cleared" or words[-1:] == ["off"]:
            return f"fault {words[0] if words else '?'} cleared"
        return f"fault {words[0] if words else '?'}"
    if kind in ("mark", "operator"):
        return message.split(":", 1)[0]
    if kind == "ready":
        return "controller ready"
    if kind == "batch":
        words = message.split()      # "batch ID started: ...", "batch ID aborted: ..."
        return f"batch {words[2].rstrip(':')}" if len(words) > 2 and words[0] == "batch" else "batch"
    first = re.split(r":\s|\s\(", message, maxsplit=1)[0]
    text = f"{kind}: {first}"
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "\u2026"


def _place_labels(xs_frac: list[float], texts: list[str], priorities: list[int],
                  char_frac: float, widths: Sequence[float] | None = None) -> list[tuple[int, int, bool]]:
    """Rows for event labels so they do not overlap: (marker index, row, text to the left of the line).

    ``widths``: each label's width as drawn (a fraction of the axes); without it ``char_frac`` per character,
    an estimate that a bold label or a wide letter outgrows.

    A label in row r hangs on a thin line down to the axes, so neither its text nor that line may
    cross a label of rows below. Faults and trips go first, then relay/power, alarms, phases; lower
    priorities are dropped when no row has room or the label count is reached, faults and trips
    never (they get extra rows, and as a last resort share one).
    """
    # right to left: labels run rightwards from their lines, so a label bumped up a row by its right
    # neighbour hangs its line left of that neighbour's text, not through it
    order = sorted(range(len(texts)), key=lambda i: (priorities[i], -xs_frac[i]))
    spans: list[tuple[float, float, int, float]] = []  # (start, end, row, x of its line)
    placed: list[tuple[int, int, bool]] = []

    near = 1.5 * char_frac  # two lines this close look like one: a line may run along the other

    def fits(lo: float, hi: float, x: float, row: int, strict: bool = True) -> bool:
        for a, b, r, line in spans:
            if r == row and not (hi <= a or lo >= b):
                return False
            if not strict or abs(line - x) < near:
                continue
            if r > row and lo <= line <= hi:  # our text would sit on the line of a label above
                return False
            if r < row and a <= x <= b:  # our line would cross a label below
                return False
        return True

    for i in order:
        prio, x = priorities[i], xs_frac[i]
        if prio > 0 and len(placed) >= MAX_EVENT_LABELS:
            continue
        width = (widths[i] if widths is not None else len(texts[i]) * char_frac) + 0.004
        left = x + width > 1.0
        lo, hi = (x - width, x) if left else (x, x + width)
        row = next((r for r in range(5 if prio == 0 else 3) if fits(lo, hi, x, r)), None)
        if row is None and prio == 0:  # a fault or trip is always labelled: crossing a line, at worst a label
            row = next((r for r in range(5) if fits(lo, hi, x, r, strict=False)), None)
            if row is None:
                used = [r for *_, r, _ in spans]
                row = min(range(5), key=used.count)
        if row is not None:
            spans.append((lo, hi, row, x))
            placed.append((i, row, left))
    return placed


def _draw_analog(ax: Axes, t: FloatArray, rows: Sequence[dict[str, Any]], title: str, scale: str,
                 unit_lists: list[list[str]], record: dict[str, Any]) -> None:
    import numpy as np

    channels = record.get("channels") or {}
    axes = [ax] if len(unit_lists) == 1 else [ax, ax.twinx()]
    handles = []
    colour = 0
    for side, (axis, names) in enumerate(zip(axes, unit_lists, strict=True)):
        unit = str((channels.get(names[0]) or {}).get("unit") or "")
        any_positive = False
        for name in names:
            y = _column(rows, "ch", name)
            finite = np.isfinite(y)
            label = name + (" (right)" if side else "")
            if not finite.any():
                label += " - no data"
            elif not finite.all():
                label += f" - {100 * (1 - finite.mean()):.0f}% no reading"
            if scale == "log":
                hidden = finite & (y <= 0)
                y = np.where(hidden, np.nan, y)
                any_positive = any_positive or bool(np.isfinite(y).any())
                if hidden.any():
                    label += f" - {100 * hidden.mean():.0f}% <= 0 (hidden)"
            x, v = envelope(t, y)
            sparse = int(np.isfinite(v).sum()) <= 50  # a few points: a line alone could be invisible
            (line,) = axis.plot(x, v, "--" if side else "-", lw=1.3, color=f"C{colour % 10}", label=label,
                                marker="o" if sparse else None, ms=3)
            colour += 1
            handles.append(line)
        if scale == "log" and any_positive:
            axis.set_yscale("log")
        axis.set_ylabel(f"{title}\n[{unit}]" if unit else title, fontsize=9)
        axis.tick_params(labelsize=8)
    ax.grid(True, which="major", alpha=0.3)
    # outside the axes, so no data hides under it; past the right axis' labels when there is one
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.075 if len(axes) > 1 else 1.005, 1.0),
              fontsize=7.5, frameon=False, borderaxespad=0, handlelength=1.8)


def _outputs(record: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The record's outputs, then any logged output it forgot."""
    outputs = [str(o) for o in record.get("outputs") or []]
    for r in rows:
        outputs += [o for o in r.get("out") or {} if o not in outputs]
    return outputs


def _draw_timing(ax: Axes, t: FloatArray, rows: Sequence[dict[str, Any]], outputs: list[str],
                 digital: list[str], single_row_width: float) -> None:
    """One lane per output (fill height = duty, so a heater shows its duty), digital inputs, relay, power."""
    import numpy as np
    from matplotlib.patches import Patch

    lanes: list[tuple[str, FloatArray, str]] = [(o, _column(rows, "out", o), "output") for o in outputs]
    lanes += [(d, _column(rows, "ch", d), "digital") for d in digital]
    for key, name in (("relay", "watchdog relay"), ("power", "cabinet power")):
        y = _column(rows, None, key)
        if np.isfinite(y).any():
            lanes.append((name, y, "supply"))
    n = len(lanes)
    dt = float(np.median(np.diff(t))) if len(t) > 1 else single_row_width  # the last row lasts one interval
    for i, (name, y, kind) in enumerate(lanes):
        base = n - 1 - i + 0.1
        x, mean, peak = _lane(t, np.clip(y, 0.0, 1.0))
        x = np.append(x, x[-1] + dt)
        mean, peak = np.append(mean, np.nan), np.append(peak, np.nan)
        colour = LANE_COLOUR[kind]
        ok = np.isfinite(mean)
        ax.fill_between(x, base, base + 0.8 * np.nan_to_num(peak), where=np.isfinite(peak), step="post",
                        color=colour, alpha=0.3, lw=0)
        ax.fill_between(x, base, base + 0.8 * np.nan_to_num(mean), where=ok, step="post", color=colour, lw=0)
        ax.axhline(base - 0.1, color="0.85", lw=0.5)
        finite = y[np.isfinite(y)]
        if len(finite) and ((finite > 0) & (finite < 1)).any():
            lanes[i] = (f"{name} (duty)", y, kind)
    ax.set_ylim(0, max(n, 1))
    ax.set_yticks([n - 1 - i + 0.5 for i in range(n)], [lane[0] for lane in lanes], fontsize=7.5)
    ax.tick_params(axis="y", length=0)
    kinds = {lane[2] for lane in lanes}
    legend = [Patch(color=LANE_COLOUR["output"], label="output on / duty")]
    if "digital" in kinds:
        legend.append(Patch(color=LANE_COLOUR["digital"], label="input high"))
    if "supply" in kinds:
        legend.append(Patch(color=LANE_COLOUR["supply"], label="relay energised / power on"))
    if len(t) > MAX_PLOT_POINTS:
        legend.append(Patch(color=LANE_COLOUR["output"], alpha=0.3, label="on at times within a pixel"))
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False,
              borderaxespad=0)
    if not n:
        ax.text(0.5, 0.5, "no outputs logged", transform=ax.transAxes, ha="center", va="center", color="0.4")


def _failure_lines(record: dict[str, Any]) -> list[str]:
    """The box of the plot: the error's first line, the failed measurements (at most 5), each cut to fit."""
    lines = []
    if _outcome(record) == "error":
        lines.append(f"error: {(str(record.get('error') or '(no message)').splitlines() or [''])[0]}")
    failed = [m for m in record.get("measurements") or [] if _outcome(m) != "pass"]
    lines += [f"{_outcome(m).upper()} {_measurement_text(m)}" for m in failed[:5]]
    if len(failed) > 5:
        lines.append(f"... and {len(failed) - 5} more failed measurements")
    return [s if len(s) <= 72 else s[:69] + "..." for s in lines]


def _header(fig: Figure, record: dict[str, Any]) -> None:
    """Title with the outcome badge, a line of run facts, and the failed measurements in a box."""
    from matplotlib.text import Annotation

    outcome = _outcome(record)
    h = FIG_SIZE_IN[1] * FIG_DPI
    title = fig.text(0.01, 1 - 10 / h, str(record.get("scenario") or "scenario"), fontsize=15, weight="bold",
                     va="top", ha="left")
    badge_colour = OUTCOME_COLOUR.get(outcome, "#555555")

    badge = Annotation(f" {outcome.upper()} ", xy=(1, 0.5), xycoords=title, xytext=(10, 0),
                       textcoords="offset points", va="center", ha="left", fontsize=13, weight="bold",
                       color="white", bbox={"boxstyle": "round,pad=0.25", "fc": badge_colour, "ec": badge_colour})
    fig.add_artist(badge)
    facts = [_run_text(record)]
    if record.get("started_utc"):
        facts.append(f"started {record['started_utc']}")
    version = (record.get("versions") or {}).get("reedge")
    if version:
        facts.append(f"reedge {version}")
    fig.text(0.01, 1 - 36 / h, "   |   ".join(f for f in facts if f), fontsize=9, va="top", ha="left", color="0.25")
    description = str(record.get("description") or "")
    if description:
        short = description if len(description) <= 110 else description[:107] + "..."
        fig.text(0.01, 1 - 52 / h, short, fontsize=9, va="top", ha="left", style="italic", color="0.35")
    lines = _failure_lines(record)
    if lines:
        text = "\n".join(lines)
        fig.text(0.99, 1 - 8 / h, text, fontsize=8, va="top", ha="right", multialignment="left", family="monospace",
                 color="#8b0000",
                 bbox={"boxstyle": "round,pad=0.4", "fc": "#fff0f0", "ec": badge_colour})


def plot(record: dict[str, Any], rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
    """Draw the run (channels by group, outputs as timing lanes, events as lines) to a PNG, atomically."""
    buf = io.BytesIO()
    figure(record, rows).savefig(buf, format="png", dpi=FIG_DPI)
    write_atomic(pathlib.Path(path), buf.getvalue())


def figure(record: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Figure:
    """The plot's figure (on an Agg canvas), before it is saved."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    t_all = _column(rows, None, "t_s")
    keep = np.isfinite(t_all)
    order = np.argsort(t_all[keep], kind="stable")
    kept = [r for r, k in zip(rows, keep, strict=True) if k]
    rows = [kept[i] for i in order]
    t = t_all[keep][order]
    markers = _markers(record)
    plant_s = _num(record.get("plant_s"))
    span_points = [*t[:1], *t[-1:], *(m[0] for m in markers)]
    if math.isfinite(plant_s) and not len(t):
        span_points += [0.0, plant_s]
    start, end = (min(span_points), max(span_points)) if span_points else (0.0, 1.0)
    if end <= start:
        start, end = start - 0.5, end + 0.5
    unit, per = _time_unit(end - start)

    panels, digital = _panels(record, rows)
    if not len(t):
        panels = []
    fig = Figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    outputs = _outputs(record, rows)
    ratios = [3.0] * len(panels) + [max(1.2, 0.42 * (len(outputs) + len(digital) + 2))] if len(t) else [1.0]
    axes = fig.subplots(len(ratios), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios})[:, 0]
    ts = t / per
    for ax, (title, scale, unit_lists) in zip(axes, panels, strict=False):
        _draw_analog(ax, ts, rows, title, scale, unit_lists, record)
    if len(t):
        _draw_timing(axes[-1], ts, rows, outputs, digital, (end - start) / per / 200)
    else:  # events and the header are still worth seeing
        axes[-1].text(0.5, 0.5, "no rows logged", transform=axes[-1].transAxes, ha="center", va="center",
                      fontsize=12, color="0.3")
        axes[-1].set_yticks([])
    pad = 0.008 * (end - start)  # a point or an event at either end stays off the frame
    axes[-1].set_xlim((start - pad) / per, (end + pad) / per)
    axes[-1].set_xlabel(f"plant time [{unit}]", fontsize=9)

    # event markers through every panel, colour by kind
    kinds_seen: dict[str, tuple[str, str, float, int]] = {}
    for tm, kind, _ in markers:
        colour, ls, lw, prio = EVENT_STYLE.get(kind, OTHER_EVENT_STYLE)
        kinds_seen.setdefault(kind, (colour, ls, lw, prio))
        for ax in axes:
            ax.axvline(tm / per, color=colour, ls=ls, lw=lw, alpha=0.8 if prio == 0 else 0.6, zorder=0.5)

    lane_names = [*outputs, *digital, "watchdog relay", "heater (duty)"]
    lane_px = 7.5 * 0.6 * FIG_DPI / 72 * max(len(n) for n in lane_names) + 16  # lane labels are the widest
    left, right, bottom = max(0.065, lane_px / (FIG_SIZE_IN[0] * FIG_DPI)), 0.84, 0.06
    width_px = (right - left) * FIG_SIZE_IN[0] * FIG_DPI
    char_frac = 7 * 0.6 * FIG_DPI / 72 / width_px  # 7 pt text, ~0.6 em per character
    texts = [m[2] if len(m[2]) <= LABEL_CHARS else m[2][:LABEL_CHARS - 1] + "\u2026" for m in markers]
    xs = [(m[0] - start + pad) / (end - start + 2 * pad) for m in markers]
    prios = [EVENT_STYLE.get(m[1], OTHER_EVENT_STYLE)[3] for m in markers]
    renderer = fig.canvas.get_renderer()       # type: ignore[attr-defined]   # Agg: labels measured as drawn
    widths = [renderer.get_text_width_height_descent(
        text, FontProperties(size=7, weight="bold" if prio == 0 else "normal"), ismath=False)[0] / width_px
        for text, prio in zip(texts, prios, strict=True)]
    labelled: set[str] = set()
    keep_idx = []
    for i, text in enumerate(texts):      # a repeated label (the same refusal every 30 s, the rig's and the
        if text not in labelled:          # plant's note of one fault) is labelled once: its lines still show
            labelled.add(text)
            keep_idx.append(i)
    placed = [(keep_idx[j], row, left) for j, row, left in _place_labels(
        [xs[i] for i in keep_idx], [texts[i] for i in keep_idx], [prios[i] for i in keep_idx], char_frac,
        [widths[i] for i in keep_idx])]
    n_rows = 1 + max((row for _, row, _ in placed), default=-1)
    h_px = FIG_SIZE_IN[1] * FIG_DPI
    header_px = 66 if record.get("description") else 50
    header_px = max(header_px, 20 + 12 * len(_failure_lines(record)))
    top_px = header_px + LABEL_ROW_PX * n_rows + 6
    fig.subplots_adjust(left=left, right=right, bottom=bottom, top=1 - top_px / h_px, hspace=0.12)
    top_ax = axes[0]
    trans = blended_transform_factory(top_ax.transData, top_ax.transAxes)
    for i, row, to_left in placed:
        tm, kind, _ = markers[i]
        colour = EVENT_STYLE.get(kind, OTHER_EVENT_STYLE)[0]
        top_ax.annotate(texts[i], xy=(tm / per, 1.0), xycoords=trans, xytext=(0, 2 + LABEL_ROW_PX * row),
                        textcoords="offset pixels", fontsize=7, color=colour, ha="right" if to_left else "left",
                        va="bottom", annotation_clip=False,
                        weight="bold" if EVENT_STYLE.get(kind, OTHER_EVENT_STYLE)[3] == 0 else "normal",
                        arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.6, "shrinkA": 0, "shrinkB": 0,
                                    "relpos": (1.0, 0.0) if to_left else (0.0, 0.0)})
    if kinds_seen:
        handles = [Line2D([], [], color=c, ls=ls, lw=lw, label=k) for k, (c, ls, lw, _) in kinds_seen.items()]
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.005, 0.0), ncol=len(handles),
                   fontsize=7.5, title="events:", title_fontsize=8, frameon=False, alignment="left")
    _header(fig, record)
    return fig
