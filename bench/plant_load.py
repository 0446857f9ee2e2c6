"""A plant of simulated stations: the load for the historian's bench and its fault test.

Each simulated station publishes through what a real one uses (``edge.telemetry``): its own durable
``Outbox`` in its own directory and a ``DescribedSession`` to the broker, with the real station
description of ``stations/hd_reactor_sim.toml`` (its SHA-256 in the birth and in every window). Only
the controller and the C core are left out: the bodies a scan would put are made here, from a small
model of an HD batch (phases, temperatures, pressures, flows), and put once per plant second in one
outbox transaction, as a scan puts its messages. Every body is checked by ``tail.check_message`` once
at start, so what the historian receives is valid and whatever it quarantines is its own doing.

**Plant time.** ``speed`` plant seconds pass per real second. Per plant second a station puts one
telemetry window (1 s, 10 channels, 3 outputs); per plant minute a state (outputs change); per phase
(``batch_s`` / 8) a phase event and a state; per batch (``batch_s``, 3600 by default: "a batch record
per hour of plant time") an end record and the next start record, and one alarm raised and cleared.
That is 1 + 1/60 + 22/3600, about **1.02 messages per plant second**: at ``speed`` 1 each simulated
station sends what a real station with 1 s telemetry windows sends, at ``speed`` F what F stations send
(real HD batches last about 12 h; one per hour is 12 times more batch records than a real plant makes).
The stations' batch clocks are spread evenly over one batch, so batch records arrive all along a run.

**What was sent** is what the outboxes say: each station's boot id and last sequence number per stream
(``Outbox.last_sequences``); sequence numbers start at 1 per boot and stream and nothing is thinned at
these sizes, so a consumer that has every number from 1 to that last one, once, has everything.

**Commands**: each station serves the ``resend`` verb as a real one does (``CommandHandler`` with its
outbox's ``resend``: the history of what the broker acknowledged, put in the outbox again), so the
historian can ask for what a broker lost; every other verb is refused (there is no process). Who may ask:
the roles of the station file, plus ``viewer`` for ``historian_identity`` (``historian``; None: only the
station file's). The plant's command thread answers them (``Plant.start`` to ``Plant.stop``), each answer
(audit event, reply) stored before the command is acknowledged, as the publisher does; one command ledger
serves the process's stations.

One process drives all its stations from one thread (``Plant.run``); each station's session has its own
network thread and its outbox a syncer thread, as on a real station. A session waits on its sockets with
``select``, which takes no descriptor above 1,023, and a station holds 8: about 120 stations fit in one
process (measured: with 200 every session failed, "filedescriptor out of range in select()"). So a plant of
hundreds runs as several processes: ``python -m bench.plant_load`` runs one part of it (``--first``,
``--stations``), prints ``ready`` once its stations are made (and their backlog put), starts them when it
reads ``go`` on stdin (the parent says it to every part at once), and prints one JSON line with what it sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt

from edge.operator.execute import Operator
from edge.operator.target import CommandRefused
from edge.operator.verbs import StartRequest
from edge.spec.access import CommandSettings
from edge.spec.broker import BrokerSettings, parse_broker_url
from edge.spec.resources import example_stations_dir, schemas_dir
from edge.spec.station import load_station
from edge.telemetry.commands import CommandHandler, CommandLedger, Outcome
from edge.telemetry.description import DescribedSession, Describer
from edge.telemetry.envelope import build, previous_boot
from edge.telemetry.outbox import Draft, Outbox, Priority
from edge.telemetry.session import Ack, PutItem, StopResult
from edge.telemetry.tail import check_message
from edge.telemetry.topics import STREAMS, StationTopics, check_level, window_heads
from edge.timestamps import rfc3339_ms

SITE = "bench-plant"
CHANNELS = ("chamber_temp", "chamber_temp_safety", "chamber_pressure", "o2_pct", "h2_room", "cooling_water_flow",
            "chamber_vacuum", "heater_power", "h2_flow", "ar_flow")
PHASES = ("load_check", "leak_test", "purge", "h2_admission", "absorption", "degassing", "cooling", "unload")
# per phase: chamber temperature (degC), pressure (bar abs), heater power (W), H2 and Ar flow (NL/min)
PHASE_PLANT = {
    "load_check": (22.0, 1.01, 0.0, 0.0, 0.0), "leak_test": (22.0, 0.0005, 0.0, 0.0, 0.0),
    "purge": (22.0, 1.1, 0.0, 0.0, 20.0), "h2_admission": (25.0, 1.8, 0.0, 40.0, 0.0),
    "absorption": (110.0, 1.7, 0.0, 5.0, 0.0), "degassing": (600.0, 0.05, 9000.0, 0.0, 0.0),
    "cooling": (300.0, 1.05, 0.0, 0.0, 10.0), "unload": (45.0, 1.01, 0.0, 0.0, 0.0),
}
STATE_EVERY_S = 60
ALARM = "chamber_temp_deviation"
MASS_IN_KG = 25.0
SIMULATED_STATION_FILE = "hd_reactor_sim.toml"
HISTORIAN = "historian"          # the identity given the viewer role by default (it asks for resends)
NO_PROCESS = "a simulated station (bench.plant_load) has no process: only resend is served"


@dataclass(frozen=True)
class Plan:
    """How plant time runs: ``speed`` plant seconds per real second, a batch every ``batch_s`` plant seconds."""

    speed: float = 1.0
    batch_s: int = 3600

    def __post_init__(self) -> None:
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError(f"speed must be a positive number, got {self.speed!r}")
        if self.batch_s < 2 * len(PHASES):
            raise ValueError(f"batch_s must be at least {2 * len(PHASES)} plant seconds, got {self.batch_s!r}")

    @property
    def phase_s(self) -> int:
        return self.batch_s // len(PHASES)


@dataclass
class Sent:
    """What one station's outbox gave numbers to: its boot and the last sequence number per stream."""

    site: str
    station: str
    boot_id: str
    last: dict[str, int]
    remaining: int = 0          # still in the outbox when the station stopped (not delivered to the broker)

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "station": self.station, "boot_id": self.boot_id, "last": self.last,
                "remaining": self.remaining}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Sent:
        last = {str(k): int(v) for k, v in d["last"].items()}
        return Sent(str(d["site"]), str(d["station"]), str(d["boot_id"]), last, int(d["remaining"]))


def station_name(index: int) -> str:
    return f"hd-{index:04d}"


class _Bodies:
    """The bodies a scan would put, from a small model of an HD batch (see the module docstring)."""

    def __init__(self, station: str, description_sha256: str, plan: Plan, epoch_s: float) -> None:
        self.station = station
        self.sha = description_sha256
        self.plan = plan
        self.epoch_s = epoch_s
        example = schemas_dir() / "examples"
        self._end_template = json.loads((example / "batch-end.json").read_text())["body"]
        self._start_template = json.loads((example / "batch-start.json").read_text())["body"]
        self._state_template = json.loads((example / "state-running.json").read_text())["body"]

    def utc(self, plant_s: float) -> str:
        return rfc3339_ms(int((self.epoch_s + plant_s) * 1e9))

    def batch_id(self, n: int) -> str:
        return f"{self.station}-b{n:05d}"

    def telemetry(self, p: int, phase: str) -> dict[str, Any]:
        temp, bar, watts, h2, ar = PHASE_PLANT[phase]
        wobble = math.sin(p / 37.0)
        values = (temp + wobble, temp - 1.5 + wobble, bar * (1 + 0.001 * wobble), 0.02, 0.5, 12.0 + 0.1 * wobble,
                  bar * 1000.0, watts, h2, ar)
        channels = {}
        for name, v in zip(CHANNELS, values, strict=True):
            v = round(v, 4)
            channels[name] = {"last": v, "min": round(v - 0.05, 4), "max": round(v + 0.05, 4), "mean": v,
                              "count": 1000, "valid": 1000, "status": []}
        heater = 1 if watts > 0 else 0
        return {"window": {"start_ns": p * 1_000_000_000, "end_ns": (p + 1) * 1_000_000_000,
                           "first_tick": p * 1000 + 1, "last_tick": (p + 1) * 1000, "samples": 1000,
                           "ticks_missed": 0, "start_utc": self.utc(p), "end_utc": self.utc(p + 1)},
                "channels": channels, "outputs": {"h2_inlet_valve": int(h2 > 0), "heater": heater, "vent_valve": 0},
                "tripped": [], "description_sha256": self.sha}

    def state(self, phase: str, batch: int, minute: int) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(self._state_template))
        body["phase"] = phase
        body["batch"]["id"] = self.batch_id(batch)
        body["outputs"]["heater"]["level"] = minute % 2 if phase == "degassing" else 0
        return body

    def phase_event(self, q: int, phase: str, previous: str) -> dict[str, Any]:
        return {"kind": "phase", "source": "controller", "severity": "info", "message": f"{previous} -> {phase}",
                "t_core_s": float(q), "phase": phase, "previous": previous, "reason": "step complete"}

    def alarm_event(self, q: int, raised: bool) -> dict[str, Any]:
        return {"kind": "alarm", "source": "alarms", "severity": "warning",
                "message": "chamber temperature deviates from setpoint", "t_core_s": float(q), "alarm": ALARM,
                "alarm_event": "raised" if raised else "cleared"}

    def batch_start(self, n: int) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(self._start_template))
        body["batch_id"] = self.batch_id(n)
        body["started"] = self.utc(n * self.plan.batch_s)
        return body

    def batch_end(self, n: int) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(self._end_template))
        start_s, end_s = n * self.plan.batch_s, (n + 1) * self.plan.batch_s
        body.update(batch_id=self.batch_id(n), started=self.utc(start_s), ended=self.utc(end_s),
                    duration_s=float(self.plan.batch_s), revision=1)
        phase_s = self.plan.phase_s
        body["phases"] = [{"phase": ph, "started": self.utc(start_s + i * phase_s),
                           "ended": self.utc(start_s + (i + 1) * phase_s), "duration_s": float(phase_s)}
                          for i, ph in enumerate(PHASES)]
        body["events"] = []
        mass_out = round(MASS_IN_KG * (1.0 + 0.001 * (n % 7)), 3)
        body["product"] = {"mass_out_kg": mass_out, "yield_pct": round(100.0 * mass_out / MASS_IN_KG, 2)}
        energy = round(40.0 + (n % 5), 3)
        acc = body["accounting"]
        acc.update(energy_kwh=energy, kg_co2e=round(energy * 0.25, 6), kwh_per_kg=round(energy / MASS_IN_KG, 6),
                   kg_co2e_per_kg=round(energy * 0.25 / MASS_IN_KG, 6))
        return body


class _NoProcess:
    """The command target of a simulated station: every process verb is refused (``NO_PROCESS``)."""

    def _refuse(self, *_: Any) -> None:
        raise CommandRefused("refused", NO_PROCESS)

    def start_batch(self, request: StartRequest) -> None:
        self._refuse()

    def hold(self, reason: str) -> None:
        self._refuse()

    def resume(self) -> None:
        self._refuse()

    def abort(self, reason: str) -> None:
        self._refuse()

    def skip(self) -> None:
        self._refuse()

    def ack_alarm(self, alarm: str) -> None:
        self._refuse()

    def reset(self, rule: str | None, remote: bool = True) -> None:
        self._refuse()

    def record_mass(self, batch_id: str | None, mass_out_kg: float) -> None:
        self._refuse()

    def autotune(self, loop: str, setpoint_c: float) -> None:
        self._refuse()


@dataclass
class _Command:
    """A command as the session delivered it, waiting for the plant's command thread."""

    station: PlantStation
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    ack: Ack


class PlantStation:
    """One simulated station: its outbox, its session, its command handler, and its own batch clock (``offset_s``
    into a batch). ``commands``: where its session hands the commands it receives (the plant's command thread)."""

    def __init__(self, *, site: str, station: str, workdir: pathlib.Path, broker: BrokerSettings,
                 describer: Describer, plan: Plan, offset_s: int, epoch_s: float, settings: CommandSettings,
                 ledger: CommandLedger, commands: Callable[[_Command], None]) -> None:
        self.site, self.station = site, station
        self.topics = StationTopics(site, station)
        self.plan = plan
        self.offset_s = offset_s
        self.outbox = Outbox(workdir / station / "outbox.db", event_topic=self.topics.event)
        description = describer.current()
        self.description = description
        self.session = DescribedSession(self.outbox, replace(broker, client_id=f"reedge-{site}-{station}"),
                                        site=site, station=station, previous=previous_boot(self.outbox))
        self.session.description_sha256 = description.sha256
        self.handler = CommandHandler(topics=self.topics, settings=settings, ledger=ledger,
                                      operator=Operator(_NoProcess(), allow_remote_reset=False),
                                      resend=self.outbox.resend)

        def received(message: mqtt.MQTTMessage, ack: Ack) -> None:      # the session's network thread
            props = getattr(message, "properties", None)
            correlation = getattr(props, "CorrelationData", None)
            commands(_Command(self, message.topic, bytes(message.payload), getattr(props, "ResponseTopic", None),
                              None if correlation is None else bytes(correlation), ack))

        self.session.subscribe_acked(self.topics.cmd_filter, 1, received)
        self.bodies = _Bodies(station, description.sha256, plan, epoch_s)
        self.next_s = 0                 # the next plant second to put
        self.started = False
        # first of this boot, as ``Publisher.start`` puts it: what every other message's names and units mean
        spec = STREAMS["description"]
        assert spec.priority is not None
        self.outbox.put_many([Draft("description", self.topics.description, description.body, spec.priority,
                                    spec.qos, spec.retain)])

    def _q(self, p: int) -> int:
        return p + self.offset_s

    def _items(self, p: int) -> list[PutItem]:
        """Everything plant second ``p`` of this station puts (one scan)."""
        plan, b = self.plan, self.bodies
        q = self._q(p)
        batch, into = divmod(q, plan.batch_s)
        phase_i = min(into // plan.phase_s, len(PHASES) - 1)
        phase = PHASES[phase_i]
        items: list[PutItem] = []
        if p == 0 or into == 0:
            if p > 0:
                items.append(("batch", b.batch_end(batch - 1), None, None))
            items.append(("batch", b.batch_start(batch), None, None))
        if into > 0 and into % plan.phase_s == 0 and into // plan.phase_s < len(PHASES):
            items.append(("event", b.phase_event(q, phase, PHASES[phase_i - 1]), None, None))
            items.append(("state", b.state(phase, batch, q // 60), None, None))
        elif p == 0 or q % STATE_EVERY_S == 0:
            items.append(("state", b.state(phase, batch, q // 60), None, None))
        if into == plan.phase_s * 5 + 7 or into == plan.phase_s * 5 + 97:    # in degassing: raised, then cleared
            items.append(("event", b.alarm_event(q, into == plan.phase_s * 5 + 7), Priority.ALARM, None))
        window = b.telemetry(p, phase)
        heads = window_heads(self.outbox.last_sequences())
        if heads:       # as ``Publisher`` names them: what was put before this window
            window["heads"] = heads
        items.append(("telemetry", window, None, None))
        return items

    def self_check(self) -> None:
        """Every kind of body this station puts passes the checks a consumer makes (``check_message``)."""
        seen: set[str] = set()
        for p in range(2 * self.plan.batch_s):
            for stream, body, _, _ in self._items(p):
                assert isinstance(body, dict)
                kind = stream if stream != "event" else f"event {body['kind']}"
                if kind in seen:
                    continue
                seen.add(kind)
                payload = build(site=self.site, station=self.station, boot_id="check", stream=stream, seq=1,
                                created_ns=time.time_ns(), body=body)
                problems = check_message(self.topics.topic(stream), payload).problems
                if problems:
                    raise AssertionError(f"a simulated {kind} message is invalid: {problems}")

    def put_until(self, plant_s: int) -> int:
        """Put every plant second up to ``plant_s`` (excluded) not put yet, a transaction each; how many messages."""
        n = 0
        while self.next_s < plant_s:
            items = self._items(self.next_s)
            self.session.put_many(items)
            n += len(items)
            self.next_s += 1
        return n

    def start(self) -> None:
        """Connect in the background (what was put waits in the outbox until the broker takes it)."""
        if not self.started:
            self.session.start()
            self.started = True

    def answer(self, c: _Command) -> Outcome:
        """One command answered: the audit event, then the reply, stored (and the session woken: a resend put
        messages in the outbox again), then the command acknowledged."""
        out = self.handler.handle(c.topic, c.payload, response_topic=c.response_topic,
                                  correlation_data=c.correlation_data)
        drafts = [Draft("event", self.topics.event, out.event.body, out.event.priority, STREAMS["event"].qos,
                        STREAMS["event"].retain)]
        if out.reply_topic is not None:
            drafts.append(Draft("reply", out.reply_topic, out.reply, Priority.EVENT, STREAMS["reply"].qos,
                                STREAMS["reply"].retain))
        self.outbox.put_many(drafts)
        self.session.put_many([])
        c.ack()
        return out

    def stop(self, flush_timeout_s: float) -> tuple[Sent, StopResult]:
        result = self.session.stop(flush_timeout_s)
        sent = Sent(self.site, self.station, self.outbox.boot_id, {k: v for k, v in self.outbox.last_sequences().items()
                                                                  if k in STREAMS}, result.remaining)
        self.outbox.close()
        return sent, result


class Plant:
    """``count`` simulated stations (numbered from ``first``, of ``total`` in the whole plant, for the batch
    clocks' spread) under ``workdir``, publishing to ``broker``."""

    def __init__(self, broker: BrokerSettings, workdir: pathlib.Path, *, count: int, first: int = 0,
                 total: int | None = None, plan: Plan | None = None, site: str = SITE,
                 epoch_s: float | None = None, historian_identity: str | None = HISTORIAN) -> None:
        if count < 1:
            raise ValueError(f"a plant needs at least one station, got {count}")
        self.plan = plan or Plan()
        total = total or first + count
        station_file = example_stations_dir() / SIMULATED_STATION_FILE
        spec = load_station(station_file)
        describer = Describer(spec, window_s=1.0)
        settings = spec.commands
        if historian_identity is not None:
            roles = dict(settings.roles)
            roles[historian_identity] = roles.get(historian_identity, frozenset()) | {"viewer"}
            settings = replace(settings, roles=roles)
        epoch = time.time() if epoch_s is None else epoch_s
        self.commands: queue.Queue[_Command] = queue.Queue()
        self.answered = 0             # commands answered (the command thread)
        # one command ledger for the process (command ids are uuids): one per station would cost each 3 more
        # descriptors, and a session's select takes none above 1,023 (the module docstring)
        workdir.mkdir(parents=True, exist_ok=True)
        self.ledger = CommandLedger(workdir / f"commands-{site}-{first:04d}.db")
        self.stations: list[PlantStation] = []
        try:
            for i in range(first, first + count):
                offset = (i * self.plan.batch_s) // total
                self.stations.append(PlantStation(site=site, station=station_name(i), workdir=workdir,
                                                  broker=broker, describer=describer, plan=self.plan,
                                                  offset_s=offset, epoch_s=epoch, settings=settings,
                                                  ledger=self.ledger, commands=self.commands.put))
            self.stations[0].self_check()
        except BaseException:
            for s in self.stations:
                s.outbox.close()
            self.ledger.close()
            raise
        self.messages = 0
        self._stop = threading.Event()
        self._commands_done = threading.Event()
        self._command_thread = threading.Thread(target=self._serve_commands, name="plant-commands", daemon=True)
        self._stopped: tuple[list[Sent], list[StopResult], float] | None = None

    def backlog(self, plant_s: int) -> int:
        """Put ``plant_s`` plant seconds at once, before the sessions start (a station back after an outage)."""
        n = 0
        for s in self.stations:
            n += s.put_until(plant_s)
        self.messages += n
        return n

    def start(self) -> None:
        for s in self.stations:
            s.start()
        self._command_thread.start()

    def _serve_commands(self) -> None:
        """The command thread: each command answered (``PlantStation.answer``) until ``stop``; one that cannot be
        is left unacknowledged (its broker sends it again on the next connection)."""
        while not self._commands_done.is_set():
            try:
                c = self.commands.get(timeout=0.1)
            except queue.Empty:
                continue
            with contextlib.suppress(Exception):
                c.station.answer(c)
                self.answered += 1

    def stop_clock(self) -> None:
        """Ends ``run`` early (from another thread)."""
        self._stop.set()

    def run(self, seconds: float) -> tuple[float, float]:
        """Drive the plant clock for ``seconds`` of real time (or until ``stop_clock``): every station puts each
        plant second when it is due. Returns (largest delay behind the clock, real seconds run). Puts wake the
        sessions; the clock never waits for the network."""
        t0 = time.monotonic()
        base = [s.next_s for s in self.stations]
        behind = 0.0
        while not self._stop.is_set():
            elapsed = time.monotonic() - t0
            if elapsed >= seconds:
                break
            due = int(elapsed * self.plan.speed) + 1          # plant seconds due by now (the one begun included)
            for s, b in zip(self.stations, base, strict=True):
                self.messages += s.put_until(b + due)
            behind = max(behind, time.monotonic() - (t0 + (due - 1) / self.plan.speed))
            self._stop.wait(max(0.0, t0 + due / self.plan.speed - time.monotonic()))
        return behind, time.monotonic() - t0

    def stop(self, flush_timeout_s: float = 60.0) -> tuple[list[Sent], list[StopResult], float]:
        """Stop every session (each flushes its outbox, up to ``flush_timeout_s`` in all): what was sent.
        Idempotent (a second call returns the first one's answer)."""
        if self._stopped is not None:
            return self._stopped
        self._commands_done.set()         # no command is answered once the stations flush
        if self._command_thread.is_alive():
            self._command_thread.join()
        t0 = time.monotonic()
        deadline = t0 + flush_timeout_s
        results: list[tuple[Sent, StopResult]] = [None] * len(self.stations)  # type: ignore[list-item]

        def stop_one(i: int, s: PlantStation) -> None:
            results[i] = s.stop(max(0.0, deadline - time.monotonic()))

        threads = [threading.Thread(target=stop_one, args=(i, s)) for i, s in enumerate(self.stations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.ledger.close()
        self._stopped = [r[0] for r in results], [r[1] for r in results], time.monotonic() - t0
        return self._stopped


def expected_rows(sent: Iterable[Sent]) -> dict[tuple[str, str, str, str], int]:
    """(site, station, boot, stream) -> how many numbers were given (1..last): every one must be stored once."""
    return {(s.site, s.station, s.boot_id, stream): last for s in sent for stream, last in s.last.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plant_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", required=True, help="mqtt://host:port")
    ap.add_argument("--dir", required=True, type=pathlib.Path, help="where the stations' outboxes go")
    ap.add_argument("--stations", type=int, default=10, help="stations in this process")
    ap.add_argument("--first", type=int, default=0, help="number of the first station of this process")
    ap.add_argument("--total", type=int, default=None, help="stations in the whole plant (all processes)")
    ap.add_argument("--seconds", type=float, default=30.0, help="real seconds the plant clock runs")
    ap.add_argument("--speed", type=float, default=1.0, help="plant seconds per real second")
    ap.add_argument("--batch-s", type=int, default=3600, help="plant seconds per batch")
    ap.add_argument("--backlog", type=int, default=0, help="plant seconds put before connecting (no clock then)")
    ap.add_argument("--flush-s", type=float, default=120.0, help="how long the stations may take to flush at the end")
    ap.add_argument("--site", default=SITE)
    args = ap.parse_args(argv)
    try:
        url = parse_broker_url(args.broker)
        plan = Plan(speed=args.speed, batch_s=args.batch_s)
        if args.stations < 1 or args.first < 0 or args.backlog < 0 or args.seconds < 0:
            raise ValueError("--stations must be at least 1; --first, --backlog and --seconds not negative")
        check_level(args.site, "--site")
    except ValueError as e:                 # BrokerUrlError and TopicError are ValueErrors
        print(f"plant_load: {e}", file=sys.stderr)
        return 2
    broker = BrokerSettings((url,), protocol="5", backoff_min_s=0.2, backoff_max_s=2.0, keepalive_s=10)
    plant = Plant(broker, args.dir, count=args.stations, first=args.first, total=args.total, plan=plan,
                  site=args.site)
    if args.backlog:
        plant.backlog(args.backlog)
    print("ready", flush=True)          # the parent starts every part of the plant at once
    if sys.stdin.readline().strip() != "go":
        plant.stop(0.0)
        return 1
    plant.start()
    behind = ran = 0.0
    if not args.backlog:
        behind, ran = plant.run(args.seconds)
    sent, results, flush_s = plant.stop(args.flush_s)
    print(json.dumps({"sent": [s.as_dict() for s in sent], "messages": plant.messages, "behind_s": behind,
                      "seconds": ran, "flush_s": flush_s,
                      "flushed": all(r.flushed for r in results)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
