"""Hydrogen-decrepitation reactor: a lumped model with honest units.

State: retort wall and charge temperatures (K as degC), moles of air, Ar and H2 in the free
volume, hydrogen held in the charge, the room's hydrogen. Plant time t in seconds.

Heat (W, J/K):
    C_w dT_w/dt = P_heater - Q_wc - G_wj (T_w - T_water) * f_flow
    C_c dT_c/dt = Q_wc + Q_reaction
    Q_wc = G_wc (T_w - T_c) * g_gas + eps sigma A (T_w^4 - T_c^4)
  g_gas = 1 with gas in the retort, 0.1 under vacuum (conduction needs a gas); f_flow =
  min(1, flow / 5 l/min): without cooling water the jacket stops taking heat.

Gas (ideal gas in the free volume V at the charge temperature):
    p = (n_air + n_Ar + n_H2) R T_c / V
  pump (vacuum_pump and vacuum_valve): dn_i/dt = -S/V (n_i - n_i,base), S = 10 m^3/h, down to
  the pump's ultimate pressure; inlets: 0.05 mol/s of their gas from a 3 bar supply; vent:
  relaxes to 1.013 bar with tau 2 s; air leak in: Q_leak (mbar l/s) when below atmosphere.

Hydrogen in the charge (x = mol H2 absorbed; x_max = capacity_wt * m_charge / 2.016 g/mol):
    absorption after an incubation time at p_H2 > 0.1 bar:
        dx/dt = k_abs p_H2[bar] (1 - x/x_max)                (mol/s)
        Q_reaction = dH * dx/dt                                (exothermic, dH = 35 kJ/mol)
    desorption above 200 degC towards x_eq(T) = x_max (1 - 0.65 clip((T_c - 200)/400, 0, 1)):
        dx/dt = -(x - x_eq) / tau_des  when x > x_eq            (the rest stays as NdH2)
  Every mole absorbed leaves the gas, every mole desorbed enters it: hydrogen is conserved
  (``hydrogen_inventory_mol`` = gas + charge + vented + pumped + leaked to the room).

Room: an H2 leak to the room (fault) of conductance c (mol/s/bar over atmosphere) feeds a
room of 100 m^3 ventilated at 5 changes/h; %LEL = 100 * (x_H2 / 4 %vol). An open lid is such a
leak with a large conductance (``lid_leak_mol_s_bar``): the vessel's gas above atmosphere goes out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

R = 8.314              # J/(mol K)
SIGMA = 5.670e-8       # W/(m^2 K^4)
P_ATM = 1.013e5        # Pa
M_H2 = 2.016e-3        # kg/mol
LEL_H2 = 0.04          # 4 %vol in air


@dataclass
class HDParams:
    volume_m3: float = 0.2
    charge_kg: float = 25.0
    c_wall: float = 40_000.0        # J/K
    c_charge_per_kg: float = 440.0  # J/(kg K)
    heater_w: float = 12_000.0
    g_wall_charge: float = 60.0     # W/K with gas
    rad_area_eps: float = 0.25      # m^2 x emissivity
    g_wall_jacket: float = 15.0     # W/K at full flow
    t_water_c: float = 20.0
    pump_m3_per_h: float = 10.0
    pump_ultimate_mbar: float = 1e-3
    inlet_mol_s: float = 0.05
    supply_bar: float = 3.0
    leak_mbar_l_s: float = 1e-3     # air in-leakage of the tight vessel
    capacity_wt: float = 0.004      # 0.4 wt% H2 of the charge
    k_abs: float = 0.02             # mol/(s bar)
    incubation_s: float = 300.0
    dh_j_mol: float = 35_000.0
    tau_des_s: float = 900.0
    room_m3: float = 100.0
    room_changes_per_h: float = 5.0
    cooling_flow_l_min: float = 10.0
    lid_leak_mol_s_bar: float = 2.0   # an unclamped lid: the vessel's overpressure escapes into the room


#: A 50 l retort that heats and evacuates in minutes: the loop-tuning tests use it.
SMALL_RETORT = HDParams(volume_m3=0.05, room_m3=1.0, room_changes_per_h=30.0, incubation_s=3600.0)


@dataclass
class HDState:
    t_s: float = 0.0
    wall_c: float = 21.0
    charge_c: float = 21.0
    n_air: float = P_ATM * 0.2 / (R * 294.15)
    n_ar: float = 0.0
    n_h2: float = 0.0
    x_h2: float = 0.0               # mol absorbed in the charge
    incubated_s: float = 0.0
    room_h2_mol: float = 0.0
    # accounting, for conservation checks and the batch record
    h2_fed_mol: float = 0.0
    ar_fed_mol: float = 0.0
    h2_vented_mol: float = 0.0
    h2_pumped_mol: float = 0.0
    h2_leaked_mol: float = 0.0
    heater_j: float = 0.0
    # faults, set by scenarios
    room_leak_mol_s_bar: float = 0.0
    extra_air_leak_mbar_l_s: float = 0.0
    cooling_water_lost: bool = False
    lid_open: bool = False
    estop_pressed: bool = False
    tc_open: set[str] = field(default_factory=set)


class HDReactor:
    """Step the plant with the output levels by name; read its sensors in engineering units."""

    def __init__(self, params: HDParams | None = None, state: HDState | None = None) -> None:
        self.p = params or HDParams()
        self.s = state or HDState(n_air=P_ATM * self.p.volume_m3 / (R * 294.15))

    # ---- derived quantities ----
    def n_total(self) -> float:
        return self.s.n_air + self.s.n_ar + self.s.n_h2

    def pressure_pa(self) -> float:
        return self.n_total() * R * (self.s.charge_c + 273.15) / self.p.volume_m3

    def pressure_bar(self) -> float:
        return self.pressure_pa() / 1e5

    def vacuum_mbar(self) -> float:
        return self.pressure_pa() / 100.0

    def o2_pct(self) -> float:
        n = self.n_total()
        return 20.9 * self.s.n_air / n if n > 0 else 0.0

    def room_lel(self) -> float:
        n_room = P_ATM * self.p.room_m3 / (R * 293.15)
        return 100.0 * (self.s.room_h2_mol / n_room) / LEL_H2

    def cooling_flow(self) -> float:
        return 0.0 if self.s.cooling_water_lost else self.p.cooling_flow_l_min

    def x_max(self) -> float:
        return self.p.capacity_wt * self.p.charge_kg / M_H2

    def hydrogen_inventory_mol(self) -> float:
        """Gas + charge + what left the vessel: equals h2_fed_mol (conservation)."""
        s = self.s
        return s.n_h2 + s.x_h2 + s.h2_vented_mol + s.h2_pumped_mol + s.h2_leaked_mol

    # ---- dynamics ----
    def step(self, out: Mapping[str, float], dt: float) -> None:
        """Advance dt seconds of plant time, with output levels (1 = on/open) by name."""
        if dt <= 0:
            return
        self._heat(out, dt)
        self._gas(out, dt)
        self._hydrogen(dt)
        self._room(dt)
        self.s.t_s += dt

    def _heat(self, out: Mapping[str, float], dt: float) -> None:
        p, s = self.p, self.s
        power = p.heater_w * out.get("heater", 0)
        s.heater_j += power * dt
        tw, tc = s.wall_c + 273.15, s.charge_c + 273.15
        g_gas = 1.0 if self.pressure_pa() > 1000.0 else 0.1
        q_wc = p.g_wall_charge * g_gas * (tw - tc) + SIGMA * p.rad_area_eps * (tw**4 - tc**4)
        q_wj = p.g_wall_jacket * min(1.0, self.cooling_flow() / 5.0) * (s.wall_c - p.t_water_c)
        s.wall_c += dt * (power - q_wc - q_wj) / p.c_wall
        s.charge_c += dt * q_wc / (p.c_charge_per_kg * p.charge_kg)

    def _gas(self, out: Mapping[str, float], dt: float) -> None:
        p, s = self.p, self.s
        temp_k = s.charge_c + 273.15
        pa = self.pressure_pa()
        if out.get("vacuum_pump", 0) and out.get("vacuum_valve", 0):
            n_base = p.pump_ultimate_mbar * 100.0 * p.volume_m3 / (R * temp_k)
            frac = 1.0 - math.exp(-dt * p.pump_m3_per_h / 3600.0 / p.volume_m3)
            excess = max(self.n_total() - n_base, 0.0)
            if excess > 0:
                scale = 1.0 - frac * excess / self.n_total()
                s.h2_pumped_mol += s.n_h2 * (1.0 - scale)
                s.n_air, s.n_ar, s.n_h2 = s.n_air * scale, s.n_ar * scale, s.n_h2 * scale
        if out.get("vent_valve", 0) and pa > P_ATM:
            target = self.n_total() * P_ATM / pa
            scale = 1.0 - (1.0 - target / self.n_total()) * (1.0 - math.exp(-dt / 2.0))
            s.h2_vented_mol += s.n_h2 * (1.0 - scale)
            s.n_air, s.n_ar, s.n_h2 = s.n_air * scale, s.n_ar * scale, s.n_h2 * scale
        if pa < p.supply_bar * 1e5:
            if out.get("ar_inlet_valve", 0):
                s.n_ar += p.inlet_mol_s * dt
                s.ar_fed_mol += p.inlet_mol_s * dt
            if out.get("h2_inlet_valve", 0):
                s.n_h2 += p.inlet_mol_s * dt
                s.h2_fed_mol += p.inlet_mol_s * dt
        if pa < P_ATM:  # air leaks in through seals: Q in mbar l/s -> mol/s at room temperature
            q = p.leak_mbar_l_s + s.extra_air_leak_mbar_l_s
            s.n_air += dt * q * 100.0 * 1e-3 / (R * 293.15)

    def _hydrogen(self, dt: float) -> None:
        p, s = self.p, self.s
        n = self.n_total()
        p_h2_bar = self.pressure_bar() * (s.n_h2 / n) if n > 0 else 0.0
        if p_h2_bar > 0.1:
            s.incubated_s += dt
        rate = 0.0
        if s.incubated_s >= p.incubation_s and s.charge_c < 250.0:
            rate = p.k_abs * p_h2_bar * max(0.0, 1.0 - s.x_h2 / self.x_max())
            rate = min(rate, s.n_h2 / dt)
        frac = min(max((s.charge_c - 200.0) / 400.0, 0.0), 1.0)
        x_eq = self.x_max() * (1.0 - 0.65 * frac)
        if s.x_h2 > x_eq and s.charge_c >= 200.0:
            rate -= (s.x_h2 - x_eq) * (1.0 - math.exp(-dt / p.tau_des_s)) / dt
        s.x_h2 += rate * dt
        s.n_h2 -= rate * dt
        if rate > 0:
            s.charge_c += p.dh_j_mol * rate * dt / (p.c_charge_per_kg * p.charge_kg)

    def _room(self, dt: float) -> None:
        p, s = self.p, self.s
        over_bar = max(self.pressure_pa() - P_ATM, 0.0) / 1e5
        n = self.n_total()
        conductance = s.room_leak_mol_s_bar + (p.lid_leak_mol_s_bar if s.lid_open else 0.0)
        if conductance > 0 and over_bar > 0 and n > 0:
            out = min(conductance * over_bar * dt, n * 0.5)
            h2 = out * s.n_h2 / n
            scale = 1.0 - out / n
            s.n_air, s.n_ar, s.n_h2 = s.n_air * scale, s.n_ar * scale, s.n_h2 * scale
            s.room_h2_mol += h2
            s.h2_leaked_mol += h2
        s.room_h2_mol *= math.exp(-dt * p.room_changes_per_h / 3600.0)

    def metrics(self) -> dict[str, float]:
        """The plant's truth, for measurements and accounting (not visible to the controller)."""
        s = self.s
        return {"charge_c": s.charge_c, "wall_c": s.wall_c, "pressure_bar": self.pressure_bar(),
                "h2_fed_mol": s.h2_fed_mol, "ar_fed_mol": s.ar_fed_mol, "h2_absorbed_mol": s.x_h2, "h2_gas_mol": s.n_h2,
                "h2_vented_mol": s.h2_vented_mol, "h2_pumped_mol": s.h2_pumped_mol,
                "h2_leaked_mol": s.h2_leaked_mol, "heater_j": s.heater_j, "o2_pct": self.o2_pct()}

    def true_values(self) -> dict[str, float]:
        """What is really there, by quantity name: what a limiter's own thermocouple and the scenarios'
        ``max_true``/``min_true`` measures and marks read (``TRUE_QUANTITIES``), never a published channel."""
        s = self.s
        return {"charge_temp": s.charge_c, "wall_temp": s.wall_c, "pressure_bar": self.pressure_bar(),
                "vacuum_mbar": self.vacuum_mbar(), "o2_pct": self.o2_pct(), "room_lel": self.room_lel(),
                "room_h2_mol": s.room_h2_mol, "h2_gas_mol": s.n_h2, "h2_absorbed_mol": s.x_h2,
                "cooling_flow": self.cooling_flow(), "heater_j": s.heater_j}

    # ---- sensors, in engineering units, by the example station's channel names ----
    def sensors(self) -> tuple[dict[str, float], dict[str, bool], set[str]]:
        """(analog values, digital levels, channels whose sensor is broken)."""
        s = self.s
        analog = {
            "cj_temp": 21.0,
            "chamber_temp": s.charge_c,
            "chamber_temp_safety": s.wall_c,
            "chamber_pressure": self.pressure_bar(),
            "chamber_vacuum": self.vacuum_mbar(),
            "o2_pct": self.o2_pct(),
            "h2_room": self.room_lel(),
            "cooling_water_flow": self.cooling_flow(),
        }
        digital = {
            "lid_closed": not s.lid_open,
            "estop_ok": not s.estop_pressed,
            "cooling_water_ok": self.cooling_flow() > 2.0,
        }
        return analog, digital, set(s.tc_open)
