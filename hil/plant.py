"""``reedge plant STATION``: the virtual plant alone, for a controller the HIL engineer starts.

``reedge demo`` and ``reedge hil run`` start the plant and the controller together; here only the plant runs
(the plant process of ``hil.rig.VirtualRig``: the register file in /dev/shm, the station's serial instruments on
ptys), and the command prints the ``reedge run`` line that points a controller at it (``--rig DIR``: the
binding the rig writes, ``edge.app.rig_binding``). It runs until Ctrl-C, SIGTERM or SIGHUP (the terminal or SSH
session went away), then stops the plant process and removes the register file and the binding (a binding left
behind would point a controller at a register file that is gone); the plant's log and the controller's state dir
stay in DIR. A controller still attached when the plant stops sees its channels go stale (the plant's clock
stops) and trips to the safe state.
"""

from __future__ import annotations

import pathlib
import shlex
import signal
import sys
import threading
from typing import TextIO

from edge.app.rig_binding import FILE_NAME
from edge.spec.station import load_station
from hil.plants import PLANTS
from hil.rig import STOP_SIGNALS, RigConfig, RigError, VirtualRig
from hil.runner import serial_devices
from hil.scenario import MAX_TIME_SCALE


def serve(station_path: pathlib.Path, workdir: pathlib.Path, time_scale: float, out: TextIO = sys.stdout) -> int:
    """Serve the plant until a stop signal: 0 after a clean stop, 1 when the plant process died on its own."""
    if not 1.0 <= time_scale <= MAX_TIME_SCALE:       # NaN fails too
        raise ValueError(f"--time-scale must be within 1 .. {MAX_TIME_SCALE:g} (plant seconds per wall second), "
                         f"got {time_scale:g}")
    station = load_station(station_path)
    kind = station.identity.kind
    if kind not in PLANTS:
        raise ValueError(f"{station_path}: station kind {kind!r} has no plant model (known: {', '.join(PLANTS)})")
    if not any(d.type == "sim" for d in station.core.drivers):
        raise ValueError(f"{station_path}: no `sim` driver: this station is wired to real hardware, not to the "
                         "virtual plant (stations/hd_reactor_sim.toml, stations/sintering_furnace_sim.toml are)")
    outputs = {o.name for o in station.core.outputs}
    cfg = RigConfig(station=station_path, plant=kind, time_scale=time_scale, workdir=workdir,
                    relay_outputs=tuple(o for o in ("heater", "h2_inlet_valve") if o in outputs),
                    serial=serial_devices(station, {}, {}))
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}   # first: a stop while it starts still cleans up
    code = 0
    rig = VirtualRig(cfg)
    try:
        rig.start()
        run = ["reedge", "run", "--station", str(station_path.resolve()), "--rig", str(workdir.resolve()),
               "--state-dir", str(rig.state_dir.resolve())]
        ports = ", ".join(f"{name} on {port}" for name, port in sorted(rig.serial.items())) or "none"
        print(f"virtual {kind} plant for {station_path} at {time_scale:g}x real time: register file {rig.regs_path}; "
              f"serial instruments: {ports}", file=out)
        print("point a controller at it (add --recipe FILE --batch-id ID for a batch, --json for JSON lines):",
              file=out)
        print("  " + shlex.join(run), file=out)
        print(f"the plant's log and the controller's state stay in {workdir}; Ctrl-C stops the plant (stop the "
              "controller first: without the plant its channels go stale and it trips)", file=out, flush=True)
        while not stop.wait(0.2):
            try:
                rig.check(controller_may_be_dead=True)
            except RigError as exc:
                print(f"reedge plant: {exc}", file=out, flush=True)
                code = 1
                break
    finally:
        rig.close()
        (workdir / FILE_NAME).unlink(missing_ok=True)
        for s, handler in old.items():
            signal.signal(s, handler)
    if got:
        print(f"stopped ({signal.Signals(got[0]).name}): plant process ended, register file and ptys gone",
              file=out, flush=True)
    return code
