"""The one-page batch report: ``report.html``, ``report.png`` and ``report.pdf`` of one batch record.

Input is a record folder ``STATE_DIR/batches/ID/`` (``record.json`` and ``trend.csv``, written by
:mod:`edge.batch.record`). Output is one A4 portrait page a person reads; the three files show the
same content. :func:`render_report` is the one entry point; :func:`report_html` gives the HTML page alone
from a record document held elsewhere than in a batch folder (the plant's historian serves it). Inside:

- :mod:`.view`: what the page shows, computed from the record (the view model; the rules for
  incomplete figures and open records live there);
- :mod:`.plot`: the process plot (matplotlib);
- :mod:`.page`: the page laid out and drawn (PNG, PDF) and written as HTML.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.batch.record import read_record
from edge.batch.report.page import draw_page, draw_plot_only, render_html
from edge.batch.report.plot import PAGE_DPI
from edge.batch.report.view import Trend, build_view, read_trend
from edge.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class ReportFiles:
    """The files one report consists of."""

    html: Path
    png: Path
    pdf: Path


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
    doc = read_record(batch_dir)
    trend_meta = doc.get("trend")
    trend, note = read_trend(batch_dir, trend_meta if isinstance(trend_meta, dict) else {})
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


def report_html(doc: dict[str, Any], trend: Trend | None, trend_note: str, *, now: datetime | None = None) -> str:
    """The report's HTML page (the process plot inline) of a record document (``{"body": ..., "sha256": ...}``)
    and its trend (None: the page says ``trend_note`` instead of plotting), the same page as ``report.html``."""
    view = build_view(doc, trend, trend_note, now)
    return render_html(view, _save(draw_plot_only(view), "png"))
