"""A command flood through a real mosquitto into the real station publisher (lockstep rig, real C core): every
command answered exactly once, the operator's not starved behind it, the scan's work bounded, nothing left
unacknowledged.

The defect this pins (issue 15): 3,000 ``hold`` s from a viewer in ~1.4 s; mosquitto pushes them at the station
whatever its Receive Maximum; the old inbox (1,000) overflowed and left the rest unacknowledged and unanswered,
the operator's command among them, for a redelivery that never came. The harness is ``hil.flood``; how fast the
operator is answered under the flood is a benchmark figure (``./dev bench flood``), not a timed test.
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.telemetry import publisher as publisher_module
from edge.telemetry.outbox import OutboxError
from edge.telemetry.publisher import BUSY_AUDIT_S, MAX_COMMANDS_PER_SCAN
from hil.flood import TOPICS, FloodStation, Replies, client, close, command, flood_station, flood_then_command
from tests.mqtt_broker import Mosquitto, wait_until
from tests.test_mqtt_run import WAIT_S

FLOOD = 3000
# The operator's reply must not starve behind the flood. How fast it comes is a benchmark figure (`./dev bench
# flood`: 2 to 4 s here against the 5 s), not this test's: on a busy 2-core machine a wall-clock bound
# near the figure is a race. The defect this bound still catches left the operator unanswered for good (the
# broker's redelivery never came: no reply within 240 s); a minute is an order of magnitude above the figure.
STARVATION_S = 60.0
RUN_WAIT_S = 2 * STARVATION_S   # the whole flood answered: a safety net, never a measurement


@dataclass
class Station(FloodStation):
    broker: Mosquitto


@pytest.fixture
def station(tmp_path: pathlib.Path) -> Iterator[Station]:
    # the shipped broker's in-flight limit: the test shows it does not hold the flood back
    broker = Mosquitto(tmp_path / "broker", extra="max_inflight_messages 20").start()
    try:
        with flood_station(broker.url, tmp_path / "state") as fs:
            yield Station(fs.rig, fs.ctl, fs.publisher, fs.url, broker)
    finally:
        broker.close()


@pytest.mark.parametrize(("flooder_id", "args", "rejected", "second"), [
    ("historian", {}, "unauthorised", "scada-hd"),                    # a viewer's valid holds, then the operator
    ("scada-hd", {"reason": 5}, "invalid", "service-laptop"),        # an operator's invalid ones, then maintenance
])
def test_a_flood_of_commands_is_answered_in_full_and_another_identitys_command_first(
        station: Station, flooder_id: str, args: dict[str, object], rejected: str, second: str) -> None:
    """3,000 ``hold`` s from one identity as fast as paho sends them, then one from another: the other's is
    executed, not starved behind the flood (how fast: ``./dev bench flood``), each of the 3,001 gets exactly
    one reply (``busy``, or the flood's own rejection), no scan does more than its share of the flood's work,
    and after the station stops the broker has no unacknowledged command left to send it again. Even when the
    flooder may send the verb (the second case), its rate limit keeps the queue free for the others."""
    s = station
    replies = Replies(s.broker.url, WAIT_S)
    assert replies.online.wait(WAIT_S), "no birth"    # sent after the station's SUBSCRIBE: commands reach it now
    start = time.monotonic()
    run = flood_then_command(s, replies, n=FLOOD, flooder_id=flooder_id, args=args, second=second,
                             wait_s=RUN_WAIT_S)
    assert run.flood_sent == FLOOD, "the flooder did not send everything"
    missing = [i for i in [*run.ids, run.op_id] if i not in replies.replies]
    assert not missing, f"{len(missing)} of {FLOOD + 1} commands unanswered after {RUN_WAIT_S:g} s"
    assert not [i for i, n in replies.replies.items() if n != 1], "a command answered more than once"
    latency = run.latency(replies)
    # "state": no batch is running, so the operator path refused the hold: authorised and executed, not turned away
    assert replies.codes[run.op_id] == "state" and latency < STARVATION_S, (replies.codes[run.op_id], latency)
    codes = Counter(replies.codes[i] for i in run.ids)
    assert set(codes) <= {"busy", rejected}, codes
    turned = s.publisher.counters.turned_away     # the other busy ones: the scan's command budget ran out
    assert 0 < turned <= codes["busy"]
    # the scan's work is bounded whatever the flood, and that is what keeps it short (its wall time is a bench
    # figure, `./dev bench flood`, not this test's): it executes at most its share of the commands, and the
    # intake's busy answers are not its work: every reply it stores answers one of the commands it executed
    assert max(len(o) for o in run.outcomes) <= MAX_COMMANDS_PER_SCAN
    assert run.scan_replies == [len(o) for o in run.outcomes], [
        (n, len(o)) for n, o in zip(run.scan_replies, run.outcomes, strict=True) if n != len(o)]
    print(f"\nflood: {dict(codes)}; operator answered in {latency:.2f} s; {len(run.durations)} scans,"
          f" publisher.scan median {statistics.median(run.durations) * 1e3:.1f} ms,"
          f" max {max(run.durations) * 1e3:.1f} ms; {len(replies.busy_events)} busy audit events")

    # the busy answers' audit: not one event per command (the flood must not bury the station's events) but one
    # per sender at most every BUSY_AUDIT_S, counting them all (the last count goes out at stop)
    assert s.publisher.stop(s.ctl, flush_timeout_s=5.0).flushed
    try:
        wait_until(lambda: sum(e["data"]["count"] for e in replies.busy_events) >= turned,
                   "the busy answers counted in audit events", WAIT_S)
    finally:
        replies.close()
    assert sum(e["data"]["count"] for e in replies.busy_events) == turned
    assert len(replies.busy_events) <= 2 + (time.monotonic() - start) / BUSY_AUDIT_S, len(replies.busy_events)
    # nothing left unacknowledged
    assert redelivered(s) == []


def redelivered(s: Station) -> list[bytes]:
    """What the broker still holds unacknowledged for the stopped station: queue a marker for its session and
    reconnect it; the broker sends unacknowledged messages before anything queued later, so all that comes
    before the marker."""
    marker = str(uuid.uuid4())
    pub = client(s.broker.url, "marker")
    pub.publish(TOPICS.cmd("hold", "scada-hd"), command("hold", "scada-hd", marker), qos=1).wait_for_publish(WAIT_S)
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        if marker.encode() in m.payload:
            arrived.set()
        elif not arrived.is_set():
            got.append(bytes(m.payload))

    again = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.publisher.session.client_id, protocol=mqtt.MQTTv5)
    again.on_message = on_message
    host, port = s.broker.url.removeprefix("mqtt://").split(":")
    again.connect(host, int(port), clean_start=False)
    again.loop_start()
    try:
        assert arrived.wait(WAIT_S), "the queued marker never arrived"
        return got
    finally:
        close(again)
        close(pub)


def test_commands_waiting_at_stop_are_answered_and_acknowledged(station: Station) -> None:
    """Commands queued when the station stops (as many as the broker's window lets through unacknowledged: no
    scan runs) are refused ("station stopping"), each once, and the broker is left holding none of them."""
    s = station
    replies = Replies(s.broker.url, WAIT_S)
    sender = client(s.broker.url, "scada-hd")
    try:
        assert replies.online.wait(WAIT_S), "no birth"
        ids = {who: [str(uuid.uuid4()) for _ in range(n)] for who, n in (("scada-hd", 15), ("service-laptop", 5))}
        for who, mine in ids.items():
            for i in mine:
                sender.publish(TOPICS.cmd("hold", who), command("hold", who, i), qos=1)
        wait_until(lambda: s.publisher.intake.waiting == 20, "the commands queued", WAIT_S)
        assert s.publisher.stop(s.ctl, flush_timeout_s=5.0).flushed
        wait_until(lambda: replies.count() == 20, "every command answered", WAIT_S)
    finally:
        close(sender)
        replies.close()
    assert all(n == 1 for n in replies.replies.values())
    codes = Counter(replies.codes.values())
    assert codes == {"refused": 20}, codes
    assert s.publisher.counters.refused_stopping == 20
    assert redelivered(s) == []


def refusing_disk(s: Station) -> tuple[threading.Event, list[int]]:
    """The station's outbox refuses every put while the event is set (a full disk); the sizes it refused."""
    refusing = threading.Event()
    attempts: list[int] = []
    put_many = s.publisher.outbox.put_many

    def failing_put_many(drafts: Any) -> Any:
        if refusing.is_set():
            attempts.append(len(drafts))
            raise OutboxError("disk full (test)")
        return put_many(drafts)

    s.publisher.outbox.put_many = failing_put_many  # type: ignore[method-assign]
    return refusing, attempts


def send_holds(sender: mqtt.Client, identity: str, n: int) -> None:
    for _ in range(n):
        sender.publish(TOPICS.cmd("hold", identity), command("hold", identity, str(uuid.uuid4())), qos=1)


def test_busy_answers_the_disk_refused_are_stored_by_the_scan_later(station: Station) -> None:
    """While the outbox refuses puts, the answering thread hands its busy answers to the scan, which keeps them
    with its own and stores them once the disk takes them again: answered late, never lost, never twice."""
    s = station
    s.publisher.intake.settings = dataclasses.replace(s.publisher.intake.settings, burst=2, rate_per_minute=1)
    replies = Replies(s.broker.url, WAIT_S)
    sender = client(s.broker.url, "historian")
    refusing, attempts = refusing_disk(s)
    try:
        assert replies.online.wait(WAIT_S), "no birth"
        refusing.set()
        send_holds(sender, "historian", 40)
        # the broker's window (20): 2 queued (the burst), 18 turned away and taken by the answering thread
        wait_until(lambda: s.publisher.intake.waiting == 2 and bool(attempts), "busy answers tried", WAIT_S)
        for _ in range(3):
            s.rig.step(lambda: s.publisher.scan(s.ctl))
        assert replies.count() == 0
        refusing.clear()
        def answered() -> bool:
            if replies.count() == 40:
                return True
            time.sleep(0.05)        # a scan per 50 ms of wall time at most
            return False

        assert s.rig.run_until(answered, 600.0, lambda: s.publisher.scan(s.ctl)), f"{replies.count()} of 40 answered"
    finally:
        close(sender)
        replies.close()
    assert all(n == 1 for n in replies.replies.values())
    assert Counter(replies.codes.values()) == {"busy": 38, "unauthorised": 2}


def test_no_command_is_acknowledged_whose_answer_the_disk_never_took(station: Station,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """While the disk refuses puts, messages past MAX_RETAINED_DRAFTS are not kept in memory; a command's answer
    is never one of them, since its command is acknowledged only with it (review: with the limit at 10, 40
    commands were acknowledged and 26 answered). Every command acknowledged is answered, once."""
    s = station
    monkeypatch.setattr(publisher_module, "MAX_RETAINED_DRAFTS", 10)
    s.publisher.intake.settings = dataclasses.replace(s.publisher.intake.settings, burst=2, rate_per_minute=1)
    acked: list[int] = []
    real_ack = mqtt.Client.ack

    def counting_ack(c: mqtt.Client, mid: int, qos: int) -> Any:
        acked.append(mid)
        return real_ack(c, mid, qos)

    monkeypatch.setattr(mqtt.Client, "ack", counting_ack)
    replies = Replies(s.broker.url, WAIT_S)
    sender = client(s.broker.url, "historian")
    refusing, _ = refusing_disk(s)
    try:
        assert replies.online.wait(WAIT_S), "no birth"
        refusing.set()
        send_holds(sender, "historian", 40)
        # the broker's window (20): 2 queued (the burst), 18 turned away, whose busy answers the answering thread
        # could not store and hands to the scan. Waiting for the queue alone let the scans below run before those
        # 18 arrived (a flake on a busy machine: the scans' own answers never took the retained drafts over 10)
        wait_until(lambda: s.publisher.intake.waiting == 2 and s.publisher.counters.turned_away >= 18,
                   "the burst queued and the rest turned away", WAIT_S)
        # scans while the disk refuses, until the retained messages have gone over the limit (plant time, not a
        # count of scans: what goes over it besides the answers is the station's own state and telemetry)
        assert s.rig.run_until(lambda: s.publisher.counters.dropped + s.publisher.counters.overflowed > 0, 120.0,
                               lambda: s.publisher.scan(s.ctl)), "the limit was never reached in 120 plant-seconds"
        refusing.clear()

        def settled() -> bool:
            if replies.count() == 40:
                return True
            time.sleep(0.05)
            return False

        s.rig.run_until(settled, 600.0, lambda: s.publisher.scan(s.ctl))
    finally:
        close(sender)
        replies.close()
    assert all(n == 1 for n in replies.replies.values())
    assert len(acked) <= replies.count(), f"{len(acked)} commands acknowledged, {replies.count()} answered"
