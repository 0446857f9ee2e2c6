"""A controller that runs HD batches until it is killed: the victim of the power-fail tests.

``python -m tests.powerfail_worker STATE_PATH RECIPE_PATH`` runs plant, core and controller in
lockstep and saves the run state far more often than in production (every 20 ms of wall time,
and at every change), so that SIGKILL lands in the middle of writes as often as possible.
"""

from __future__ import annotations

import pathlib
import sys

from edge.control.controller import Controller
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import load_station
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAVE_EVERY_S = 0.02     # wall seconds (production: 5): passed to the controller (its default is bound at import)


def main(state_path: str, recipe_path: str) -> int:
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    recipe = load_recipe(recipe_path)
    batch = 0
    while True:
        # beside the state file (the test's tmp_path): SIGKILL leaves the rig's folder behind, and there pytest
        # removes it with the test's other folders
        with LockstepRig(station, HDReactor(), dt_s=2.0, directory=pathlib.Path(state_path).parent) as rig:
            ctl = Controller(rig.core, rig.station, state_path=state_path, save_every_s=SAVE_EVERY_S)
            rig.step(ctl.step)
            batch += 1
            ctl.start_batch(recipe, batch_id=f"pf-{batch}")
            print(f"started {batch}", flush=True)
            rig.run_until(ctl.batch_finished, 30 * 3600, ctl.step)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
