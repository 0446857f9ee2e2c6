"""The page of a batch report: one A4 portrait page drawn with matplotlib (PNG, PDF), and the same in HTML.

Both show a :class:`~edge.batch.report.view.View` and nothing else: who ran what on which station,
how it went (the process plot), what it consumed and emitted, the phases and the events.

- **HTML**: one self-contained file (inline CSS, the plot as a base64 PNG data URI), printable on
  A4. Every text from the record is HTML-escaped: operator and feed texts are typed by people.
- **PNG / PDF**: the whole page drawn on one figure, A4 at :data:`~edge.batch.report.plot.PAGE_DPI`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge.batch.report.plot import FONT, PAGE_DPI, TRIP_FG, draw_process, fit_text, text_width_in
from edge.batch.report.view import Cell, View, more_events_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


PAGE_IN = (8.27, 11.69)  # A4 portrait
PLOT_IN = (7.6, 4.25)  # the plot alone, for the HTML page (188 mm wide there: 105 mm tall)
MARGIN_IN = 0.45
BADGE_COLOUR = {"done": "#1a7f37", "aborted": "#c62828", "running": "#1f5fa8", "interrupted": "#d9822b"}
INCOMPLETE_FG, INCOMPLETE_BG = "#9a4a00", "#fff1dc"
MISSING_FG = "#6e6e6e"
TRIP_BG = "#fde8ea"


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
    badge_x = m + min(text_width_in(view.title, title_fs, True), title_w) + 0.18
    badge_w = text_width_in(view.badge, 10.5, True) + 0.2
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

    # quality, two to a line
    y = page.heading(m, y + 0.12, "Quality", inner) - 0.02
    half = inner / 2
    for i, (label, cell) in enumerate(view.quality):
        fx = m + (i % 2) * half
        page.text(fx + 0.03, y, label, fs, bold=True, colour="0.3")
        page.text(fx + 1.08, y, cell.text, fs, width=half - 1.15, colour=_cell_colour(cell.style),
                  bold=cell.style == "trip", style="italic" if cell.style == "missing" else "normal")
        y += 0.16 if i % 2 or i == len(view.quality) - 1 else 0.0

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
        erows.append([Cell(""), Cell(""), Cell(more_events_text(more, view.events_unlisted), "missing")])
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
    out.append('</section><section><h2>Quality</h2><dl class="facts">')
    for label, cell in view.quality:
        cls = f' class="{cell.style}"' if cell.style else ""
        out.append(f"<dt>{_e(label)}</dt><dd{cls}>{_e(cell.text)}</dd>")
    out.append('</dl></section><div class="cols"><section><h2>Phases</h2><table class="list"><colgroup>'
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
        text = more_events_text(view.events_more, view.events_unlisted)
        out.append(f'<tr><td></td><td></td><td class="missing">{_e(text)}</td></tr>')
    if not view.events:
        out.append('<tr><td></td><td></td><td class="missing">no events recorded</td></tr>')
    out.append(f"</tbody></table></section></div><footer>{_e(view.footer)}</footer></main></body></html>\n")
    return "\n".join(out)
