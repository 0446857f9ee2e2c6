"""A small HD reactor plant for ``reedge demo``, in its own process on the register file.

Lumped model, plant time t in seconds (the core reads the plant's clock):

* heat: heater power P = 12 kW x (output level) into the retort wall (C_w = 40 kJ/K);
  wall -> charge G_wc = 60 W/K (charge C_c = 11 kJ/K, 25 kg NdFeB); wall -> cooling
  jacket G_wj = 20 W/K at the water temperature 20 degC.
      C_w dT_w/dt = P - G_wc (T_w - T_c) - G_wj (T_w - 20)
      C_c dT_c/dt = G_wc (T_w - T_c)
* gas: ideal gas in the free volume V = 0.05 m^3 at the charge temperature; moles of air,
  Ar and H2 tracked apart. Pump (vacuum_pump and vacuum_valve) removes gas at
  S = 10 m^3/h; the vent relaxes the pressure to 1.013 bar with tau = 2 s; Ar and H2 inlets
  feed 0.05 mol/s from 3 bar supplies. O2 %vol = 20.9 x air fraction.
* room H2 (%LEL): the leak fault adds LEAK_LEL_PER_S while on; the room ventilation
  removes it with tau = 20 s.

The issue-4 HIL plants replace this with the full models (absorption, exotherm, leaks);
this one is only as detailed as the demo needs. The wiring is read from the station file
(which analog/digital input each named channel uses, and its scale), so the plant writes
raw signals exactly as a field device would: thermocouple EMF in mV, 4-20 mA loops in mA.

Commands on stdin, one per line: ``leak on``, ``leak off``, ``reset press``, ``reset release``,
``quit``; the plant answers ``ok``.
"""

from __future__ import annotations

import math
import select
import sys
import time
from dataclasses import dataclass

from edge.config import load_station
from edge.corespec import ChannelSpec, CoreSpec
from edge.thermo import celsius_to_emf
from hil.regfile import RegisterFile

R = 8.314            # J/(mol K)
V_FREE = 0.05        # m^3
P_ATM = 1.013e5      # Pa
SUPPLY_MOL_S = 0.05  # mol/s through an open inlet
PUMP_M3_S = 10.0 / 3600.0
LEAK_LEL_PER_S = 2.0
STEP_WALL_S = 0.002  # the plant integrates every 2 ms of wall time


@dataclass
class PlantState:
    t_s: float = 0.0
    wall_c: float = 22.0
    charge_c: float = 22.0
    n_air: float = P_ATM * V_FREE / (R * 295.0)
    n_ar: float = 0.0
    n_h2: float = 0.0
    room_lel: float = 0.0
    leak: bool = False

    def pressure_pa(self) -> float:
        return (self.n_air + self.n_ar + self.n_h2) * R * (self.charge_c + 273.15) / V_FREE

    def o2_pct(self) -> float:
        n = self.n_air + self.n_ar + self.n_h2
        return 20.9 * self.n_air / n if n > 1e-9 else 0.0


def step(s: PlantState, out: dict[str, int], dt: float) -> None:
    """Advance the plant by dt seconds of plant time, given the output levels."""
    p_heat = 12_000.0 * out.get("heater", 0)
    q_wc = 60.0 * (s.wall_c - s.charge_c)
    q_wj = 20.0 * (s.wall_c - 20.0)
    s.wall_c += dt * (p_heat - q_wc - q_wj) / 40_000.0
    s.charge_c += dt * q_wc / 11_000.0
    n_total = s.n_air + s.n_ar + s.n_h2
    p = s.pressure_pa()
    if out.get("vacuum_pump", 0) and out.get("vacuum_valve", 0) and n_total > 0:
        removed = min(n_total, PUMP_M3_S * dt * n_total / V_FREE)
        scale = (n_total - removed) / n_total
        s.n_air, s.n_ar, s.n_h2 = s.n_air * scale, s.n_ar * scale, s.n_h2 * scale
    if out.get("vent_valve", 0) and p > P_ATM and n_total > 0:
        target = n_total * P_ATM / p
        scale = 1.0 - (1.0 - target / n_total) * (1.0 - math.exp(-dt / 2.0))
        s.n_air, s.n_ar, s.n_h2 = s.n_air * scale, s.n_ar * scale, s.n_h2 * scale
    if out.get("ar_inlet_valve", 0) and p < 3e5:
        s.n_ar += SUPPLY_MOL_S * dt
    if out.get("h2_inlet_valve", 0) and p < 3e5:
        s.n_h2 += SUPPLY_MOL_S * dt
    s.room_lel += dt * ((LEAK_LEL_PER_S if s.leak else 0.0) - s.room_lel / 20.0)
    s.t_s += dt


class Wiring:
    """Which register each named channel and output uses, and how to make its raw signal."""

    def __init__(self, core: CoreSpec) -> None:
        self.channels: dict[str, ChannelSpec] = {c.name: c for c in core.channels if c.driver is not None}
        self.lines = {o.name: o.line for o in core.outputs}

    def write_analog(self, regs: RegisterFile, name: str, value: float, cj_c: float = 20.0) -> None:
        ch = self.channels.get(name)
        if ch is None:
            return
        if ch.kind == "thermocouple":
            assert ch.tc_type is not None
            value = float(celsius_to_emf(ch.tc_type, value)) - float(celsius_to_emf(ch.tc_type, cj_c))
        regs.set_ai(ch.input, (value - ch.offset) / ch.scale)

    def write_digital(self, regs: RegisterFile, name: str, level: bool) -> None:
        ch = self.channels.get(name)
        if ch is not None:
            regs.set_di(ch.input, level != ch.invert)

    def outputs(self, regs: RegisterFile) -> dict[str, int]:
        return {name: regs.do(line) for name, line in self.lines.items()}


def publish(regs: RegisterFile, w: Wiring, s: PlantState, reset_pressed: bool) -> None:
    cj = 21.0
    w.write_analog(regs, "cj_temp", cj)
    w.write_analog(regs, "chamber_temp", s.charge_c, cj)
    w.write_analog(regs, "chamber_temp_safety", s.wall_c, cj)
    w.write_analog(regs, "chamber_pressure", s.pressure_pa() / 1e5)
    w.write_analog(regs, "o2_pct", s.o2_pct())
    w.write_analog(regs, "h2_room", s.room_lel)
    w.write_analog(regs, "cooling_water_flow", 10.0)
    w.write_digital(regs, "lid_closed", True)
    w.write_digital(regs, "estop_ok", True)
    w.write_digital(regs, "cooling_water_ok", True)
    w.write_digital(regs, "reset_button", reset_pressed)


def handle(line: str, s: PlantState, flags: dict[str, bool]) -> bool:
    words = line.split()
    if words == ["quit"]:
        return False
    if words == ["leak", "on"]:
        s.leak = True
    elif words == ["leak", "off"]:
        s.leak = False
    elif words == ["reset", "press"]:
        flags["reset"] = True
    elif words == ["reset", "release"]:
        flags["reset"] = False
    else:
        print(f"error unknown command {line.strip()!r}", flush=True)
        return True
    print("ok", flush=True)
    return True


def run(regs_path: str, station_path: str, time_scale: float) -> int:
    wiring = Wiring(load_station(station_path).core)
    regs = RegisterFile(regs_path)
    state = PlantState()
    flags = {"reset": False}
    regs.use_plant_clock(start_ns=0, time_scale=time_scale)
    regs.regs.plant_alive = 1
    publish(regs, wiring, state, False)
    last = time.monotonic()
    running = True
    try:
        while running:
            ready, _, _ = select.select([sys.stdin], [], [], STEP_WALL_S)
            if ready:
                line = sys.stdin.readline()
                running = bool(line) and handle(line, state, flags)
            now = time.monotonic()
            dt = (now - last) * time_scale
            last = now
            step(state, wiring.outputs(regs), dt)
            publish(regs, wiring, state, flags["reset"])
            regs.regs.plant_ns = int(state.t_s * 1e9)
    finally:
        regs.regs.plant_alive = 0
        regs.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2], float(sys.argv[3])))
