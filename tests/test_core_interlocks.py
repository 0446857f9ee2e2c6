"""The real C core, sampling on its own thread, against a register file driven by another process."""

from __future__ import annotations

import itertools
import math
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from edge.core import ChannelStatus, Core, CoreError, EventKind, OutputRefused, ResetRefused
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, PermissiveSpec, RuleSpec
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent

# register-file wiring of this small HD-like station
AI_TEMP, AI_PRESS, AI_TC, AI_CJ = 0, 1, 2, 3
DI_LID, DI_RESET = 0, 1
HEATER, H2, VENT = 0, 1, 2


def spec_for(path: pathlib.Path, *, deadman_ms: float = 0, keepalive_ms: float = 0) -> CoreSpec:
    rules = [
        RuleSpec("chamber_overtemp", "high", "chamber_temp", 650.0, ("heater", "h2_inlet_valve", "vent_valve"),
                 hysteresis=10.0, debounce_ms=2.0),
        RuleSpec("over_pressure", "high", "chamber_pressure", 2.5, ("h2_inlet_valve", "vent_valve")),
        RuleSpec("tc_break", "fault", "charge_temp", 0.0, ("heater",)),
        RuleSpec("node_lost", "stale", "node_temp", 0.0, ("heater",)),
    ]
    if deadman_ms:
        rules.append(RuleSpec("controller_deadman", "deadman", None, deadman_ms,
                              ("heater", "h2_inlet_valve", "vent_valve")))
    return CoreSpec(
        period_ms=1.0,
        reset_channel="reset_button",
        drivers=(DriverSpec("plant", "sim", {"path": str(path)}),),
        channels=(
            ChannelSpec("chamber_temp", "analog", "plant", AI_TEMP, range_lo=-50, range_hi=1200),
            ChannelSpec("chamber_pressure", "analog", "plant", AI_PRESS, range_lo=0, range_hi=10),
            ChannelSpec("cj_temp", "analog", "plant", AI_CJ, range_lo=-20, range_hi=80),
            ChannelSpec("charge_temp", "thermocouple", "plant", AI_TC, tc_type="K", cold_junction="cj_temp",
                        range_lo=-50, range_hi=1200),
            ChannelSpec("lid_closed", "digital", "plant", DI_LID),
            ChannelSpec("reset_button", "digital", "plant", DI_RESET),
            ChannelSpec("node_temp", "injected", max_age_ms=1000),
        ),
        outputs=(
            OutputSpec("heater", "plant", HEATER, 0, max_on_ms=keepalive_ms),
            OutputSpec("h2_inlet_valve", "plant", H2, 0),
            OutputSpec("vent_valve", "plant", VENT, 1),
        ),
        rules=tuple(rules),
        permissives=(
            PermissiveSpec("h2_inlet_valve", "lid_closed", "eq", 1.0),
            PermissiveSpec("h2_inlet_valve", "chamber_pressure", "in", 0.0, 2.0),
        ),
    )


class Puppet:
    """The other process: writes the register file on command and says when it did."""

    def __init__(self, path: pathlib.Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.regfile_puppet", str(path)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, line: str) -> int:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().split()
        assert reply and reply[0] == "ok", reply
        return int(reply[1])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[tuple[RegisterFile, Puppet, pathlib.Path]]:
    path = tmp_path / "plant.regs"
    regs = RegisterFile.create(path)
    regs.set_ai(AI_TEMP, 600.0)
    regs.set_ai(AI_PRESS, 1.0)
    regs.set_ai(AI_CJ, 25.0)
    regs.set_ai(AI_TC, 12.0)  # mV, type K: about 320 degC with a 25 degC cold junction
    regs.set_di(DI_LID, 1)
    puppet = Puppet(path)
    yield regs, puppet, path
    puppet.close()
    regs.close()


def wait_until(cond: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.001)
    return False


def test_high_rule_forces_safe_first_out_and_latches(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    regs, puppet, path = rig
    with Core(spec_for(path)) as core:
        assert wait_until(lambda: core.value("chamber_temp").ok)
        core.inject("node_temp", 25.0)
        core.set_duty("heater", 1.0)
        core.request_output("h2_inlet_valve", 1)
        core.request_output("vent_valve", 0)
        assert wait_until(lambda: regs.do(HEATER) == 1 and regs.do(H2) == 1 and regs.do(VENT) == 0)

        changed_at = puppet.send(f"ai {AI_TEMP} 700")
        assert regs.wait_for_output(H2, 0, 1.0)
        assert regs.do(HEATER) == 0 and regs.do(VENT) == 1
        latency_ms = (regs.do_changed_wall_ns(H2) - changed_at) / 1e6
        assert latency_ms < 50, f"trip took {latency_ms:.1f} ms"

        events = core.drain_events()
        trips = [e for e in events if e.kind is EventKind.TRIP]
        assert [t.rule for t in trips] == ["chamber_overtemp"]
        assert trips[0].first_out and trips[0].value == pytest.approx(700.0)
        assert core.first_out() == "chamber_overtemp"
        with pytest.raises(OutputRefused, match="chamber_overtemp"):
            core.request_output("h2_inlet_valve", 1)

        with pytest.raises(ResetRefused, match="chamber_overtemp"):
            core.reset()
        puppet.send(f"ai {AI_TEMP} 600")
        assert wait_until(lambda: core.rules()["chamber_overtemp"].resettable)
        time.sleep(0.05)
        assert regs.do(H2) == 0 and regs.do(VENT) == 1, "a latched trip holds after the condition clears"
        core.reset()
        assert not core.rules()["chamber_overtemp"].tripped
        time.sleep(0.02)
        assert regs.do(H2) == 0, "nothing re-energises implicitly after a reset"
        core.request_output("h2_inlet_valve", 1)
        assert regs.wait_for_output(H2, 1, 1.0)
    assert regs.do(H2) == 0 and regs.do(VENT) == 1, "stopping the core leaves every output safe"


def test_local_reset_input_resets(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    _regs, puppet, path = rig
    with Core(spec_for(path)) as core:
        core.inject("node_temp", 25.0)
        puppet.send(f"ai {AI_PRESS} 3.0")
        assert wait_until(lambda: core.rules()["over_pressure"].tripped)
        puppet.send(f"ai {AI_PRESS} 1.0")
        assert wait_until(lambda: core.rules()["over_pressure"].resettable)
        puppet.send(f"di {DI_RESET} 1")
        assert wait_until(lambda: not core.rules()["over_pressure"].tripped)
        resets = [e for e in core.drain_events() if e.kind is EventKind.RESET]
        assert resets and resets[0].local_input and resets[0].rule == "over_pressure"


def test_deadman_trips_when_heartbeat_stops(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    regs, _puppet, path = rig
    with Core(spec_for(path, deadman_ms=100)) as core:
        core.inject("node_temp", 25.0)
        for _ in range(20):
            core.heartbeat()
            time.sleep(0.01)
        # the controller "hangs" after this heartbeat. The core notes its time inside the call, so the time before
        # the call is the bound: read after it, a trip right at 100 ms measured 99.994 once (CI, 2026-12-08)
        stopped = time.monotonic_ns()
        core.heartbeat()
        core.request_output("h2_inlet_valve", 1)
        assert regs.wait_for_output(H2, 1, 1.0)
        assert regs.wait_for_output(H2, 0, 2.0)
        waited_ms = (regs.do_changed_wall_ns(H2) - stopped) / 1e6
        assert 100 <= waited_ms < 400  # the timeout, plus at most a loaded machine's scheduling delay
        assert core.first_out() == "controller_deadman"


def test_keepalive_drops_output(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    regs, _puppet, path = rig
    with Core(spec_for(path, keepalive_ms=80)) as core:
        core.inject("node_temp", 25.0)
        core.request_output("heater", 1)
        for _ in range(5):  # refreshed: stays on
            time.sleep(0.03)
            core.request_output("heater", 1)
        assert regs.do(HEATER) == 1
        assert regs.wait_for_output(HEATER, 0, 1.0)
        drops = [e for e in core.drain_events() if e.kind is EventKind.KEEPALIVE_DROP]
        assert drops and drops[0].output == "heater"


def test_permissive_refusal_names_the_condition(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    regs, puppet, path = rig
    with Core(spec_for(path)) as core:
        puppet.send(f"di {DI_LID} 0")
        time.sleep(0.01)
        with pytest.raises(OutputRefused, match=r"lid_closed == 1 does not hold \(lid_closed = 0"):
            core.request_output("h2_inlet_valve", 1)
        refused = [e for e in core.drain_events() if e.kind is EventKind.REFUSED]
        assert refused and refused[0].channel == "lid_closed" and refused[0].output == "h2_inlet_valve"
        assert regs.do(H2) == 0
        puppet.send(f"di {DI_LID} 1")
        time.sleep(0.01)
        core.request_output("h2_inlet_valve", 1)
        assert regs.wait_for_output(H2, 1, 1.0)
        puppet.send(f"ai {AI_PRESS} 2.2")   # leaves the permissive band: the valve drops
        assert regs.wait_for_output(H2, 0, 1.0)
        assert any(e.kind is EventKind.PERMISSIVE_DROP for e in core.drain_events())


def test_stale_injected_channel_trips(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    _regs, _puppet, path = rig
    with Core(spec_for(path)) as core:
        for i in range(10):
            core.inject("node_temp", 20.0 + i)
            time.sleep(0.02)
        v = core.value("node_temp")
        assert v.ok and v.value == 29.0
        core.set_duty("heater", 0.5)
        assert wait_until(lambda: core.value("node_temp").status & ChannelStatus.STALE, 3.0)
        assert wait_until(lambda: core.rules()["node_lost"].tripped)
        assert core.outputs()["heater"].forced


def test_open_thermocouple_is_a_fault_not_a_number(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    regs, puppet, path = rig
    with Core(spec_for(path)) as core:
        core.inject("node_temp", 25.0)
        assert wait_until(lambda: core.value("charge_temp").ok)
        t = core.value("charge_temp").value
        assert 310 < t < 330  # 12 mV + 25 degC cold junction, type K
        core.set_duty("heater", 0.5)
        puppet.send(f"fault {AI_TC} 1")
        assert wait_until(lambda: core.rules()["tc_break"].tripped)
        v = core.value("charge_temp")
        assert math.isnan(v.value) and v.status & ChannelStatus.FAULT
        trip = next(e for e in core.drain_events() if e.kind is EventKind.TRIP)
        assert trip.rule == "tc_break" and trip.first_out
        assert regs.wait_for_output(HEATER, 0, 1.0)


def test_samples_are_gapless_and_stats_report(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    _regs, _puppet, path = rig
    with Core(spec_for(path)) as core:
        time.sleep(0.3)
        samples = core.drain_samples()
        st = core.stats()
    assert len(samples) > 100
    assert all(b.tick == a.tick + 1 for a, b in itertools.pairwise(samples))
    assert st.ticks >= len(samples) and st.samples_lost == 0
    assert sum(st.jitter_hist) == st.ticks
    assert st.jitter_percentile_ns(50) <= st.jitter_percentile_ns(99) <= max(st.jitter_max_ns, 10_000)


def test_bad_spec_gives_clear_error(tmp_path: pathlib.Path) -> None:
    RegisterFile.create(tmp_path / "r.regs").close()
    spec = spec_for(tmp_path / "r.regs")
    bad = CoreSpec(drivers=spec.drivers, channels=(ChannelSpec("t", "analog", "plant", 99),))
    with pytest.raises(CoreError, match="channel 't': input 99 outside"):
        Core(bad)
    missing = CoreSpec(drivers=(DriverSpec("plant", "sim", {"path": str(tmp_path / "nope.regs")}),))
    with pytest.raises(CoreError, match=r"nope\.regs"):
        Core(missing)


def test_python_mirrors_match_the_header() -> None:
    """EventKind and ChannelStatus are written out for readability; the header is the truth."""
    from edge.core import _CHANNEL_KIND, _CMP, _RULE_KIND, native

    _, lib = native()
    for kind in EventKind:
        assert getattr(lib, f"EC_EV_{kind.name}") == kind.value
    for flag in ChannelStatus:
        assert getattr(lib, f"EC_ST_{flag.name}") == flag.value
    for name, value in _CHANNEL_KIND.items():
        assert getattr(lib, f"EC_CH_{name.upper()}") == value
    for name, value in _RULE_KIND.items():
        assert getattr(lib, f"EC_RULE_{name.upper()}") == value
    for name, value in _CMP.items():
        assert getattr(lib, f"EC_CMP_{name.upper()}") == value


def test_injected_timestamp_from_another_clock_is_refused(rig: tuple[RegisterFile, Puppet, pathlib.Path]) -> None:
    _regs, _puppet, path = rig
    with Core(spec_for(path)) as core:
        with pytest.raises(CoreError, match="ahead of the core clock"):
            core.inject("node_temp", 25.0, t_ns=time.time_ns())   # CLOCK_REALTIME, not the core's clock
        core.inject("node_temp", 25.0)
        assert wait_until(lambda: core.value("node_temp").ok)


def test_latched_trip_survives_a_new_process(tmp_path: pathlib.Path) -> None:
    """A crash or restart of the controller must not clear a latched trip (only a local reset may)."""
    import dataclasses

    regs = RegisterFile.create(tmp_path / "plant.regs")
    regs.set_ai(AI_TEMP, 700.0)
    regs.set_ai(AI_PRESS, 1.0)
    regs.set_ai(AI_CJ, 25.0)
    regs.set_ai(AI_TC, 12.0)
    spec = dataclasses.replace(spec_for(tmp_path / "plant.regs"), latch_file=str(tmp_path / "hd.latch"))
    script = ("import sys, time\nfrom tests.test_core_interlocks import *\nimport dataclasses, pathlib\n"
              f"spec = dataclasses.replace(spec_for(pathlib.Path({str(tmp_path / 'plant.regs')!r})), "
              f"latch_file={str(tmp_path / 'hd.latch')!r})\n"
              "core = Core(spec)\ncore.start()\n"
              "while not core.rules()['chamber_overtemp'].tripped:\n    time.sleep(0.001)\n"
              "print('tripped', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "tripped"
    proc.kill()   # the controller dies with the trip latched
    proc.wait()
    regs.set_ai(AI_TEMP, 20.0)
    with Core(spec) as core:
        assert core.restored_trips == 1
        assert wait_until(lambda: core.rules()["chamber_overtemp"].resettable)
        assert core.rules()["chamber_overtemp"].tripped
        with pytest.raises(OutputRefused, match="chamber_overtemp"):
            core.request_output("h2_inlet_valve", 1)
        core.reset()
    regs.close()
