"""``reedge demo``, ``reedge hil run``, ``reedge plant`` and ``reedge node sim``: the rig's subcommands, a plugin.

The product never imports its test rig: ``edge.app.cli`` loads every entry point of the group
``reedge.commands`` (pyproject.toml: ``hil = "hil.cli:register"``) and hands it its subparsers.
The rig's modules are imported only when one of these commands runs, so ``reedge --help`` and the
product's own commands do not load the plant models or the embedded broker.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any


def cmd_demo(args: argparse.Namespace) -> int:
    from hil.demo import DEFAULT_SCENARIO, run_demo

    scenario = pathlib.Path(args.scenario) if args.scenario else DEFAULT_SCENARIO
    return run_demo(scenario, report_dir=pathlib.Path(args.report_dir), time_scale=args.time_scale,
                    color=not args.no_color, broker=None if args.no_broker else args.broker or "embedded",
                    trip=not args.no_trip, historian=not args.no_historian, keep_page=args.keep_page)


def cmd_hil_run(args: argparse.Namespace) -> int:
    from hil.runner import run_files

    return run_files([pathlib.Path(s) for s in args.scenarios], pathlib.Path(args.report_dir))


def cmd_plant(args: argparse.Namespace) -> int:
    from hil.plant import serve

    return serve(pathlib.Path(args.station), pathlib.Path(args.dir), args.time_scale)


def cmd_node_sim(args: argparse.Namespace) -> int:
    from hil.node_sim import serve

    uid = args.uid.lower()
    if len(uid) != 16 or any(c not in "0123456789abcdef" for c in uid):
        raise ValueError(f"--uid {args.uid!r}: expected 16 hex digits (a Pico's flash id, e.g. e66038b7130f2e2d)")
    return serve(pathlib.Path(args.fs) if args.fs else None, pathlib.Path(args.link) if args.link else None, uid)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``demo``, ``hil``, ``plant`` and ``node`` to ``reedge``'s subcommands (entry point ``reedge.commands``)."""
    p = sub.add_parser("demo", help="a whole HD batch on the virtual rig in about a minute, with its report, "
                       "then a trip")
    p.add_argument("--scenario", help="HIL scenario to run alone (default: the normal HD batch, "
                   "hil/scenarios/hd_normal_batch.toml, then act 2, a trip)")
    p.add_argument("--no-trip", action="store_true", help="leave out act 2 (an H2 leak trips the batch, "
                   "hil/scenarios/hd_h2_leak_absorption.toml, run in lockstep: a few seconds)")
    p.add_argument("--time-scale", type=float, default=None, help="plant seconds per wall second (default: the "
                   "scenario's, 600 for the HD batch)")
    p.add_argument("--report-dir", default="demo-report", help="where the record, JUnit XML and plot go "
                   "(default %(default)s)")
    p.add_argument("--no-color", action="store_true", help="plain output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--broker", metavar="URL", help="publish to this broker (mqtt://host[:port]) instead of the "
                   "embedded one the demo starts on loopback by default")
    g.add_argument("--no-broker", action="store_true", help="run without MQTT")
    p.add_argument("--no-historian", action="store_true", help="leave out the plant historian (it stores the "
                   "stream in REPORT_DIR/historian.db and serves the fleet page on a loopback port)")
    p.add_argument("--keep-page", action="store_true", help="at the end, keep the historian's fleet page up until "
                   "Enter (on a terminal it stays up anyway)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("hil", help="hardware-in-the-loop: run scenarios on the virtual rig")
    hsub = p.add_subparsers(dest="hil_command", required=True, metavar="ACTION")
    c = hsub.add_parser("run", help="run scenario files; exit 1 when an expectation fails, 2 on a bad file")
    c.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="hil/scenarios/*.toml")
    c.add_argument("--report-dir", default="hil-reports", help="JSON, JUnit XML and PNG per scenario "
                   "(default %(default)s)")
    c.set_defaults(func=cmd_hil_run)

    p = sub.add_parser("plant", help="the virtual plant alone (register file, instruments on ptys) until Ctrl-C, "
                       "for a controller you start yourself", description="Prints the `reedge run` line that points "
                       "a controller at it, then runs until Ctrl-C, SIGTERM or SIGHUP (hil/README.md, 'Your own "
                       "controller on the virtual plant').")
    p.add_argument("station", metavar="STATION", help="a station wired to the virtual rig (sim driver), e.g. "
                   "stations/hd_reactor_sim.toml")
    p.add_argument("--time-scale", type=float, default=1.0, help="plant seconds per wall second (default %(default)g)")
    p.add_argument("--dir", default="plant-rig", help="the rig's folder: its binding for `reedge run --rig`, the "
                   "plant's log, the controller's state dir (default %(default)s)")
    p.set_defaults(func=cmd_plant)

    p = sub.add_parser("node", help="sensor nodes without hardware: the virtual Pico (real MicroPython) on a pty")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    c = nsub.add_parser("sim", help="serve a virtual sensor node on a pseudo-terminal until Ctrl-C, to rehearse "
                        "boards list --probe, flash and a station's sensor node", description="Prints the port, then "
                        "runs until Ctrl-C, SIGTERM or SIGHUP (boards/README.md, 'Rehearsing without hardware').")
    c.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the pty (a fixed port name, like "
                   "/dev/serial/by-id/...); removed at the end")
    c.add_argument("--fs", metavar="DIR", help="the node's flash: a folder kept after the sim ends (default: a "
                   "blank temporary one)")
    c.add_argument("--uid", default="e66038b7130f2e2d", help="the board's unique id, 16 hex digits "
                   "(default %(default)s)")
    c.set_defaults(func=cmd_node_sim)
