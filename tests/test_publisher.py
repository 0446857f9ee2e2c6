"""The publisher in one process: the real C core and controller stepped in lockstep with the HD plant, its
``Publisher`` on a real mosquitto, a ``Watch`` as the consumer. What only the order of messages shows."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from edge.batch.record import BatchRecorder
from edge.control.controller import Controller
from edge.operator.execute import Operator
from edge.operator.target import ControllerTarget
from edge.spec.broker import parse_broker_url
from edge.spec.station import load_station
from edge.telemetry.envelope import Envelope
from edge.telemetry.publisher import Publisher, PublisherSettings
from edge.telemetry.watch import Watch
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor
from tests.mqtt_broker import Mosquitto
from tests.test_mqtt_run import TOPICS, WAIT_S, send

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATION = load_station(ROOT / "stations" / "hd_reactor_sim.toml")


@pytest.fixture
def station(tmp_path: pathlib.Path) -> Iterator[tuple[LockstepRig, Controller, Publisher, Watch]]:
    broker = Mosquitto(tmp_path / "broker").start()
    watch = Watch(parse_broker_url(broker.url), site=TOPICS.site, station=TOPICS.station, client_id="test-pub",
                  protocol="5", keep=True).start()
    state = tmp_path / "state"
    assert STATION.mqtt is not None
    settings = PublisherSettings(broker=STATION.mqtt.with_brokers((parse_broker_url(broker.url),)),
                                 site=TOPICS.site, station=TOPICS.station, state_dir=state, window_s=60.0)
    with LockstepRig(STATION, HDReactor(), dt_s=2.0) as rig:
        ctl = Controller(rig.core, rig.station, state_path=state / "run-state.json")
        recorder = BatchRecorder(state, rig.station, site=TOPICS.site, station_id=TOPICS.station,
                                 config=rig.station.accounting)
        operator = Operator(ControllerTarget(ctl, ROOT / "recipes", recorder), allow_remote_reset=False)
        publisher = Publisher(rig.core, ctl, settings, recorder, operator).start()
        try:
            yield rig, ctl, publisher, watch
        finally:
            publisher.stop(ctl, flush_timeout_s=5.0)
            watch.close()
            broker.close()


def test_a_commands_audit_event_is_published_before_its_reply(
        station: tuple[LockstepRig, Controller, Publisher, Watch]) -> None:
    """Whoever has the reply can rely on the audit event being out already: a stop's flush that runs out of time
    between the two must not leave the reply sent and its audit event waiting for the next start (issue 15)."""
    rig, ctl, publisher, watch = station
    # the birth follows the station's SUBSCRIBE on its connection: once it is here, commands reach the station
    assert watch.wait(lambda w: any(c.envelope is not None and c.envelope.stream == "status"
                                    and c.envelope.body["state"] == "online" for c in w.messages), WAIT_S)
    ids = [send(watch, "hold", "scada-hd", reason="no batch: refused, answered all the same"),
           send(watch, "resume", "scada-hd")]

    def answered() -> bool:
        return all(any(c.envelope is not None and c.envelope.stream == "reply"
                       and c.envelope.body.get("command_id") == i for c in watch.snapshot()) for i in ids)

    def scan() -> None:
        ctl.step()
        publisher.scan(ctl)

    # plant time for the commands to arrive and be answered; the wait is on the replies, generously bounded
    assert rig.run_until(lambda: watch.wait(lambda w: answered(), 0.05), 20_000, scan), "no replies"
    order = [(c.envelope.stream, c.envelope.body.get("command_id")) for c in watch.snapshot()
             if c.envelope is not None and c.envelope.stream in ("reply", "event")
             and c.envelope.body.get("command_id") in ids]
    for i in ids:
        assert order.index(("event", i)) < order.index(("reply", i)), order


def test_each_window_names_the_other_streams_last_numbers_and_they_all_went_out_before_it(
        station: tuple[LockstepRig, Controller, Publisher, Watch]) -> None:
    """A window's ``heads`` (schema 1.4) claims only numbers the consumer already has when the window comes (the
    outbox sends every other stream before telemetry), and names the audit events and replies of commands
    answered before it: a consumer that misses one of them learns it from the next window."""
    rig, ctl, publisher, watch = station
    assert watch.wait(lambda w: any(c.envelope is not None and c.envelope.stream == "status"
                                    and c.envelope.body["state"] == "online" for c in w.messages), WAIT_S)
    ids = [send(watch, "hold", "scada-hd", reason="no batch: refused, answered all the same")]

    def envelopes() -> list[Envelope]:
        return [c.envelope for c in watch.snapshot() if c.envelope is not None]

    def named_after_reply() -> bool:
        replies = [e.seq for e in envelopes() if e.stream == "reply" and e.body.get("command_id") in ids]
        return bool(replies) and any(e.stream == "telemetry" and e.body.get("heads", {}).get("reply", 0) >= replies[0]
                                     for e in envelopes())

    def scan() -> None:
        ctl.step()
        publisher.scan(ctl)

    assert rig.run_until(lambda: watch.wait(lambda w: named_after_reply(), 0.05), 20_000, scan), "no window named it"
    had: dict[str, int] = {}
    windows = 0
    for c in watch.snapshot():
        e = c.envelope
        assert not c.problems, c.problems      # every message valid against the 1.4 schemas (our command too)
        if e is None:
            continue        # the command sent
        if e.stream == "telemetry":
            windows += 1
            for stream, n in e.body.get("heads", {}).items():
                assert had.get(stream, 0) >= n, (stream, n, had)
        elif e.stream != "status":
            had[e.stream] = max(had.get(e.stream, 0), e.seq)
    heads = [e.body["heads"] for e in envelopes() if e.stream == "telemetry"][-1]
    assert windows >= 1 and {"event", "reply", "description", "state"} <= set(heads), heads
