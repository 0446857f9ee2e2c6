"""``Core.snapshot``: values, outputs and rules of one tick, in one C call, and the scan that reads it once."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from edge.control.controller import Controller
from edge.core import ChannelStatus, Core, CoreSnapshot
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, RuleSpec
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import load_station
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def hot_spec(path: pathlib.Path) -> CoreSpec:
    """One temperature and a rule with no debounce, hysteresis nor latch: tripped exactly while it reads
    above 650 at the tick that judged it."""
    return CoreSpec(period_ms=1.0, drivers=(DriverSpec("plant", "sim", {"path": str(path)}),),
                    channels=(ChannelSpec("temp", "analog", "plant", 0, range_lo=-50, range_hi=1200),
                              ChannelSpec("lid_closed", "digital", "plant", 0)),
                    outputs=(OutputSpec("heater", "plant", 0, 0),),
                    rules=(RuleSpec("hot", "high", "temp", 650.0, ("heater",), latch=False),))


def test_a_snapshot_is_one_tick_while_the_sampler_ticks(tmp_path: pathlib.Path) -> None:
    """The temperature flips between 600 and 700 while the sampler ticks every ms: in every snapshot
    the rule's state, the output's forcing and the value are of the same tick (two separate reads,
    value then rules, disagree here within a few hundred tries)."""
    path = tmp_path / "plant.regs"
    regs = RegisterFile.create(path)
    regs.set_ai(0, 600.0)
    regs.set_di(0, 1)
    stop = threading.Event()

    def flip() -> None:
        hot = False
        while not stop.is_set():
            hot = not hot
            regs.set_ai(0, 700.0 if hot else 600.0)
            time.sleep(0.0005)

    flipper = threading.Thread(target=flip)
    seen: dict[bool, int] = {True: 0, False: 0}
    ticks: set[int] = set()
    try:
        with Core(hot_spec(path)) as core:
            assert wait_for(lambda: core.snapshot().tick > 5)
            flipper.start()
            deadline = time.monotonic() + 30.0
            while (min(seen.values()) < 200 or len(ticks) < 100) and time.monotonic() < deadline:
                s = core.snapshot()
                hot = s.readings["temp"] > 650.0
                assert s.tripped == (("hot",) if hot else ()), (s.tick, s.readings, s.tripped)
                assert s.outputs["heater"].forced is hot and s.rules["hot"].tripped is hot
                assert s.values["temp"].status is ChannelStatus.OK
                assert all(t <= s.t_s for t in s.stamps.values())
                seen[hot] += 1
                ticks.add(s.tick)
    finally:
        stop.set()
        if flipper.is_alive():
            flipper.join()
        regs.close()
    assert min(seen.values()) >= 200 and len(ticks) >= 100, (seen, len(ticks))


def test_a_snapshot_says_what_the_core_holds(tmp_path: pathlib.Path) -> None:
    """Trips, forced outputs, a tightened band, a faulted reading: as the core holds them."""
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    with LockstepRig(station, HDReactor(), dt_s=2.0) as rig:
        rig.step()
        core = rig.core
        agree = next(r for r in station.core.rules if r.kind == "agree")
        core.tighten_rule(agree.name, agree.threshold / 2)
        s = core.snapshot()
        assert s.rules[agree.name].threshold == agree.threshold / 2
        assert s.rules == core.rules() and s.outputs == core.outputs() and repr(s.values) == repr(core.latest())
        assert s.readings == {n: (v.value if v.ok else s.readings[n]) for n, v in s.values.items()}
        assert s.stamps == {n: v.t_ns / 1e9 for n, v in s.values.items()}
        assert s.tick == core.stats().ticks and s.t_ns == core.now_ns()


class Counting:
    """Counts the calls of the core's reading accessors, each still answering from the real core."""

    READS = ("snapshot", "latest", "value", "outputs", "rules", "threshold")

    def __init__(self, core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = dict.fromkeys(self.READS, 0)
        for name in self.READS:
            monkeypatch.setattr(core, name, self._counted(name, getattr(core, name)))

    def _counted(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return fn(*args, **kwargs)
        return counted


def test_the_scan_reads_the_core_once(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a batch's first 600 scans (load check, leak test, purge: the sequencer asks ``allowed``
    on the way) each scan reads the core's state exactly once."""
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    with LockstepRig(station, HDReactor(), dt_s=2.0) as rig:
        ctl = Controller(rig.core, rig.station, state_path=tmp_path / "run.json")
        rig.step(ctl.step)
        ctl.start_batch(load_recipe(ROOT / "recipes" / "hd_standard.toml"), batch_id="snap-1")
        counting = Counting(rig.core, monkeypatch)
        for _ in range(600):
            rig.step(ctl.step)
        assert counting.calls == {**dict.fromkeys(Counting.READS, 0), "snapshot": 600}
        assert ctl.sequencer is not None and ctl.sequencer.phase not in ("load_check", "leak_test")
        assert isinstance(rig.core.snapshot(), CoreSnapshot)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.001)
    return False
