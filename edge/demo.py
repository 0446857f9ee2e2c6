"""``reedge demo``: the C core against a simulated HD reactor, a hydrogen leak, the safe state.

The plant (``hil.demo_plant``) runs in its own process on a fresh register file, faster
than real time; the core reads the plant's clock. This module plays the controller and
the technician: it purges the reactor with argon, heats, admits hydrogen, then the plant
springs a hydrogen leak into the room. The core drops the H2 valve when its permissive
fails (10 %LEL), trips ``h2_leak`` at 25 %LEL and forces every output of the trip to its
safe level, by itself, in C. A reset while the gas is still there is refused; once the
room is clear, the RESET button on the cabinet (a local input) resets the latch, and
nothing comes back on until the controller asks again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from edge.config import Station, load_station
from edge.core import Core, CoreEvent, EventKind, OutputRefused
from edge.corespec import CoreSpec
from hil.regfile import RegisterFile, default_dir

TICK_WALL_S = 0.05


class Screen:
    """Plain lines, coloured when the terminal can show it."""

    def __init__(self, color: bool) -> None:
        self.color = color and sys.stdout.isatty() and os.environ.get("NO_COLOR") is None

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def phase(self, text: str) -> None:
        print(self._c("1;36", f"\n== {text}"), flush=True)

    def event(self, e: CoreEvent) -> None:
        bad = e.kind in (EventKind.TRIP, EventKind.FORCED_SAFE, EventKind.PERMISSIVE_DROP, EventKind.REFUSED,
                         EventKind.RESET_REFUSED, EventKind.KEEPALIVE_DROP)
        print(self._c("1;31" if bad else "1;32", f"   event #{e.seq} t={e.t_ns / 1e9:8.2f}s  {e.detail}"),
              flush=True)

    def line(self, text: str) -> None:
        print(text, flush=True)


@contextlib.contextmanager
def demo_rig(station: Station, time_scale: float) -> Iterator[tuple[CoreSpec, RegisterFile, subprocess.Popen[str]]]:
    """A fresh register file and the plant process; both removed afterwards, whatever happens."""
    path = default_dir() / f"reedge-demo-{os.getpid()}.regs"
    regs = RegisterFile.create(path)
    drivers = tuple(dataclasses.replace(d, params={**d.params, "path": str(path)}) if d.type == "sim" else d
                    for d in station.core.drivers)
    spec = dataclasses.replace(station.core, drivers=drivers)
    plant = subprocess.Popen([sys.executable, "-m", "hil.demo_plant", str(path), str(station.source),
                              str(time_scale)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not regs.regs.plant_alive:
            if plant.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the demo plant did not start")
            time.sleep(0.01)
        yield spec, regs, plant
    finally:
        if plant.poll() is None:
            with contextlib.suppress(OSError):
                assert plant.stdin is not None
                plant.stdin.write("quit\n")
                plant.stdin.flush()
            try:
                plant.wait(timeout=5)
            except subprocess.TimeoutExpired:
                plant.kill()
                plant.wait()
        regs.close()
        path.unlink(missing_ok=True)


class DemoController:
    """Plays the Python controller: heartbeat, setpoints, keep-alives, the vacuum gauge."""

    def __init__(self, core: Core, plant: subprocess.Popen[str], screen: Screen) -> None:
        self.core = core
        self.plant = plant
        self.screen = screen
        self.setpoint_c: float | None = None
        self.held: set[str] = set()   # outputs the controller keeps energised (refreshed)
        self.events: list[CoreEvent] = []
        self._last_status = time.monotonic()

    def tell_plant(self, command: str) -> None:
        assert self.plant.stdin is not None and self.plant.stdout is not None
        self.plant.stdin.write(command + "\n")
        self.plant.stdin.flush()
        reply = self.plant.stdout.readline().strip()
        if reply != "ok":
            raise RuntimeError(f"demo plant answered {reply!r} to {command!r}")

    def energise(self, name: str) -> bool:
        """Ask for an output away from its safe level; show the reason if the gate refuses."""
        safe = next(o.safe_level for o in self.core.spec.outputs if o.name == name)
        try:
            self.core.request_output(name, 1 - safe)
        except OutputRefused as exc:
            self.screen.line(f"   the gate says: {exc.message}")
            self.held.discard(name)
            return False
        self.held.add(name)
        return True

    def release(self, name: str) -> None:
        safe = next(o.safe_level for o in self.core.spec.outputs if o.name == name)
        self.held.discard(name)
        self.core.request_output(name, safe)

    def step(self) -> None:
        core = self.core
        core.heartbeat()
        values = core.latest()
        pressure = values["chamber_pressure"].value
        if pressure == pressure:  # the RS-485 vacuum gauge, read here and injected (mbar)
            core.inject("chamber_vacuum", max(pressure * 1000.0, 0.0002))
        if any(r.tripped for r in core.rules().values()) and (self.held or self.setpoint_c is not None):
            # a trip aborts the sequence: the controller stops asking (the core already forced safe)
            self.screen.line("   controller: interlock tripped, sequence aborted, all requests withdrawn")
            self.setpoint_c = None
            for name in sorted(self.held):
                self.release(name)
        forced = {n for n, o in core.outputs().items() if o.forced}
        for name in sorted(self.held - forced):
            with contextlib.suppress(OutputRefused):
                self.energise(name)  # refresh the keep-alive
        self.held -= forced
        if self.setpoint_c is not None and "heater" not in forced:
            error = self.setpoint_c - values["chamber_temp"].value
            duty = min(max(error / 20.0, 0.0), 1.0) if error == error else 0.0
            with contextlib.suppress(OutputRefused):
                core.set_duty("heater", duty)
        for e in core.drain_events():
            self.events.append(e)
            if e.kind is not EventKind.OVERRUN:  # counted in the summary, too many to list
                self.screen.event(e)
        now = time.monotonic()
        if now - self._last_status >= 1.0:
            self._last_status = now
            self.status()

    def status(self) -> None:
        v = self.core.latest()
        outs = self.core.outputs()
        safe = {o.name: o.safe_level for o in self.core.spec.outputs}
        on = [f"{n}={o.level}" for n, o in outs.items() if o.level != safe[n] and n != self.core.spec.watchdog_output]
        self.screen.line(
            f"   t={v['chamber_temp'].t_ns / 1e9:7.1f}s  charge {v['chamber_temp'].value:6.1f} degC  "
            f"wall {v['chamber_temp_safety'].value:6.1f} degC  p {v['chamber_pressure'].value:5.3f} bar  "
            f"O2 {v['o2_pct'].value:5.2f} %  room H2 {v['h2_room'].value:5.1f} %LEL  "
            f"away from safe: {', '.join(on) or '-'}")

    def run_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo: {what} did not happen within {timeout_s:.0f} s")
            if self.plant.poll() is not None:
                raise RuntimeError("demo: the plant process stopped")
            self.step()
            time.sleep(TICK_WALL_S)
        self.step()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end, seconds + 5, "waiting")

    def value(self, name: str) -> float:
        return self.core.value(name).value


def safe_state_table(core: Core, screen: Screen) -> None:
    outs = core.outputs()
    for o in core.spec.outputs:
        if o.name == core.spec.watchdog_output:
            continue
        st = outs[o.name]
        rule = next((r.name for r in core.spec.rules if o.name in r.action and core.rules()[r.name].tripped), "")
        mark = "SAFE" if st.level == o.safe_level else "energised"
        screen.line(f"   {o.name:22s} level {st.level}  (safe {o.safe_level})  {mark:9s} "
                    f"{'held by ' + rule if st.forced else ''}")


def run_demo(station_path: pathlib.Path, time_scale: float = 10.0, color: bool = True) -> int:
    station = load_station(station_path)
    screen = Screen(color)
    screen.line(f"reedge demo: station {station.identity.site}/{station.identity.station_id} "
                f"({station.identity.description or station.identity.kind}), plant at {time_scale:g}x real time")
    with demo_rig(station, time_scale) as (spec, _regs, plant), Core(spec) as core:
        ctl = DemoController(core, plant, screen)
        ctl.run_until(lambda: all(v.ok for n, v in core.latest().items() if n != "chamber_vacuum"), 10,
                      "the first readings from the plant")
        screen.phase("Start: the core holds every output at its safe level")
        safe_state_table(core, screen)

        screen.phase("Prepare: close the vent, beacon off")
        ctl.energise("vent_valve")
        ctl.energise("alarm_beacon")
        ctl.run_for(0.5)

        screen.phase("Try H2 into air: the permissive refuses (O2 is 20.9 %)")
        ctl.energise("h2_inlet_valve")

        screen.phase("Purge: evacuate, backfill argon, evacuate again")
        ctl.energise("vacuum_valve")
        ctl.energise("vacuum_pump")
        ctl.run_until(lambda: ctl.value("chamber_pressure") < 0.02, 60, "evacuation to 0.02 bar")
        ctl.release("vacuum_pump")
        ctl.release("vacuum_valve")
        ctl.energise("ar_inlet_valve")
        ctl.run_until(lambda: ctl.value("chamber_pressure") > 1.05, 60, "argon backfill to 1.05 bar")
        ctl.release("ar_inlet_valve")
        ctl.energise("vacuum_valve")
        ctl.energise("vacuum_pump")
        ctl.run_until(lambda: ctl.value("chamber_pressure") < 0.02, 60, "evacuation of the argon to 0.02 bar")
        ctl.release("vacuum_pump")
        ctl.release("vacuum_valve")

        screen.phase("Heat (setpoint 80 degC) and admit hydrogen to 1.5 bar abs")
        ctl.setpoint_c = 80.0
        ctl.energise("h2_inlet_valve")
        ctl.run_until(lambda: ctl.value("chamber_pressure") > 1.5, 60, "hydrogen admission to 1.5 bar")
        ctl.release("h2_inlet_valve")
        ctl.run_for(3.0)

        screen.phase("FAULT: hydrogen leaks into the room")
        ctl.energise("h2_inlet_valve")  # topping up when the leak starts
        ctl.tell_plant("leak on")
        ctl.run_until(lambda: core.rules()["h2_leak"].tripped, 30, "the h2_leak trip")
        ctl.run_for(1.0)
        screen.phase(f"Safe state, first out: {core.first_out()}")
        safe_state_table(core, screen)

        screen.phase("Leak stopped; RESET pressed while the room still has hydrogen: refused")
        ctl.tell_plant("leak off")
        ctl.tell_plant("reset press")
        ctl.run_for(0.3)
        ctl.tell_plant("reset release")
        ctl.run_until(lambda: core.rules()["h2_leak"].resettable, 60, "the room clearing below 20 %LEL")

        screen.phase("Room clear: RESET pressed at the cabinet")
        ctl.tell_plant("reset press")
        ctl.run_until(lambda: not core.rules()["h2_leak"].tripped, 10, "the reset")
        ctl.tell_plant("reset release")
        ctl.run_for(0.5)
        screen.line("   nothing re-energises by itself after a reset:")
        safe_state_table(core, screen)

        stats = core.stats()
        kinds = [e.kind for e in ctl.events]
        screen.phase("Summary")
        screen.line(f"   sampler: {stats.ticks} ticks at {spec.period_ms:g} ms, {stats.overruns} missed, "
                    f"wake-up jitter p99 {stats.jitter_percentile_ns(99) / 1e3:.0f} us, max "
                    f"{stats.jitter_max_ns / 1e3:.0f} us, {'SCHED_FIFO' if stats.realtime else 'normal scheduler'}"
                    f"{', memory locked' if stats.memory_locked else ''}")
        screen.line(f"   events: {len(kinds)} ({kinds.count(EventKind.TRIP)} trip, "
                    f"{kinds.count(EventKind.FORCED_SAFE)} forced safe, {kinds.count(EventKind.REFUSED)} refused, "
                    f"{kinds.count(EventKind.PERMISSIVE_DROP)} permissive drop, {kinds.count(EventKind.RESET)} reset)"
                    f", {stats.events_lost} lost")
    screen.line("demo complete: every output is at its safe level (the core was stopped).")
    return 0
