"""``reedge``: the command line of the edge controller.

Each subcommand is one small function; ``main`` only parses and dispatches. Errors a
technician can act on (a bad station file, a missing register file, no permission)
print one clear message and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
from collections.abc import Callable, Sequence

from edge import __version__

STATIONS = pathlib.Path(__file__).resolve().parent.parent / "stations"
DEFAULT_STATION = STATIONS / "hd_reactor_sim.toml"


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    return run_demo(pathlib.Path(args.station), time_scale=args.time_scale, color=not args.no_color)


def cmd_station_check(args: argparse.Namespace) -> int:
    from edge.config import load_station

    station = load_station(pathlib.Path(args.file))
    core = station.core
    print(f"{args.file}: OK  station {station.identity.site}/{station.identity.station_id} "
          f"({station.identity.kind})")
    print(f"  period {core.period_ms} ms, {len(core.drivers)} driver(s), {len(core.channels)} channels, "
          f"{len(core.outputs)} outputs, {len(core.rules)} interlocks, {len(core.permissives)} permissive terms")
    for rule in core.rules:
        what = rule.channel or "controller heartbeat"
        print(f"  interlock {rule.name}: {rule.kind} {what} {rule.threshold:g}"
              f"{' latched' if rule.latch else ''} -> safe: {', '.join(rule.action)}")
    return 0


def cmd_tc(args: argparse.Namespace) -> int:
    from edge.thermo import celsius_to_emf, emf_to_celsius

    if args.mv is not None:
        print(f"{emf_to_celsius(args.type, args.mv, cold_junction_c=args.cj):.3f} degC")
    else:
        print(f"{celsius_to_emf(args.type, args.celsius):.4f} mV (reference junction 0 degC)")
    return 0


def _check(label: str, ok: bool, detail: str) -> bool:
    print(f"  [{'ok' if ok else '--'}] {label}: {detail}")
    return ok


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine gives the controller: the C core, real-time, memory locking, GPIO, SPI."""
    print(f"reeproduce-edge {__version__} on {platform.platform()}, Python {platform.python_version()}")
    healthy = True
    try:
        from edge.core import native

        ffi, _lib = native()
        healthy &= _check("C core", True, f"edge._core loaded (ec_sample {ffi.sizeof('ec_sample')} bytes)")
    except ImportError as exc:
        healthy &= _check("C core", False, f"not built: {exc}. Run ./dev test or pip install .")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        _check("real-time scheduling", True, "SCHED_FIFO permitted: the sampler runs real-time")
    except (PermissionError, OSError):
        _check("real-time scheduling", False, "SCHED_FIFO not permitted (run as a service with "
               "LimitRTPRIO or CAP_SYS_NICE); the sampler falls back to the normal scheduler")
    chips = sorted(pathlib.Path("/dev").glob("gpiochip*"))
    _check("GPIO character devices", bool(chips), ", ".join(map(str, chips)) or "none (sim only)")
    spis = sorted(pathlib.Path("/dev").glob("spidev*"))
    _check("SPI devices", bool(spis), ", ".join(map(str, spis)) or "none (enable SPI in the board config)")
    wd = pathlib.Path("/dev/watchdog")
    _check("hardware watchdog", wd.exists(), str(wd) if wd.exists() else "no /dev/watchdog")
    return 0 if healthy else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reedge", description="Edge controller for HD reactors and sintering furnaces.")
    ap.add_argument("--version", action="version", version=f"reedge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the core against a simulated HD reactor, provoke a trip, show the safe state")
    p.add_argument("--station", default=str(DEFAULT_STATION), help="station file (default: the example HD reactor)")
    p.add_argument("--time-scale", type=float, default=10.0, help="plant seconds per wall second (default 10)")
    p.add_argument("--no-color", action="store_true", help="plain output")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("station", help="station files")
    ssub = p.add_subparsers(dest="station_command", required=True, metavar="ACTION")
    c = ssub.add_parser("check", help="validate a station file and summarise its interlocks")
    c.add_argument("file")
    c.set_defaults(func=cmd_station_check)

    p = sub.add_parser("tc", help="thermocouple conversion (NIST ITS-90)")
    p.add_argument("type", help="B, E, J, K, N, R, S or T")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--mv", type=float, help="measured EMF in mV -> hot-junction temperature")
    g.add_argument("--celsius", type=float, help="temperature -> EMF in mV")
    p.add_argument("--cj", type=float, default=0.0, help="cold-junction temperature in degC (with --mv)")
    p.set_defaults(func=cmd_tc)

    p = sub.add_parser("doctor", help="check what this machine gives the controller")
    p.set_defaults(func=cmd_doctor)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        # config errors, thermocouple range errors, core errors: one clear line, no traceback
        print(f"reedge {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
