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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

from edge.spec.broker import BrokerUrl, parse_broker_list
from edge.spec.station import load_station
from edge.telemetry.embedded_broker import EmbeddedBroker
from edge.telemetry.watch import Watch
from hil.resources import scenarios_dir
from hil.rig import ScenarioRig
from hil.runner import Run, run_scenario
from hil.scenario import MAX_TIME_SCALE, load_scenario

DEFAULT_SCENARIO = scenarios_dir() / "hd_normal_batch.toml"
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
        heater = snap.get("written", {}).get("heater", 0)

        def num(v: Any, fmt: str) -> str:
            return format(v, fmt) if isinstance(v, int | float) else "  -- "

        return (f"  [{bar}] plant {rig.plant_s() / 3600:5.2f} h  {phase:12s} "
                f"charge {num(ch.get('chamber_temp'), '6.1f')} degC  p {num(ch.get('chamber_pressure'), '5.3f')} bar  "
                f"vac {num(ch.get('chamber_vacuum'), '8.2e')} mbar  heater {'on ' if heater else 'off'}  "
                f"(plant truth: H2 in the charge {num(m.get('h2_absorbed_mol'), '5.1f')} mol)")

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
             time_scale: float | None = None, color: bool = True, broker: str | None = "embedded") -> int:
    """``broker``: "embedded" (start one on loopback), a broker URL, or None (no MQTT)."""
    from hil import report

    sc = load_scenario(scenario_path)
    if time_scale is not None:
        if not 1.0 <= time_scale <= MAX_TIME_SCALE:      # NaN fails too
            raise ValueError(f"--time-scale must be within 1 .. {MAX_TIME_SCALE:g} (plant seconds per wall second), "
                             f"got {time_scale:g}")
        sc = dataclasses.replace(sc, time_scale=time_scale)
    url = None if broker in (None, "embedded") else parse_broker_list(str(broker))[0]   # bad URL: before anything
    print(f"reedge demo: {sc.description}")
    print(f"  scenario {sc.source.relative_to(ROOT) if sc.source.is_relative_to(ROOT) else sc.source}, "
          f"plant at {sc.time_scale:g}x real time ({sc.max_plant_s / 3600:g} h at most), reports in {report_dir}")
    print("  the plant runs in its own process; the controller is `reedge run`; the C core reads the plant's clock")
    with contextlib.ExitStack() as stack:
        args: list[str] = []
        watch = None
        mqtt_line = ""
        if broker == "embedded":
            url = stack.enter_context(EmbeddedBroker()).url
            args += ["--mqtt-protocol", "3.1.1"]     # amqtt: 3.1.1 only (edge.telemetry.embedded_broker)
        if url is not None:
            watch = stack.enter_context(_watch(url, sc.station))
            window = max(1.0, sc.time_scale / 10.0)
            args += ["--broker", str(url), "--telemetry-window-s", f"{window:g}"]
            print(f"  MQTT: publishing to {'the embedded broker at ' if broker == 'embedded' else ''}{url}, "
                  f"telemetry every {window:g} s of plant time; watching {watch.topic_filter}")
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
    print(f"  record {report_dir / (sc.name + '.json')}")
    print(f"  plot   {report_dir / (sc.name + '.png')}")
    print(f"  junit  {report_dir / (sc.name + '.junit.xml')}")
    print(f"  logs   {record['workdir']}")
    print("demo complete" if record["outcome"] == "pass" else f"demo FAILED: {record.get('error') or 'see above'}")
    return 0 if record["outcome"] == "pass" else 1


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
    print(f"  batch report {files.html} (and .png, .pdf; `reedge report --csv` for LCA tools)")

