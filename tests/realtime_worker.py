"""Predict, then start: what ``reedge station check`` says the sampler would get, and what the core got.

``python -m tests.realtime_worker STATION REGFILE`` loads the station with its sim driver pointed at
REGFILE, asks ``realtime_outlook`` (before any core exists), then starts the real core and prints both
as one JSON line. tests/test_safety_layers.py runs it as root and as an unprivileged user."""

from __future__ import annotations

import dataclasses
import json
import sys

from edge.app.station_cli import realtime_outlook
from edge.core import Core
from edge.spec.station import load_station


def main(station_path: str, regfile: str) -> int:
    station = load_station(station_path)
    drivers = tuple(dataclasses.replace(d, params={**d.params, "path": regfile}) if d.type == "sim" else d
                    for d in station.core.drivers)
    spec = dataclasses.replace(station.core, drivers=drivers, latch_file=None)
    outlook = realtime_outlook(spec.rt_priority, spec.lock_memory)
    core = Core(spec)
    try:
        core.start()
        stats = core.stats()
        core.stop()
    finally:
        core.close()
    print(json.dumps({"predicted_sched": outlook.sched_ok, "predicted_mlock": outlook.mlock_ok,
                      "sched_why": outlook.sched_why, "mlock_why": outlook.mlock_why,
                      "got_sched": stats.realtime, "got_mlock": stats.memory_locked}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
