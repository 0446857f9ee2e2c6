"""``reedge autotune``: relay-autotune one loop of a station between batches, and keep the gains if asked.

It is ``reedge run`` with a tune instead of a batch (``edge.app.run.TuneRequest``): the same core, interlocks,
instruments and MQTT, the tune's progress printed as its events, and the run stops when the tune is over. The
station file changes only with ``--write`` and only if the tune gave gains: the new ``kp``, ``ti_s``, ``td_s``
replace the old lines of ``[loops.NAME]``, a comment above the table keeps the old values and the date, and a
file changed since the tune began is left alone (the tune's gains are printed, to be written by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import time
from typing import Any

from edge.files import write_atomic
from edge.spec.loops import PidGains
from edge.spec.reader import SpecError
from edge.spec.station import parse_station
from edge.spec.station.gains import set_gains

__all__ = ["cmd_autotune", "write_gains"]


def cmd_autotune(args: argparse.Namespace) -> int:
    from edge.app.run import RunOptions, TuneRequest, run

    station = pathlib.Path(args.station)
    before = hashlib.sha256(station.read_bytes()).hexdigest()
    request = TuneRequest(args.loop, args.setpoint)
    code = run(RunOptions(station=station, state_dir=pathlib.Path(args.state_dir), json_lines=args.json,
                          rig=pathlib.Path(args.rig) if args.rig else None, broker=args.broker, autotune=request))
    result = request.result
    if code != 0 or result is None or result.get("state") != "done":
        why = result.get("why", "it failed") if result else "stopped before the tune ended"
        print(f"reedge autotune: loop {args.loop}: no gains: {why}")
        return 1
    gains = PidGains(float(result["kp"]), float(result["ti_s"]), float(result["td_s"]))
    print(f"reedge autotune: loop {args.loop}: kp = {gains.kp:.4g}, ti_s = {gains.ti_s:.4g}, td_s = {gains.td_s:.4g} "
          f"(Ku {result['ku']:g}, Tu {result['tu_s']:g} s, {result['rule']})")
    if not args.write:
        print(f"reedge autotune: {station} unchanged (--write puts the gains in, keeping the old ones in a comment)")
        return 0
    write_gains(station, args.loop, gains, before, result)
    print(f"reedge autotune: {station} written; the old gains are in the comment above [loops.{args.loop}]: "
          "restart the station's controller to use the new ones")
    return 0


def write_gains(station: pathlib.Path, loop: str, gains: PidGains, sha256_before: str,
                result: dict[str, Any]) -> None:
    """The gains into the station file; ``SpecError`` (nothing written) if it changed since the tune began or
    the edited file would not load with exactly these gains."""
    data = station.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256_before:
        raise SpecError(str(station), "", "changed while the loop was tuned: not written (put the printed gains in "
                                          "by hand)")
    note = (f"reedge autotune {time.strftime('%Y-%m-%d %H:%M')}: Ku {result['ku']:g}, Tu {result['tu_s']:g} s, "
            f"{result['rule']}; the gains below")
    text = set_gains(data.decode(), loop, gains, note, str(station))
    loaded = {lp.name: lp.gains for lp in parse_station(text, str(station)).loops}
    written = loaded.get(loop)
    if written is None or any(abs(a / b - 1.0) > 1e-3 for a, b in ((written.kp, gains.kp),
                                                                    (written.ti_s, gains.ti_s),
                                                                    (written.td_s, gains.td_s)) if b):
        raise SpecError(str(station), f"loops.{loop}", f"the edited file reads gains {written}, not {gains}: "
                                                       "not written")
    write_atomic(station, text.encode(), mode=station.stat().st_mode & 0o777)


def register(sub: Any) -> None:
    """The ``autotune`` subcommand."""
    p = sub.add_parser("autotune", help="relay-autotune a loop between batches, under the core's interlocks")
    p.add_argument("--station", required=True, help="station file")
    p.add_argument("--loop", required=True, help="the [loops.NAME] to tune")
    p.add_argument("--setpoint", type=float, required=True, help="degC the relay swings around (a working point "
                   "of the loop, at least 12 degC below the station's limit)")
    p.add_argument("--write", action="store_true", help="put the gains found into the station file (the old ones "
                   "stay in a comment above the loop's table)")
    p.add_argument("--state-dir", default="/var/lib/reedge", help="the controller's state dir (default %(default)s)")
    p.add_argument("--json", action="store_true", help="events as JSON lines")
    p.add_argument("--broker", metavar="URL[,URL...]", help="MQTT broker(s), as for reedge run")
    p.add_argument("--rig", metavar="DIR", help="the virtual plant's folder, as `reedge plant` prints it (HIL)")
    p.set_defaults(func=cmd_autotune)
