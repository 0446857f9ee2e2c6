"""A command flood against the real station publisher through a real broker, then one command from another
identity: the harness ``tests/test_command_flood.py`` asserts on and ``bench/bench_flood.py`` times (issue 15).

* ``flood_station``: the example HD station on the lockstep rig (real C core, controller, batch recorder, the
  one operator path) with its ``Publisher`` connected to the given broker; stopped on exit.
* ``Replies``: a plain subscriber counting the station's replies by command id, the time each first arrived,
  and the intake's busy audit events.
* ``flood_then_command``: a separate process sends ``n`` commands as fast as paho can; once the broker has
  acknowledged them all, another identity sends one; the station scans (at most one scan per 50 ms of wall
  time) until every one of them is answered or ``wait_s`` passed. What each scan did and when the other
  identity's reply came are in the returned ``FloodRun``; judging them is the caller's business.

The broker is the caller's (the tests' ``tests.mqtt_broker``, the bench's own): this module starts none.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.batch.record import BatchRecorder
from edge.control.controller import Controller
from edge.operator.execute import Operator
from edge.operator.target import ControllerTarget
from edge.spec.broker import parse_broker_url
from edge.spec.resources import example_recipes_dir, example_stations_dir
from edge.spec.station import load_station
from edge.telemetry.commands import Outcome
from edge.telemetry.outbox_types import Draft, Message
from edge.telemetry.publisher import Publisher, PublisherSettings
from edge.telemetry.topics import SCHEMA_BASE, StationTopics
from edge.timestamps import rfc3339_ms
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor

STATION_FILE = "hd_reactor_sim.toml"
TOPICS = StationTopics("pilot-line", "hd-01")   # the example station's site and id
SCAN_PERIOD_S = 0.05        # at most one scan per this much wall time while waiting (`reedge run`: one per second)
MAX_SCANS = 10**9           # plant seconds: the lockstep rig is stopped by the caller's wall-time deadline


@dataclass
class FloodStation:
    rig: LockstepRig
    ctl: Controller
    publisher: Publisher
    url: str


@contextlib.contextmanager
def flood_station(broker_url: str, state: pathlib.Path) -> Iterator[FloodStation]:
    """The example HD station publishing to ``broker_url`` (state, outbox and ledger in ``state``)."""
    station = load_station(example_stations_dir() / STATION_FILE)
    assert station.mqtt is not None, f"{STATION_FILE} has no [mqtt]"
    settings = PublisherSettings(broker=station.mqtt.with_brokers((parse_broker_url(broker_url),)),
                                 site=TOPICS.site, station=TOPICS.station, state_dir=state, window_s=60.0)
    with LockstepRig(station, HDReactor(), dt_s=1.0) as rig:
        ctl = Controller(rig.core, rig.station, state_path=state / "run-state.json")
        recorder = BatchRecorder(state, rig.station, site=TOPICS.site, station_id=TOPICS.station,
                                 config=rig.station.accounting)
        operator = Operator(ControllerTarget(ctl, example_recipes_dir(), recorder), allow_remote_reset=False)
        publisher = Publisher(rig.core, ctl, settings, recorder, operator).start()
        try:
            yield FloodStation(rig, ctl, publisher, broker_url)
        finally:
            publisher.stop(ctl, flush_timeout_s=5.0)


def command(verb: str, identity: str, command_id: str, **args: object) -> bytes:
    return json.dumps({"schema": f"{SCHEMA_BASE}cmd-{verb}.json", "command_id": command_id,
                       "issued_at": rfc3339_ms(time.time_ns()), "issuer": identity, "args": args}).encode()


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("mqtt://").split(":")
    return host, int(port)


def client(url: str, client_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.connect(*_host_port(url))
    c.loop_start()
    return c


def close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


FLOODER = """
import json, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, topic, identity, schema, args_text = sys.argv[1:7]
args = json.loads(args_text)
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity + "-flood", protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(0)      # no limit of its own: as fast as paho sends
c.max_queued_messages_set(0)
c.connect(host, int(port))
c.loop_start()
ids = sys.stdin.read().split()
infos = []
t0 = time.perf_counter()
for i in ids:
    issued = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    doc = {"schema": schema, "command_id": i, "issued_at": issued, "issuer": identity, "args": args}
    infos.append(c.publish(topic, json.dumps(doc), qos=1))
for i in infos:
    i.wait_for_publish(60)
print(len(infos), time.perf_counter() - t0, flush=True)  # the parent's cue: all sent and acknowledged
c.disconnect()
c.loop_stop()
"""


def flood(url: str, identity: str, ids: list[str], args: dict[str, object]) -> subprocess.Popen[str]:
    """A separate process sending ``hold`` s with these ids as fast as paho can (the station's process is not
    the one paying for the flooder's own Python). It prints the count sent and the seconds it took."""
    host, port = _host_port(url)
    proc = subprocess.Popen([sys.executable, "-c", FLOODER, host, str(port), TOPICS.cmd("hold", identity),
                             identity, f"{SCHEMA_BASE}cmd-hold.json", json.dumps(args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{i}\n" for i in ids))
    proc.stdin.close()
    return proc


class Replies:
    """A plain subscriber counting the station's replies by command id, with the time each first arrived, and its
    busy audit events (parsing nothing else: a validating consumer's own backlog must not be measured)."""

    def __init__(self, url: str, wait_s: float) -> None:
        self.lock = threading.Lock()
        self.replies: Counter[str] = Counter()
        self.codes: dict[str, str] = {}
        self.first_at: dict[str, float] = {}
        self.busy_events: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"replies-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.online = threading.Event()
        self.client.on_connect = lambda c, *_a: c.subscribe([(f"{TOPICS.root}/reply/#", 1), (TOPICS.event, 1),
                                                              (TOPICS.status, 1)])
        self.client.connect(*_host_port(url))
        self.client.loop_start()
        if not self.subscribed.wait(wait_s):
            raise RuntimeError(f"no SUBACK from the broker at {url} within {wait_s:g} s")

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        body = json.loads(m.payload)["body"]
        if m.topic == TOPICS.status and body.get("state") == "online":
            self.online.set()
        with self.lock:
            if m.topic.startswith(f"{TOPICS.root}/reply/") and body.get("command_id"):
                self.replies[body["command_id"]] += 1
                self.codes[body["command_id"]] = body["code"]
                self.first_at.setdefault(body["command_id"], time.monotonic())
            elif body.get("kind") == "command" and body.get("code") == "busy" and "data" in body:   # intake's
                self.busy_events.append(body)

    def count(self) -> int:
        with self.lock:
            return len(self.replies)

    def answered(self, ids: list[str]) -> bool:
        with self.lock:
            return all(i in self.replies for i in ids)

    def close(self) -> None:
        close(self.client)


@dataclass
class FloodRun:
    ids: list[str]                    # the flood's command ids
    op_id: str                        # the other identity's command
    flood_sent: int = 0               # the flooder's count, all acknowledged by the broker
    flood_send_s: float = 0.0         # the flooder's seconds from its first publish to the last acknowledgement
    operator_sent_at: float | None = None     # time.monotonic() of the other identity's publish
    outcomes: list[list[Outcome]] = field(default_factory=list)    # per scan: the commands it executed
    scan_replies: list[int] = field(default_factory=list)          # per scan: the replies it stored itself
    durations: list[float] = field(default_factory=list)           # per scan: publisher.scan's wall time

    def latency(self, replies: Replies) -> float:
        """Seconds from the other identity's send to its reply."""
        assert self.operator_sent_at is not None
        return replies.first_at[self.op_id] - self.operator_sent_at


def flood_then_command(s: FloodStation, replies: Replies, *, n: int, flooder_id: str, args: dict[str, object],
                       second: str, wait_s: float) -> FloodRun:
    """``n`` ``hold`` s from ``flooder_id`` (with ``args``), then one valid ``hold`` from ``second``, the station
    scanning until all are answered or ``wait_s`` of wall time passed (see the module docstring)."""
    run = FloodRun([str(uuid.uuid4()) for _ in range(n)], str(uuid.uuid4()))
    operator = client(s.url, second)
    flooder = flood(s.url, flooder_id, run.ids, args)

    def then_the_operator() -> None:
        assert flooder.stdout is not None
        sent, seconds = (flooder.stdout.readline() or "0 0").split()     # every one acknowledged by the broker
        run.flood_sent, run.flood_send_s = int(sent), float(seconds)
        run.operator_sent_at = time.monotonic()
        operator.publish(TOPICS.cmd("hold", second), command("hold", second, run.op_id, reason="flood test"), qos=1)

    # which replies the scan stores itself (on its own thread): its own commands' only, never the intake's busy ones
    put_many = s.publisher.outbox.put_many
    scanning = threading.get_ident()
    stored: list[int] = []

    def counting_put_many(drafts: Iterable[Draft]) -> list[Message]:
        if threading.get_ident() == scanning:
            drafts = list(drafts)
            stored.append(sum(d.stream == "reply" for d in drafts))
        return put_many(drafts)

    def scan() -> None:
        s.ctl.step()
        stored.clear()
        t = time.perf_counter()
        run.outcomes.append(s.publisher.scan(s.ctl))
        run.durations.append(time.perf_counter() - t)
        run.scan_replies.append(sum(stored))

    everyone = [*run.ids, run.op_id]
    deadline = time.monotonic() + wait_s

    def done() -> bool:
        if replies.answered(everyone) or time.monotonic() > deadline:
            return True
        time.sleep(SCAN_PERIOD_S)
        return False

    sender = threading.Thread(target=then_the_operator, daemon=True)
    s.publisher.outbox.put_many = counting_put_many  # type: ignore[method-assign]
    sender.start()
    try:
        s.rig.run_until(done, MAX_SCANS, scan)
        sender.join(wait_s)
        if flooder.wait(wait_s) != 0:
            raise RuntimeError(f"the flooder exited with {flooder.returncode}")
    finally:
        s.publisher.outbox.put_many = put_many  # type: ignore[method-assign]
        flooder.kill()
        close(operator)
    return run
