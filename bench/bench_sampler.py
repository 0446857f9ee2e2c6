"""Sampler timing and trip latency: the C core against the same loop in pure Python.

(b) 1 kHz, 32 channels (half filtered with median-of-5 + EMA, half unfiltered safety
    inputs), 32 HIGH rules, under CPU load from other processes: overruns and wake-up
    jitter p50/p99/max. A second C core with the normal scheduler (rt_priority 0) runs in the
    same window on its own register file, so the missed-tick figure is reported with and
    without SCHED_FIFO (when this process may not have SCHED_FIFO, both say SCHED_OTHER).
(c) Trip latency: from an input changed in the register file to the output at its safe
    level, measured as the output's own change stamp minus the time of the write, over
    many trips at random phases of the tick, on the unfiltered channels (a filter's own
    delay is the same in both loops and would only hide the loop's).
Both loops run in the same run, under the same load, on their own register files, and
each shares its process with the same Python controller work (bench.pyloop.controller_work):
the C sampler does not need the GIL, the Python loop does. That is the real reason the
sampler is in C, and the benchmark measures exactly it.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench.figures import Figure
from bench.load import cpu_load
from bench.pyloop import controller_work
from edge.core import Core, OutputRefused, Stats, hist_percentile
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, RuleSpec
from hil.regfile import RegisterFile

CHANNELS = 32
PERIOD_MS = 1.0
THRESHOLD = 500.0
FILTERED = CHANNELS // 2  # channels 0..15 filtered, 16..31 unfiltered safety inputs
PYLOOP = "pure-Python loop (same work, beside the same controller thread)"


def bench_spec(path: pathlib.Path, n: int = CHANNELS, rt_priority: int = 50) -> CoreSpec:
    return CoreSpec(
        period_ms=PERIOD_MS,
        rt_priority=rt_priority,
        lock_memory=True,
        drivers=(DriverSpec("plant", "sim", {"path": str(path)}),),
        channels=tuple(ChannelSpec(f"temp_{i}", "analog", "plant", i, range_lo=-100, range_hi=2000,
                                   median_n=5 if i < FILTERED else 1, ema_tau_ms=10.0 if i < FILTERED else 0.0)
                       for i in range(n)),
        outputs=tuple(OutputSpec(f"heater_{i}", "plant", i, 0) for i in range(n)),
        rules=tuple(RuleSpec(f"overtemp_{i}", "high", f"temp_{i}", THRESHOLD, (f"heater_{i}",), hysteresis=5.0,
                             latch=False) for i in range(n)),
    )


def start_pyloop(path: pathlib.Path, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.pyloop", str(path), str(seconds), str(CHANNELS),
                             str(PERIOD_MS)], stdout=subprocess.PIPE, text=True,
                            cwd=pathlib.Path(__file__).resolve().parent.parent)


def trip_latencies(regs: RegisterFile, trips: int, core: Core | None) -> list[float]:
    """Latencies in ms; `core` None means the Python loop owns this register file."""
    out: list[float] = []
    rng = random.Random(7)
    for k in range(trips):
        line = FILTERED + k % (CHANNELS - FILTERED)
        regs.regs.ai[line] = 100.0
        deadline = time.monotonic() + 2.0
        while regs.do(line) != 1 and time.monotonic() < deadline:
            if core is not None:
                with contextlib.suppress(OutputRefused):  # refused until the trip has cleared
                    core.request_output(f"heater_{line}", 1)
            time.sleep(0.001)
        if regs.do(line) != 1:
            continue
        time.sleep(rng.uniform(0.0, 0.002))
        t0 = time.monotonic_ns()
        regs.regs.ai[line] = 1000.0
        if regs.wait_for_output(line, 0, 2.0):
            out.append((regs.do_changed_wall_ns(line) - t0) / 1e6)
        else:  # no trip within 2 s counts as 2 s: a missed trip must not vanish from p99/max
            out.append(2000.0)
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def run(quick: bool = False) -> list[Figure]:
    seconds = 3.0 if quick else 30.0
    trips = 60 if quick else 300
    with tempfile.TemporaryDirectory(prefix="reedge-bench-") as tmp:
        c_path, py_path = pathlib.Path(tmp, "c.regs"), pathlib.Path(tmp, "py.regs")
        other_path = pathlib.Path(tmp, "c-other.regs")
        for path in (c_path, py_path, other_path):
            RegisterFile.create(path).close()
        stop = threading.Event()
        worker = threading.Thread(target=controller_work, args=(stop,), daemon=True)
        worker.start()
        with cpu_load() as _, Core(bench_spec(c_path)) as core:
            # (b) steady sampling, the loops side by side under the same load
            py = start_pyloop(py_path, seconds)
            with Core(bench_spec(other_path, rt_priority=0)) as other:
                time.sleep(seconds)
                c_stats = core.stats()
                other_stats = other.stats()
            py_out, _ = py.communicate(timeout=seconds + 60)
            py_stats = json.loads(py_out)
            # (c) trip latency, one loop at a time so each has the machine as in (b)
            c_regs = RegisterFile(c_path)
            c_lat = trip_latencies(c_regs, trips, core)
            c_regs.close()
            py = start_pyloop(py_path, 3600)
            py_regs = RegisterFile(py_path)
            time.sleep(0.5)
            py_lat = trip_latencies(py_regs, trips, None)
            py.kill()
            py.wait()
            py_regs.close()
        stop.set()
    return figures(c_stats, py_stats, c_lat, py_lat, other_stats)


def figures(c_stats: Stats, py_stats: dict[str, Any], c_lat: list[float], py_lat: list[float],
            other_stats: Stats | None = None) -> list[Figure]:
    c_due = max(c_stats.ticks + c_stats.overruns, 1)  # ticks that were due: run + missed
    py_due = max(int(py_stats["ticks"]) + int(py_stats["overruns"]), 1)
    py_hist, py_bucket, py_max = list(py_stats["hist"]), int(py_stats["bucket_ns"]), int(py_stats["jitter_max_ns"])
    sched = "SCHED_FIFO" if c_stats.realtime else "SCHED_OTHER (no RT permission)"
    figs = [Figure(f"sampler missed ticks, 1 kHz, {CHANNELS} ch/{CHANNELS} rules, loaded, C {sched}",
                   100 * c_stats.overruns / c_due, "% of due ticks", PYLOOP,
                   100 * int(py_stats["overruns"]) / py_due, higher_is_better=False, resolution=100 / c_due)]
    if other_stats is not None:
        other_due = max(other_stats.ticks + other_stats.overruns, 1)
        figs.append(Figure(f"sampler missed ticks, C {sched} vs the same C core on SCHED_OTHER, same window",
                           100 * c_stats.overruns / c_due, "% of due ticks", "C core, rt_priority 0 (SCHED_OTHER)",
                           100 * other_stats.overruns / other_due, higher_is_better=False,
                           resolution=100 / c_due))
    for p in (50, 99):
        figs.append(Figure(f"sampler wake-up jitter p{p}", c_stats.jitter_percentile_ns(p) / 1e3, "us", PYLOOP,
                           hist_percentile(py_hist, py_bucket, p, py_max) / 1e3, higher_is_better=False,
                           resolution=10.0))
    figs.append(Figure("sampler wake-up jitter max", c_stats.jitter_max_ns / 1e3, "us", PYLOOP, py_max / 1e3,
                       higher_is_better=False, resolution=1.0))
    for p in (50, 99):
        figs.append(Figure(f"trip latency p{p} (register file change -> safe output)", pct(c_lat, p), "ms", PYLOOP,
                           pct(py_lat, p), higher_is_better=False, resolution=0.001,
                           value_limit=2.0 if p == 99 else None))
    figs.append(Figure("trip latency max", max(c_lat, default=float("nan")), "ms", PYLOOP,
                       max(py_lat, default=float("nan")), higher_is_better=False, resolution=0.001))
    figs.append(Figure("trips measured", float(len(c_lat)), "trips", PYLOOP, float(len(py_lat))))
    return figs
