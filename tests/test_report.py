"""The batch report (edge/batch/report/), the LCA export (edge/batch/export.py) and ``reedge report``.

The records are built here as edge/batch/record.py writes them: an HD batch of 25 kg of scrap over
about 12 h (9 phase entries: degassing is split by a 42 min power loss), a cooling-water trip
that was reset, alarms, an energy meter that missed the first 15 min (so its figure is a lower
bound), no cooling-water meter; and a sintering batch under vacuum with an Ar quench. Run this
module as a script to render both for a look: ``python -m tests.test_report /tmp/report-check``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import pathlib
import re
import struct
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from matplotlib.colors import to_rgb

from edge.app import cli
from edge.batch import export, quality, record, report
from edge.batch.report import page as report_page
from edge.batch.report import plot as report_plot
from edge.batch.report import view as report_view

ROOT = pathlib.Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 29, 8, 16, 53, tzinfo=UTC)
OPERATOR = "J. Ngata <script>alert('x')</script>"
HD_CHANNELS = ["cj_temp", "chamber_temp", "chamber_temp_safety", "chamber_pressure", "o2_pct", "h2_room",
               "cooling_water_flow", "chamber_vacuum", "h2_flow", "ar_flow", "heater_power", "lid_closed",
               "estop_ok", "cooling_water_ok", "reset_button"]
HD_OUTPUTS = ["h2_inlet_valve", "ar_inlet_valve", "vent_valve", "vacuum_pump", "vacuum_valve", "heater",
              "cooling_water_valve", "alarm_beacon", "watchdog_line"]
HD_UNITS = {"setpoint_c": "degC", "heater_duty": "1", "cj_temp": "degC", "chamber_temp": "degC",
            "chamber_temp_safety": "degC", "chamber_pressure": "bar", "o2_pct": "%vol", "h2_room": "%LEL",
            "cooling_water_flow": "l/min", "chamber_vacuum": "mbar", "h2_flow": "NL/min", "ar_flow": "NL/min",
            "heater_power": "kW", "lid_closed": "1", "estop_ok": "1", "cooling_water_ok": "1", "reset_button": "1",
            **dict.fromkeys(HD_OUTPUTS, "1")}
# (phase, minutes from the start, minutes long); degassing is interrupted by the power loss
HD_PHASES = [("load_check", 0, 4), ("leak_test", 4, 22), ("purge", 26, 28), ("h2_admission", 54, 14),
             ("absorption", 68, 160), ("degassing", 228, 125), ("degassing", 395, 168), ("cooling", 563, 145),
             ("unload", 708, 15)]
POWER_LOSS = (353.0, 395.0)  # minutes from the start
TRIP_MIN = 470.0


def ts(minutes: float) -> str:
    """RFC 3339 UTC with milliseconds, ``minutes`` after the start."""
    t = START + timedelta(minutes=minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def meter(value: float | None, unit: str, *, complete: bool = True, gaps: Sequence[tuple[float, float]] = (),
          first_min: float = 0.1, last_min: float = 723.0, readings: int = 4200,
          notes: Sequence[str] = ()) -> dict[str, Any]:
    """A meter figure as the recorder's counter tracker leaves it (gaps: the ones in the middle it counted across)."""
    return {"value": value, "unit": unit, "complete": complete,
            "source": "instrument.measurement" if value is not None else None,
            "readings": readings if value is not None else 0, "rollovers": 0,
            "gaps": [{"from": ts(a), "to": ts(b), "duration_s": (b - a) * 60} for a, b in gaps],
            "first": {"ts": ts(first_min), "value": 10512.3} if value is not None else None,
            "last": {"ts": ts(last_min), "value": 10512.3 + value} if value is not None else None,
            "notes": list(notes)}


def hd_body() -> dict[str, Any]:
    phases = [{"phase": p, "started": ts(a), "ended": ts(a + d), "duration_s": d * 60.0} for p, a, d in HD_PHASES]
    events = [
        {"ts": ts(0), "kind": "operator", "name": None, "message": f"batch started by {OPERATOR}"},
        {"ts": ts(60), "kind": "alarm", "name": "h2_room_warn", "message": "room H2 12 %LEL (warning at 10)"},
        {"ts": ts(63), "kind": "alarm", "name": "h2_room_warn", "message": "room H2 back below 10 %LEL"},
        {"ts": ts(300), "kind": "alarm", "name": "vacuum_slow", "message": "vacuum 0.8 mbar after 60 min "
                                                                         "(expected below 0.1)"},
        {"ts": ts(POWER_LOSS[0]), "kind": "instrument", "name": "energy_meter",
         "message": "power meter: no reading (cabinet without power)"},
        {"ts": ts(POWER_LOSS[1]), "kind": "recovery", "name": None,
         "message": "recovered after a 42 min power loss: degassing resumes at 571 degC (hold)"},
        {"ts": ts(POWER_LOSS[1] + 2), "kind": "operator", "name": None, "message": "resume"},
        {"ts": ts(TRIP_MIN), "kind": "trip", "name": "cooling_water_low",
         "message": "cooling water 1.2 l/min < 3.0 l/min: heater and vacuum valve off"},
        {"ts": ts(TRIP_MIN + 1), "kind": "refused", "name": None, "message": "resume refused: trip latched"},
        {"ts": ts(TRIP_MIN + 9), "kind": "operator", "name": None, "message": "reset trips (water filter cleaned)"},
        {"ts": ts(TRIP_MIN + 10), "kind": "operator", "name": None, "message": "resume"},
        {"ts": ts(723), "kind": "operator", "name": None, "message": "unloaded, 24.62 kg weighed"},
    ]
    return {
        "record": "end", "revision": 2, "batch_id": "HD-20261129-01", "process": "hd", "site": "pilot-line",
        "station": "hd-01",
        "recipe": {"name": "HD of sintered NdFeB scrap, 25 kg", "sha256": "3f9a" + "0c" * 30, "version": 1,
                   "text": (ROOT / "recipes" / "hd_standard.toml").read_text()},
        "operator": OPERATOR,
        "feed": {"description": "sintered NdFeB from HDD voice-coil motors, Ni-coated, sorted", "mass_in_kg": 25.0},
        "product": {"mass_out_kg": 24.62, "yield_pct": 98.48},
        "started": ts(0), "ended": ts(723), "duration_s": 723 * 60.0,
        "outcome": "done", "reason": None,
        "phases": phases, "events": events,
        "interruptions": [{"from": ts(POWER_LOSS[0]), "to": ts(POWER_LOSS[1]), "outage_s": 2520.0,
                           "message": "cabinet power lost during degassing; held, resumed by the operator"}],
        "accounting": {
            "meters": {
                "energy": meter(182.4, "kWh", complete=False, first_min=15.0, gaps=[POWER_LOSS],
                                notes=["first reading 900 s after the start: what was used before it is missing"]),
                "h2": meter(1420.8, "NL"),
                "ar": meter(1830.25, "NL"),
                "cooling_water": None,
            },
            "heater_model_kwh": 176.9, "heater_rated_kw": 18.0, "h2_absorbed_nl": 1012.6,
            "grid_kg_co2e_per_kwh": 0.412, "kg_co2e": 75.1488,
            "per_kg": {"kwh": 7.296, "nl_h2": 56.832, "nl_ar": 73.21, "kg_co2e": 3.005952},
            "complete": False,
        },
        "quality": hd_quality(),
    }


def hd_quality() -> dict[str, Any]:
    """The quality section as the recorder builds it (edge.batch.quality), with the cooling-water trip counted."""
    q = quality.empty()
    quality.merge(q, {"leak_rise_mbar_per_min": 0.0123, "o2_after_purge_pct": 0.0083, "final_vacuum_mbar": 0.0871,
                      "h2_top_ups": 19}, 4.6 * 3600)
    q["interlock_trips"] = 1
    return q


def _hd_state(m: float) -> dict[str, float]:
    """A plausible trend row at ``m`` minutes: setpoint, temperature, pressure, vacuum, heater, flows."""
    if m < 54:  # checks, leak test and purges at room temperature
        sp, temp, bar = math.nan, 22.0, 1.0 if m < 4 else 0.05 if m < 26 else (0.02 if int(m) % 8 < 4 else 1.1)
        vac, h2f, arf = (1013.0 if m < 4 else 0.9 if m < 26 else (1.5 if int(m) % 8 < 4 else 1100.0)), 0.0, \
            (40.0 if m >= 26 and int(m) % 8 >= 4 else 0.0)
    elif m < 228:  # H2 admitted and absorbed, the exotherm warms the charge
        sp, bar = math.nan, 1.8 - 0.5 * (1 - math.exp(-(m - 54) / 30)) + (0.45 if int(m) % 40 == 0 else 0.0)
        temp = 22.0 + 38.0 * math.exp(-((m - 110) / 35) ** 2)
        vac, h2f, arf = 1500.0, 30.0 if m < 68 or int(m) % 40 == 0 else 0.0, 0.0
    elif m < 563:  # vacuum degassing at 600 degC
        sp = min(600.0, 22.0 + (m - 228) * 5.0) if m < POWER_LOSS[1] else 600.0
        temp = sp - 6.0 if m < POWER_LOSS[0] else 571.0 + min(29.0, (m - POWER_LOSS[1]) * 1.5)
        if TRIP_MIN <= m < TRIP_MIN + 10:
            temp -= (m - TRIP_MIN) * 3.0
        bar, vac = 0.0, max(0.01, 50.0 * math.exp(-(m - 228) / 25))
        h2f, arf = 0.0, 0.0
    else:  # cooling under argon, unload
        sp, temp = math.nan, max(25.0, 600.0 * math.exp(-(m - 563) / 55))
        bar, vac, h2f, arf = 1.1, 1100.0, 0.0, 25.0 if m < 580 else 0.0
    heating = 228 <= m < 563 and not (TRIP_MIN <= m < TRIP_MIN + 10)
    duty = 0.0 if not heating else 0.95 if m < 340 else 0.38 + 0.04 * math.sin(m / 3)
    return {"setpoint_c": sp, "chamber_temp": temp, "chamber_pressure": bar, "chamber_vacuum": vac,
            "heater_duty": duty, "heater_power": 18.0 * duty, "h2_flow": h2f, "ar_flow": arf}


def hd_trend_rows() -> tuple[list[str], list[list[str]]]:
    header = ["unix_s", "setpoint_c", "heater_duty", *HD_CHANNELS, *HD_OUTPUTS]
    rows: list[list[str]] = []
    t0 = START.timestamp()
    for i in range(0, 723 * 6 + 1):
        m = i / 6
        if POWER_LOSS[0] <= m < POWER_LOSS[1]:
            continue
        s = _hd_state(m)
        values = {**s, "cj_temp": 24.5, "chamber_temp_safety": math.nan if 250 < m < 262 else s["chamber_temp"] + 4,
                  "o2_pct": 20.9 if m < 26 else 0.4, "h2_room": 12.0 if 60 <= m < 63 else 0.3,
                  "cooling_water_flow": 1.2 if TRIP_MIN <= m < TRIP_MIN + 9 else 8.0, "lid_closed": 1.0,
                  "estop_ok": 1.0, "cooling_water_ok": 0.0 if TRIP_MIN <= m < TRIP_MIN + 9 else 1.0,
                  "reset_button": 0.0, "heater": s["heater_duty"], "vacuum_pump": 1.0 if 228 <= m < 563 else 0.0}
        row = [f"{t0 + m * 60:.3f}"]
        for c in header[1:]:
            v = values.get(c, 0.0)
            row.append("" if math.isnan(v) else f"{v:.6g}")
        rows.append(row)
    return header, rows


SINTER_PHASES = [("pump_down", 0, 55), ("heating", 55, 240), ("sinter", 295, 240), ("quench", 535, 35),
                 ("anneal_1", 570, 150), ("anneal_2", 720, 180), ("cooling", 900, 160)]


def sintering_body() -> dict[str, Any]:
    phases = [{"phase": p, "started": ts(a), "ended": ts(a + d), "duration_s": d * 60.0} for p, a, d in SINTER_PHASES]
    return {
        "record": "end", "revision": 1, "batch_id": "SF-20261129-02", "process": "sintering", "site": "pilot-line",
        "station": "sf-01",
        "recipe": {"name": "Sintering of recycled NdFeB, 1060 degC", "sha256": "77" * 32, "version": "2b",
                   "text": (ROOT / "recipes" / "sintering_standard.toml").read_text()},
        "operator": "M. Lindqvist",
        "feed": {"description": "green compacts from HD-01 powder", "mass_in_kg": 18.4},
        "product": {"mass_out_kg": None, "yield_pct": None},
        "started": ts(0), "ended": ts(1060), "duration_s": 1060 * 60.0, "outcome": "done", "reason": None,
        "phases": phases,
        "events": [{"ts": ts(0), "kind": "operator", "name": None, "message": "batch started"},
                   {"ts": ts(120), "kind": "alarm", "name": "vacuum_recovery_slow",
                    "message": "degassing hold extended: vacuum 4e-3 mbar"}],
        "interruptions": [],
        "accounting": {
            "meters": {"energy": meter(612.75, "kWh"), "h2": meter(None, "NL"), "ar": meter(12500.0, "NL"),
                       "cooling_water": meter(9460.0, "L")},
            "heater_model_kwh": 655.0, "heater_rated_kw": 60.0, "h2_absorbed_nl": None,
            "grid_kg_co2e_per_kwh": 0.412, "kg_co2e": 252.453,
            "per_kg": {"kwh": 33.30163, "nl_h2": None, "nl_ar": 679.3478, "kg_co2e": 13.72027},
            "complete": False,
        },
    }


def sintering_trend_rows() -> tuple[list[str], list[list[str]]]:
    header = ["unix_s", "setpoint_c", "heater_duty", "chamber_temp", "chamber_pressure", "chamber_vacuum",
              "heater", "vacuum_pump"]
    rows = []
    for i in range(0, 1060 * 6 + 1):
        m = i / 6
        sp = 25.0 if m < 55 else min(1060.0, 25 + (m - 55) * 4.5) if m < 535 else 900.0 if 570 <= m < 720 else \
            500.0 if 720 <= m < 900 else math.nan
        cool_from, cool_start = (1060.0, 535) if m < 570 else (500.0, 900)
        temp = sp - 3 if not math.isnan(sp) else max(30.0, cool_from * math.exp(-(m - cool_start) / 40))
        vac = 1000 * math.exp(-m / 5) + 2e-4 if m < 535 else 800.0 if m < 570 else 3e-4
        bar = vac / 1000.0
        duty = 0.0 if math.isnan(sp) else 0.7
        rows.append([f"{START.timestamp() + m * 60:.3f}", "" if math.isnan(sp) else f"{sp:.6g}", f"{duty:.3g}",
                     f"{temp:.6g}", f"{bar:.6g}", f"{vac:.6g}", f"{duty:.3g}", "1"])
    return header, rows


def write_batch(state_dir: pathlib.Path, body: dict[str, Any], trend: tuple[list[str], list[list[str]]] | None,
                units: dict[str, str] | None = None, *, repeat_header_after_gap: bool = False) -> pathlib.Path:
    folder: pathlib.Path = state_dir / "batches" / str(body["batch_id"])
    folder.mkdir(parents=True, exist_ok=True)
    record.write_record(folder, body, {"file": "trend.csv", "units": units or HD_UNITS})
    if trend is not None:
        header, rows = trend
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for prev, row in zip([None, *rows], rows, strict=False):
            if repeat_header_after_gap and prev is not None and float(row[0]) - float(prev[0]) > 600:
                w.writerow(header)  # a writer that started the file again after the power loss
            w.writerow(row)
        (folder / "trend.csv").write_text(buf.getvalue())
    return folder


def sintering_units() -> dict[str, str]:
    return {"setpoint_c": "degC", "heater_duty": "1", "chamber_temp": "degC", "chamber_pressure": "bar",
            "chamber_vacuum": "mbar", "heater": "1", "vacuum_pump": "1"}


@pytest.fixture(scope="module")
def hd_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    state: pathlib.Path = tmp_path_factory.mktemp("state")
    return write_batch(state, hd_body(), hd_trend_rows(), repeat_header_after_gap=True)


@pytest.fixture(scope="module")
def hd_files(hd_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> report.ReportFiles:
    return report.render_report(hd_dir, tmp_path_factory.mktemp("out"))


def render_samples(out: pathlib.Path) -> list[report.ReportFiles]:
    """Both fixture batches rendered into ``out`` (for a look at the pages)."""
    state = out / "state"
    hd = write_batch(state, hd_body(), hd_trend_rows(), repeat_header_after_gap=True)
    sf = write_batch(state, sintering_body(), sintering_trend_rows(), sintering_units())
    return [report.render_report(hd, out / "hd"), report.render_report(sf, out / "sintering")]


if __name__ == "__main__":
    for files in render_samples(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/report-check")):
        print(files.png)


# ---------------------------------------------------------------------------- helpers


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # IHDR comes first
    return width, height


def embedded_png(page: str) -> bytes:
    found = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert found, "no embedded PNG"
    return base64.b64decode(found.group(1), validate=True)


def view_of(folder: pathlib.Path, now: datetime | None = None) -> report_view.View:
    doc = record.read_record(folder)
    trend, note = report_view.read_trend(folder, doc["trend"])
    return report_view.build_view(doc, trend, note, now)


def page_text(view: report_view.View) -> str:
    """The HTML of a view, with a dummy plot (no drawing: fast)."""
    return report_page.render_html(view, b"\x89PNG\r\n\x1a\n")


def open_body() -> dict[str, Any]:
    """The HD batch as its record looks during degassing: open, no end, the current phase without an end."""
    body = hd_body()
    body.update(record="open", revision=0, ended=None, duration_s=None, outcome="running", reason=None)
    body["phases"] = body["phases"][:6]
    body["phases"][-1].update(ended=None, duration_s=None)
    body["events"] = [e for e in body["events"] if e["ts"] <= ts(300)]
    body["interruptions"] = []
    body["product"] = {"mass_out_kg": None, "yield_pct": None}
    return body


# ---------------------------------------------------------------------------- the page


def test_html_shows_every_figure_with_its_unit_and_flags_the_lower_bound(hd_files: report.ReportFiles) -> None:
    page = hd_files.html.read_text(encoding="utf-8")
    # energy: metered (a lower bound: the meter missed the first 15 min), the heater model and their ratio
    assert "≥ 182.4 kWh" in page and "incomplete: meter gap 08:16–08:31" in page
    assert '<tr class="incomplete"><td>Electricity, metered</td>' in page  # flagged as a row, not just by a sign
    assert "176.9 kWh" in page and "metered/model ≥ 1.03" in page and "18.0 kW rated" in page
    assert "1421 NL" in page and "1830 NL" in page and "1013 NL" in page  # H2 fed, Ar, H2 absorbed
    assert "≥ 7.30 kWh/kg" in page and "56.8 NL/kg" in page and "73.2 NL/kg" in page  # per kg of feed
    assert "≥ 75.1 kg CO2e" in page and "≥ 3.01 kg CO2e/kg" in page and "grid factor 0.412 kg CO2e/kWh" in page
    cooling = re.search(r"<td>Cooling water</td><td class=\"missing\">([^<]*)</td>", page)
    assert cooling and cooling.group(1) == "not metered"  # null: never 0
    assert "0 L" not in page
    # header, phases, events, times in UTC
    assert "HD-20261129-01" in page and "DONE" in page and "hd-01" in page and "pilot-line" in page
    assert "HD of sintered NdFeB scrap, 25 kg, version 1 (sha256 3f9a0c0c0c0c)" in page
    assert "25.0 kg in" in page and "24.6 kg out, yield 98.5 %" in page
    assert "2026-11-29 08:16:53 UTC" in page and "12 h 03 min" in page and "all times UTC" in page
    assert "power loss 14:09–14:51 (42 min), recovered" in page
    assert "Completed normally." in page
    for n, (phase, _, _) in enumerate(HD_PHASES, 1):
        assert f"<tr><td>{n}</td><td>{phase}</td>" in page
    assert "2 h 40 min" in page  # absorption
    assert '<tr class="trip"><td class="trip">16:06:53</td><td class="trip">TRIP</td>' in page
    assert "revision 2 (amended)" in page


def test_html_escapes_every_text_from_the_record(hd_files: report.ReportFiles) -> None:
    page = hd_files.html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "J. Ngata &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<style>") == 1 and "http" not in page.split("<body>")[1]  # self-contained: nothing fetched


def test_the_plot_in_the_html_is_a_real_picture(hd_files: report.ReportFiles) -> None:
    import numpy as np
    from matplotlib.image import imread

    data = embedded_png(hd_files.html.read_text(encoding="utf-8"))
    width, height = png_size(data)
    assert abs(width - report_page.PLOT_IN[0] * report_plot.PAGE_DPI) <= 1
    assert abs(height - report_page.PLOT_IN[1] * report_plot.PAGE_DPI) <= 1
    pixels = imread(io.BytesIO(data))
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200  # lines, bands, hatching, text: not a blank or one-colour image
    red = (pixels[..., 0] > 0.75) & (pixels[..., 1] < 0.25) & (pixels[..., 2] < 0.25)
    assert red.sum() > 500  # the chamber temperature trace (and the trip line)


def test_png_and_pdf_are_one_a4_page(hd_files: report.ReportFiles) -> None:
    width, height = png_size(hd_files.png.read_bytes())
    assert abs(width - 8.27 * report_plot.PAGE_DPI) <= 1 and abs(height - 11.69 * report_plot.PAGE_DPI) <= 1
    pdf = hd_files.pdf.read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1
    assert re.search(rb"/MediaBox\s*\[\s*0 0 595\.44 841\.68\s*\]", pdf)  # A4 in points (8.27 x 11.69 in)
    assert hd_files.html.parent == hd_files.png.parent == hd_files.pdf.parent


def test_the_trend_is_read_across_a_power_loss_and_a_restarted_file(hd_dir: pathlib.Path) -> None:
    doc = record.read_record(hd_dir)
    trend, note = report_view.read_trend(hd_dir, doc["trend"])
    assert trend is not None and note == ""
    assert (hd_dir / "trend.csv").read_text().count("unix_s,") == 2  # the header repeated after the gap
    assert len(trend.t) == len(hd_trend_rows()[1])
    gaps = [b - a for a, b in zip(trend.t[:-1], trend.t[1:], strict=True) if b - a > 60]
    assert gaps == [pytest.approx((POWER_LOSS[1] - POWER_LOSS[0]) * 60 + 10, abs=1)]
    safety = trend.columns["chamber_temp_safety"]
    assert math.isnan(safety[255 * 6]) and not math.isnan(safety[0])  # an empty cell: a broken sensor


def test_sintering_page_uses_mbar_on_a_log_axis(tmp_path: pathlib.Path) -> None:
    folder = write_batch(tmp_path, sintering_body(), sintering_trend_rows(), sintering_units())
    view = view_of(folder)
    assert view.plot.trend is not None
    pressure = next(p for p in report_plot._panels(view.plot.trend, "sintering") if p.title == "pressure")
    assert pressure.log and pressure.unit == "mbar abs"
    page = page_text(view)
    assert "612.8 kWh" in page and "<td>Hydrogen fed</td><td class=\"missing\">not metered</td>" in page
    assert "Hydrogen absorbed" not in page  # an HD figure
    assert "9460 L" in page and "12500 NL" in page and "mass out not weighed (yet)" in page
    assert "version 2b" in page and "All metered figures" not in page
    fig = report_page.draw_page(view)
    assert png_size(report._save(fig, "png"))[0] == round(8.27 * report_plot.PAGE_DPI)


def test_the_page_shows_the_quality_figures_and_says_when_there_was_no_trip(hd_dir: pathlib.Path,
                                                                             tmp_path: pathlib.Path) -> None:
    view = view_of(hd_dir)
    Cell = report_view.Cell
    assert view.quality == [
        ("Leak test", Cell("pressure rise 0.012 mbar/min, pump isolated")), ("O2 after purge", Cell("0.0083 %")),
        ("Soak in band", Cell("4 h 36 min within 5 °C of the soak setpoint")), ("Final vacuum", Cell("0.087 mbar")),
        ("H2 top-ups", Cell("19")), ("Nuisance alarms", Cell("0 (chattering or fleeting, ISA-18.2)")),
        ("Deviation alarm rests", Cell("0 (program faster than the plant)")),
        ("Interlock trips", Cell("1 interlock trip: cooling_water_low", "trip"))]
    # the drawn page (PNG, PDF) carries the same rows: every label and text is a text of the figure
    drawn = [t.get_text() for t in report_page.draw_page(view).texts]
    assert all(label in drawn and cell.text in drawn for label, cell in view.quality)
    assert "<dt>H2 top-ups</dt><dd>19</dd>" in page_text(view)
    assert '<dt>Interlock trips</dt><dd class="trip">1 interlock trip: cooling_water_low</dd>' in page_text(view)

    body = hd_body()           # no trip, absorption not reached (a figure the sequence did not measure)
    body["events"] = [e for e in body["events"] if e["kind"] != "trip"]
    body["quality"].update(interlock_trips=0, h2_top_ups=None)
    rows = dict(view_of(write_batch(tmp_path / "a", body, None)).quality)
    assert rows["Interlock trips"] == Cell("no interlock trips")
    assert rows["H2 top-ups"] == Cell("not measured (the batch did not get there)", "missing")
    del body["quality"]        # a record from before the quality figures: trips counted from its events
    rows = dict(view_of(write_batch(tmp_path / "b", body, None)).quality)
    assert rows["Leak test"].style == "missing" and rows["Interlock trips"] == Cell("no interlock trips")
    sinter = sintering_body()  # no leak test, purge or H2 in sintering: no such rows
    sinter["quality"] = {**quality.empty(), "final_vacuum_mbar": 0.0004, "soak_in_band_s": 14400.0}
    labels = [label for label, _ in view_of(write_batch(tmp_path / "c", sinter, None)).quality]
    assert labels == ["Soak in band", "Final vacuum", "Nuisance alarms", "Deviation alarm rests", "Interlock trips"]


def test_the_plot_keeps_a_flat_series_at_its_value_and_the_cooling_water_above_the_phase_bands(
        tmp_path: pathlib.Path) -> None:
    header, rows = hd_trend_rows()
    power = header.index("heater_power")
    for row in rows:
        row[power] = "0"                       # the heaters' power meter read 0 kW all batch
    fig = report_page.draw_plot_only(view_of(write_batch(tmp_path, hd_body(), (header, rows))))
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}

    def zero_at(ax: Any) -> float:
        lo, hi = ax.get_ylim()
        return float((0.0 - lo) / (hi - lo))

    # 0 kW where 0 % duty is, at the bottom: not mid-panel (where it read as 50 % duty)
    assert zero_at(by_label["power\n[kW]"]) == pytest.approx(zero_at(by_label["heater duty\n[%]"]), abs=0.005)
    assert zero_at(by_label["power\n[kW]"]) < 0.05
    # the cooling water (right axis of the flow panel) is drawn after the phase bands of the left one
    line = next(ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == "cooling_water_flow")
    left = next(ax for ax in fig.axes if any(ln.get_label() == "h2_flow" for ln in ax.get_lines()))
    assert left is not line.axes and any(p.get_facecolor()[:3] == to_rgb("#eef3fa") for p in left.patches)

    def drawn_at(ax: Any) -> tuple[float, int]:
        return ax.get_zorder(), fig.axes.index(ax)  # how matplotlib orders a figure's axes when drawing

    assert drawn_at(line.axes) > drawn_at(left)


def test_an_open_record_is_in_progress_or_interrupted_by_its_last_sign_of_life(tmp_path: pathlib.Path) -> None:
    body = open_body()
    header, rows = hd_trend_rows()
    rows = [r for r in rows if float(r[0]) <= START.timestamp() + 300 * 60]
    folder = write_batch(tmp_path, body, (header, rows))
    last = START + timedelta(minutes=300)

    running = view_of(folder, now=last + timedelta(minutes=2))
    assert (running.badge, running.badge_kind) == ("IN PROGRESS", "running")
    page = page_text(running)
    assert "5 h 00 min so far" in page and "The record is open" in page and "not yet" in page
    assert "<td>6</td><td>degassing</td><td>12:04</td><td class=\"missing\">running</td>" in page

    stale = view_of(folder, now=last + timedelta(hours=3))
    assert (stale.badge, stale.badge_kind) == ("INTERRUPTED", "interrupted")
    page = page_text(stale)
    assert "Interrupted: the record was not closed and has had no update since 2026-11-29 13:16:53 UTC" in page
    assert "not ended" in page and "5 h 00 min until the last update" in page


def test_no_trend_or_an_empty_one_is_said_on_the_page(tmp_path: pathlib.Path) -> None:
    body = open_body()
    folder = write_batch(tmp_path, body, None)
    files = report.render_report(folder, tmp_path / "out", now=START + timedelta(days=2))
    page = files.html.read_text(encoding="utf-8")
    assert "no trend recorded (trend.csv is missing)" in page and "INTERRUPTED" in page
    assert png_size(embedded_png(page))[0] > 0 and png_size(files.png.read_bytes())[1] > 1700

    (folder / "trend.csv").write_text("unix_s,setpoint_c,heater_duty,chamber_temp\n")
    assert report_view.read_trend(folder, {"file": "trend.csv"}) == (None, "no trend recorded (trend.csv has no rows)")
    (folder / "trend.csv").write_text("")
    assert report_view.read_trend(folder, {"file": "trend.csv"})[0] is None


def test_a_long_event_list_stays_on_one_page_and_keeps_its_trips(tmp_path: pathlib.Path) -> None:
    body = hd_body()
    chatter = [{"ts": ts(100 + i), "kind": "alarm", "name": "h2_room_warn", "message": f"room H2 flicker {i}"}
               for i in range(200)]
    body["events"] = sorted(body["events"] + chatter, key=lambda e: e["ts"])
    folder = write_batch(tmp_path, body, None)
    view = view_of(folder)
    limit = report_view.MAX_EVENTS
    assert len(view.events) == limit and view.events_more == len(body["events"]) - limit
    assert any(kind.text == "TRIP" for _, kind, _ in view.events)  # the trip at 7.8 h is listed all the same
    page = page_text(view)
    assert f"... and {view.events_more} more (all are in record.json)" in page
    fig = report_page.draw_page(view)
    report._save(fig, "png")
    lowest = min(t.get_position()[1] for t in fig.texts if t.get_text())
    assert lowest * report_page.PAGE_IN[1] >= 0.25  # nothing ran off the page: the footer is the lowest text
    assert any(t.get_text().startswith("... and") and "record.json" in t.get_text() for t in fig.texts)


def test_a_record_with_only_the_required_fields_still_renders(tmp_path: pathlib.Path) -> None:
    body = {"record": "end", "revision": 1, "batch_id": "B-1", "process": "hd", "outcome": "aborted",
            "reason": "operator abort: <b>lid</b> & \"seal\"", "started": ts(0), "ended": ts(5)}
    folder = write_batch(tmp_path, body, None)
    files = report.render_report(folder)
    assert files.html == folder / "report.html" and files.png.exists() and files.pdf.exists()
    page = files.html.read_text(encoding="utf-8")
    assert "ABORTED" in page and "Aborted: operator abort: &lt;b&gt;lid&lt;/b&gt; &amp; &quot;seal&quot;." in page
    assert "feed not weighed" in page and "no phases recorded" in page and "no events recorded" in page
    assert page.count("not metered") >= 3


def test_why_a_meter_figure_is_a_lower_bound(tmp_path: pathlib.Path) -> None:
    body = hd_body()
    meters = body["accounting"]["meters"]
    # the Ar meter missed the end; the H2 meter had a gap in the middle only (its totaliser counted across it)
    meters["ar"] = meter(1830.25, "NL", complete=False, last_min=711.0, gaps=[(711.0, 723.0)],
                         notes=["no reading at or after the end (last 720 s before it): what was used after it is "
                                "missing"])
    meters["h2"] = meter(1420.8, "NL", gaps=[(100.0, 104.0)])
    meters["cooling_water"] = {**meter(None, "L"), "source": "instrument.measurement",
                               "notes": ["instrument.measurement: no reading during the batch: water unknown"]}
    body["accounting"]["meters"]["energy"]["complete"] = None  # not said: not trusted either
    body["events_not_listed"] = 25
    page = page_text(view_of(write_batch(tmp_path, body, None)))
    assert "≥ 1830 NL" in page and "incomplete: meter gap 20:07–20:19" in page
    assert "<td>Hydrogen fed</td><td>1421 NL</td>" in page and "1 gap bridged by its totaliser" in page
    assert "not metered" in page and "no reading during the batch: water unknown" in page
    assert "≥ 182.4 kWh" in page and "incomplete: meter gap 08:16–08:31" in page
    assert "... and 25 more (the record only counted them)" in page


def test_non_ascii_text_is_checked_and_shown(tmp_path: pathlib.Path) -> None:
    body = hd_body()
    body["operator"] = "Jürgen Ødegård"
    folder = write_batch(tmp_path, body, None)
    assert record.read_record(folder)["body"]["operator"] == "Jürgen Ødegård"
    assert "Jürgen Ødegård" in page_text(view_of(folder))


# ---------------------------------------------------------------------------- the command line


def test_cli_writes_the_three_files_and_prints_their_paths(tmp_path: pathlib.Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    body = hd_body()
    body["events"] = body["events"][:3]
    write_batch(tmp_path, body, None)
    out = tmp_path / "out"
    assert cli.main(["report", "HD-20261129-01", "--state-dir", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "report.html"), str(out / "report.png"), str(out / "report.pdf")]


def test_cli_damaged_record_exits_2_with_one_line(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_batch(tmp_path, hd_body(), None)
    doc = json.loads((folder / "record.json").read_text())
    doc["body"]["accounting"]["meters"]["energy"]["value"] = 18.2  # edited by hand: the digest no longer fits
    (folder / "record.json").write_text(json.dumps(doc))
    assert cli.main(["report", "HD-20261129-01", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "record damaged" in err and str(folder / "record.json") in err and err.count("\n") == 1
    assert not (folder / "report.html").exists()

    (folder / "record.json").write_text('{"format": "reedge-batch-record", "version": 1, "bo')
    assert cli.main(["report", "HD-20261129-01", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and str(folder / "record.json") in err


def test_cli_missing_batch_exits_2_naming_the_path(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "HD-nope", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "batches" / "HD-nope") in err and "no such batch folder" in err and "Traceback" not in err
    (tmp_path / "batches" / "HD-empty").mkdir(parents=True)
    assert cli.main(["report", "HD-empty", "--state-dir", str(tmp_path)]) == 2
    assert str(tmp_path / "batches" / "HD-empty" / "record.json") in capsys.readouterr().err
    assert cli.main(["report", "../etc", "--state-dir", str(tmp_path)]) == 2
    assert "not a batch id" in capsys.readouterr().err


def test_cli_report_defaults_to_the_state_dir_of_reedge_run() -> None:
    parser = cli.build_parser()
    run_default = parser.parse_args(["run", "--station", "x"]).state_dir
    assert run_default == cli.DEFAULT_STATE_DIR
    assert parser.parse_args(["report", "B"]).state_dir is None  # None: cmd_report uses DEFAULT_STATE_DIR


# ---------------------------------------------------------------------------- the LCA export


@pytest.fixture
def three_batches(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Two state dirs: HD (finished) and an open HD batch in one, sintering (finished) in the other."""
    a, b = tmp_path / "hd-01", tmp_path / "sf-01"
    write_batch(a, hd_body(), None)
    running = open_body()
    running["batch_id"] = "HD-20261130-01"
    running["started"] = "2026-11-30T07:00:00.000Z"
    write_batch(a, running, None)
    write_batch(b, sintering_body(), None, sintering_units())
    return a, b


def rows_of(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and list(rows[0]) == list(export.COLUMNS)
    return rows


def amount(rows: list[dict[str, str]], batch: str, flow: str) -> dict[str, str]:
    (row,) = [r for r in rows if r["batch_id"] == batch and r["flow"] == flow]
    return row


def test_csv_has_one_row_per_batch_and_exchange_and_every_number_round_trips(
        three_batches: tuple[pathlib.Path, pathlib.Path]) -> None:
    buf = io.StringIO()
    result = export.export_csv(three_batches, buf)
    rows = rows_of(buf.getvalue())
    assert (result.batches, result.rows, result.skipped, result.open_left_out) == (2, len(rows), [], 1)
    assert {r["batch_id"] for r in rows} == {"HD-20261129-01", "SF-20261129-02"}
    hd, sf = hd_body(), sintering_body()
    acc = hd["accounting"]
    e = amount(rows, "HD-20261129-01", "electricity")
    assert float(e["amount"]) == acc["meters"]["energy"]["value"] and e["unit"] == "kWh"
    assert (e["direction"], e["complete"]) == ("input", "false")  # the lower bound, and why
    assert e["basis"] == "metered; incomplete: first reading 900 s after the start: what was used before it is missing"
    h2 = amount(rows, "HD-20261129-01", "hydrogen")
    assert float(h2["amount"]) == 1420.8 and (h2["unit"], h2["complete"]) == ("NL", "true")
    assert float(amount(rows, "HD-20261129-01", "argon")["amount"]) == 1830.25
    water = amount(rows, "HD-20261129-01", "cooling water")
    assert (water["amount"], water["complete"], water["basis"]) == ("", "false", "not metered")  # null: never 0
    feed = amount(rows, "HD-20261129-01", "NdFeB scrap")
    assert (feed["direction"], float(feed["amount"]), feed["unit"], feed["basis"]) == ("input", 25.0, "kg", "weighed")
    product = amount(rows, "HD-20261129-01", "NdFeB HD powder")
    assert (product["direction"], float(product["amount"])) == ("output", 24.62)
    co2 = amount(rows, "HD-20261129-01", export.IMPACT)
    assert float(co2["amount"]) == acc["kg_co2e"] and co2["complete"] == "false"
    assert co2["basis"] == "grid factor 0.412 kg/kWh x metered electricity" and co2["direction"] == "impact"
    assert amount(rows, "SF-20261129-02", "hydrogen")["amount"] == ""
    assert amount(rows, "SF-20261129-02", "sintered NdFeB")["amount"] == ""  # not weighed yet
    assert float(amount(rows, "SF-20261129-02", "electricity")["amount"]) == 612.75
    assert amount(rows, "SF-20261129-02", "electricity")["complete"] == "true"
    r = amount(rows, "SF-20261129-02", export.IMPACT)
    assert float(r["amount"]) == sf["accounting"]["kg_co2e"] and r["complete"] == "true"
    first = rows[0]
    assert first["recipe"] == hd["recipe"]["name"] and first["recipe_sha256"] == hd["recipe"]["sha256"]
    assert (first["started"], first["ended"], first["outcome"]) == (hd["started"], hd["ended"], "done")
    for row in rows:
        assert row["complete"] in ("true", "false") and row["direction"] in ("input", "output", "impact")
        if row["amount"]:
            assert re.fullmatch(r"-?\d+(\.\d+)?", row["amount"]), row  # plain: no exponent, no separators


def test_csv_gases_in_kg_the_hydrogen_vented_and_the_co2e_apart_from_the_exchanges(
        three_batches: tuple[pathlib.Path, pathlib.Path]) -> None:
    buf = io.StringIO()
    export.export_csv(three_batches, buf)
    rows = rows_of(buf.getvalue())
    hd = [r for r in rows if r["batch_id"] == "HD-20261129-01"]
    kg = {r["flow"]: r["amount_kg"] for r in hd}
    # normal litres at 0 degC, 1.01325 bar: H2 0.08988 g/L, Ar 1.784 g/L
    assert float(kg["hydrogen"]) == pytest.approx(1420.8 * 0.08988e-3, rel=1e-9)
    assert float(kg["argon"]) == pytest.approx(1830.25 * 1.784e-3, rel=1e-9)
    assert float(kg["NdFeB scrap"]) == 25.0 and kg["electricity"] == kg["cooling water"] == ""
    vented = amount(rows, "HD-20261129-01", "hydrogen, vented")       # fed 1420.8 NL, absorbed 1012.6 NL
    assert (vented["direction"], float(vented["amount"]), vented["unit"]) == ("output", 408.2, "NL")
    assert float(vented["amount_kg"]) == pytest.approx(408.2 * 0.08988e-3, rel=1e-9)
    assert (vented["complete"], vented["basis"]) == ("false", "H2 fed minus H2 absorbed (estimate)")
    # the CO2e is no exchange beside the electricity it is computed from: an impact line
    exchanges = [r for r in rows if r["direction"] in ("input", "output")]
    assert not [r for r in exchanges if "co2" in r["flow"].lower() or "co2" in r["unit"].lower()]
    (impact,) = [r for r in hd if r["direction"] == "impact"]
    assert (impact["flow"], impact["unit"], impact["amount_kg"]) == (export.IMPACT, "kg CO2e", "")
    # an empty amount always says why; sintering has no H2 to vent
    for row in rows:
        if row["amount"] == "":
            assert row["basis"] and not row["basis"].startswith("metered"), row
    assert amount(rows, "SF-20261129-02", "hydrogen")["basis"] == "not metered"
    assert not [r for r in rows if r["batch_id"] == "SF-20261129-02" and r["flow"] == "hydrogen, vented"]
    body = hd_body()
    body["accounting"]["h2_absorbed_nl"] = None
    assert export.exchanges(body)[-2][1:] == ("hydrogen, vented", "", "NL", False,
                                              "not computed: H2 absorbed not estimated", "")


def test_csv_heater_model_stands_in_for_a_missing_energy_meter(tmp_path: pathlib.Path) -> None:
    body = hd_body()
    body["accounting"]["meters"]["energy"] = None
    body["accounting"].update(kg_co2e=None, per_kg={**body["accounting"]["per_kg"], "kwh": None, "kg_co2e": None})
    write_batch(tmp_path, body, None)
    buf = io.StringIO()
    export.export_csv([tmp_path / "batches" / "HD-20261129-01"], buf)  # a batch folder is accepted too
    rows = rows_of(buf.getvalue())
    e = amount(rows, "HD-20261129-01", "electricity")
    # an estimate, so never "complete": an LCA must not take it for a measurement
    assert (float(e["amount"]), e["basis"], e["complete"]) == (176.9, "heater model (estimate)", "false")
    co2 = amount(rows, "HD-20261129-01", export.IMPACT)  # the record has none without metered energy: none invented
    assert (co2["amount"], co2["complete"], co2["basis"]) == ("", "false", "not computed: no electricity figure")


def test_csv_a_configured_meter_that_never_answered_is_not_replaced_by_the_model(tmp_path: pathlib.Path) -> None:
    body = hd_body()
    body["accounting"]["meters"]["energy"].update(value=None, complete=False, readings=0)
    write_batch(tmp_path, body, None)
    buf = io.StringIO()
    export.export_csv([tmp_path], buf)
    e = amount(rows_of(buf.getvalue()), "HD-20261129-01", "electricity")
    assert (e["amount"], e["basis"], e["complete"]) == ("", "meter never answered", "false")


def test_csv_open_records_only_when_asked(three_batches: tuple[pathlib.Path, pathlib.Path]) -> None:
    buf = io.StringIO()
    result = export.export_csv(three_batches, buf, include_open=True)
    rows = rows_of(buf.getvalue())
    assert result.batches == 3 and result.open_left_out == 0
    running = [r for r in rows if r["batch_id"] == "HD-20261130-01"]
    assert running and all(r["ended"] == "" and r["outcome"] == "running" for r in running)
    assert amount(rows, "HD-20261130-01", "NdFeB HD powder")["amount"] == ""
    metered = [r for r in running if r["flow"] in ("electricity", "hydrogen", "argon")]
    assert metered and all(r["complete"] == "false" for r in metered)   # figures so far: never complete
    assert [r["batch_id"] for r in rows][-1] == "HD-20261130-01"  # in order of start


@pytest.mark.parametrize("value", [0.1, 1e-7, 2.5e-12, 1e16, 123456789.123, -0.0, 0.0, 7.296, 1 / 3, 10512.3])
def test_plain_numbers_read_back_the_same(value: float) -> None:
    text = export.plain_number(value)
    assert float(text) == value and "e" not in text.lower() and "," not in text
    assert export.plain_number(42) == "42"
    assert export.plain_number(None) == export.plain_number(math.nan) == export.plain_number(True) == ""


def test_cli_csv_to_a_file_and_skipped_records(three_batches: tuple[pathlib.Path, pathlib.Path],
                                               tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = three_batches
    out = tmp_path / "lca.csv"
    assert cli.main(["report", "--csv", "--state-dir", str(a), "--state-dir", str(b), "-o", str(out)]) == 0
    rows = rows_of(out.read_text(encoding="utf-8"))
    assert {r["batch_id"] for r in rows} == {"HD-20261129-01", "SF-20261129-02"}
    assert "1 open batch record(s) left out" in capsys.readouterr().err

    record = a / "batches" / "HD-20261129-01" / "record.json"
    doc = json.loads(record.read_text())
    doc["body"]["feed"]["mass_in_kg"] = 2.5
    record.write_text(json.dumps(doc))
    assert cli.main(["report", "--csv", "--state-dir", str(a), "--state-dir", str(b)]) == 1
    captured = capsys.readouterr()
    assert {r["batch_id"] for r in rows_of(captured.out)} == {"SF-20261129-02"}
    assert f"skipped {record.parent}" in captured.err and "record damaged" in captured.err
