"""How far the controller falls behind the plant, measured in plant time while a scenario runs.

The plant owns the clock and runs at its time scale whatever the controller does. A controller starved
of CPU (a loaded machine) scans late, and the physics then shows it (a gas top-up overshoots, a soak
drifts) instead of a clear verdict. So the runner probes: it writes an empty command line (``{}``) on
the controller's stdin, which ``reedge run`` reads once per scan and answers line by line; a line
without a verb is refused without anything being executed or recorded (``edge.app.stdin_commands``),
and its ``reply`` line carries ``t_s``, the plant time of the scan that read it. The lag of one probe
is how much later than one scan period after the probe was written that scan came:
``max(0, t_s - written - scan_s)``. One probe is out at a time, the next written once it is answered.

Not measured while the controller is meant not to answer: frozen (SIGSTOP), hung (its scan loop
blocked for good) or dead in a power loss; a probe out at that moment is voided (its late answer, if
one comes, is ignored) and probing starts again at the restarted controller's ``ready`` line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROBE_LINE = json.dumps({}) + "\n"


def is_probe_reply(data: dict[str, object]) -> bool:
    """A reply line answering a probe: from stdin, no verb (the runner's operator steps always name one)."""
    return data.get("type") == "reply" and data.get("source") == "stdin" and data.get("cmd") is None


@dataclass
class LagProbe:
    """Probes on the controller's stdin (module docstring); ``worst_s`` and ``worst_at_s`` for the record."""

    scan_s: float
    write: Callable[[str], None]       # a line to the controller's stdin
    out_at_s: float | None = None      # plant time the probe now out was written
    voided: bool = False               # a probe was out when the controller stopped answering on purpose
    paused: bool = True                # until the controller said ready
    stopped: bool = False              # hung for good: no more probes
    worst_s: float = 0.0
    worst_at_s: float | None = None    # plant time of the late scan
    answered: int = 0

    def ready(self) -> None:
        """The controller (again) said ready: probing starts; a voided probe's answer can no longer come."""
        self.paused = False
        self.voided = False

    def pause(self, *, for_good: bool = False) -> None:
        """The controller is frozen, killed or hung on purpose: what is out is voided."""
        if self.out_at_s is not None:
            self.voided = True
            self.out_at_s = None
        self.paused = True
        self.stopped = self.stopped or for_good

    def resume(self) -> None:
        """A frozen controller runs again (SIGCONT): probes go on; a voided probe's answer is still ignored."""
        if not self.stopped:
            self.paused = False

    def poll(self, plant_s: float) -> None:
        """Write the next probe if none is out (the runner's loop calls this every pass)."""
        if self.paused or self.stopped or self.voided or self.out_at_s is not None:
            return
        try:
            self.write(PROBE_LINE)
        except (OSError, ValueError, RuntimeError):
            return                    # the controller is going away: the runner sees it and says so
        self.out_at_s = plant_s

    def reply(self, t_s: float) -> None:
        """A probe's answer: ``t_s`` is the plant time of the scan that read it."""
        if self.voided:
            self.voided = False       # the late answer to a probe written before a freeze: not a lag
            return
        if self.out_at_s is None or not math.isfinite(t_s):
            return
        lag = max(0.0, t_s - self.out_at_s - self.scan_s)
        self.out_at_s = None
        self.answered += 1
        if lag > self.worst_s:
            self.worst_s, self.worst_at_s = lag, t_s


def lag_measurement(lag: LagProbe | None, limit: float, time_scale: float, *, lockstep: bool = False) -> dict[str, Any]:
    """The worst lag as a measurement of the run's record, limit ``[rig] max_lag_s``: past it the run fails
    with the lag and when it happened, whatever the physics did. In lockstep it is 0 by construction: the
    plant's clock waits for every scan (nothing is probed)."""
    if lockstep:
        return {"name": "controller_lag_s", "measure": "controller_lag_s", "value": 0.0, "unit": "s",
                "limits": {"max": limit}, "outcome": "pass",
                "description": "how late the controller's scans came, in plant seconds past one scan period",
                "note": "lockstep: the controller scans on the plant's clock, every scan_s exactly; it cannot lag"}
    answered = lag.answered if lag is not None else 0
    worst = round(lag.worst_s, 3) if lag is not None and answered else None
    at = lag.worst_at_s if lag is not None else None
    ok = worst is not None and worst <= limit
    if worst is None:
        note = "not measured: no probe was answered"
    elif ok:
        note = f"{answered} probes answered; the latest scan came {worst:g} s late, at plant time {at or 0.0:.0f} s"
    else:
        note = (f"the controller fell behind the plant by {worst:g} s at plant time {at or 0.0:.0f} s (limit"
                f" {limit:g} s, [rig] max_lag_s): the machine could not keep up with time_scale {time_scale:g};"
                " what the physics did after that is not the controller's doing")
    return {"name": "controller_lag_s", "measure": "controller_lag_s", "value": worst, "unit": "s",
            "limits": {"max": limit}, "outcome": "pass" if ok else "fail",
            "description": "how late the controller's scans came, in plant seconds past one scan period", "note": note}
