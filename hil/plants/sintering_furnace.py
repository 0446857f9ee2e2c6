"""Vacuum sintering furnace: a lumped model with honest units.

State: hot-zone (heating elements + shields) and charge temperatures, the gas in the
vessel as an amount Q in mbar*l at 20 degC (argon and air apart), and two reservoirs of gas
the green compacts release when heated (pressing lubricant, hydrogen from the HD powder).
Plant time t in seconds; the vessel volume is V litres.

Heat (W, J/K):
    C_z dT_z/dt = P - R_zc - G_loss (T_z - T_w) - H_z (T_z - T_w)
    C_c dT_c/dt = R_zc - H_c (T_c - T_w)
    R_zc = sigma * eps_A * (T_z^4 - T_c^4)          radiation, hot zone -> charge
  H_z, H_c: gas convection to the water-cooled wall (T_w = 25 degC): small with still gas,
  large with the quench fan running (forced convection through the gas cooler), zero
  under vacuum.

Gas (throughput in mbar*l/s):
    dQ/dt = q_inlet - S * p + q_wall + q_lubricant + q_hydrogen
    p[mbar] = Q / V * (T_gas / 293 K),  T_gas = mean of charge and wall temperature
  S: the pump stack's effective speed while pump and valve are on; q_wall the walls'
  outgassing (it sets the ultimate vacuum). A reservoir R releases R / tau per second once
  the charge is above its temperature: lubricant above 200 degC, hydrogen above 450 degC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SIGMA = 5.670e-8


MOL_PER_MBAR_L = 100.0 * 1e-3 / (8.314 * 293.15)   # ideal gas: 1 mbar l at 20 degC

@dataclass
class SinterParams:
    volume_l: float = 1000.0
    heater_w: float = 60_000.0
    c_zone: float = 100_000.0       # J/K
    c_charge: float = 30_000.0      # J/K: 50 kg NdFeB + molybdenum trays
    eps_area_m2: float = 1.5
    g_loss: float = 20.0            # W/K through the insulation
    h_still_w_k: float = 15.0       # convection with gas, fan off
    h_fan_w_k: float = 300.0        # forced convection with the fan at ~1 bar
    pump_l_s: float = 100.0
    wall_outgas_mbar_l_s: float = 1e-3
    inlet_mbar_l_s: float = 2000.0
    lubricant_mbar_l: float = 300.0
    lubricant_tau_s: float = 900.0
    hydrogen_mbar_l: float = 1000.0
    hydrogen_tau_s: float = 1200.0
    cooling_flow_l_min: float = 25.0


@dataclass
class SinterState:
    t_s: float = 0.0
    zone_c: float = 25.0
    charge_c: float = 25.0
    q_air: float = 1013.0 * 1000.0  # the vessel full of air at start
    q_ar: float = 0.0
    lubricant: float = 300.0
    hydrogen: float = 1000.0
    heater_j: float = 0.0
    ar_fed_mbar_l: float = 0.0      # argon let in (mbar l at 20 degC), for the flow meter
    door_open: bool = False
    estop_pressed: bool = False
    cooling_water_lost: bool = False
    tc_open: set[str] = field(default_factory=set)


class SinteringFurnace:
    def __init__(self, params: SinterParams | None = None) -> None:
        self.p = params or SinterParams()
        self.s = SinterState(lubricant=self.p.lubricant_mbar_l, hydrogen=self.p.hydrogen_mbar_l,
                             q_air=1013.0 * self.p.volume_l)

    def gas_k(self) -> float:
        return (self.s.charge_c + 25.0) / 2.0 + 273.15

    def pressure_mbar(self) -> float:
        return (self.s.q_air + self.s.q_ar) / self.p.volume_l * self.gas_k() / 293.15

    def step(self, out: Mapping[str, float], dt: float) -> None:
        if dt <= 0:
            return
        p, s = self.p, self.s
        power = p.heater_w * out.get("heater", 0)
        s.heater_j += power * dt
        tz, tc = s.zone_c + 273.15, s.charge_c + 273.15
        r_zc = SIGMA * p.eps_area_m2 * (tz**4 - tc**4)
        mbar = self.pressure_mbar()
        gas = min(mbar / 500.0, 1.0)                # convection needs gas (~full above 0.5 bar)
        h = (p.h_fan_w_k if out.get("quench_fan", 0) else p.h_still_w_k) * gas
        water = 0.2 if s.cooling_water_lost else 1.0
        s.zone_c += dt * (power - r_zc - (p.g_loss + h) * water * (s.zone_c - 25.0)) / p.c_zone
        s.charge_c += dt * (r_zc - h * water * (s.charge_c - 25.0)) / p.c_charge
        # gas
        released = 0.0
        if s.charge_c > 200.0:
            d = s.lubricant * min(dt / p.lubricant_tau_s, 1.0)
            s.lubricant -= d
            released += d
        if s.charge_c > 450.0:
            d = s.hydrogen * min(dt / p.hydrogen_tau_s, 1.0)
            s.hydrogen -= d
            released += d
        s.q_air += released + p.wall_outgas_mbar_l_s * dt
        if out.get("ar_inlet_valve", 0) and mbar < 2500.0:
            s.q_ar += p.inlet_mbar_l_s * dt
            s.ar_fed_mbar_l += p.inlet_mbar_l_s * dt
        if out.get("vacuum_pump", 0) and out.get("vacuum_valve", 0):
            q = s.q_air + s.q_ar
            if q > 0:
                keep = max(0.0, 1.0 - p.pump_l_s * dt / p.volume_l) if dt < p.volume_l / p.pump_l_s else 0.0
                s.q_air, s.q_ar = s.q_air * keep, s.q_ar * keep
        if out.get("vent_valve", 0) and mbar > 1013.0:
            scale = 1013.0 / mbar
            s.q_air, s.q_ar = s.q_air * scale, s.q_ar * scale
        s.t_s += dt

    def metrics(self) -> dict[str, float]:
        """The plant's truth, for measurements and accounting (not visible to the controller)."""
        s = self.s
        return {"charge_c": s.charge_c, "zone_c": s.zone_c, "pressure_mbar": self.pressure_mbar(),
                "lubricant_mbar_l": s.lubricant, "hydrogen_mbar_l": s.hydrogen, "heater_j": s.heater_j,
                "ar_fed_mol": s.ar_fed_mbar_l * MOL_PER_MBAR_L}

    def true_values(self) -> dict[str, float]:
        """What is really there, by quantity name (``hil.plants.TRUE_QUANTITIES``): the hot zone is the
        heating elements and shields, which the limiter's own thermocouple reads."""
        s = self.s
        return {"charge_temp": s.charge_c, "elements_temp": s.zone_c, "pressure_mbar": self.pressure_mbar(),
                "heater_j": s.heater_j}

    def sensors(self) -> tuple[dict[str, float], dict[str, bool], set[str]]:
        s = self.s
        mbar = self.pressure_mbar()
        flow = 0.0 if s.cooling_water_lost else self.p.cooling_flow_l_min
        analog = {"cj_temp": 22.0, "chamber_temp": s.charge_c, "chamber_temp_safety": s.zone_c,
                  "chamber_pressure": mbar / 1000.0, "chamber_vacuum": max(mbar, 1e-6),
                  "cooling_water_flow": flow}
        digital = {"door_closed": not s.door_open, "estop_ok": not s.estop_pressed, "cooling_water_ok": flow > 5.0}
        return analog, digital, set(s.tc_open)
