"""A batch's quality figures, as the record keeps them (``body["quality"]``, flat, the unit in each key).

What the people around the furnace judge a batch by, beside what it consumed:

- ``leak_rise_mbar_per_min``: the pressure rise the HD leak test measured with the pump isolated;
- ``o2_after_purge_pct``: the O2 the analyser read at pressure in the purge cycle that passed;
- ``soak_in_band_s``: plant seconds the control reading was within ``SETTLE_C`` (5 degC) of a soak's
  setpoint (a dwell, wait or end segment of a program, running): ``edge.control.bands`` decides, scan by
  scan; time across a power loss is not counted (nobody saw it);
- ``final_vacuum_mbar``: the vacuum when the last phase under the pump ended (HD: degassing; sintering:
  the last program phase under vacuum, anneal_2);
- ``h2_top_ups``: the times absorption opened the H2 inlet again;
- ``interlock_trips``: the core's interlock trips during the batch (listed among the record's events);
- ``nuisance_alarms``: chattering raises and fleeting clears of its process alarms (ISA-18.2): above zero,
  an alarm's settings want a look;
- ``deviation_alarm_rests``: the times the program outran the plant, so that a deviation alarm judged the
  PV against the setpoint the plant can reach instead of the program's (``edge.control.alarms``).

The first four come from the sequencer (``Sequencer.results``: a phase's own data is gone in the scan it
ends). ``None``: not measured, because the process has no such step or the batch did not reach it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

FROM_SEQUENCER = ("leak_rise_mbar_per_min", "o2_after_purge_pct", "final_vacuum_mbar", "h2_top_ups")
KEYS = (*FROM_SEQUENCER, "soak_in_band_s", "interlock_trips", "nuisance_alarms", "deviation_alarm_rests")


def empty() -> dict[str, Any]:
    """A new record's quality: nothing measured yet, no trip."""
    return {**dict.fromkeys(KEYS), "soak_in_band_s": 0.0, "interlock_trips": 0, "nuisance_alarms": 0,
            "deviation_alarm_rests": 0}


def merge(quality: dict[str, Any], results: Mapping[str, Any], soak_s: float) -> None:
    """The sequencer's figures so far into ``quality`` (a figure it no longer has, after a restart whose run
    state was lost, is kept), and the soak time."""
    for key in FROM_SEQUENCER:
        value = results.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        quality[key] = int(value) if key == "h2_top_ups" else float(value)
    quality["soak_in_band_s"] = round(soak_s, 1)
