"""The technician's board commands: ``reedge boards list|show``, ``reedge flash``, ``reedge provision``.

Kept out of ``edge/app/cli.py`` so that the main parser only registers them (``register``); each
command is a small function over ``edge.devices.node.usb``, ``edge.spec.board``, ``edge.spec.node``,
``edge.devices.node.flash`` and ``edge.app.provision``. Errors are raised as ``ValueError``/``RuntimeError``
and printed by ``edge.app.cli.main`` as one line.

The USB listing, the flash and provisioning are imported inside their command, only to keep ``reedge``'s
start-up fast: every invocation imports this module, and the node's serial stack (pyserial, mpremote:
~80 ms) and provisioning (~200 ms) are needed by that one command alone. None of them dodges a cycle.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
from typing import Any

from edge.spec.board import load_board
from edge.spec.node import load_node


def cmd_boards_list(args: argparse.Namespace) -> int:
    from edge.devices.node.usb import format_table, list_serial, probe  # on use: start-up time (module doc)

    ports = list_serial(extra=args.port or ())
    if args.probe:
        # only MicroPython's USB id and ports named with --port: a Ctrl-C sent to a modem or a debug
        # probe's UART is at best noise
        ports = [probe(p) if p.kind == "micropython" or p.device in (args.port or ()) else p for p in ports]
    if args.json:
        print(json.dumps([p.as_json() for p in ports], indent=1))
    else:
        print(format_table(ports))
    return 0


def cmd_boards_show(args: argparse.Namespace) -> int:
    board = load_board(args.name)
    print(f"{board.name}: {board.description}")
    for chip in board.chips:
        older = f" (older kernels: {chip.older_path})" if chip.older_path else ""
        print(f"\nGPIO chip {chip.path}{older}, label {chip.label}, core driver gpiochip"
              + (f": {chip.note}" if chip.note else ""))
        if chip.lines:
            print(f"  {'LINE':>4}  {'NAME':<10} {'PIN':<9} {'DIRECTION':<9} FUNCTION")
        for line in sorted(chip.lines, key=lambda x: x.offset):
            print(f"  {line.offset:>4}  {line.name:<10} {line.pin:<9} {line.direction:<9} {line.function}".rstrip())
    for bus in board.buses:
        taken = f", lines {', '.join(map(str, bus.lines))}" if bus.lines else ""
        print(f"\n{bus.kind} {bus.key}: {', '.join(bus.devices)} (driver {bus.driver}{taken})")
        for extra in (bus.enable and f"enable: {bus.enable}", bus.note):
            if extra:
                print(f"  {extra}")
    if board.watchdog is not None:
        w = board.watchdog
        print(f"\nhardware watchdog: {w.driver}, at most {w.max_s} s" + (f" (enable: {w.enable})" if w.enable else ""))
    if board.sim is not None:
        s = board.sim
        print(f"\nsim register file: {s.analog_inputs} analog in, {s.digital_inputs} digital in, {s.outputs} out "
              "(core driver sim)")
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from edge.devices.node.flash import flash  # on use: start-up time (module doc)

    flash(load_node(args.node), args.port, dry_run=args.dry_run, retarget=args.retarget)
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from edge.app.provision import Options, provision  # on use: start-up time (module doc)

    overrides: dict[str, Any] = {}
    if args.reedge_bin:
        overrides["reedge_bin"] = args.reedge_bin
    if args.watchdog_sec is not None:
        overrides["service_watchdog_s"] = args.watchdog_sec
    if args.hw_watchdog_sec is not None:
        overrides["hardware_watchdog_s"] = args.hw_watchdog_sec
    options = None
    if overrides:
        base = Options() if args.image_root else Options(reedge_bin=_installed_reedge())
        options = Options(**{**base.__dict__, **overrides})
    provision(pathlib.Path(args.station), image_root=pathlib.Path(args.image_root) if args.image_root else None,
              system=args.system, options=options)
    return 0


def _installed_reedge() -> str:
    return shutil.which("reedge") or str(pathlib.Path(sys.prefix) / "bin" / "reedge")


def register(sub: Any) -> None:
    """Add ``boards``, ``flash`` and ``provision`` to the ``reedge`` subparsers."""
    p = sub.add_parser("boards", help="board files and what is plugged in (USB serial ports, sensor nodes)")
    bsub = p.add_subparsers(dest="boards_command", required=True, metavar="ACTION")
    c = bsub.add_parser("list", help="USB serial ports: VID:PID, serial number, maker, which are MicroPython nodes")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--probe", action="store_true",
                   help="ask each node's raw REPL who it is (stops its firmware for a moment, then restarts it)")
    c.add_argument("--port", action="append", metavar="PORT",
                   help="also list (and with --probe, probe) this port, e.g. a pty; repeatable")
    c.set_defaults(func=cmd_boards_list)
    c = bsub.add_parser("show", help="a board file as a wiring table: lines, pins, buses, drivers")
    c.add_argument("name", metavar="BOARD", help="rpi4, rpi5, cm4_industrial, sim (boards/NAME.toml)")
    c.set_defaults(func=cmd_boards_show)

    p = sub.add_parser("flash", help="compile a sensor node's firmware and copy what changed onto it (hash-checked)")
    p.add_argument("--node", required=True, help="node name: boards/nodes/NAME.toml")
    p.add_argument("--port", required=True, help="the node's serial port (see `reedge boards list`)")
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    p.add_argument("--retarget", action="store_true",
                   help="allow flashing a board that is currently another node (changes its identity)")
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("provision", help="write a station's files (service enabled at boot, its user and file "
                                         "ownership, watchdog) to an SBC image or this system")
    p.add_argument("--station", required=True, help="station file (it must name its board)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--image-root", metavar="DIR", help="the image's root folder (a mounted SD card, a rootfs)")
    target.add_argument("--system", action="store_true", help="this running system (needs root)")
    p.add_argument("--reedge-bin", help="absolute path of reedge on the target (default: /opt/reedge/.venv/bin/reedge "
                                        "for an image, this reedge for --system)")
    p.add_argument("--watchdog-sec", type=int, help="systemd WatchdogSec of the service (default 10)")
    p.add_argument("--hw-watchdog-sec", type=int, help="RuntimeWatchdogSec of the hardware watchdog (default 10; at "
                                                     "most the board's [watchdog] max_s, 15 on the Pis)")
    p.set_defaults(func=cmd_provision)
