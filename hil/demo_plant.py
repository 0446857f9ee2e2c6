"""The HD reactor plant for ``reedge demo``, in its own process on the register file.

The model is ``hil.plants.hd_reactor`` (its docstring has the equations), with a small
retort (50 l free volume) so that the demo's evacuations take seconds at 10x. The wiring
is read from the station file (``hil.wiring``), so the plant writes raw signals exactly as
field devices would: thermocouple EMF in mV, 4-20 mA loops in mA.

Commands on stdin, one per line: ``leak on``, ``leak off``, ``reset press``, ``reset release``,
``quit``; the plant answers ``ok``.
"""

from __future__ import annotations

import select
import sys
import time

from edge.config import load_station
from hil.plants.hd_reactor import HDParams, HDReactor
from hil.regfile import RegisterFile
from hil.wiring import Wiring

STEP_WALL_S = 0.002  # the plant integrates every 2 ms of wall time
ROOM_LEAK_MOL_S_BAR = 0.15  # the demo's leak: a failed flange gasket
# the "room" is the reactor enclosure with its extraction; absorption would start after its
# incubation time: the demo is over before (the HIL batch shows absorption)
DEMO_PARAMS = HDParams(volume_m3=0.05, room_m3=1.0, room_changes_per_h=30.0, incubation_s=3600.0)


def handle(line: str, plant: HDReactor, flags: dict[str, bool]) -> bool:
    words = line.split()
    if words == ["quit"]:
        return False
    if words == ["leak", "on"]:
        plant.s.room_leak_mol_s_bar = ROOM_LEAK_MOL_S_BAR
    elif words == ["leak", "off"]:
        plant.s.room_leak_mol_s_bar = 0.0
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
    plant = HDReactor(DEMO_PARAMS)
    flags = {"reset": False}
    regs.use_plant_clock(start_ns=0, time_scale=time_scale)

    def publish() -> None:
        analog, digital, broken = plant.sensors()
        wiring.publish(regs, analog, {**digital, "reset_button": flags["reset"]}, broken)

    publish()
    regs.regs.plant_alive = 1
    last = time.monotonic()
    running = True
    try:
        while running:
            ready, _, _ = select.select([sys.stdin], [], [], STEP_WALL_S)
            if ready:
                line = sys.stdin.readline()
                running = bool(line) and handle(line, plant, flags)
            now = time.monotonic()
            plant.step(wiring.outputs(regs), (now - last) * time_scale)
            last = now
            publish()
            regs.regs.plant_ns = int(plant.s.t_s * 1e9)
    finally:
        regs.regs.plant_alive = 0
        regs.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2], float(sys.argv[3])))
