"""The MQTT session against real brokers: nothing the outbox holds is lost, whatever happens on the way.

Every integration test runs a real broker (a mosquitto process, or the embedded amqtt broker), a
consumer with a persistent session that is up throughout (so that the broker's queueing is not
what is tested), and checks with ``mqtt_broker.verify`` that each stream's sequence numbers
arrived from 1 to the last one put, in order, no gap; re-sent duplicates are allowed and must be
byte-identical to the first copy. What happens in between: a broker stopped and restarted on the
same port, the edge process killed with SIGKILL during an outage and restarted, the network
black-holed by a proxy, a failover to a second broker, a 3.1.1-only broker.

Short keepalive (2 s), CONNACK timeout (2 s) and backoff (50 ms to 0.5 s) keep the module quick;
every wait is a safety net (``SAFETY_S``) on a condition, never a timed assertion.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge.spec.broker import (
    BrokerSettings,
    BrokerSettingsError,
    BrokerUrl,
    BrokerUrlError,
    parse_broker_list,
    parse_broker_url,
    read_broker_settings,
)
from edge.spec.reader import Problems, Table
from edge.telemetry.embedded_broker import EmbeddedBroker, EmbeddedBrokerError
from edge.telemetry.envelope import parse
from edge.telemetry.outbox import Draft, Outbox, OutboxError, Priority
from edge.telemetry.session import MqttSession, SessionError, SessionEvent, backoff_delay
from tests.mqtt_broker import SAFETY_S, Consumer, Mosquitto, TcpProxy, free_port, verify, wait_until
from tests.test_outbox import FsyncSeam

ROOT = pathlib.Path(__file__).resolve().parent.parent
SITE, STATION = "pilot", "hd-01"
STREAMS = ("telemetry", "event", "state", "batch")


def fast(brokers: str, **kw: object) -> BrokerSettings:
    """Test settings: quick to notice a dead link, quick to retry."""
    args: dict[str, object] = {"keepalive_s": 2, "connect_timeout_s": 2, "backoff_min_s": 0.05,
                               "backoff_max_s": 0.5, **kw}
    return BrokerSettings(parse_broker_list(brokers), **args)  # type: ignore[arg-type]


class Events:
    """Collects the session's events (network thread) for the assertions."""

    def __init__(self) -> None:
        self.items: list[SessionEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: SessionEvent) -> None:
        with self.lock:
            self.items.append(event)

    def kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.items]

    def wait(self, kind: str, count: int = 1) -> bool:
        deadline = time.monotonic() + SAFETY_S
        while time.monotonic() < deadline:
            if self.kinds().count(kind) >= count:
                return True
            time.sleep(0.02)
        return False


@pytest.fixture
def broker(tmp_path: pathlib.Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker", extra="max_inflight_messages 7")
    try:
        yield m.start()
    finally:
        m.close()


@pytest.fixture
def outbox(tmp_path: pathlib.Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db", boot_id="boot-1", synchronous="NORMAL") as ob:
        yield ob


class Producer:
    """Puts messages, streams in turn, from its own thread (the controller's side), as far as ``allow`` says.

    The test drives the phases (before, during, after an outage) by allowing more puts, so that
    nothing depends on how fast the machine is.
    """

    def __init__(self, session: MqttSession, interval: float = 0.001) -> None:
        self.session, self.interval = session, interval
        self.done = 0
        self.last: dict[str, int] = {}
        self.error: BaseException | None = None
        self._allowed = 0
        self._finished = False
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            i = 0
            while True:
                with self._cond:
                    while i >= self._allowed and not self._finished:
                        self._cond.wait()
                    if i >= self._allowed:
                        return
                stream = STREAMS[i % len(STREAMS)]
                msg = self.session.put(stream, {"i": i})
                self.last[stream] = msg.seq
                i += 1
                self.done = i
                time.sleep(self.interval)
        except BaseException as e:
            self.error = e

    def put(self, n: int) -> None:
        """Put ``n`` more and wait until they are stored."""
        with self._cond:
            self._allowed += n
            target = self._allowed
            self._cond.notify_all()
        deadline = time.monotonic() + SAFETY_S
        while self.done < target and self.error is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.error is None, self.error
        assert self.done == target

    def finish(self) -> dict[str, int]:
        with self._cond:
            self._finished = True
            self._cond.notify_all()
        self.thread.join(SAFETY_S)
        assert self.error is None, self.error
        return dict(self.last)


def retained_status(port: int) -> dict[str, object]:
    """The retained status as a fresh subscriber sees it."""
    got: list[bytes] = []
    event = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="status-reader", protocol=MQTTProtocolVersion.MQTTv5)

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        got.append(bytes(m.payload))
        event.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(f"reedge/v1/{SITE}/{STATION}/status", qos=1)
    c.loop_start()
    try:
        assert event.wait(SAFETY_S), "no retained status"
    finally:
        c.disconnect()
        c.loop_stop()
    env = parse(got[0])
    assert env.stream == "status"
    return env.body


# ---- broker URLs and settings -------------------------------------------------------------------------


def test_broker_urls_parse_with_defaults_and_failover_lists() -> None:
    assert parse_broker_url("mqtt://broker.plant.local") == BrokerUrl("broker.plant.local", 1883, False)
    assert parse_broker_url("mqtts://10.0.0.5") == BrokerUrl("10.0.0.5", 8883, True)
    assert parse_broker_url(" MQTTS://b:9000/ ") == BrokerUrl("b", 9000, True)
    assert parse_broker_url("mqtt://[::1]:1884") == BrokerUrl("::1", 1884, False)
    assert str(parse_broker_url("mqtt://[::1]:1884")) == "mqtt://[::1]:1884"
    assert parse_broker_list("mqtts://a:8883, mqtts://b:8883") == (BrokerUrl("a", 8883, True),
                                                                   BrokerUrl("b", 8883, True))


@pytest.mark.parametrize(("text", "says"), [
    ("broker:1883", "expected mqtt://host[:port]"),
    ("http://broker", "unknown scheme 'http'"),
    ("ssl://broker", "use mqtts://"),
    ("mqtt://user:secret@broker", "no credentials"),
    ("mqtt://broker:0", "port must be a number from 1 to 65535"),
    ("mqtt://broker:99999", "port must be"),
    ("mqtt://broker:x", "port must be"),
    ("mqtt://broker/topic", "no path"),
    ("mqtt://", "no host"),
    ("mqtt://::1:1883", "brackets"),
    ("mqtt://[nothex]:1", "not an IPv6 address"),
    ("mqtt://bad_host!", "not a host name"),
])
def test_bad_broker_urls_are_refused_with_a_clear_reason(text: str, says: str) -> None:
    with pytest.raises(BrokerUrlError, match=None) as info:
        parse_broker_url(text)
    assert says in str(info.value)
    assert "secret" not in str(info.value)


def test_bad_broker_lists_are_refused() -> None:
    for text, says in (("", "no broker given"), ("mqtt://a,,mqtt://b", "empty entry"),
                       ("mqtt://a:1883,mqtt://a", "listed twice")):
        with pytest.raises(BrokerUrlError) as info:
            parse_broker_list(text)
        assert says in str(info.value)


def _read_mqtt(table: dict[str, object], base_dir: pathlib.Path) -> tuple[BrokerSettings, list[tuple[str, str]]]:
    """An [mqtt] table of a station file in ``base_dir`` through the reader kernel: (settings, (key, problem)s)."""
    problems = Problems(str(base_dir / "station.toml"))
    t = Table(problems, table, "mqtt")
    settings = read_broker_settings(t)
    t.finish()
    return settings, [(e.key_path.removeprefix("mqtt."), e.message) for e in problems.found]


def test_station_mqtt_keys_are_checked_and_every_problem_named(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "pw").write_text("s3cret\n")
    settings, problems = _read_mqtt(
        {"brokers": ["mqtts://a:8883", "mqtts://b:8883"], "ca_file": "ca.pem", "username": "hd-01",
         "password_file": "pw", "keepalive_s": 15}, tmp_path)
    assert problems == [] and settings.brokers
    assert settings.ca_file == tmp_path / "ca.pem" and settings.keepalive_s == 15
    assert settings.password() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert _read_mqtt({}, tmp_path) == (BrokerSettings(), [])            # no broker configured
    _, problems = _read_mqtt({"brokers": "mqtt://a", "keepalive_s": True, "ca_file": "missing.pem",
                              "max_inflight": "10"}, tmp_path)
    keys = [k for k, _ in problems]
    assert keys == ["keepalive_s", "max_inflight", "ca_file"]
    _, problems = _read_mqtt({"brokers": "mqtt://a", "ca_file": "ca.pem"}, tmp_path)
    assert problems == [("ca_file", "TLS files given but no broker is mqtts://: credentials would go in clear")]
    _, problems = _read_mqtt({"brokers": "mqtt://a", "password_file": "pw", "backoff_min_s": 5,
                              "backoff_max_s": 1}, tmp_path)
    assert [k for k, _ in problems] == ["backoff_min_s", "password_file"]
    _, problems = _read_mqtt({"brokers": "mqtt://a", "keepalive": 10}, tmp_path)
    assert problems == [("keepalive", "unknown key 'keepalive' (expected one of: brokers, client_id, keepalive_s,"
                                      " connect_timeout_s, session_expiry_s, protocol, username, backoff_min_s,"
                                      " backoff_max_s, max_inflight, history_mb, ca_file, cert_file, key_file,"
                                      " password_file); did you mean 'keepalive_s'?")]
    # no brokers in the file: TLS files and login are still read, for --broker to use (with_brokers)
    settings, problems = _read_mqtt({"ca_file": "ca.pem", "username": "hd-01", "password_file": "pw"}, tmp_path)
    assert problems == [] and settings.brokers == () and settings.ca_file == tmp_path / "ca.pem"
    moved = settings.with_brokers(parse_broker_list("mqtts://b,mqtts://c"))
    assert [b.host for b in moved.brokers] == ["b", "c"] and moved.username == "hd-01"
    with pytest.raises(BrokerSettingsError, match="ca_file: TLS files given but no broker is mqtts://"):
        settings.with_brokers(parse_broker_list("mqtt://b"))       # never credentials in clear
    with pytest.raises(BrokerSettingsError, match="cert_file"):
        BrokerSettings(parse_broker_list("mqtts://a"), key_file=tmp_path / "ca.pem")


def test_backoff_is_full_jitter_under_an_exponential_bound() -> None:
    rng = random.Random(5)
    for n, bound in ((0, 0.5), (1, 1.0), (3, 4.0), (7, 60.0), (500, 60.0)):
        delays = [backoff_delay(n, 0.5, 60.0, rng) for _ in range(2000)]
        assert min(delays) >= 0.0 and max(delays) <= bound
        assert min(delays) < bound * 0.05 and max(delays) > bound * 0.95    # spread over the whole range
        assert abs(sum(delays) / len(delays) - bound / 2) < bound * 0.05     # uniform: mean at half the bound


def test_put_refuses_what_cannot_be_sent_and_stores_nothing(outbox: Outbox) -> None:
    session = MqttSession(outbox, fast("mqtt://127.0.0.1:1"), site=SITE, station=STATION)
    for stream, body in (("status", {}), ("cmd", {}), ("nope", {}), ("event", b"not json"), ("event", b"[1]")):
        with pytest.raises(SessionError):
            session.put(stream, body)
    assert outbox.stats().count == 0
    with pytest.raises(SessionError, match="never started"):
        session.stop()


def test_stop_without_a_broker_keeps_every_message(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, boot_id="b1", synchronous="NORMAL") as ob:
        events = Events()
        session = MqttSession(ob, fast(f"mqtt://127.0.0.1:{free_port()}"), site=SITE, station=STATION,
                              on_event=events).start()
        for i in range(10):
            session.put("event", {"i": i}, priority=Priority.ALARM)
        assert events.wait("connect_failed")
        result = session.stop(flush_timeout_s=0.2)
        assert not result.flushed and result.remaining == 10 and not result.offline_published
    with Outbox(path, boot_id="b2") as ob:
        assert [m.seq for m in ob.pending(100)] == list(range(1, 11))


# ---- delivery through mosquitto -------------------------------------------------------------------------


def test_every_message_arrives_in_order_with_birth_window_and_offline_status(broker: Mosquitto,
                                                                             outbox: Outbox) -> None:
    consumer = Consumer(broker.port)
    try:
        events = Events()
        session = MqttSession(outbox, fast(broker.url), site=SITE, station=STATION, on_event=events).start()
        assert session.wait_connected(SAFETY_S)
        stats = session.stats()
        assert stats.protocol == "5" and stats.window == 7      # the broker's Receive Maximum (max_inflight 7)
        last: dict[str, int] = {}
        for i in range(100):                                    # one scan's worth at a time, 4 streams
            for msg in session.put_many([(s, {"i": i, "s": s}, None, None) for s in STREAMS]):
                last[msg.stream] = msg.seq
        assert session.wait_flushed(SAFETY_S)
        assert consumer.wait_for(last)
        verdict = consumer.verify(last)
        assert verdict.problems == [] and verdict.received == 400
        result = session.stop(flush_timeout_s=10)
        assert result.flushed and result.offline_published
        births = [parse(p).body for p in consumer.received.status]
        assert births[0]["state"] == "online" and births[0]["previous_boot"] == {"boot_id": None, "last_seq": {}}
        status = retained_status(broker.port)
        assert status["state"] == "offline" and status["reason"] == "shutdown"
        assert session.stats().acked == 400 and outbox.stats().count == 0
        assert events.kinds().count("connected") == 1
    finally:
        consumer.close()


def test_broker_stopped_and_restarted_while_publishing_loses_nothing(broker: Mosquitto, outbox: Outbox) -> None:
    consumer = Consumer(broker.port)
    events = Events()
    session = MqttSession(outbox, fast(broker.url), site=SITE, station=STATION, on_event=events).start()
    try:
        assert session.wait_connected(SAFETY_S)
        producer = Producer(session)
        producer.put(150)
        broker.stop()
        assert events.wait("disconnected")
        producer.put(150)                                       # puts go on during the outage
        assert not session.stats().connected
        assert outbox.stats().count >= 150                     # held by the outbox, nowhere else
        broker.start()
        producer.put(150)
        last = producer.finish()
        assert session.wait_flushed(SAFETY_S)
        assert consumer.wait_for(last)
        verdict = consumer.verify(last)
        assert verdict.problems == [], verdict
        assert session.stats().connects >= 2
        assert session.stop().flushed
    finally:
        session.stop(0)
        consumer.close()


def test_edge_killed_during_an_outage_and_restarted_loses_nothing(broker: Mosquitto, tmp_path: pathlib.Path) -> None:
    consumer = Consumer(broker.port)
    path = tmp_path / "edge-outbox.db"
    first = Child(path, broker.url, "boot-one", 400, linger=True)
    second: Child | None = None
    try:
        first.wait_puts(100)
        broker.stop()                                           # outage while the edge keeps putting
        n = len(first.puts)
        first.wait_puts(n + 100)
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(SAFETY_S) == -signal.SIGKILL
        second = Child(path, broker.url, "boot-two", 100)      # restarts, still no broker
        second.wait_puts(20)
        broker.start()
        assert second.proc.wait(SAFETY_S) == 0, second.output()
        assert second.lines[-1] == "STOP True 0"
        last = {s: max(q for (st, q) in first.puts + second.puts if st == s) for s in STREAMS}
        assert consumer.wait_for(last)
        verdict = consumer.verify(last)
        assert verdict.problems == [], verdict
        boots = {k[0] for k in consumer.received.keys}
        assert boots == {"boot-one", "boot-two"}               # the dead boot's backlog went out under its id
    finally:
        first.kill()
        if second is not None:
            second.kill()
        consumer.close()


def test_network_black_holed_then_restored_loses_nothing(broker: Mosquitto, outbox: Outbox) -> None:
    consumer = Consumer(broker.port)                            # straight to the broker: not cut
    proxy = TcpProxy(broker.port)
    events = Events()
    session = MqttSession(outbox, fast(proxy.url), site=SITE, station=STATION, on_event=events).start()
    try:
        assert session.wait_connected(SAFETY_S)
        producer = Producer(session)
        producer.put(100)
        proxy.cut()                                             # no RST, no FIN: only keepalive can tell
        producer.put(100)
        assert events.wait("disconnected")                      # keepalive noticed
        assert events.wait("connect_failed")                    # and a reconnect got no CONNACK
        producer.put(100)
        proxy.restore()
        producer.put(100)
        last = producer.finish()
        assert session.wait_flushed(SAFETY_S)
        assert consumer.wait_for(last)
        verdict = consumer.verify(last)
        assert verdict.problems == [], verdict
        assert session.stats().protocol == "5"                 # a timeout must not have downgraded for good
        assert session.stop().flushed
    finally:
        session.stop(0)
        proxy.close()
        consumer.close()


def test_failover_to_the_second_broker_loses_nothing(tmp_path: pathlib.Path, outbox: Outbox) -> None:
    first = Mosquitto(tmp_path / "b1").start()
    second = Mosquitto(tmp_path / "b2").start()
    c1, c2 = Consumer(first.port, client_id="c1"), Consumer(second.port, client_id="c2")
    events = Events()
    session = MqttSession(outbox, fast(f"{first.url},{second.url}"), site=SITE, station=STATION,
                          on_event=events).start()
    try:
        assert session.wait_connected(SAFETY_S)
        producer = Producer(session)
        producer.put(100)
        first.stop()
        producer.put(200)
        last = producer.finish()
        assert session.wait_flushed(SAFETY_S)
        assert session.stats().broker == second.url
        assert c2.wait_for(last)
        # everything c1 got came before the failover, so c1's arrivals then c2's are one timeline
        arrivals = list(zip(c1.received.keys + c2.received.keys, c1.received.payloads + c2.received.payloads,
                            strict=True))
        verdict = verify(arrivals, last)
        assert verdict.problems == [], verdict
        assert c1.received.keys and c2.received.keys
    finally:
        session.stop(0)
        c1.close()
        c2.close()
        first.close()
        second.close()


# ---- the embedded broker (amqtt) ----------------------------------------------------------------------


def test_embedded_amqtt_broker_is_3_1_1_only_and_the_session_falls_back(outbox: Outbox) -> None:
    with EmbeddedBroker() as embedded:
        assert embedded.url.host == "127.0.0.1"
        consumer = Consumer(embedded.url.port, protocol=MQTTProtocolVersion.MQTTv311)
        events = Events()
        session = MqttSession(outbox, fast(str(embedded.url)), site=SITE, station=STATION, on_event=events).start()
        try:
            assert session.wait_connected(SAFETY_S)
            assert session.stats().protocol == "3.1.1" and session.stats().window == 20
            assert "protocol_fallback" in events.kinds()
            last: dict[str, int] = {}
            for i in range(75):
                for msg in session.put_many([(s, {"i": i}, None, None) for s in STREAMS]):
                    last[msg.stream] = msg.seq
            assert session.wait_flushed(SAFETY_S)
            assert consumer.wait_for(last)
            verdict = consumer.verify(last)
            assert verdict.problems == [] and verdict.received == 300
            assert session.stop().offline_published
        finally:
            session.stop(0)
            consumer.close()
        direct = MqttSession(outbox, embedded.settings(keepalive_s=2), site=SITE, station=STATION,
                             on_event=events).start()             # 3.1.1 from the start: no fallback needed
        try:
            assert direct.wait_connected(SAFETY_S) and direct.stats().protocol == "3.1.1"
            assert events.kinds().count("protocol_fallback") == 1
        finally:
            direct.stop(0)
    with pytest.raises(EmbeddedBrokerError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")


# ---- the child process ------------------------------------------------------------------------------


class Child:
    """``tests/mqtt_worker.py`` in a child process; its ``P stream seq`` lines are read as they come."""

    def __init__(self, outbox: pathlib.Path, broker: str, boot: str, count: int, *, linger: bool = False) -> None:
        cmd = [sys.executable, "-m", "tests.mqtt_worker", "--outbox", str(outbox), "--broker", broker,
               "--boot", boot, "--count", str(count)]
        if linger:
            cmd.append("--linger")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.puts: list[tuple[str, int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            self.lines.append(line)
            if line.startswith("P "):
                _, stream, seq = line.split()
                self.puts.append((stream, int(seq)))

    def wait_puts(self, n: int) -> None:
        deadline = time.monotonic() + SAFETY_S
        while len(self.puts) < n and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.puts) >= n, self.output()

    def output(self) -> str:
        err = ""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            err = self.proc.stderr.read()
        return json.dumps(self.lines[-5:]) + "\n" + err[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(SAFETY_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# ---- the station file ----------------------------------------------------------------------------


def test_station_file_mqtt_section_gives_broker_settings_and_names_bad_keys(tmp_path: pathlib.Path) -> None:
    from edge.spec.reader import SpecError
    from edge.spec.station import parse_station

    source = ROOT / "stations" / "hd_reactor_sim.toml"
    text = source.read_text()
    assert "[mqtt.roles]" in text
    (tmp_path / "ca.pem").write_text("x")
    good = text.replace("[mqtt.roles]", '[mqtt]\nbrokers = ["mqtts://a.plant:8883", "mqtts://b.plant"]\n'
                                        f'ca_file = "{tmp_path / "ca.pem"}"\nkeepalive_s = 10\n\n[mqtt.roles]', 1)
    station = parse_station(good, str(source))
    assert station.broker is not None
    assert [str(b) for b in station.broker.brokers] == ["mqtts://a.plant:8883", "mqtts://b.plant:8883"]
    assert station.broker.keepalive_s == 10 and station.commands.verbs_for("scada-hd")   # both readers ran
    assert parse_station(text, str(source)).broker is None                              # no broker: None
    bad = text.replace("[mqtt.roles]", '[mqtt]\nbrokers = ["mqtt://user:pw@a"]\nkeepalive = 10\n\n[mqtt.roles]', 1)
    with pytest.raises(SpecError) as info:
        parse_station(bad, str(source))
    shown = str(info.value)
    assert "mqtt.brokers: mqtt://***@a: no credentials in a broker URL" in shown
    assert "mqtt.keepalive: unknown key 'keepalive'" in shown and "did you mean 'keepalive_s'?" in shown
    assert "pw" not in shown.replace("password", "")


# ---- commands in: the broker keeps the session ---------------------------------------------------------


def test_commands_sent_while_the_station_is_away_arrive_when_it_is_back(broker: Mosquitto, outbox: Outbox) -> None:
    got: list[tuple[str, bytes]] = []
    arrived, probed = threading.Event(), threading.Event()

    def on_command(message: mqtt.MQTTMessage) -> None:
        if message.payload == b"probe":
            probed.set()
            return
        got.append((message.topic, bytes(message.payload)))
        arrived.set()

    def session() -> MqttSession:
        s = MqttSession(outbox, fast(broker.url), site=SITE, station=STATION)
        s.subscribe(s.topics.cmd_filter, 1, on_command)
        return s.start()

    first = session()
    assert first.wait_connected(SAFETY_S)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada", protocol=MQTTProtocolVersion.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        # connected is not yet subscribed: a command before the SUBACK went to nobody (seen once under load)
        probe_until_it_arrives(sender, first.topics.cmd("hold", "scada-hd"), probed.is_set)
        sender.publish(first.topics.cmd("hold", "scada-hd"), b'{"id": 1}', qos=1).wait_for_publish(SAFETY_S)
        assert arrived.wait(SAFETY_S) and got == [(first.topics.cmd("hold", "scada-hd"), b'{"id": 1}')]
        assert first.stop().offline_published
        arrived.clear()
        sender.publish(first.topics.cmd("abort", "scada-hd"), b'{"id": 2}', qos=1).wait_for_publish(SAFETY_S)
        second = session()                                   # same client id: the broker kept the session
        try:
            assert arrived.wait(SAFETY_S)
            assert got[-1] == (first.topics.cmd("abort", "scada-hd"), b'{"id": 2}')
        finally:
            second.stop(0)
    finally:
        sender.disconnect()
        sender.loop_stop()


# ---- acknowledgements, correlation data, permanent refusals ---------------------------------------------


def test_a_command_not_acknowledged_by_its_handler_comes_again_on_the_next_connection(
        broker: Mosquitto, outbox: Outbox) -> None:
    got: list[tuple[bytes, bool]] = []
    arrived = threading.Condition()

    def on_command(message: mqtt.MQTTMessage, ack: Callable[[], None]) -> None:
        if message.payload == b"probe":
            probed.set()
            ack()
            return
        with arrived:
            got.append((bytes(message.payload), bool(message.dup)))
            arrived.notify_all()
        if message.payload == b"handled":
            ack()                     # e.g. its answer is stored; "unhandled" is never acknowledged

    probed = threading.Event()

    def wait_for(n: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(got) >= n, SAFETY_S), got

    def session() -> MqttSession:
        s = MqttSession(outbox, fast(broker.url), site=SITE, station=STATION)
        s.subscribe_acked(s.topics.cmd_filter, 1, on_command)
        return s.start()

    first = session()
    assert first.wait_connected(SAFETY_S)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada", protocol=MQTTProtocolVersion.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        topic = first.topics.cmd("hold", "scada-hd")
        # connected is not yet subscribed: a command before the SUBACK went to nobody (seen once under load)
        probe_until_it_arrives(sender, topic, probed.is_set)
        sender.publish(topic, b"unhandled", qos=1).wait_for_publish(SAFETY_S)
        sender.publish(topic, b"handled", qos=1).wait_for_publish(SAFETY_S)
        wait_for(2)
        first.stop(1)
        second = session()                       # same client id: the broker kept the session and the message
        try:
            wait_for(3)
            assert got[2] == (b"unhandled", True), got      # sent again (DUP); "handled" was not
            second.stop(0)
        finally:
            second.stop(0)
        assert [p for p, _ in got] == [b"unhandled", b"handled", b"unhandled"]
    finally:
        sender.disconnect()
        sender.loop_stop()


def test_a_reply_carries_the_commands_correlation_data_as_an_mqtt5_property(broker: Mosquitto,
                                                                           outbox: Outbox) -> None:
    received: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    requester = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="requester",
                            protocol=MQTTProtocolVersion.MQTTv5)
    subscribed = threading.Event()
    requester.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        received.append(m)
        done.set()

    requester.on_message = on_message
    requester.connect("127.0.0.1", broker.port)
    requester.loop_start()
    session = MqttSession(outbox, fast(broker.url, protocol="5"), site=SITE, station=STATION).start()
    try:
        requester.subscribe(session.topics.reply("hold"), qos=1)
        assert subscribed.wait(SAFETY_S)
        sent = b"\x00\xffrequest-17"
        session.put("reply", {"command_id": "c0ffee00-1", "verb": "hold", "result": "accepted", "code": "ok",
                              "message": "held", "replayed": False,
                              "correlation_data": base64.b64encode(sent).decode()}, verb="hold")
        assert done.wait(SAFETY_S)
        assert received[0].properties is not None
        assert getattr(received[0].properties, "CorrelationData", None) == sent
    finally:
        session.stop(1)
        requester.disconnect()
        requester.loop_stop()


def test_a_permanent_refusal_is_deleted_and_reported_a_refused_telemetry_message_kept(
        tmp_path: pathlib.Path, outbox: Outbox) -> None:
    root = f"reedge/v1/{SITE}/{STATION}"
    acl = tmp_path / "acl"      # anonymous clients: the station's status, event and telemetry, nothing else
    acl.write_text("".join(f"topic readwrite {root}/{t}\n" for t in ("status", "event", "telemetry")))
    broker = Mosquitto(tmp_path / "broker", extra=f"acl_file {acl}").start()
    consumer = Consumer(broker.port, topic=f"{root}/event")
    events = Events()
    session = MqttSession(outbox, fast(broker.url, protocol="5"), site=SITE, station=STATION, on_event=events)
    session.start()
    try:
        before = session.put("event", {"n": 1})
        reply = session.put("reply", {"command_id": "x"}, verb="hold")    # the ACL refuses it: for good
        foreign = outbox.put("telemetry", f"reedge/v1/{SITE}/hd-02/telemetry", {"n": 1},
                             priority=Priority.TELEMETRY)                   # refused too, but telemetry: kept
        after = session.put("event", {"n": 2})
        assert events.wait("rejected")
        events_last = outbox.last_sequences()["event"]             # + the report, put when the refusal came
        assert events_last == after.seq + 1 or (events_last == after.seq and after.seq == 3)
        assert consumer.wait_for({"event": events_last})
        reports = [json.loads(p)["body"] for p in consumer.received.payloads
                   if json.loads(p)["body"].get("kind") == "other"]
        assert len(reports) == 1, reports
        data = reports[0]["data"]
        assert data["original_kind"] == "message_refused" and data["reason_code"] == 0x87
        assert (data["boot"], data["stream"], data["seq"], data["topic"]) == (*reply.key, reply.topic)
        assert consumer.verify({"event": events_last}).problems == []
        assert before.seq == 1
        wait_until(lambda: session.stats().dropped == 1 and outbox.stats().count == 1, "the reply deleted")
        assert [m.key for m in outbox.pending(10)] == []         # the telemetry one: set aside, in flight
        result = session.stop(1)
        assert (result.flushed, result.remaining) == (False, 1)
        assert [m.key for m in outbox.pending(10)] == [foreign.key]
    finally:
        session.stop(0)
        consumer.close()
        broker.close()


def test_a_message_refused_for_the_moment_is_sent_again_on_the_same_connection_until_the_broker_takes_it(
        tmp_path: pathlib.Path, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal that can pass (here telemetry the ACL refuses: kept, as a quota or a busy server would be) no
    longer waits for the next connection, which may be days away on a good link, while every window names what
    is missing (heads): it is sent again after ASIDE_S, doubling; once the broker's ACL lets it (reloaded by
    SIGHUP) it goes through, on the same connection."""
    import edge.telemetry.session as session_module

    monkeypatch.setattr(session_module, "ASIDE_S", 0.3)
    root = f"reedge/v1/{SITE}/{STATION}"
    acl = tmp_path / "acl"
    acl.write_text("".join(f"topic readwrite {root}/{t}\n" for t in ("status", "event", "telemetry")))
    broker = Mosquitto(tmp_path / "broker", extra=f"acl_file {acl}").start()
    events = Events()
    session = MqttSession(outbox, fast(broker.url, protocol="5"), site=SITE, station=STATION, on_event=events)
    session.start()
    try:
        foreign = outbox.put("telemetry", f"reedge/v1/{SITE}/hd-02/telemetry", {"n": 1},
                             priority=Priority.TELEMETRY)
        wait_until(lambda: session.stats().rejected >= 3, "refused, sent again, refused again")
        assert events.kinds().count("rejected") == 1            # said once, counted each time
        assert outbox.stats().count == 1 and session.stats().connects == 1
        acl.write_text(acl.read_text() + f"topic readwrite reedge/v1/{SITE}/hd-02/telemetry\n")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)                  # mosquitto reads its ACL again
        wait_until(lambda: outbox.stats().count == 0, f"{foreign.key} taken by the broker")
        assert session.stats().connects == 1
    finally:
        session.stop(0)
        broker.close()


def test_run_broker_keeps_the_station_files_tls_and_login_and_names_the_file_on_a_conflict(
        tmp_path: pathlib.Path) -> None:
    """``reedge run --broker URL`` on a station whose [mqtt] names no broker: its CA, login and timings apply;
    plain mqtt:// with TLS files is refused, naming the station file and the key (never credentials in clear)."""
    from edge.app.run import RunError, RunOptions, broker_settings
    from edge.spec.station import parse_station

    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "pw").write_text("s3cret\n")
    text = text.replace("[mqtt.roles]", f'[mqtt]\nca_file = "{tmp_path / "ca.pem"}"\nusername = "hd-01"\n'
                                        f'password_file = "{tmp_path / "pw"}"\nkeepalive_s = 12\n\n[mqtt.roles]', 1)
    source = tmp_path / "hd.toml"
    station = parse_station(text, str(source))
    assert station.broker is None                                   # no broker named in the file
    opts = RunOptions(station=source, state_dir=tmp_path / "state", broker="mqtts://a.plant,mqtts://b.plant")
    settings = broker_settings(station, opts)
    assert settings is not None and [b.host for b in settings.brokers] == ["a.plant", "b.plant"]
    assert (settings.ca_file, settings.username, settings.keepalive_s) == (tmp_path / "ca.pem", "hd-01", 12)
    with pytest.raises(RunError) as info:
        broker_settings(station, RunOptions(station=source, state_dir=tmp_path / "state", broker="mqtt://a.plant"))
    assert f"{source}: mqtt.ca_file: TLS files given but no broker is mqtts://" in str(info.value)


# ---- send order after an outage, and the broker's Maximum Packet Size -------------------------------


def test_after_an_hour_offline_a_trip_goes_before_the_telemetry_backlog(broker: Mosquitto, outbox: Outbox) -> None:
    """An hour of 1 s telemetry windows waits in the outbox (put directly: no real hour), then a trip and a
    state: when the station connects, the trip is in the first window, and every stream still arrives in order."""
    consumer = Consumer(broker.port)
    root = f"reedge/v1/{SITE}/{STATION}"
    try:
        hour = [Draft("telemetry", f"{root}/telemetry", {"w": i}, Priority.TELEMETRY) for i in range(3600)]
        outbox.put_many(hour)
        trip = outbox.put("event", f"{root}/event", {"kind": "trip"}, priority=Priority.ALARM)
        state = outbox.put("state", f"{root}/state", {"phase": "tripped"}, priority=Priority.STATE, retain=True)
        tail = outbox.put("telemetry", f"{root}/telemetry", {"w": 3600}, priority=Priority.TELEMETRY)
        session = MqttSession(outbox, fast(broker.url), site=SITE, station=STATION)
        started = time.monotonic()
        session.start()
        try:
            assert consumer.wait_for({"event": trip.seq})
            waited = time.monotonic() - started
            arrived = list(consumer.received.keys)
            first_trip = arrived.index(trip.key)
            # the window is 7 (max_inflight 7): the trip and the state are sent first, before any telemetry
            assert first_trip <= 1 and state.key in arrived[:2], arrived[:10]
            print(f"trip after {waited:.2f} s (position {first_trip}) behind a backlog of {len(hour)} windows")
            last = {"telemetry": tail.seq, "event": trip.seq, "state": state.seq}
            assert session.wait_flushed(SAFETY_S) and consumer.wait_for(last)
            verdict = consumer.verify(last)
            assert verdict.problems == [], verdict
        finally:
            session.stop(0)
    finally:
        consumer.close()


def test_a_message_over_the_brokers_maximum_packet_size_is_reported_once_never_sent(tmp_path: pathlib.Path,
                                                                                   outbox: Outbox) -> None:
    broker = Mosquitto(tmp_path / "broker", extra="max_packet_size 2000").start()
    consumer = Consumer(broker.port)
    events = Events()
    session = MqttSession(outbox, fast(broker.url, protocol="5"), site=SITE, station=STATION, on_event=events)
    try:
        put = [session.put(s, {"i": i}) for i in range(5) for s in ("telemetry", "batch")]
        big = session.put("batch", {"record": "x" * 3000})           # a batch record past the broker's limit
        put += [session.put(s, {"i": i}) for i in range(5, 10) for s in ("telemetry", "batch")]
        session.start()
        assert consumer.wait_for({"event": 1, "telemetry": 10, "batch": big.seq + 5})
        assert session.wait_flushed(SAFETY_S)
        got = [k for k in consumer.received.keys]
        assert big.key not in got
        assert [k[2] for k in got if k[1] == "batch"] == [s for s in range(1, big.seq + 6) if s != big.seq]
        others = [(k, p) for k, p in zip(got, consumer.received.payloads, strict=True) if k[1] != "batch"]
        assert verify(others, {"telemetry": 10, "event": 1}).problems == []   # batch: the gap is the dropped one
        reports = [json.loads(p)["body"] for p in consumer.received.payloads if json.loads(p)["body"].get("data")]
        assert len(reports) == 1 and reports[0]["data"]["reason_code"] == 0x95, reports
        assert (reports[0]["data"]["stream"], reports[0]["data"]["seq"]) == ("batch", big.seq)
        stats = session.stats()
        assert stats.dropped == 1 and stats.published == len(put) + 1       # + the report; the big one never
        assert events.kinds().count("connected") == 1 and "disconnected" not in events.kinds()
    finally:
        session.stop(0)
        consumer.close()
        broker.close()


def probe_until_it_arrives(sender: mqtt.Client, topic: str, arrived: Callable[[], bool]) -> None:
    """Send a probe command once a second until ``arrived()``: the station's subscription is in place at the
    broker (its SUBACK is on the station's side; a command sent before it would be lost to the test)."""
    for _ in range(int(SAFETY_S)):
        sender.publish(topic, b"probe", qos=1).wait_for_publish(SAFETY_S)
        end = time.monotonic() + 1
        while not arrived() and time.monotonic() < end:
            time.sleep(0.01)
        if arrived():
            return
    raise AssertionError("no command reached the station")


def test_a_command_is_acknowledged_to_the_broker_only_once_an_fsync_covers_its_answer(
        broker: Mosquitto, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: puts do not fsync, so the session must fsync before it PUBACKs a command whose
    answer it relies on (the publisher acks once the answer is put): instrumented at paho's ack."""
    seam = FsyncSeam(monkeypatch)
    acked_answers: list[tuple[int, bool]] = []
    real_ack = mqtt.Client.ack
    answers: dict[int, int] = {}                       # paho mid of the command -> outbox id of its answer
    seen: list[bytes] = []

    def ack(client: mqtt.Client, mid: int, qos: int) -> object:
        if mid in answers:
            acked_answers.append((answers[mid], seam.is_durable(answers[mid])))
        return real_ack(client, mid, qos)
    monkeypatch.setattr(mqtt.Client, "ack", ack)

    with Outbox(tmp_path / "outbox.db", boot_id="boot-1") as ob:        # the default: synchronous="GROUP"
        session = MqttSession(ob, fast(broker.url), site=SITE, station=STATION)

        def on_command(message: mqtt.MQTTMessage, done: Callable[[], None]) -> None:
            answer = session.put("reply", {"command_id": message.payload.decode()}, verb="hold")
            answers[message.mid] = answer.id
            seen.append(bytes(message.payload))
            done()                                     # as the publisher does once the answer is stored
        session.subscribe_acked(session.topics.cmd_filter, 1, on_command)
        session.start()
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada", protocol=MQTTProtocolVersion.MQTTv5)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        try:
            assert session.wait_connected(SAFETY_S)
            topic = session.topics.cmd("hold", "scada-hd")
            probe_until_it_arrives(sender, topic, lambda: bool(answers))
            for i in range(20):
                sender.publish(topic, f"c{i}".encode(), qos=1).wait_for_publish(SAFETY_S)
            wait_until(lambda: b"c19" in seen and len(acked_answers) == len(answers), "every command acknowledged")
            assert len(acked_answers) >= 21
            assert [durable for _, durable in acked_answers] == [True] * len(acked_answers), acked_answers
        finally:
            session.stop(5)
            sender.disconnect()
            sender.loop_stop()


def test_a_command_whose_ack_met_a_failed_fsync_is_acknowledged_after_the_restart_never_before(
        broker: Mosquitto, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review15: when the fsync before a PUBACK failed, the session dropped the ack ("the broker sends it again
    next time"), and on a connection that stays up nothing sent it again. Now the acks are kept, and since a
    failed fsync is final (outbox_commit: the next "successful" one may lie) they wait for the restart: not
    acknowledged by this outbox, even though later fsyncs succeed; the restarted station (same client id, a
    new outbox on the same file) gets them again from the broker and acknowledges them."""
    real_fsync = os.fsync
    armed = threading.Event()
    failed_on: list[str] = []

    def fsync(fd: int) -> None:
        if armed.is_set() and os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            failed_on.append(threading.current_thread().name)
            armed.clear()                           # one failure, then the disk "works" again
            raise OSError(errno.EIO, "injected: Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    real_ack = mqtt.Client.ack
    acked: set[bytes] = set()
    mids: dict[int, bytes] = {}
    seen: list[bytes] = []

    def ack(client: mqtt.Client, mid: int, qos: int) -> object:
        if mid in mids:
            acked.add(mids[mid])
        return real_ack(client, mid, qos)
    monkeypatch.setattr(mqtt.Client, "ack", ack)

    def station(ob: Outbox) -> MqttSession:
        session = MqttSession(ob, fast(broker.url), site=SITE, station=STATION)

        def on_command(message: mqtt.MQTTMessage, done: Callable[[], None]) -> None:
            session.put("reply", {"command_id": message.payload.decode()}, verb="hold")
            mids[message.mid] = bytes(message.payload)
            seen.append(bytes(message.payload))
            done()
        session.subscribe_acked(session.topics.cmd_filter, 1, on_command)
        return session.start()

    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada", protocol=MQTTProtocolVersion.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        with Outbox(tmp_path / "outbox.db", boot_id="boot-1") as ob:        # the default: synchronous="GROUP"
            session = station(ob)
            try:
                assert session.wait_connected(SAFETY_S)
                topic = session.topics.cmd("hold", "scada-hd")
                probe_until_it_arrives(sender, topic, lambda: b"probe" in acked)
                armed.set()
                sender.publish(topic, b"during-eio", qos=1).wait_for_publish(SAFETY_S)
                wait_until(lambda: not armed.is_set(), "the injected fsync failure")
                sender.publish(topic, b"after", qos=1).wait_for_publish(SAFETY_S)
                wait_until(lambda: b"after" in seen, "the next command delivered to the station")
                with pytest.raises(OutboxError, match="restarted"):
                    ob.sync()
            finally:
                session.stop(5)
        assert not {b"during-eio", b"after"} & acked, f"acknowledged on a frozen durable point: {sorted(acked)}"
        with Outbox(tmp_path / "outbox.db", boot_id="boot-2") as ob:          # the restart
            session = station(ob)
            try:
                wait_until(lambda: {b"during-eio", b"after"} <= acked,
                           f"both acknowledged after the restart (acked {sorted(acked)}, seen {seen})")
            finally:
                session.stop(5)
        assert failed_on, "the fsync failure was never met"
    finally:
        sender.disconnect()
        sender.loop_stop()


@pytest.mark.parametrize("libc", [True, False], ids=["ctypes", "python"])
def test_corked_holds_a_window_until_its_end_then_sends_all_of_it(libc: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``corked`` (the session's window of publishes): TCP_CORK is set inside and cleared at the end, through the
    C library (GIL released) or Python's setsockopt where there is none; every byte written inside arrives."""
    import socket as so

    from edge.telemetry import connection
    if not libc:
        monkeypatch.setattr(connection, "_SETSOCKOPT", None)
    with so.create_server(("127.0.0.1", 0)) as server:
        client = so.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            with connection.corked(client):
                assert client.getsockopt(so.IPPROTO_TCP, so.TCP_CORK) == 1
                for i in range(20):
                    client.sendall(b"%02d" % i)
            assert client.getsockopt(so.IPPROTO_TCP, so.TCP_CORK) == 0
            peer.settimeout(SAFETY_S)
            got = b""
            while len(got) < 40:
                got += peer.recv(64)
            assert got == b"".join(b"%02d" % i for i in range(20))
        with connection.corked(client):      # a closed socket: nothing to cork, nothing raised
            pass
