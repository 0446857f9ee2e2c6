"""``reedge demo``: a whole HD batch on the virtual rig, in about a minute, with its evidence.

The demo is a HIL scenario (``hil/scenarios/hd_normal_batch.toml`` by default) run by the same
runner as ``reedge hil run``: the HD reactor plant in its own process on a register file, the real
controller (``reedge run``) beside it with the C core reading the plant's clock, the vacuum gauge
on a pseudo-terminal. While it runs, one status line shows the plant time, the sequence phase,
the charge and the gas; at the end the measurements, and the JSON record, JUnit XML and plot.

**MQTT.** By default the demo starts the embedded broker (``EmbeddedBroker``, amqtt on loopback,
MQTT 3.1.1) and passes it to the controller with ``--broker``, so the controller publishes for
real; ``--broker URL`` uses a given broker instead, ``--no-broker`` runs without MQTT. A
``Watch`` (``reedge tail``'s checks and gap tracker, in this process) subscribes before the
controller starts, and the last line counts what it received per stream and says whether any
message is missing. At 600x one telemetry window per second of plant time would be 600 messages
per wall second; the demo asks for a window of ``time_scale / 10`` plant seconds instead (about
ten a wall second, one a minute of plant time at 600x): ``reedge run``'s default stays 1 s.

**Act 2, a trip.** After the default batch the demo runs ``hil/scenarios/hd_h2_leak_absorption.toml`` (a
flange lets go during absorption: ``h2_leak`` trips, every output goes to its safe level, the batch aborts
to its safe sequence) in lockstep (``hil/lockstep_rig.py``), so the trip costs seconds, not another minute.
``--no-trip`` leaves it out; ``--scenario FILE`` runs that scenario alone.

**The plant historian.** With MQTT, the historian (``hil/demo_historian.py``) stores the station's stream
into ``REPORT_DIR/historian.db`` (SQLite) as a plant's historian would, and serves its fleet page on a free
loopback port (the URL is printed when the batch starts); after the batch the demo checks that the page
lists the batch and its report. ``--no-historian`` leaves it out; ``--keep-page`` keeps the page up at the
end until Enter (on a terminal it stays up anyway).

**Stopping.** Ctrl-C, SIGTERM and SIGHUP (the SSH session went away) close the rig as ``reedge hil run``
does (``hil.runner.interruptible``): no controller and no register file outlive the demo; exit 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Literal

from edge.spec.broker import BrokerUrl, parse_broker_list
from edge.spec.station import load_station
from edge.telemetry.embedded_broker import EmbeddedBroker
from edge.telemetry.watch import Watch
from hil.demo_historian import DemoHistorian
from hil.resources import scenarios_dir
from hil.rig import ScenarioRig
from hil.runner import Interrupted, Run, interruptible, run_scenario
from hil.scenario import MAX_TIME_SCALE, Scenario, load_scenario

DEFAULT_SCENARIO = scenarios_dir() / "hd_normal_batch.toml"
TRIP_SCENARIO = scenarios_dir() / "hd_h2_leak_absorption.toml"     # act 2 (lockstep: seconds of wall time)
ROOT = scenarios_dir().parents[1]   # a shipped scenario is shown as hil/scenarios/NAME.toml
HD_PHASES = ("load_check", "leak_test", "purge", "h2_admission", "absorption", "degassing", "cooling", "unload",
             "done")


class Progress:
    """One live line on a terminal (rewritten in place), or a plain line every few seconds in a log."""

    def __init__(self, color: bool, every_s: float = 0.25) -> None:
        self.tty = sys.stdout.isatty()
        self.color = color and self.tty and os.environ.get("NO_COLOR") is None
        self.every_s = every_s if self.tty else 5.0
        self._last = 0.0
        self._phase: str | None = None
        self._phases_shown = 0
        self._heat: tuple[float, float] | None = None     # (plant s, heater J) at the last status line

    def __call__(self, run: Run, rig: ScenarioRig) -> None:
        now = time.monotonic()
        for entry in run.phases[self._phases_shown:]:      # every phase, also two within one call
            self._phase = entry["phase"]
            self._print(self._phase_line(entry), newline=True)
        self._phases_shown = len(run.phases)
        if now - self._last < self.every_s:
            return
        self._last = now
        self._print(self._status(run, rig), newline=not self.tty)

    def _phase_line(self, entry: dict[str, Any]) -> str:
        t = float(entry["t_s"] or 0.0) / 3600.0
        text = f"  {t:6.2f} h  phase {entry['phase']}"
        return f"\033[1;36m{text}\033[0m" if self.color else text

    def _status(self, run: Run, rig: ScenarioRig) -> str:
        snap: dict[str, Any] = rig.snapshot()
        ch, m = snap.get("channels", {}), snap.get("metrics", {})
        phase = self._phase or "starting"
        done = HD_PHASES.index(phase) + 1 if phase in HD_PHASES else 0
        bar = "#" * done + "." * (len(HD_PHASES) - done)
        duty = self._duty(run, rig.plant_s(), m.get("heater_j"))

        def num(v: Any, fmt: str) -> str:
            return format(v, fmt) if isinstance(v, int | float) else "  -- "

        return (f"  [{bar}] plant {rig.plant_s() / 3600:5.2f} h  {phase:12s} "
                f"charge {num(ch.get('chamber_temp'), '6.1f')} degC  p {num(ch.get('chamber_pressure'), '5.3f')} bar  "
                f"vac {num(ch.get('chamber_vacuum'), '8.2e')} mbar  heater {num(duty, '3.0f')} %  "
                f"(plant truth: H2 in the charge {num(m.get('h2_absorbed_mol'), '5.1f')} mol)")

    def _duty(self, run: Run, plant_s: float, heater_j: Any) -> float | None:
        """The heater's duty in % since the last status line: its energy over the time at its rated power. The
        output level itself is burst-fired (on or off at any instant), so shown as it was it flickered."""
        rated_kw = run.station.accounting.heater_rated_kw.get("heater")
        if not isinstance(heater_j, int | float) or not rated_kw:
            return None
        last, self._heat = self._heat, (plant_s, float(heater_j))
        if last is None or plant_s <= last[0]:
            return None
        return max(0.0, min(100.0, 100.0 * (heater_j - last[1]) / ((plant_s - last[0]) * rated_kw * 1000.0)))

    def _print(self, text: str, newline: bool) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K" + text + ("\n" if newline else ""))
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()


OFFLINE_WAIT_S = 15.0


def _watch(url: BrokerUrl, station_path: pathlib.Path) -> Watch:
    ident = load_station(station_path).identity
    return Watch(url, site=ident.site, station=ident.station_id, client_id=f"reedge-demo-watch-{os.getpid()}")


def _went_offline(w: Watch) -> bool:
    """The station's clean shutdown (status offline) has arrived: what it sent before has too."""
    return w.offline_seen


def run_demo(scenario_path: pathlib.Path = DEFAULT_SCENARIO, *, report_dir: pathlib.Path,
             time_scale: float | None = None, color: bool = True, broker: str | None = "embedded",
             trip: bool = True, historian: bool = True, keep_page: bool = False) -> int:
    """``broker``: "embedded" (start one on loopback), a broker URL, or None (no MQTT). ``trip``: act 2 after the
    default batch. ``historian``: store the stream and serve the fleet page (with MQTT only); ``keep_page``: keep
    the page up at the end until Enter. 0 when every act passed, 1 when one failed, 130 when stopped by a signal."""
    sc = load_scenario(scenario_path)
    if time_scale is not None:
        if not 1.0 <= time_scale <= MAX_TIME_SCALE:      # NaN fails too
            raise ValueError(f"--time-scale must be within 1 .. {MAX_TIME_SCALE:g} (plant seconds per wall second), "
                             f"got {time_scale:g}")
        sc = dataclasses.replace(sc, time_scale=time_scale)
    url = None if broker in (None, "embedded") else parse_broker_list(str(broker))[0]   # bad URL: before anything
    trip_sc = load_scenario(TRIP_SCENARIO) if trip and scenario_path == DEFAULT_SCENARIO else None
    try:
        with interruptible(), contextlib.ExitStack() as demo:
            page: list[DemoHistorian] = []      # the historian's page outlives the batch act: to the demo's end
            passed = _batch_act(sc, report_dir, color, broker, url, demo if historian else None, page)
            if trip_sc is not None:
                passed = _trip_act(trip_sc, report_dir, color) and passed
            if page:
                page[0].hold(keep_page)
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}): the rig was stopped and cleaned up")
        return 130
    print("demo complete" if passed else "demo FAILED: see above")
    return 0 if passed else 1


def _shown(path: pathlib.Path) -> pathlib.Path:
    """A shipped scenario as hil/scenarios/NAME.toml, any other as given."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _batch_act(sc: Scenario, report_dir: pathlib.Path, color: bool, broker: str | None,
               url: BrokerUrl | None, demo: contextlib.ExitStack | None, page: list[DemoHistorian]) -> bool:
    """Act 1; ``demo``: the demo's stack, to run the historian on (None: no historian), which ``page`` gets."""
    from hil import report

    print(f"reedge demo: {sc.description}")
    print(f"  scenario {_shown(sc.source)}, plant at {sc.time_scale:g}x real time ({sc.max_plant_s / 3600:g} h at "
          f"most), reports in {report_dir}")
    print("  the plant runs in its own process; the controller is reedge run, as on a station; its C core reads the "
          "plant's clock")
    with contextlib.ExitStack() as stack:
        args: list[str] = []
        watch = None
        mqtt_line = ""
        historian_ok = True
        if broker == "embedded":
            url = stack.enter_context(EmbeddedBroker()).url
            args += ["--mqtt-protocol", "3.1.1"]     # amqtt: 3.1.1 only (edge.telemetry.embedded_broker)
        if url is not None:
            watch = stack.enter_context(_watch(url, sc.station))
            window = max(1.0, sc.time_scale / 10.0)
            args += ["--broker", str(url), "--telemetry-window-s", f"{window:g}"]
            print(f"  MQTT: publishing to {'the embedded broker at ' if broker == 'embedded' else ''}{url}, "
                  f"telemetry every {window:g} s of plant time; watching {watch.topic_filter}")
            if demo is not None:
                historian = _historian(url, report_dir, "3.1.1" if broker == "embedded" else "5", demo)
                if historian is None:
                    historian_ok = False
                else:
                    page.append(historian)
        else:
            print("  MQTT: off (--no-broker)")
        record = run_scenario(sc, report_dir, Progress(color), controller_args=args)
        if sys.stdout.isatty():
            sys.stdout.write("\r\033[K")
        print()
        if watch is not None:
            # the controller flushed its outbox and said offline before it exited; the last messages
            # may still be on their way through the broker
            watch.wait(_went_offline, OFFLINE_WAIT_S)
            mqtt_line = f"  MQTT: {watch.summary()}"
    for line in report.summary_lines(record):
        print(line)
    if watch is not None:
        print(mqtt_line)
    _batch_report(pathlib.Path(record["workdir"]) / "state", sc.batch_id, report_dir / "batch")
    if page:
        ident = load_station(sc.station).identity
        received = sum(watch.counts.values()) + len(watch.invalid) if watch is not None else 0
        historian_ok, line = page[0].check(ident.site, ident.station_id, sc.batch_id, received)
        print(f"  {line}")
        if historian_ok:
            command = shlex.join(["reedge", "historian", "report", "--db", str(page[0].db)])
            print(f"  plant figures of the historian: `{command}`")
    _evidence(record, report_dir, sc.name)
    if record["outcome"] != "pass" and record.get("error"):
        print(f"  {sc.name} FAILED: {record['error']}")
    return bool(record["outcome"] == "pass") and historian_ok


def _historian(url: BrokerUrl, report_dir: pathlib.Path, protocol: Literal["5", "3.1.1"],
               demo: contextlib.ExitStack) -> DemoHistorian | None:
    """The historian started on the demo's stack (closed when the demo ends), its page's URL printed; None (and
    why, printed) when it cannot start: the demo goes on and fails at the end."""
    historian = DemoHistorian(url, report_dir, protocol=protocol)
    try:
        historian.start()
    except (RuntimeError, ValueError, OSError) as exc:
        historian.close()
        print(f"  historian FAILED to start: {exc}")
        return None
    demo.callback(historian.close)
    print(f"  historian: storing every message in {historian.db} (SQLite); the fleet page: {historian.url}")
    return historian


def _trip_act(sc: Scenario, report_dir: pathlib.Path, color: bool) -> bool:
    """Act 2: the same controller code meets a fault; the measurements say how it ended in the safe state."""
    from hil import report

    print()
    print(f"reedge demo, act 2, a trip: {sc.description}")
    print(f"  scenario {_shown(sc.source)}, in lockstep (plant, core and controller stepped together on the "
          "plant's clock: seconds of wall time)")
    record = run_scenario(sc, report_dir, Progress(color))
    if sys.stdout.isatty():
        sys.stdout.write("\r\033[K")
    print()
    for line in report.summary_lines(record):
        print(line)
    _evidence(record, report_dir, sc.name)
    return bool(record["outcome"] == "pass")


def _evidence(record: dict[str, Any], report_dir: pathlib.Path, name: str) -> None:
    print(f"  record {report_dir / (name + '.json')}")
    print(f"  plot   {report_dir / (name + '.png')}")
    print(f"  junit  {report_dir / (name + '.junit.xml')}")
    print(f"  logs   {record['workdir']}")


def _batch_report(state_dir: pathlib.Path, batch_id: str, out: pathlib.Path) -> None:
    """The batch record the controller kept, in one line, and its one-page report (``reedge report``)."""
    from edge.batch.record import RecordError, batch_dir
    from edge.batch.report import render_report

    try:
        folder = batch_dir(state_dir, batch_id)
        files = render_report(folder, out)
        body = json.loads((folder / "record.json").read_text())["body"]
    except (RecordError, OSError, ValueError) as exc:
        print(f"  batch record: none ({exc})")
        return
    acc = body["accounting"]
    meters, per_kg = acc["meters"], acc["per_kg"]

    def figure(meter: str, unit: str) -> str:
        q = meters.get(meter)
        if q is None or q["value"] is None:
            return f"{meter} not metered"
        return f"{'' if q['complete'] else '>= '}{q['value']:.1f} {unit} {meter}"

    line = ", ".join(figure(m, u) for m, u in (("energy", "kWh"), ("h2", "NL"), ("ar", "NL")))
    if acc.get("heater_model_kwh") is not None:
        line += f" (heater model {acc['heater_model_kwh']:.1f} kWh)"
    if per_kg.get("kwh") is not None:
        line += f"; {per_kg['kwh']:.2f} kWh/kg"
    if per_kg.get("kg_co2e") is not None:
        line += f", {per_kg['kg_co2e']:.2f} kg CO2e/kg at {acc['grid_kg_co2e_per_kwh']:g} kg/kWh"
    print(f"  batch record {body['batch_id']} ({body['record']}, {body['outcome']}): {line}")
    # the command as it works here: `reedge report` reads /var/lib/reedge (a station's) unless told otherwise
    csv = shlex.join(["reedge", "report", "--csv", "--state-dir", str(state_dir)])
    print(f"  batch report {files.html} (and .png, .pdf); for LCA tools: `{csv}`")

