"""``reedge``: the command line of the edge controller.

Each subcommand is one small function; ``main`` only parses and dispatches. Errors a
technician can act on (a bad station file, a missing register file, no permission)
print one clear message and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pathlib
import platform
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.app import boards_cli, station_cli, tune
from edge.historian import cli as historian_cli
from edge.telemetry import tail

if TYPE_CHECKING:
    from edge.control.profile import ProfileStep
    from edge.spec.recipe import Recipe

PLUGIN_GROUP = "reedge.commands"   # entry points: NAME = "module:register", register(subparsers) adds commands
DEFAULT_STATE_DIR = "/var/lib/reedge"  # where `reedge run` keeps its state (and the batch records) by default


def cmd_run(args: argparse.Namespace) -> int:
    from edge.app.run import RunOptions, run

    return run(RunOptions(
        station=pathlib.Path(args.station), state_dir=pathlib.Path(args.state_dir),
        recipe=pathlib.Path(args.recipe) if args.recipe else None, batch_id=args.batch_id, operator=args.operator,
        feed=args.feed, mass_in_kg=args.mass_in_kg,
        scan_s=args.scan_s, json_lines=args.json, commands_stdin=args.commands == "stdin",
        exit_when_done=args.exit_when_done, rig=pathlib.Path(args.rig) if args.rig else None,
        broker=args.broker, mqtt_protocol=args.mqtt_protocol, site=args.site, station_id=args.station_id,
        recipes_dir=pathlib.Path(args.recipes_dir) if args.recipes_dir else None,
        telemetry_window_s=args.telemetry_window_s, outbox_quota_bytes=_quota_bytes(args.outbox_quota_mb),
        mqtt_flush_s=args.mqtt_flush_s))


def _quota_bytes(mb: float) -> int:
    from edge.telemetry.outbox import MIN_QUOTA

    if not mb * 1024 * 1024 >= MIN_QUOTA:      # also refuses NaN
        raise ValueError(f"--outbox-quota-mb must be at least {MIN_QUOTA / 1024 / 1024:g}, got {mb:g}")
    return int(mb * 1024 * 1024)


def cmd_tc(args: argparse.Namespace) -> int:
    from edge.thermo import celsius_to_emf, emf_to_celsius

    if args.mv is not None:
        print(f"{emf_to_celsius(args.type, args.mv, cold_junction_c=args.cj):.3f} degC")
    else:
        print(f"{celsius_to_emf(args.type, args.celsius):.4f} mV (reference junction 0 degC)")
    return 0


def _load_recipe(path: str) -> Recipe | None:
    """The recipe, or None after printing every problem in it (the recipe commands then exit 2)."""
    from edge.spec.reader import SpecError
    from edge.spec.recipe_reader import load_recipe

    try:
        return load_recipe(path)
    except SpecError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return None


def cmd_recipe_validate(args: argparse.Namespace) -> int:
    """Every problem as ``RECIPE: key.path: message``; exit 1 with problems, 2 when unreadable."""
    from edge.control.profile import expand_profile
    from edge.spec.recipe_check import check_recipe
    from edge.spec.station import load_station

    recipe = _load_recipe(args.recipe)
    if recipe is None:
        return 2
    station = load_station(args.station)
    problems = check_recipe(recipe, station)
    for problem in problems:
        print(f"{args.recipe}: {problem}")
    if problems:
        return 1
    steps = expand_profile(recipe, station)
    segments = sum(len(phase.program) for phase in recipe.phases)
    at_most = (steps[-1].end_min if steps else 0.0) / 60.0
    print(f"{args.recipe}: OK  \"{recipe.name}\" ({recipe.process}, version {recipe.version}) fits station "
          f"{station.identity.site}/{station.identity.station_id}: {len(recipe.phases)} phases, {segments} program "
          f"segments, at most {at_most:.1f} h")
    return 0


def _hours(minutes: float) -> str:
    whole = round(minutes)
    return f"{whole // 60}:{whole % 60:02d}"


def _setpoints(start: float | None, end: float | None) -> str:
    def one(value: float | None) -> str:
        return "off" if value is None else f"{value:g}"

    return one(start) if start == end else f"{one(start)} -> {one(end)}"


def cmd_recipe_show(args: argparse.Namespace) -> int:
    """The expanded profile as a table (and a PNG): per phase and segment, when, setpoints, gas action."""
    from edge.control.profile import expand_profile
    from edge.spec.recipe_check import check_recipe
    from edge.spec.station import Station, load_station

    recipe = _load_recipe(args.recipe)
    if recipe is None:
        return 2
    station: Station | None = load_station(args.station) if args.station else None
    steps = expand_profile(recipe, station)
    pf, hb = recipe.power_fail, recipe.holdback
    print(f"{args.recipe}: \"{recipe.name}\" ({recipe.process}, version {recipe.version}), control channel "
          f"{recipe.control_channel}; holdback {hb.describe()}; power fail: {pf.strategy} "
          f"(abort after {pf.max_outage_min:g} min)")
    rows = [("phase", "#", "kind", "start", "end", "setpoint degC", "what")]
    for s in steps:
        what = "; ".join(part for part in (s.label if s.kind != "phase" else "", s.action) if part)
        rows.append((s.phase, "-" if s.index is None else str(s.index), s.kind, _hours(s.start_min),
                     _hours(s.end_min) + ("*" if s.worst_case else ""), _setpoints(s.sp_start_c, s.sp_end_c), what))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        cells = [row[i].rjust(widths[i]) if i in (1, 3, 4) else row[i].ljust(widths[i]) for i in range(6)]
        print("  ".join([*cells, row[6]]).rstrip())
    total = steps[-1].end_min if steps else 0.0
    print(f"total: at most {_hours(total)} (h:mm)")
    if any(s.worst_case for s in steps):
        print("* at most: waits, gas steps and phases that end on a measurement are shown at their timeouts "
              "(nominal setpoints start at 20 degC; the programmer starts at the measured temperature)")
    if station is not None:
        problems = check_recipe(recipe, station)
        where = f"{station.identity.site}/{station.identity.station_id}"
        print(f"{len(problems)} problem(s) against station {where}" + (":" if problems else ""))
        for problem in problems:
            print(f"{args.recipe}: {problem}")
    if args.png:
        try:
            _plot_profile(recipe.name, steps, args.png)
        except ImportError:
            print("reedge recipe show: --png needs matplotlib, which is not installed: "
                  ".venv/bin/pip install matplotlib (or pip install -e '.[dev]')", file=sys.stderr)
            return 2
        print(f"profile drawn: {args.png}")
    return 0


def _plot_profile(title: str, steps: Sequence[ProfileStep], path: str) -> None:
    """The temperature profile over time, phases shaded; worst-case (timeout) parts dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    phases: list[tuple[str, float, float]] = []
    for s in steps:
        if not phases or phases[-1][0] != s.phase:
            phases.append((s.phase, s.start_min, s.end_min))
        else:
            phases[-1] = (s.phase, phases[-1][1], s.end_min)
        heated = s.sp_start_c is not None or s.sp_end_c is not None
        style = "--" if s.worst_case else "-" if heated else ":"
        ax.plot([s.start_min / 60.0, s.end_min / 60.0], [s.temp_start_c, s.temp_end_c], style,
                color="tab:red" if heated else "tab:gray", linewidth=2 if heated else 1.2)
    top = max((max(s.temp_start_c, s.temp_end_c) for s in steps), default=100.0) * 1.12 + 20.0
    for i, (name, start, end) in enumerate(phases):
        ax.axvspan(start / 60.0, end / 60.0, color="tab:blue", alpha=0.06 if i % 2 else 0.13, linewidth=0)
        ax.text((start + end) / 120.0, top * 0.97, name, ha="center", va="top", rotation=90, fontsize=8)
    ax.set_ylim(0.0, top)
    ax.set_xlim(0.0, max(steps[-1].end_min / 60.0 if steps else 1.0, 0.1))
    ax.set_xlabel("time, h (dashed: waits and gas steps at their timeouts)")
    ax.set_ylabel("setpoint, degC (dotted: heaters off, nominal)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def cmd_report(args: argparse.Namespace) -> int:
    """One batch's page (HTML, PNG, PDF), or with --csv the LCA table of every batch."""
    state_dirs = [pathlib.Path(d) for d in args.state_dir or [DEFAULT_STATE_DIR]]
    if args.csv:
        return _report_csv(args, state_dirs)
    from edge.batch.report import render_report

    if not args.batch_id:
        raise ValueError("name a batch (reedge report BATCH_ID) or ask for the LCA table (reedge report --csv)")
    if args.batch_id in (".", "..") or "/" in args.batch_id or "\\" in args.batch_id:
        raise ValueError(f"{args.batch_id!r} is not a batch id (a folder name in STATE_DIR/batches)")
    if len(state_dirs) > 1:
        raise ValueError("one --state-dir for a batch report (several are for --csv)")
    files = render_report(state_dirs[0] / "batches" / args.batch_id, pathlib.Path(args.out) if args.out else None)
    for path in (files.html, files.png, files.pdf):
        print(path)
    return 0


def _report_csv(args: argparse.Namespace, state_dirs: list[pathlib.Path]) -> int:
    from edge.batch.export import export_csv

    if args.batch_id or args.out:
        raise ValueError("--csv exports every batch of the state dirs: give no BATCH_ID and no --out (-o FILE "
                         "writes the table to a file)")
    if args.output and args.output != "-":
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            result = export_csv(state_dirs, f, include_open=args.include_open)
    else:
        result = export_csv(state_dirs, sys.stdout, include_open=args.include_open)
    for path, why in result.skipped:
        print(f"reedge report: skipped {path}: {why}", file=sys.stderr)
    if result.open_left_out:
        print(f"reedge report: {result.open_left_out} open batch record(s) left out (--include-open to add them)",
              file=sys.stderr)
    return 1 if result.skipped else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reedge", description="Edge controller for HD reactors and sintering furnaces.")
    ap.add_argument("--version", action="version", version=f"reedge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the controller of a station (recovers an interrupted batch first)")
    p.add_argument("--station", required=True, help="station file")
    p.add_argument("--state-dir", default="/var/lib/reedge", help="run state and latched trips (default %(default)s)")
    p.add_argument("--recipe", help="start a batch with this recipe once running (unless one was recovered)")
    p.add_argument("--batch-id", help="batch id (default: the start time)")
    p.add_argument("--operator", default="", help="who started the batch")
    p.add_argument("--feed", default="", help="what was loaded, for the batch record (e.g. \"EoL motor magnets, lot "
                   "118\")")
    p.add_argument("--mass-in-kg", type=float, help="mass of the charge as loaded, kg (the basis of the per-kg "
                   "figures of the batch record)")
    p.add_argument("--scan-s", type=float, default=1.0, help="controller scan period, s (default 1)")
    p.add_argument("--json", action="store_true", help="events and status as JSON lines")
    p.add_argument("--commands", choices=["none", "stdin"], default="none",
                   help="read operator commands (JSON lines) from stdin")
    p.add_argument("--exit-when-done", action="store_true", help="exit once the batch is done or aborted")
    p.add_argument("--broker", metavar="URL[,URL...]", help="MQTT broker(s), replacing the station's [mqtt] brokers "
                   "(without either, the controller runs without MQTT; it never starts a broker)")
    p.add_argument("--mqtt-protocol", choices=["auto", "5", "3.1.1"], help="replaces [mqtt] protocol (default: the "
                   "station's, else auto)")
    p.add_argument("--site", help="site id in the MQTT topics (default: the station file's)")
    p.add_argument("--station-id", help="station id in the MQTT topics (default: the station file's)")
    p.add_argument("--recipes-dir", help="recipes an MQTT start command may name (default: the folder of --recipe, "
                   "else the station file's)")
    p.add_argument("--telemetry-window-s", type=float, default=1.0, help="one telemetry message per this many "
                   "seconds of core time (default %(default)s)")
    p.add_argument("--outbox-quota-mb", type=float, default=256.0, help="disk quota of the MQTT outbox in the state "
                   "dir; past it telemetry is thinned, never events (default %(default)s)")
    p.add_argument("--mqtt-flush-s", type=float, default=5.0, help="at shutdown, how long to keep sending the "
                   "outbox (the rest waits for the next start; default %(default)s)")
    p.add_argument("--rig", metavar="DIR", help="the virtual plant's folder (its rig.json), as `reedge plant` prints "
                   "it; HIL only, never on a station")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("station", help="station files")
    ssub = p.add_subparsers(dest="station_command", required=True, metavar="ACTION")
    station_cli.register(ssub)  # station check (edge/app/station_cli.py)

    p = sub.add_parser("tc", help="thermocouple conversion (NIST ITS-90)")
    p.add_argument("type", help="B, E, J, K, N, R, S or T")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--mv", type=float, help="measured EMF in mV -> hot-junction temperature")
    g.add_argument("--celsius", type=float, help="temperature -> EMF in mV")
    p.add_argument("--cj", type=float, default=0.0, help="cold-junction temperature in degC (with --mv)")
    p.set_defaults(func=cmd_tc)

    p = sub.add_parser("recipe", help="recipes: validate against a station, show the expanded profile")
    rsub = p.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    c = rsub.add_parser("validate", help="check a recipe and its fit to a station (exit 1: problems, 2: unreadable)")
    c.add_argument("recipe", metavar="RECIPE")
    c.add_argument("--station", required=True, help="station file the recipe is to run on")
    c.set_defaults(func=cmd_recipe_validate)
    c = rsub.add_parser("show", help="print the expanded profile (per phase and segment) and optionally draw it")
    c.add_argument("recipe", metavar="RECIPE")
    c.add_argument("--station", help="station file: its gas roles in the table, and its problems listed")
    c.add_argument("--png", metavar="FILE", help="draw the temperature profile into FILE (needs matplotlib)")
    c.set_defaults(func=cmd_recipe_show)

    p = sub.add_parser("doctor", help="check what this machine gives the controller")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("report", help="a batch's one-page report (HTML, PNG, PDF), or the LCA table of all batches "
                       "(--csv)", description="reedge report BATCH_ID writes report.html, .png and .pdf (exit 2: no "
                       "such batch, or its record is unreadable or damaged). reedge report --csv writes one row per "
                       "batch and exchange for LCA tools (exit 1 when a record had to be skipped).")
    p.add_argument("batch_id", nargs="?", metavar="BATCH_ID", help="the batch (a folder in STATE_DIR/batches)")
    p.add_argument("--state-dir", action="append", metavar="DIR", help=f"state dir of the station (default "
                   f"{DEFAULT_STATE_DIR}, as reedge run); with --csv repeatable, and a batch folder is accepted too")
    p.add_argument("--out", metavar="DIR", help="folder for the report files (default: the batch folder)")
    p.add_argument("--csv", action="store_true", help="write the LCA exchanges table of every finished batch")
    p.add_argument("-o", "--output", metavar="FILE", help="with --csv: write to FILE (default: stdout)")
    p.add_argument("--include-open", action="store_true", help="with --csv: include batches whose record is open "
                   "(running or interrupted)")
    p.set_defaults(func=cmd_report)

    boards_cli.register(sub)  # boards list|show, flash, provision (edge/app/boards_cli.py)
    tune.register(sub)  # autotune: a loop's relay autotune between batches (edge/app/tune.py)
    tail.register(sub)  # tail: watch and check stations' MQTT messages (edge/telemetry/tail.py)
    historian_cli.register(sub)  # historian run|migrate|report|gaps: the plant's record (edge/historian/cli.py)
    load_plugins(sub)   # demo, hil: the test rig's commands (hil/cli.py), and any other installed plugin
    return ap


def load_plugins(sub: argparse._SubParsersAction[Any]) -> None:
    """Let every installed ``reedge.commands`` entry point add its subcommands.

    The product does not know its plugins (the rig among them): they find it through their package's
    metadata. A plugin that fails to load or to register is reported in one line and left out whole (any
    subcommand it added before failing is taken back), so every other command still works."""
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        names, actions = dict(sub.choices), list(sub._choices_actions)
        try:
            register = entry.load()
            register(sub)
        except Exception as exc:     # any failure of foreign code: one line, never a traceback
            sub.choices.clear()
            sub.choices.update(names)
            sub._choices_actions[:] = actions
            print(f"reedge: plugin {entry.name} ({entry.value}) left out: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


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
