"""TLS and ACLs: the shipped deploy/mosquitto config and ACL, run by a real mosquitto with a throw-away PKI.

The broker config is ``deploy/mosquitto/mosquitto.conf`` itself, with only its paths, ports and log
target rewritten for a temp dir (its optional password listener uncommented), and the ACL is
``deploy/mosquitto/acl`` as shipped: so these tests check what a plant would deploy. Certificates
come from ``openssl`` with the commands of ``deploy/mosquitto/README.md``.
"""

from __future__ import annotations

import json
import pathlib
import queue
import re
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.app.cli import main
from edge.operator.execute import Operator
from edge.operator.verbs import StartRequest
from edge.spec.access import CommandSettings
from edge.spec.broker import BrokerSettings, parse_broker_list
from edge.telemetry.commands import CommandHandler, CommandLedger, Received
from edge.telemetry.outbox import Outbox, Priority
from edge.telemetry.session import MqttSession, SessionEvent
from edge.telemetry.topics import SCHEMA_BASE, StationTopics
from edge.timestamps import rfc3339_ms
from tests.mqtt_broker import SAFETY_S, Consumer, Mosquitto, Pki, free_port, make_ca, make_pki, wait_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "mosquitto"
SITE = "pilot-line"            # the site written out in deploy/mosquitto/acl


class Events:
    def __init__(self) -> None:
        self.items: list[SessionEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: SessionEvent) -> None:
        with self.lock:
            self.items.append(event)

    def of(self, kind: str) -> list[SessionEvent]:
        with self.lock:
            return [e for e in self.items if e.kind == kind]

    def wait(self, kind: str, count: int = 1) -> list[SessionEvent]:
        deadline = time.monotonic() + SAFETY_S
        while time.monotonic() < deadline and len(self.of(kind)) < count:
            time.sleep(0.02)
        found = self.of(kind)
        assert len(found) >= count, f"no {kind} event: {self.items}"
        return found


@dataclass
class PlantBroker:
    broker: Mosquitto
    tls_port: int
    password_port: int
    pki: Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ["hd-01", "hd-02", "scada-hd", "historian"])


def shipped_config(broker_dir: pathlib.Path, pki: Pki, tls_port: int, password_port: int) -> str:
    """deploy/mosquitto/mosquitto.conf with this test's paths and ports, its password listener enabled."""
    text = (DEPLOY / "mosquitto.conf").read_text()
    optional = re.search(r"^# listener 8884$.*?(?=^\s*$)", text, flags=re.M | re.S)
    assert optional is not None, "the optional password listener is gone from the shipped config"
    text = text.replace(optional.group(0), re.sub(r"^# ", "", optional.group(0), flags=re.M))
    replacements = {
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "listener 8884": f"listener {password_port} 127.0.0.1",
        "/etc/mosquitto/reedge/acl": str(broker_dir / "acl"),
        "/etc/mosquitto/reedge/passwords": str(broker_dir / "passwords"),
        "/etc/mosquitto/reedge/": f"{pki.dir}/",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {broker_dir}/",
        "log_dest syslog": f"log_dest file {broker_dir / 'mosquitto.log'}",
    }
    for old, new in replacements.items():
        assert old in text, f"{old!r} is gone from the shipped config"
        text = text.replace(old, new)
    return text


@pytest.fixture
def plant(tmp_path: pathlib.Path, pki: Pki) -> Iterator[PlantBroker]:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    (broker_dir / "acl").write_text((DEPLOY / "acl").read_text())
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(broker_dir / "passwords"), "hd-01", "right-password"],
                   check=True, capture_output=True, timeout=SAFETY_S)
    tls_port, password_port = free_port(), free_port()
    broker = Mosquitto(broker_dir, port=tls_port,
                       config=shipped_config(broker_dir, pki, tls_port, password_port))
    try:
        broker.start()
        yield PlantBroker(broker, tls_port, password_port, pki)
    finally:
        broker.close()


def client_context(pki: Pki, cn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(*map(str, pki.clients[cn]))
    return ctx


def station_settings(url: str, **kw: object) -> BrokerSettings:
    args: dict[str, object] = {"keepalive_s": 2, "connect_timeout_s": 2, "backoff_min_s": 0.05,
                               "backoff_max_s": 0.5, **kw}
    return BrokerSettings(parse_broker_list(url), **args)  # type: ignore[arg-type]


@pytest.fixture
def outbox(tmp_path: pathlib.Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db", boot_id="boot-1", synchronous="NORMAL") as ob:
        yield ob


def test_station_publishes_with_its_certificate_and_cannot_write_into_another_station(
        plant: PlantBroker, outbox: Outbox) -> None:
    pki = plant.pki
    consumer = Consumer(plant.tls_port, host="localhost", client_id="scada", tls=client_context(pki, "scada-hd"))
    cert, key = pki.clients["hd-01"]
    events = Events()
    session = MqttSession(outbox, station_settings(f"mqtts://localhost:{plant.tls_port}", ca_file=pki.ca,
                                                   cert_file=cert, key_file=key),
                          site=SITE, station="hd-01", on_event=events).start()
    try:
        assert session.wait_connected(SAFETY_S)
        assert session.stats().protocol == "5"
        last: dict[str, int] = {}
        for i in range(50):
            for msg in session.put_many([("telemetry", {"i": i}, None, None), ("event", {"i": i}, None, None)]):
                last[msg.stream] = msg.seq
        # A message for another station's topic (as a bug or a tampered outbox would make it):
        foreign = outbox.put("batch", f"reedge/v1/{SITE}/hd-02/batch", {"kind": "start"}, priority=Priority.BATCH)
        for i in range(50, 60):
            for msg in session.put_many([("telemetry", {"i": i}, None, None), ("event", {"i": i}, None, None)]):
                last[msg.stream] = msg.seq
        rejected = events.wait("rejected")
        assert rejected[0].reason_code == 0x87 and rejected[0].message == foreign.key     # Not authorized
        # a permanent refusal of a non-telemetry message: deleted from the outbox, and reported on the
        # station's own event stream (boot, stream, seq, topic, reason code), so nothing vanishes silently
        last["event"] = outbox.last_sequences()["event"]     # the report is put whenever the refusal comes,
        assert last["event"] == 60 + 1                       # maybe between two of the puts above
        assert consumer.wait_for(last)
        verdict = consumer.verify(last)
        assert verdict.problems == [], verdict                 # the station's own streams: complete, in order
        assert not any(k[1] == "batch" for k in consumer.received.keys)     # the foreign one never arrived
        wait_until(lambda: session.stats().acked == 121, "the station's 120 messages and the refusal report acked")
        assert session.stats().rejected == 1 and session.stats().dropped == 1
        assert outbox.stats().count == 0
        result = session.stop(flush_timeout_s=5)
        assert result.flushed and result.remaining == 0 and result.offline_published
    finally:
        session.stop(0)
        consumer.close()


def test_wrong_ca_and_wrong_host_name_are_refused_with_a_clear_error(plant: PlantBroker, outbox: Outbox,
                                                                    tmp_path: pathlib.Path) -> None:
    pki = plant.pki
    cert, key = pki.clients["hd-01"]
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    cases = ((f"mqtts://localhost:{plant.tls_port}", other_ca, "self-signed certificate in certificate chain"),
             (f"mqtts://127.0.0.1:{plant.tls_port}", pki.ca, "IP address mismatch"))    # the cert names localhost
    for url, ca, says in cases:
        events = Events()
        session = MqttSession(outbox, station_settings(url, ca_file=ca, cert_file=cert, key_file=key),
                              site=SITE, station="hd-01", on_event=events).start()
        try:
            failed = events.wait("connect_failed")
            assert "TLS: the broker's certificate was not accepted" in failed[0].detail
            assert says in failed[0].detail
            assert session.stats().connects == 0 and not session.wait_connected(0)
        finally:
            session.stop(0)


def test_a_station_without_a_client_certificate_is_refused(plant: PlantBroker, outbox: Outbox) -> None:
    events = Events()
    session = MqttSession(outbox, station_settings(f"mqtts://localhost:{plant.tls_port}", ca_file=plant.pki.ca),
                          site=SITE, station="hd-01", on_event=events).start()
    try:
        failed = events.wait("connect_failed")
        assert "check cert_file and key_file" in failed[0].detail
        assert session.stats().connects == 0
    finally:
        session.stop(0)


def test_user_name_and_password_over_tls(plant: PlantBroker, outbox: Outbox, tmp_path: pathlib.Path) -> None:
    pki = plant.pki
    consumer = Consumer(plant.tls_port, host="localhost", client_id="scada", tls=client_context(pki, "scada-hd"))
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("right-password\n")
    bad.write_text("wrong-password\n")
    url = f"mqtts://localhost:{plant.password_port}"
    try:
        events = Events()
        refused = MqttSession(outbox, station_settings(url, ca_file=pki.ca, username="hd-01", password_file=bad),
                              site=SITE, station="hd-01", on_event=events).start()
        try:
            failed = events.wait("connect_failed")
            assert failed[0].reason_code in (0x86, 0x87)        # bad user name or password / not authorized
            assert "refused the connection" in failed[0].detail
        finally:
            refused.stop(0)
        session = MqttSession(outbox, station_settings(url, ca_file=pki.ca, username="hd-01", password_file=good),
                              site=SITE, station="hd-01").start()
        try:
            last = {"event": 0}
            for i in range(20):
                last["event"] = session.put("event", {"i": i}).seq
            assert session.wait_flushed(SAFETY_S)
            assert consumer.wait_for(last)
            assert consumer.verify(last).problems == []
        finally:
            session.stop(0)
    finally:
        consumer.close()


# ---- commands: the broker vouches for the sender ---------------------------------------------------

class Publishes:
    """PUBACK reason codes by message id (MQTT 5), for a client's on_publish."""

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.cond = threading.Condition()

    def __call__(self, _c: object, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        with self.cond:
            self.codes[mid] = reason.value
            self.cond.notify_all()

    def wait(self, mid: int) -> int:
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.codes, SAFETY_S), f"no PUBACK for message {mid}"
            return self.codes[mid]


class Held:
    """The station's process, as far as this test goes: it can be held, and nothing else is expected."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def hold(self, reason: str) -> None:
        self.reasons.append(reason)

    def start_batch(self, request: StartRequest) -> None:
        raise AssertionError("no start was sent")

    def resume(self) -> None:
        raise AssertionError("no resume was sent")

    def abort(self, reason: str) -> None:
        raise AssertionError("no abort was sent")

    def skip(self) -> None:
        raise AssertionError("no skip was sent")

    def ack_alarm(self, alarm: str) -> None:
        raise AssertionError("no ack_alarm was sent")

    def reset(self, rule: str | None, remote: bool = True) -> None:
        raise AssertionError("the reset must never get through")

    def record_mass(self, batch_id: str | None, mass_out_kg: float) -> None:
        raise AssertionError("no record_mass was sent")

    def autotune(self, loop: str, setpoint_c: float) -> None:
        raise AssertionError("no autotune was sent")


def test_the_broker_lets_a_client_send_commands_only_under_its_own_name(plant: PlantBroker, outbox: Outbox,
                                                                         tmp_path: pathlib.Path) -> None:
    """scada-hd cannot send a reset as service-laptop, nor under its own name (its role, operator, may not
    reset: the shipped ACL limits the verbs), and the historian (viewer) cannot send anything but resend:
    mosquitto refuses them (PUBACK 0x87, never delivered). Its own cmd/scada-hd/hold reaches the station, which
    authorises it by that level; the historian's resend reaches it too."""
    pki = plant.pki
    topics = StationTopics(SITE, "hd-01")
    cert, key = pki.clients["hd-01"]
    arrived: queue.Queue[Received] = queue.Queue()
    session = MqttSession(outbox, station_settings(f"mqtts://localhost:{plant.tls_port}", ca_file=pki.ca,
                                                   cert_file=cert, key_file=key), site=SITE, station="hd-01")
    session.subscribe(topics.cmd_filter, 1, lambda m: arrived.put(Received(m.topic, bytes(m.payload))))
    publishes, viewed = Publishes(), Publishes()   # one per client: message ids are per client
    online = threading.Event()
    scada = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada-cmd", protocol=MQTTProtocolVersion.MQTTv5)
    scada.tls_set_context(client_context(pki, "scada-hd"))
    viewer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="historian-cmd", protocol=MQTTProtocolVersion.MQTTv5)
    viewer.tls_set_context(client_context(pki, "historian"))
    viewer.on_publish = viewed
    viewer.connect("localhost", plant.tls_port)
    viewer.loop_start()
    scada.on_publish = publishes
    scada.on_message = lambda _c, _u, m: online.set() if b'"online"' in m.payload else None
    scada.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(topics.status, qos=1)
    scada.connect("localhost", plant.tls_port)
    scada.loop_start()
    session.start()
    try:
        # the station subscribes before it publishes its birth on the same connection: once the birth is
        # here, the broker has its command subscription
        assert online.wait(SAFETY_S), "the station's birth never arrived"
        now = rfc3339_ms(time.time_ns())

        def send(identity: str, verb: str, client: mqtt.Client = scada) -> int:
            doc = {"schema": f"{SCHEMA_BASE}cmd-{verb}.json", "command_id": str(uuid.uuid4()), "issued_at": now,
                   "issuer": identity, "args": {}}
            acks = viewed if client is viewer else publishes
            return acks.wait(client.publish(topics.cmd(verb, identity), json.dumps(doc), qos=1).mid)

        assert send("service-laptop", "reset") == 0x87       # not authorised: the broker drops it
        assert send("scada-hd", "reset") == 0x87             # its own name, but not a verb of its role
        assert send("historian", "hold", viewer) == 0x87     # a viewer may send nothing but resend
        assert send("scada-hd", "hold") == 0x00
        got = arrived.get(timeout=SAFETY_S)
        assert got.topic == topics.cmd("hold", "scada-hd")   # the first to arrive: the others never did
        target = Held()
        settings = CommandSettings(roles={"scada-hd": frozenset({"operator"}),
                                          "service-laptop": frozenset({"maintenance"})})
        with CommandLedger(tmp_path / "commands.db") as ledger:
            out = CommandHandler(topics=topics, settings=settings, operator=Operator(target, allow_remote_reset=True),
                                 ledger=ledger).handle_many([got], 1.0)[0]
        assert out.accepted and out.event.body["issuer"] == "scada-hd" and target.reasons == ["held by scada-hd"]
        assert arrived.empty()
        assert send("historian", "resend", viewer) == 0x00   # ... which the shipped ACL lets through
        assert arrived.get(timeout=SAFETY_S).topic == topics.cmd("resend", "historian")
    finally:
        for c in (scada, viewer):
            c.disconnect()
            c.loop_stop()
        session.stop(0)


SHIPPED_STATIONS = ("hd_reactor_sim.toml", "hd-02.toml", "sintering_furnace_sim.toml")


def test_the_shipped_acl_is_what_reedge_station_acl_writes_for_the_shipped_stations(
        capsys: pytest.CaptureFixture[str]) -> None:
    """So the ACL a plant deploys and the roles its station files give cannot drift apart (regenerate it with
    the command in deploy/mosquitto/README.md)."""
    assert main(["station", "acl", *(str(ROOT / "stations" / f) for f in SHIPPED_STATIONS)]) == 0
    assert capsys.readouterr().out == (DEPLOY / "acl").read_text()


def test_reedge_station_acl_refuses_stations_of_two_sites(tmp_path: pathlib.Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.toml"
    text = (ROOT / "stations" / "hd-02.toml").read_text()
    other.write_text(text.replace('site = "pilot-line"', 'site = "other-line"', 1))
    assert main(["station", "acl", str(ROOT / "stations" / "hd_reactor_sim.toml"), str(other)]) == 2
    err = capsys.readouterr()
    assert err.out == "" and "several sites (other-line, pilot-line): one broker, and one ACL, per site" in err.err
    assert main(["station", "acl", *(str(ROOT / "stations" / "hd-02.toml"),) * 2]) == 2
    assert "station id hd-02 given twice" in capsys.readouterr().err
