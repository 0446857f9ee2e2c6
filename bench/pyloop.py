"""The baseline: the sampler's loop written in pure Python, on the same register file.

Same work per tick as the C core's benchmark station: read N analog inputs, median-of-5
and EMA on the first half, N HIGH rules with hysteresis, gate N outputs, write those that
changed with their wall time. It asks for the same SCHED_FIFO priority as the C sampler
(when permitted), so the comparison is the language, not the scheduler. Run as its own
process: ``python -m bench.pyloop REGS SECONDS CHANNELS PERIOD_MS`` prints one JSON
line of stats. As in the real controller, the loop shares its interpreter with other
Python work (telemetry encoding, process logic): ``controller_work`` runs beside it in a
thread, the same work that runs beside the C sampler in the benchmark's own process.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time

from hil.regfile import RegisterFile

BUCKET_NS = 10_000


def controller_work(stop: threading.Event) -> None:
    """Stand-in for the rest of the controller: encode telemetry-sized JSON until told to stop."""
    payload = {"station": "hd-01", "values": {f"temp_{i}": {"last": 20.0 + i, "min": 19.0, "max": 21.0, "n": 1000}
                                              for i in range(32)}}
    while not stop.is_set():
        json.dumps(payload)
BUCKETS = 1002
THRESHOLD = 500.0
HYSTERESIS = 5.0


def run(path: str, seconds: float, channels: int, period_ms: float) -> dict[str, object]:
    realtime = True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    except (OSError, AttributeError):
        realtime = False
    rf = RegisterFile(path)
    filtered = channels // 2
    regs = rf.regs
    period = int(period_ms * 1e6)
    med = [[0.0] * 5 for _ in range(channels)]
    ema = [math.nan] * channels
    alpha = 1.0 - math.exp(-period_ms / 10.0)
    tripped = [False] * channels
    requested = [True] * channels
    hist = [0] * BUCKETS
    overruns = ticks = 0
    jitter_max = 0
    now = time.monotonic_ns()
    next_t = now
    end = now + int(seconds * 1e9)
    while next_t < end:
        next_t += period
        delay = next_t - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        woke = time.monotonic_ns()
        late = max(0, woke - next_t)
        hist[min(late // BUCKET_NS, BUCKETS - 1)] += 1
        jitter_max = max(jitter_max, late)
        for i in range(channels):
            if i < filtered:
                m = med[i]
                m[ticks % 5] = regs.ai[i]
                v = sorted(m)[2]
                e = ema[i]
                e = v if e != e else e + alpha * (v - e)
                ema[i] = e
            else:
                e = regs.ai[i]
            if tripped[i]:
                tripped[i] = e > THRESHOLD - HYSTERESIS
            else:
                tripped[i] = e > THRESHOLD
            level = 1 if requested[i] and not tripped[i] else 0
            if regs.do_level[i] != level:
                regs.do_changed_wall_ns[i] = time.monotonic_ns()
                regs.do_level[i] = level
        ticks += 1
        done = time.monotonic_ns()
        if done - next_t >= period:
            missed = (done - next_t) // period
            overruns += missed
            next_t += missed * period
    rf.close()
    return {"ticks": ticks, "overruns": overruns, "jitter_max_ns": jitter_max, "hist": hist,
            "bucket_ns": BUCKET_NS, "realtime": realtime}


if __name__ == "__main__":
    stop = threading.Event()
    worker = threading.Thread(target=controller_work, args=(stop,), daemon=True)
    worker.start()
    result = run(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    stop.set()
    print(json.dumps(result))
