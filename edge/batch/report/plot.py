"""The process plot of a batch report: temperature and setpoint, pressure, heater, flows over hours.

Drawn with matplotlib's object API on the figure it is given (the page or the plot alone for the
HTML page); matplotlib and numpy are imported only when a plot is drawn, and the process-wide
pyplot backend is untouched. Phases, trips, alarms and power losses are marked across the panels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.batch.report.view import PlotData, Trend, fmt_duration, stamp

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.figure import Figure

    FloatArray = npt.NDArray[np.float64]


PAGE_DPI = 150  # 1240 x 1754 px for A4: sharp enough to read the tables in an email
FONT = "DejaVu Sans"
MAX_ALARM_LINES = 40  # more alarms are marked on the phase strip only, not drawn as lines through the plot
MAX_PLOT_POINTS = 4000  # per line; more cannot be seen on a page and make the PDF heavy
TRIP_FG = "#b00020"
ALARM_FG = "#d9822b"
PRESSURE_TO_BAR = {"bar": 1.0, "mbar": 1e-3, "hPa": 1e-3, "kPa": 1e-2, "Pa": 1e-5, "Torr": 1.333224e-3}


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


def _flat_range(lines: list[_Line]) -> tuple[float, float] | None:
    """A range for a side whose values do not vary (0 kW all batch, a constant flow), else None: from 0 to the
    value, padded like the duty axis, so 0 sits at the bottom where 0 % does, not mid-panel where matplotlib
    centres a flat line (0 kW beside the duty read as 50 %)."""
    import numpy as np

    values = np.concatenate([ln.values[np.isfinite(ln.values)] for ln in lines]) if lines else np.array([])
    if not len(values):
        return None
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > 1e-9 * max(1.0, abs(lo), abs(hi)):
        return None
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        hi = lo + 1.0
    pad = 0.03 * (hi - lo)
    return lo - pad, hi + pad


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
        limits = p.ylim if p.ylim is not None else None if p.log and any_positive else _flat_range(p.lines)
        if limits is not None:
            axis.set_ylim(*limits)
        axis.set_ylabel(f"{p.title}\n[{p.unit}]", fontsize=fs, labelpad=2, linespacing=1.0)
        axis.tick_params(labelsize=fs - 0.8, pad=1.5, length=2.5)
    ax.grid(True, which="major", alpha=0.25, lw=0.5)
    if panel.no_data:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], lw=0, label=f"no data: {', '.join(panel.no_data)}"))
    # the legend on the top axes (the right one when there is one): raising the left axes instead would draw its
    # phase bands over the right axes' lines (the cooling water vanished under them)
    axes[-1][0].legend(handles=handles, loc="best", fontsize=fs - 1.2, framealpha=0.85, borderpad=0.3, labelspacing=0.2,
              handlelength=1.6, borderaxespad=0.3, edgecolor="0.8")
    return colour


def text_width_in(text: str, fontsize: float, bold: bool = False) -> float:
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
    if text_width_in(text, fontsize, bold) <= width_in:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text_width_in(text[:mid].rstrip() + "…", fontsize, bold) <= width_in:
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
        axes[-1].set_xlabel(f"hours from the batch start ({stamp(data.start)})", fontsize=fs, labelpad=2)

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
        if text_width_in(label, fsize) > room:
            label = num if text_width_in(num, fsize) <= room + 0.06 else ""
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

