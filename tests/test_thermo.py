"""edge.thermo against NIST's printed ITS-90 tables and the thermocouple-its90 package.

The printed tables are rounded to 0.001 mV, so they bound our forward function to
half a digit; the package evaluates the same NIST reference functions in pure Python,
so against it the forward function must agree to rounding noise and the inverse
(which solves the exact reference function) must land within 0.002 degC.
"""

from __future__ import annotations

import csv
import math
import pathlib
from array import array
from typing import Any

import pytest
import thermocouple_its90 as its90
from hypothesis import given, settings
from hypothesis import strategies as st

import edge.thermo as thermo
from edge.core import native
from edge.thermo import (
    TC_TYPES,
    ThermocoupleRangeError,
    celsius_to_emf,
    emf_to_celsius,
    tc_range,
)

TABLE_CSV = pathlib.Path(__file__).parent / "data" / "nist_its90_table_points.csv"
B_INVERSE_T_MIN = 42.13209965734812  # type B's EMF is back at 0 mV here, after its minimum near 21 degC
T_TOL = 0.002  # degC, the contract for every inverse


def read_table() -> list[tuple[str, float, float]]:
    with TABLE_CSV.open(newline="") as f:
        rows = csv.DictReader(line for line in f if not line.lstrip().startswith("#"))
        return [(r["type"], float(r["t_c"]), float(r["emf_mv"])) for r in rows]


TABLE = read_table()


def inverse_t_min(tc: str) -> float:
    return B_INVERSE_T_MIN if tc == "B" else tc_range(tc).t_min_c


def seebeck(tc: str, t: float) -> float:
    """dE/dt in mV/degC by a central difference kept inside the range."""
    r = tc_range(tc)
    a, b = max(r.t_min_c, t - 1e-3), min(r.t_max_c, t + 1e-3)
    return (celsius_to_emf(tc, b) - celsius_to_emf(tc, a)) / (b - a)


def grid(lo: float, hi: float, step: float) -> list[float]:
    n = math.floor((hi - lo) / step + 1e-9)
    pts = [lo + i * step for i in range(n + 1)]
    if pts[-1] < hi:
        pts.append(hi)
    return pts


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


# ---- (a) the published tables ----

def test_table_file_covers_every_type() -> None:
    for tc in TC_TYPES:
        pts = [t for (ty, t, _) in TABLE if ty == tc]
        r = tc_range(tc)
        assert len(pts) >= 15, tc
        assert min(pts) == r.t_min_c and max(pts) == math.floor(r.t_max_c), tc


@pytest.mark.parametrize(("tc", "t_c", "emf_mv"), TABLE, ids=[f"{a}{b:g}" for a, b, _ in TABLE])
def test_table_point(tc: str, t_c: float, emf_mv: float) -> None:
    assert abs(celsius_to_emf(tc, t_c) - emf_mv) <= 0.0005 + 1e-6
    if t_c < inverse_t_min(tc):
        return  # type B below its unambiguous inverse range
    r = tc_range(tc)
    # A rounded end-of-range table EMF can sit a hair outside the exact range: clamp it
    # (a shift within the table's own rounding).
    e = min(max(emf_mv, r.emf_min_mv), r.emf_max_mv)
    assert abs(e - emf_mv) <= 0.0005 + 1e-9
    tol = 0.0005 / seebeck(tc, t_c) + T_TOL
    assert abs(emf_to_celsius(tc, e) - t_c) <= tol


# ---- (b) against the thermocouple-its90 package's exact forward function ----

@pytest.mark.parametrize("tc", list(TC_TYPES))
def test_against_its90_package(tc: str) -> None:
    ref = its90.get(tc)
    r = tc_range(tc)
    ts = grid(r.t_min_c, r.t_max_c, 0.5)
    ours = celsius_to_emf(tc, ts)
    theirs = [ref.emf(t) for t in ts]
    worst_mv = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    assert worst_mv <= 1e-9, f"type {tc}: forward differs by {worst_mv:g} mV"

    lo = inverse_t_min(tc)
    pairs = [(t, e) for t, e in zip(ts, theirs, strict=True) if t >= lo]
    back = emf_to_celsius(tc, [e for _, e in pairs])
    worst_c = max(abs(b - t) for (t, _), b in zip(pairs, back, strict=True))
    assert worst_c <= T_TOL, f"type {tc}: inverse off by {worst_c:g} degC"
    assert worst_c <= 1e-6, f"type {tc}: inverse off by {worst_c:g} degC (aim 1e-6)"


def test_package_agrees_on_cold_junction_compensation() -> None:
    ref = its90.get("K")
    for emf, cj in [(4.096, 25.0), (-1.0, 20.0), (30.0, 35.5)]:
        assert abs(emf_to_celsius("K", emf, cj) - ref.temperature(emf, reference=cj)) <= 0.1


# ---- (c) round trips ----

def temps(tc: str) -> st.SearchStrategy[float]:
    return st.floats(inverse_t_min(tc), tc_range(tc).t_max_c, allow_nan=False)


@pytest.mark.parametrize("tc", list(TC_TYPES))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_round_trip_temperature(tc: str, data: st.DataObject) -> None:
    t = data.draw(temps(tc))
    assert abs(emf_to_celsius(tc, celsius_to_emf(tc, t)) - t) <= 1e-6


@pytest.mark.parametrize("tc", list(TC_TYPES))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_round_trip_emf(tc: str, data: st.DataObject) -> None:
    r = tc_range(tc)
    e = data.draw(st.floats(r.emf_min_mv, r.emf_max_mv, allow_nan=False))
    t = emf_to_celsius(tc, e)
    assert inverse_t_min(tc) - 1e-9 <= t <= r.t_max_c
    assert abs(celsius_to_emf(tc, t) - e) / seebeck(tc, t) <= T_TOL


@pytest.mark.parametrize("tc", list(TC_TYPES))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_round_trip_compensated(tc: str, data: st.DataObject) -> None:
    r = tc_range(tc)
    hot = data.draw(temps(tc))
    cj = data.draw(st.floats(max(r.t_min_c, -40.0), min(r.t_max_c, 80.0)))
    measured = celsius_to_emf(tc, hot) - celsius_to_emf(tc, cj)
    assert abs(emf_to_celsius(tc, measured, cj) - hot) <= 1e-6


# ---- (d) batch equals scalar ----

@pytest.mark.parametrize("tc", list(TC_TYPES))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_batch_equals_scalar(tc: str, data: st.DataObject) -> None:
    r = tc_range(tc)
    wide = st.floats(r.t_min_c - 50, r.t_max_c + 50) | st.sampled_from([math.nan, math.inf, -math.inf])
    ts = data.draw(st.lists(wide, max_size=40))
    got = celsius_to_emf(tc, ts, out_of_range="nan")
    want = [celsius_to_emf(tc, t, out_of_range="nan") for t in ts]
    assert all(same(a, b) for a, b in zip(got, want, strict=True)) and len(got) == len(ts)

    es = data.draw(st.lists(st.floats(r.emf_min_mv - 1, r.emf_max_mv + 1), max_size=40))
    cj = data.draw(st.floats(max(r.t_min_c, -40.0), min(r.t_max_c, 80.0)))
    got = emf_to_celsius(tc, es, cj, out_of_range="nan")
    want = [emf_to_celsius(tc, e, cj, out_of_range="nan") for e in es]
    assert all(same(a, b) for a, b in zip(got, want, strict=True)) and len(got) == len(es)


def test_sequence_kinds() -> None:
    vals = [0.0, 100.0, 1000.0]
    want = celsius_to_emf("K", vals)
    assert isinstance(want, list) and all(isinstance(v, float) for v in want)
    assert celsius_to_emf("K", tuple(vals)) == want
    assert celsius_to_emf("K", array("d", vals)) == want
    assert celsius_to_emf("K", [0, 100, 1000]) == want
    assert celsius_to_emf("K", []) == []
    assert emf_to_celsius("K", []) == []
    assert isinstance(celsius_to_emf("K", 100), float)
    assert isinstance(emf_to_celsius("K", 4), float)


class _CountingLib:
    """Wraps the cffi lib to count crossings into C by function name."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._lib, name)
        if not callable(fn):
            return fn

        def counted(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)

        return counted


def test_sequence_is_one_crossing(monkeypatch: pytest.MonkeyPatch) -> None:
    ffi, lib = native()
    counting = _CountingLib(lib)
    monkeypatch.setattr(thermo, "native", lambda: (ffi, counting))
    thermo.tc_range("K")  # the cached range may need one call; not counted below
    counting.calls.clear()
    emf_to_celsius("K", [float(i) / 100 for i in range(1000)], 21.0)
    assert counting.calls == {"ec_tc_emf_to_celsius_batch": 1}
    counting.calls.clear()
    celsius_to_emf("K", [float(i) for i in range(1000)])
    assert counting.calls == {"ec_tc_celsius_to_emf_batch": 1}


# ---- (e) errors ----

def test_unknown_type() -> None:
    for bad in ["X", "", "KK", "a", "1"]:
        with pytest.raises(ValueError, match="B, E, J, K, N, R, S, T") as info:
            celsius_to_emf(bad, 100.0)
        assert not isinstance(info.value, ThermocoupleRangeError)
        with pytest.raises(ValueError, match="B, E, J, K, N, R, S, T"):
            emf_to_celsius(bad, 1.0)
        with pytest.raises(ValueError, match="B, E, J, K, N, R, S, T"):
            tc_range(bad)


def test_lower_case_accepted() -> None:
    for tc in TC_TYPES:
        assert celsius_to_emf(tc.lower(), 300.0) == celsius_to_emf(tc, 300.0)
        assert tc_range(tc.lower()) == tc_range(tc)


def test_ranges() -> None:
    k = tc_range("K")
    assert (k.t_min_c, k.t_max_c) == (-270.0, 1372.0)
    assert abs(k.emf_min_mv - -6.458) < 0.0005 and abs(k.emf_max_mv - 54.886) < 0.0005
    b = tc_range("B")
    assert (b.t_min_c, b.t_max_c, b.emf_min_mv) == (0.0, 1820.0, 0.0)
    assert abs(emf_to_celsius("B", 0.0) - B_INVERSE_T_MIN) < 1e-6
    t_min, t_max, e_min, e_max = tc_range("T")
    assert (t_min, t_max) == (-270.0, 400.0) and e_min < 0 < e_max


def test_scalar_out_of_range() -> None:
    with pytest.raises(ThermocoupleRangeError, match=r"1400.0 degC .*type K.*-270 to 1372 degC") as info:
        celsius_to_emf("K", 1400.0)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ThermocoupleRangeError, match=r"60.0 mV .*type K.*-6.45774 to 54.8864 mV"):
        emf_to_celsius("K", 60.0)
    with pytest.raises(ThermocoupleRangeError, match="cold junction"):
        emf_to_celsius("K", 54.0, 25.0)  # in range alone, not with the cold junction added
    with pytest.raises(ThermocoupleRangeError, match="type B"):
        emf_to_celsius("B", -0.001)  # the ambiguous dip below 42 degC
    for bad in [math.nan, math.inf, -math.inf]:
        with pytest.raises(ThermocoupleRangeError):
            celsius_to_emf("J", bad)
        with pytest.raises(ThermocoupleRangeError):
            emf_to_celsius("J", bad)
    assert math.isnan(celsius_to_emf("K", 1400.0, out_of_range="nan"))
    assert math.isnan(emf_to_celsius("K", 60.0, out_of_range="nan"))


def test_cold_junction_out_of_range_always_raises() -> None:
    with pytest.raises(ThermocoupleRangeError, match=r"cold junction 2000.0 degC"):
        emf_to_celsius("K", 1.0, 2000.0)
    with pytest.raises(ThermocoupleRangeError, match=r"cold junction"):
        emf_to_celsius("K", [1.0, 2.0], math.nan, out_of_range="nan")


def test_sequence_out_of_range() -> None:
    vals = [1.0, 60.0, 2.0, -7.0, 70.0, 80.0, 90.0, 100.0, 3.0]
    with pytest.raises(ThermocoupleRangeError, match=r"6 of 9 EMFs .*\[1, 3, 4, 5, 6\] \(first 5 of 6\)") as info:
        emf_to_celsius("K", vals)
    assert info.value.indices == (1, 3, 4, 5, 6, 7)
    got = emf_to_celsius("K", vals, out_of_range="nan")
    assert [i for i, v in enumerate(got) if math.isnan(v)] == [1, 3, 4, 5, 6, 7]
    assert got[0] == emf_to_celsius("K", 1.0)
    with pytest.raises(ThermocoupleRangeError, match=r"1 of 3 temperatures .*type T.*\[2\]") as info:
        celsius_to_emf("T", [0.0, 100.0, math.nan])
    assert info.value.indices == (2,)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="out_of_range"):
        celsius_to_emf("K", 1.0, out_of_range="clip")  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        celsius_to_emf("K", "100")  # type: ignore[arg-type]
