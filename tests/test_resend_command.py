"""The ``resend`` command: a consumer asks the station to publish again what the broker acknowledged and lost.

Unit tests of the handler with a fake history (``FakeHistory``, the contract of ``Outbox.resend``), then the
real thing: the publisher of a lockstep HD station on a real mosquitto, its outbox's history, a raw MQTT 5
client that sees every byte and every retain flag as published."""

from __future__ import annotations

import contextlib
import json
import pathlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.app.run import RunOptions, _publisher_settings
from edge.batch.record import BatchRecorder
from edge.control.controller import Controller
from edge.operator.execute import Operator
from edge.operator.target import ControllerTarget
from edge.spec.access import ROLE_VERBS, CommandSettings
from edge.spec.broker import parse_broker_url
from edge.spec.reader import SpecError
from edge.spec.station import load_station, parse_station
from edge.telemetry.access import broker_acl
from edge.telemetry.commands import MAX_MISSING_LISTED, CommandHandler, CommandLedger, Outcome
from edge.telemetry.envelope import EnvelopeError, parse
from edge.telemetry.outbox_types import OutboxError, Resent
from edge.telemetry.publisher import Publisher, PublisherSettings
from edge.telemetry.topics import SCHEMA_BASE
from edge.timestamps import rfc3339_ms
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor
from tests.mqtt_broker import SAFETY_S, Mosquitto, wait_until
from tests.test_commands import NOW, ROOT, SETTINGS, Recorder, T, check_outcome, command
from tests.test_mqtt_run import TOPICS

HISTORIAN = "historian"       # a viewer in SETTINGS
BOOT = "4f1c2a9e7b3d4c6f8a0e1d2c3b4a5968"
LIMIT = 100_000               # the contract's MAX_RESEND
STATION_FILE = ROOT / "stations" / "hd_reactor_sim.toml"
LIVE_STATION = load_station(STATION_FILE)


class FakeHistory:
    """``Outbox.resend`` as the contract has it: the bounds as ValueError, then a fixed answer; records its calls."""

    def __init__(self, answer: Resent | None = None, error: Exception | None = None) -> None:
        self.answer = answer or Resent(requeued=120, pending=0, missing=[(1120, 1130)])
        self.error = error
        self.calls: list[tuple[str, str, int, int]] = []

    def __call__(self, boot_id: str, stream: str, first_seq: int, last_seq: int) -> Resent:
        self.calls.append((boot_id, stream, first_seq, last_seq))
        if first_seq < 1 or last_seq < first_seq or last_seq - first_seq >= LIMIT:
            raise ValueError(f"resend: expected 1 <= first_seq <= last_seq < first_seq + {LIMIT},"
                             f" got {first_seq}..{last_seq}")
        if self.error is not None:
            raise self.error
        return self.answer


def resend_args(first: int = 1000, last: int = 1130, *, boot: str = BOOT, stream: str = "telemetry") -> dict[str, Any]:
    return {"boot_id": boot, "stream": stream, "first_seq": first, "last_seq": last}


def ask(ledger: CommandLedger, history: FakeHistory | None, *, identity: str = HISTORIAN,
        settings: CommandSettings = SETTINGS, payload: bytes | None = None, now: int = NOW,
        handler: CommandHandler | None = None, **args: Any) -> Outcome:
    h = handler or CommandHandler(topics=T, settings=settings, operator=Operator(Recorder(), allow_remote_reset=False),
                                  ledger=ledger, clock=lambda: now, resend=history)
    return h.handle(T.cmd("resend", identity),
                    payload or command("resend", resend_args(**args), issuer=identity))


@pytest.fixture
def ledger(tmp_path: pathlib.Path) -> Any:
    with CommandLedger(tmp_path / "commands.db") as led:
        yield led


# ---- the handler ---------------------------------------------------------------------------------

def test_a_viewers_resend_asks_the_history_and_answers_what_it_did(ledger: CommandLedger) -> None:
    history = FakeHistory()
    out = ask(ledger, history)
    assert history.calls == [(BOOT, "telemetry", 1000, 1130)]
    assert out.accepted and out.executed and out.reply_topic == T.reply("resend")
    assert out.reply["data"] == {"requeued": 120, "pending": 0, "missing": [[1120, 1130]], "missing_count": 11}
    assert out.reply["message"] == (f"re-sent 120 of stream telemetry, boot {BOOT}, seq 1000-1130; 0 still pending;"
                                    " missing 1120-1130 (11 no longer held)")
    assert out.event.body["verb"] == "resend" and out.event.body["issuer"] == HISTORIAN
    check_outcome(out)          # reply (with its data) and audit event valid against their schemas


def test_every_role_may_resend_and_the_acl_lets_it() -> None:
    assert all("resend" in verbs for verbs in ROLE_VERBS.values())
    acl = broker_acl(SETTINGS, T).splitlines()
    for identity in SETTINGS.roles:
        assert f"topic write {T.cmd('resend', identity)}" in acl, identity


def test_nothing_missing_is_said_and_listed_as_such(ledger: CommandLedger) -> None:
    out = ask(ledger, FakeHistory(Resent(requeued=3, pending=2, missing=[])), first=5, last=9)
    assert out.reply["data"] == {"requeued": 3, "pending": 2, "missing": [], "missing_count": 0}
    assert out.reply["message"].endswith("seq 5-9; 2 still pending; nothing missing")
    check_outcome(out)


def test_a_resend_cut_at_its_bytes_says_where_to_ask_again_in_data_and_message(ledger: CommandLedger) -> None:
    """Schema 1.4: a program reads ``rest_from``; before it, only the message said it."""
    out = ask(ledger, FakeHistory(Resent(requeued=250, pending=1, missing=[(1000, 1003)], rest_from=1255)))
    assert out.reply["data"] == {"requeued": 250, "pending": 1, "missing": [[1000, 1003]], "missing_count": 4,
                                 "rest_from": 1255}
    assert "from seq 1255 on not looked at" in out.reply["message"]
    check_outcome(out)          # valid against reply.json 1.4


def test_many_missing_ranges_are_listed_up_to_a_bound_and_counted_in_all(ledger: CommandLedger) -> None:
    missing = [(n, n) for n in range(1, 400, 2)]       # 200 single numbers, every other one
    out = ask(ledger, FakeHistory(Resent(requeued=199, pending=0, missing=missing)), first=1, last=399)
    data = out.reply["data"]
    assert data["missing"] == [[n, n] for n, _ in missing[:MAX_MISSING_LISTED]] and data["missing_count"] == 200
    assert "missing 1, 3, 5" in out.reply["message"] and "more range(s)" in out.reply["message"]
    assert len(out.reply["message"]) <= 1000
    check_outcome(out)


@pytest.mark.parametrize(("first", "last"), [(10, 9), (1, LIMIT + 1), (7, 7 + LIMIT)])
def test_a_backward_range_or_too_long_a_span_is_invalid(ledger: CommandLedger, first: int, last: int) -> None:
    out = ask(ledger, FakeHistory(), first=first, last=last)
    assert out.reply["code"] == "invalid" and "first_seq" in out.reply["message"] and "data" not in out.reply
    check_outcome(out)


def test_the_longest_span_is_accepted(ledger: CommandLedger) -> None:
    history = FakeHistory()
    assert ask(ledger, history, first=1, last=LIMIT).accepted
    assert history.calls == [(BOOT, "telemetry", 1, LIMIT)]


@pytest.mark.parametrize(("args", "where"), [
    ({"first_seq": 0}, "/args/first_seq"),
    ({"last_seq": -1}, "/args/last_seq"),
    ({"boot_id": ""}, "/args/boot_id"),
    ({"stream": "tele metry"}, "/args/stream"),
    ({"first_seq": 1.5}, "/args/first_seq"),
    ({"extra": 1}, "/args"),
])
def test_arguments_against_the_schema_are_invalid_and_nothing_is_asked(ledger: CommandLedger, args: dict[str, Any],
                                                                       where: str) -> None:
    history = FakeHistory()
    payload = command("resend", {**resend_args(), **args}, issuer=HISTORIAN)
    out = ask(ledger, history, payload=payload)
    assert out.reply["code"] == "invalid" and where in out.reply["message"]
    assert history.calls == []


def test_an_identity_without_a_role_is_unauthorised_and_nothing_is_resent(ledger: CommandLedger) -> None:
    history = FakeHistory()
    out = ask(ledger, history, identity="stranger")
    assert out.reply["code"] == "unauthorised" and "no role on this station" in out.reply["message"]
    assert history.calls == []
    check_outcome(out)


def test_a_station_without_history_answers_not_allowed(ledger: CommandLedger) -> None:
    out = ask(ledger, None)
    assert out.reply["code"] == "not_allowed" and "keeps no history" in out.reply["message"]
    check_outcome(out)


def test_a_stale_resend_is_not_executed(ledger: CommandLedger) -> None:
    history = FakeHistory()
    out = ask(ledger, history, now=NOW + 61 * 10**9)
    assert out.reply["code"] == "stale" and history.calls == []


def test_a_replay_gets_the_original_answer_with_its_data_and_asks_nothing_again(tmp_path: pathlib.Path) -> None:
    history = FakeHistory()
    payload = command("resend", resend_args(), issuer=HISTORIAN)
    with CommandLedger(tmp_path / "c.db") as led:
        first = ask(led, history, payload=payload)
    with CommandLedger(tmp_path / "c.db") as led:     # after a restart of the station
        again = ask(led, FakeHistory(Resent(requeued=0, pending=0, missing=[(1000, 1130)])), payload=payload,
                    now=NOW + 10**9)
    assert len(history.calls) == 1
    assert again.reply["replayed"] and not again.executed
    assert (again.reply["code"], again.reply["message"], again.reply["data"]) == (
        first.reply["code"], first.reply["message"], first.reply["data"])
    check_outcome(again)


def test_a_failing_history_is_an_error_and_the_station_goes_on(ledger: CommandLedger) -> None:
    out = ask(ledger, FakeHistory(error=OutboxError("disk I/O error")))
    assert out.reply["code"] == "error" and "disk I/O error" in out.reply["message"]
    assert "nothing was queued again" in out.reply["message"]
    check_outcome(out)


def test_a_stopping_station_refuses_resend_like_any_command(ledger: CommandLedger) -> None:
    history = FakeHistory()
    target = Recorder()
    h = CommandHandler(topics=T, settings=SETTINGS, operator=Operator(target, allow_remote_reset=False),
                       ledger=ledger, clock=lambda: NOW, resend=history)
    h.close("station stopping")
    out = ask(ledger, history, handler=h)
    hold = h.handle(T.cmd("hold", "scada-hd"), command("hold"))
    assert out.reply["code"] == hold.reply["code"] == "refused" and out.reply["message"] == "station stopping"
    assert history.calls == [] and target.calls == []


def test_resend_answers_on_the_senders_inbox_when_it_asks(ledger: CommandLedger) -> None:
    inbox = f"{T.root}/reply/{HISTORIAN}/r1"
    payload = command("resend", resend_args(), issuer=HISTORIAN, reply_to=inbox)
    out = ask(ledger, FakeHistory(), payload=payload)
    assert out.accepted and out.reply_topic == inbox


# ---- [mqtt] history_mb ---------------------------------------------------------------------------

def _station_text(mqtt_lines: str) -> str:
    text = STATION_FILE.read_text()
    return text.replace("[mqtt.roles]", f"[mqtt]\n{mqtt_lines}\n\n[mqtt.roles]", 1)


@pytest.mark.parametrize(("line", "mb"), [("", 64), ("history_mb = 0", 0), ("history_mb = 512", 512)])
def test_history_mb_is_read_from_the_station_file(line: str, mb: int) -> None:
    station = parse_station(_station_text(line), str(STATION_FILE))
    assert station.mqtt.history_mb == mb


@pytest.mark.parametrize("line", ["history_mb = -1", "history_mb = 16385", "history_mb = 1.5", 'history_mb = "64"'])
def test_a_bad_history_mb_is_an_error_naming_the_key(line: str) -> None:
    with pytest.raises(SpecError, match=r"mqtt\.history_mb: expected an integer from 0 to 16384"):
        parse_station(_station_text(line), str(STATION_FILE))


def test_reedge_run_gives_the_outbox_the_station_files_history(tmp_path: pathlib.Path) -> None:
    station = parse_station(_station_text('brokers = ["mqtt://127.0.0.1:1883"]\nhistory_mb = 3'),
                            str(STATION_FILE))
    # --broker replaces the file's brokers and keeps its other keys, history_mb too
    opts = RunOptions(station=STATION_FILE, state_dir=tmp_path, broker="mqtt://127.0.0.1:1884")
    settings = _publisher_settings(station, opts)
    assert settings is not None and settings.history_bytes == 3 << 20


# ---- a real station on a real mosquitto -------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """One message as the broker delivered it: the exact bytes, and the retain flag as published."""

    topic: str
    payload: bytes
    retain: bool
    key: tuple[str, str, int] | None     # (boot, stream, seq) of an envelope


class Raw:
    """A MQTT 5 consumer of the station's topics that keeps every payload's bytes and, with retain-as-published,
    the retain flag each message was published with (a live retained message otherwise arrives unflagged)."""

    def __init__(self, url: str, root: str) -> None:
        self.seen: list[Seen] = []
        self.cond = threading.Condition()
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(
            f"{root}/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(SAFETY_S), "the raw consumer never subscribed"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        key = None
        with contextlib.suppress(EnvelopeError):
            key = parse(bytes(msg.payload)).key
        with self.cond:
            self.seen.append(Seen(msg.topic, bytes(msg.payload), bool(msg.retain), key))
            self.cond.notify_all()

    def of(self, stream: str) -> list[Seen]:
        with self.cond:
            return [s for s in self.seen if s.key is not None and s.key[1] == stream]

    def keys(self, stream: str) -> list[tuple[str, str, int]]:
        return [s.key for s in self.of(stream) if s.key is not None]

    def copies(self, key: tuple[str, str, int]) -> list[Seen]:
        with self.cond:
            return [s for s in self.seen if s.key == key]

    def reply(self, command_id: str) -> dict[str, Any] | None:
        for s in self.of("reply"):
            body = parse(s.payload).body
            if body.get("command_id") == command_id:
                return body
        return None

    def send(self, identity: str, **args: Any) -> str:
        command_id = str(uuid.uuid4())
        doc = {"schema": f"{SCHEMA_BASE}cmd-resend.json", "command_id": command_id,
               "issued_at": rfc3339_ms(time.time_ns()), "issuer": identity, "args": args}
        self.client.publish(TOPICS.cmd("resend", identity), json.dumps(doc), qos=1)
        return command_id

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Live:
    """A publishing station (lockstep HD plant, real core and controller) and a raw consumer of it."""

    rig: LockstepRig
    ctl: Controller
    publisher: Publisher
    raw: Raw
    url: str

    def scan(self) -> None:
        self.ctl.step()
        self.publisher.scan(self.ctl)

    def run_until(self, done: Callable[[], bool], what: str) -> None:
        """Step the station (it publishes as it goes) until ``done``; the deadline is a safety net."""
        deadline = time.monotonic() + SAFETY_S
        while not done():
            assert time.monotonic() < deadline, f"still not {what}"
            self.rig.step(self.scan)
            with self.raw.cond:
                self.raw.cond.wait(0.005)

    def settle(self) -> None:
        """Without stepping: wait until the broker acknowledged everything put so far (it is all history now)."""
        wait_until(lambda: self.publisher.outbox.stats().count == 0, "everything acknowledged")

    def answer(self, command_id: str) -> dict[str, Any]:
        self.run_until(lambda: self.raw.reply(command_id) is not None, f"answered {command_id}")
        body = self.raw.reply(command_id)
        assert body is not None
        return body


@contextlib.contextmanager
def live_station(tmp_path: pathlib.Path, history_bytes: int) -> Iterator[Live]:
    broker = Mosquitto(tmp_path / "broker").start()
    raw = Raw(broker.url, TOPICS.root)
    state = tmp_path / "state"
    assert LIVE_STATION.mqtt is not None
    settings = PublisherSettings(broker=LIVE_STATION.mqtt.with_brokers((parse_broker_url(broker.url),)),
                                 site=TOPICS.site, station=TOPICS.station, state_dir=state, window_s=2.0,
                                 history_bytes=history_bytes)
    try:
        with LockstepRig(LIVE_STATION, HDReactor(), dt_s=1.0) as rig:
            ctl = Controller(rig.core, rig.station, state_path=state / "run-state.json")
            recorder = BatchRecorder(state, rig.station, site=TOPICS.site, station_id=TOPICS.station,
                                     config=rig.station.accounting)
            operator = Operator(ControllerTarget(ctl, ROOT / "recipes", recorder), allow_remote_reset=False)
            publisher = Publisher(rig.core, ctl, settings, recorder, operator).start()
            live = Live(rig, ctl, publisher, raw, broker.url)
            try:
                # the birth follows the station's SUBSCRIBE on its connection: then commands reach it
                live.run_until(lambda: any(parse(s.payload).body.get("state") == "online" for s in raw.of("status")),
                               "online")
                yield live
            finally:
                publisher.stop(ctl, flush_timeout_s=5.0)
    finally:
        raw.close()
        broker.close()


@pytest.fixture
def live(tmp_path: pathlib.Path) -> Iterator[Live]:
    with live_station(tmp_path, 64 << 20) as live:
        yield live


def test_a_viewers_resend_republishes_byte_identical_copies_and_never_retains_them(live: Live) -> None:
    raw = live.raw
    live.run_until(lambda: len(raw.of("telemetry")) >= 3 and bool(raw.of("state")) and bool(raw.of("description")),
                   "publishing telemetry, state and description")
    live.settle()
    boot = raw.keys("telemetry")[0][0]
    last_state = max(k[2] for k in raw.keys("state"))
    asked = {"telemetry": (1, 3), "state": (1, last_state), "description": (1, 1)}
    ids = {stream: raw.send(HISTORIAN, boot_id=boot, stream=stream, first_seq=a, last_seq=b)
           for stream, (a, b) in asked.items()}
    for stream, (a, b) in asked.items():
        body = live.answer(ids[stream])
        assert body["code"] == "ok", body
        assert body["data"] == {"requeued": b - a + 1, "pending": 0, "missing": [], "missing_count": 0}
    keys = [(boot, stream, seq) for stream, (a, b) in asked.items() for seq in range(a, b + 1)]
    live.run_until(lambda: all(len(raw.copies(k)) >= 2 for k in keys), "re-sent")
    for k in keys:
        first, *again = raw.copies(k)
        assert all(c.payload == first.payload and c.topic == first.topic for c in again), k
        assert not any(c.retain for c in again), f"{k}: a re-sent copy was retained"
        assert first.retain == (k[1] in ("state", "description"))
    # what the broker retains is still the newest state, not the re-sent old one
    newest = (boot, "state", max(k[2] for k in raw.keys("state")))
    retained = Raw(live.url, TOPICS.root)
    try:
        wait_until(lambda: bool(retained.of("state")), "the retained state")
        assert [s.key for s in retained.of("state") if s.retain] == [newest]
    finally:
        retained.close()


def test_an_identity_without_a_role_is_unauthorised_and_bounds_are_invalid(live: Live) -> None:
    raw = live.raw
    live.run_until(lambda: len(raw.of("telemetry")) >= 1, "publishing telemetry")
    live.settle()
    boot = raw.keys("telemetry")[0][0]
    stranger = raw.send("stranger", boot_id=boot, stream="telemetry", first_seq=1, last_seq=1)
    backward = raw.send(HISTORIAN, boot_id=boot, stream="telemetry", first_seq=2, last_seq=1)
    too_long = raw.send(HISTORIAN, boot_id=boot, stream="telemetry", first_seq=1, last_seq=LIMIT + 1)
    unknown = raw.send(HISTORIAN, boot_id="not-a-boot", stream="telemetry", first_seq=1, last_seq=5)
    assert live.answer(stranger)["code"] == "unauthorised"
    assert live.answer(backward)["code"] == "invalid"
    assert live.answer(too_long)["code"] == "invalid"
    body = live.answer(unknown)
    assert body["code"] == "ok" and body["data"] == {"requeued": 0, "pending": 0, "missing": [[1, 5]],
                                                      "missing_count": 5}
    assert len(raw.copies((boot, "telemetry", 1))) == 1       # nothing was sent again


def test_what_the_history_no_longer_holds_is_reported_missing(tmp_path: pathlib.Path) -> None:
    budget = 12 << 10                 # a few telemetry windows: the oldest are pruned as new ones are acknowledged
    with live_station(tmp_path, budget) as live:
        raw = live.raw
        live.run_until(lambda: sum(len(s.payload) for s in raw.of("telemetry")) > 4 * budget, "pruning")
        live.settle()
        boot = raw.keys("telemetry")[0][0]
        last = max(k[2] for k in raw.keys("telemetry"))
        data = live.answer(raw.send(HISTORIAN, boot_id=boot, stream="telemetry", first_seq=1, last_seq=last))["data"]
        assert data["pending"] == 0 and data["missing"] and data["missing"][0][0] == 1, data
        assert len(data["missing"]) == 1, data    # oldest first: one range from 1
        pruned = data["missing"][0][1]
        assert data["missing_count"] == pruned and data["requeued"] == last - pruned >= 1, data
        keys = [(boot, "telemetry", seq) for seq in range(pruned + 1, last + 1)]
        live.run_until(lambda: all(len(raw.copies(k)) >= 2 for k in keys), "re-sent")
        assert all(len({c.payload for c in raw.copies(k)}) == 1 for k in keys)
        assert all(len(raw.copies((boot, "telemetry", seq))) == 1 for seq in range(1, pruned + 1))
