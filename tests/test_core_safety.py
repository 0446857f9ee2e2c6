"""The safety core's guarantees through the Python binding (issue 13): real core, real station file.

Every test steps the core tick by tick on a plant clock (``run_ticks``), so nothing races the wall
clock; the thread test feeds one channel from four threads and counts refusals.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading

import pytest

from edge.core import Core, CoreError, EventKind, native
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, RuleSpec
from edge.spec.station import load_station
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent
MS = 1_000_000


def hd_core(regs_path: pathlib.Path, rules: tuple[str, ...]) -> CoreSpec:
    """The HD station's own channels and rules (only ``rules`` of them), wired to a test register file."""
    core = load_station(ROOT / "stations" / "hd_reactor_sim.toml").core
    drivers = tuple(dataclasses.replace(d, params={**d.params, "path": str(regs_path)}) for d in core.drivers)
    kept = tuple(r for r in core.rules if r.name in rules)
    assert {r.name for r in kept} == set(rules)
    return dataclasses.replace(core, drivers=drivers, rules=kept, permissives=(), latch_file=None,
                               reset_channel=None, watchdog_output=None, watchdog_feedback=None)


def tc_mv(t_c: float, cj_c: float = 25.0) -> float:
    """Type K EMF for a hot junction at t_c read against a cold junction at cj_c."""
    ffi, lib = native()
    hot, cold = ffi.new("double *"), ffi.new("double *")
    assert lib.ec_tc_celsius_to_emf(b"K", t_c, hot) == 0 and lib.ec_tc_celsius_to_emf(b"K", cj_c, cold) == 0
    return float(hot[0] - cold[0])


def step(core: Core, regs: RegisterFile, ms: int) -> None:
    for _ in range(ms):
        regs.advance(MS)
        core.run_ticks(1)


def test_a_broken_safety_tc_is_the_first_out_not_the_over_temperature(tmp_path: pathlib.Path) -> None:
    """The safety TC breaks at 580 degC: chamber_overtemp fails safe on the NaN in the same tick as
    safety_tc_break (both debounce 100 ms); the broken sensor is the root cause."""
    regs = RegisterFile.create(tmp_path / "hd.regs")
    regs.use_plant_clock(start_ns=1_000_000_000)
    regs.set_ai(0, 25.0)                      # cj_temp
    regs.set_ai(2, tc_mv(580.0))              # chamber_temp_safety
    core = Core(hd_core(tmp_path / "hd.regs", ("chamber_overtemp", "safety_tc_break", "absorption_runaway")))
    try:
        step(core, regs, 500)
        assert core.value("chamber_temp_safety").value == pytest.approx(580.0, abs=0.5)
        assert not any(r.tripped for r in core.rules().values())
        regs.set_ai(2, tc_mv(580.0), fault=True)
        step(core, regs, 150)
        rules = core.rules()
        assert rules["chamber_overtemp"].tripped and rules["safety_tc_break"].tripped
        assert core.first_out() == "safety_tc_break"
        trips = [e for e in core.drain_events() if e.kind is EventKind.TRIP]
        assert [e.rule for e in trips if e.first_out] == ["safety_tc_break"]
    finally:
        core.close()
        regs.close()


def test_hd_absorption_runaway_trips_through_a_fault_every_two_seconds(tmp_path: pathlib.Path) -> None:
    """+720 degC in 12 s on the safety TC with a 1 ms fault every 2 s must trip absorption_runaway."""
    regs = RegisterFile.create(tmp_path / "hd.regs")
    regs.use_plant_clock(start_ns=1_000_000_000)
    regs.set_ai(0, 25.0)
    regs.set_ai(2, tc_mv(100.0))
    core = Core(hd_core(tmp_path / "hd.regs", ("absorption_runaway",)))
    try:
        step(core, regs, 6000)
        tripped_at = None
        for ms in range(1, 12001):
            regs.set_ai(2, tc_mv(100.0 + 720.0 * ms / 12000), fault=ms % 2000 == 0)
            step(core, regs, 1)
            if ms % 100 == 0 and core.rules()["absorption_runaway"].tripped:
                tripped_at = ms
                break
        assert tripped_at is not None, "the rate rule was blinded by the one-tick faults"
    finally:
        core.close()
        regs.close()


def node_core(regs_path: pathlib.Path) -> CoreSpec:
    return CoreSpec(
        drivers=(DriverSpec("plant", "sim", {"path": str(regs_path)}),),
        channels=(ChannelSpec("node_temp", "injected", max_age_ms=1000, range_lo=-50, range_hi=2000),),
        outputs=(OutputSpec("heater", "plant", 0, 0),),
        rules=(RuleSpec("node_hot", "high", "node_temp", 400.0, ("heater",)),),
    )


def test_four_threads_feeding_one_channel_are_never_refused(tmp_path: pathlib.Path) -> None:
    """Core.inject(t_ns=None) reads the clock and stores under one lock: no 'out of order'."""
    RegisterFile.create(tmp_path / "n.regs").close()   # wall-clock mode: the core clock moves
    core = Core(node_core(tmp_path / "n.regs"))
    refused: list[str] = []

    def feed() -> None:
        for _ in range(1500):
            try:
                core.inject("node_temp", 25.0)
            except CoreError as exc:
                refused.append(exc.message)

    try:
        threads = [threading.Thread(target=feed) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert refused == []
    finally:
        core.close()


def test_iter_samples_records_are_not_overwritten_by_a_later_drain(tmp_path: pathlib.Path) -> None:
    regs = RegisterFile.create(tmp_path / "n.regs")
    regs.use_plant_clock(start_ns=1_000_000_000)
    core = Core(node_core(tmp_path / "n.regs"))
    try:
        step(core, regs, 5)
        first = list(core.iter_samples())
        ticks = [s.tick for s in first]
        step(core, regs, 5)
        later = list(core.iter_samples())   # e.g. another thread's drain
        assert [s.tick for s in first] == ticks == [1, 2, 3, 4, 5]
        assert [s.tick for s in later] == [6, 7, 8, 9, 10]
    finally:
        core.close()


def test_restored_trip_is_not_reset_before_it_was_evaluated(tmp_path: pathlib.Path) -> None:
    """Over-temperature latched at 900 degC, the process gone, a new Core: reset() before any tick
    must be refused, and refused again while the first tick still sees 900 degC."""
    from edge.core import ResetRefused
    from tests.test_core_interlocks import AI_CJ, AI_PRESS, AI_TC, AI_TEMP, spec_for

    regs = RegisterFile.create(tmp_path / "p.regs")
    regs.use_plant_clock(start_ns=1_000_000_000)
    for index, value in ((AI_TEMP, 900.0), (AI_PRESS, 1.0), (AI_CJ, 25.0), (AI_TC, 12.0)):
        regs.set_ai(index, value)
    spec = dataclasses.replace(spec_for(tmp_path / "p.regs"), latch_file=str(tmp_path / "hd.latch"))
    first = Core(spec)
    step(first, regs, 10)
    assert first.rules()["chamber_overtemp"].tripped
    first.close()
    core = Core(spec)
    try:
        assert core.restored_trips == 1
        assert not core.rules()["chamber_overtemp"].resettable
        with pytest.raises(ResetRefused, match="not yet evaluated on fresh data"):
            core.reset("chamber_overtemp")
        step(core, regs, 1)
        with pytest.raises(ResetRefused, match="still holds"):
            core.reset("chamber_overtemp")
        regs.set_ai(AI_TEMP, 20.0)
        step(core, regs, 1)
        core.reset("chamber_overtemp")
        assert not core.rules()["chamber_overtemp"].tripped
    finally:
        core.close()
        regs.close()
