"""Thermocouple inverse (mV -> degC) through edge.thermo's batch path, against a pure-Python library.

Both sides solve the NIST ITS-90 type K reference function for the same EMFs, spread
evenly over type K's range, in the same run; the baseline is timed on an evenly spaced
subset because it is ~100x slower. The two are timed alternately and each keeps its
best round, so a burst of load elsewhere on the (shared, noisy) machine hits both alike.

The main figure feeds the batch path an ``array('d')``, which it hands to C without a
copy (how a logger holding samples would call it). A second, informational figure feeds
a plain list, which costs one more copy into C (~12 ns per value).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence

from bench.figures import Figure

NAME = "thermocouple inverse (batch, type K)"
NAME_LIST = "thermocouple inverse (batch, type K, list input)"
LIMIT = 100.0


def run(quick: bool = False) -> list[Figure]:
    """Conversions per second of ``emf_to_celsius("K", values)`` vs thermocouple-its90's ``temperature()``."""
    import thermocouple_its90

    from edge.thermo import emf_to_celsius, tc_range

    n = 20_000 if quick else 100_000
    r = tc_range("K")
    lo, hi = max(r.emf_min_mv, -6.458), min(r.emf_max_mv, 54.886)  # inside both libraries' spans
    emf_list = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
    emf_array = array("d", emf_list)
    subset = emf_list[:: 50 if quick else 40]
    ref = thermocouple_its90.TypeK

    def timed(fn: Callable[[Sequence[float]], list[float]], values: Sequence[float]) -> float:
        t0 = time.perf_counter()
        fn(values)
        return time.perf_counter() - t0

    def baseline(values: Sequence[float]) -> list[float]:
        return [ref.temperature(e) for e in values]

    def ours(values: Sequence[float]) -> list[float]:
        return emf_to_celsius("K", values)

    ours(emf_list[:1000])  # warm up: load the core, fill its range cache
    baseline(subset[:100])
    best = {"array": float("inf"), "list": float("inf"), "base": float("inf")}
    for _ in range(4 if quick else 9):
        best["array"] = min(best["array"], timed(ours, emf_array))
        best["base"] = min(best["base"], timed(baseline, subset))
        best["list"] = min(best["list"], timed(ours, emf_list))

    base_name = f"thermocouple-its90 {thermocouple_its90.__version__} temperature(), pure Python"
    base_rate = len(subset) / best["base"]
    return [
        Figure(name=NAME, value=n / best["array"], unit="conversions/s", baseline_name=base_name,
               baseline_value=base_rate, higher_is_better=True, limit=LIMIT),
        Figure(name=NAME_LIST, value=n / best["list"], unit="conversions/s", baseline_name=base_name,
               baseline_value=base_rate, higher_is_better=True, limit=None),
    ]
