"""``reedge run`` publishing for real: the controller on the HIL rig, a mosquitto process, a checking consumer.

One HD batch (``tests/data/hd_mqtt_abort.toml``, 200x) runs through ``hil.runner.run_scenario``
with ``--broker``, while a script on a second thread drives it over MQTT, as a SCADA would:
a remote reset (refused: the station does not allow one), hold, the broker stopped and started
again while the batch is held, resume, and an abort once the purge has begun. The consumer
(``edge.telemetry.watch.Watch``: ``reedge tail``'s checks and gap tracker) subscribed with a
persistent session before the controller started; it must have every message schema-valid and
no sequence number missing on any stream, across the outage, and as many per stream as the
controller says it put (no lost tail).

Then ``reedge run`` stopped with SIGTERM while the broker is down: the flush waits for a broker
that does not come, and the restart must not find a latched dead-man trip (the core is stopped
before the flush); what was left in the outbox arrives once the broker is back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pathlib
import signal
import threading
import time
import traceback
import uuid
from typing import Any

import pytest

from edge.spec.broker import parse_broker_url
from edge.telemetry.description import canonical
from edge.telemetry.envelope import Envelope
from edge.telemetry.topics import SCHEMA_BASE, StationTopics
from edge.telemetry.watch import Watch
from edge.timestamps import rfc3339_ms
from hil.rig import RigConfig, VirtualRig
from hil.runner import run_scenario
from hil.scenario import load_scenario
from tests.mqtt_broker import Mosquitto, wait_until

SCENARIO = pathlib.Path(__file__).parent / "data" / "hd_mqtt_abort.toml"
POWER_LOSS = pathlib.Path(__file__).parent / "data" / "hd_mqtt_power_loss.toml"
ROOT = pathlib.Path(__file__).resolve().parent.parent
HD_STATION = ROOT / "stations" / "hd_reactor_sim.toml"
HD_RECIPE = ROOT / "recipes" / "hd_standard.toml"
COUNTERS = {"telemetry": "telemetry", "event": "events", "batch": "batch", "state": "state", "reply": "replies",
            "description": "descriptions"}
TOPICS = StationTopics("pilot-line", "hd-01")   # stations/hd_reactor_sim.toml
WAIT_S = 60.0          # safety nets, never measurements
OUTAGE_S = 1.5         # wall seconds without a broker (300 s of plant time)


def envelopes(watch: Watch, stream: str) -> list[Envelope]:
    """The stream's messages as received, one per sequence number (re-sends dropped), in order."""
    seen: dict[int, Envelope] = {}
    for c in watch.snapshot():
        env = c.envelope
        if env is not None and env.stream == stream and not c.retained:
            seen.setdefault(env.seq, env)
    return [seen[k] for k in sorted(seen)]


def phases(watch: Watch) -> list[str]:
    return [str(e.body["phase"]) for e in envelopes(watch, "event") if e.body.get("kind") == "phase"]


def last_state(watch: Watch) -> dict[str, Any]:
    states = envelopes(watch, "state")
    return states[-1].body if states else {}


def send(watch: Watch, verb: str, issuer: str, **args: Any) -> str:
    command_id = str(uuid.uuid4())
    doc = {"schema": f"{SCHEMA_BASE}cmd-{verb}.json", "command_id": command_id,
           "issued_at": rfc3339_ms(time.time_ns()), "issuer": issuer, "args": args}
    watch.client.publish(TOPICS.cmd(verb, issuer), json.dumps(doc), qos=1)
    return command_id


def reply(watch: Watch, command_id: str) -> dict[str, Any]:
    def answered(w: Watch) -> bool:
        return any(c.envelope is not None and c.envelope.stream == "reply"
                   and c.envelope.body.get("command_id") == command_id for c in w.messages)

    assert watch.wait(answered, WAIT_S), f"no reply to command {command_id}"
    return next(e.body for e in envelopes(watch, "reply") if e.body.get("command_id") == command_id)


class Script(threading.Thread):
    """What the SCADA does during the batch; ``replies`` by verb, ``error`` if a step failed."""

    def __init__(self, watch: Watch, broker: Mosquitto) -> None:
        super().__init__(daemon=True)
        self.watch, self.broker = watch, broker
        self.replies: dict[str, dict[str, Any]] = {}
        self.error: str | None = None

    def run(self) -> None:
        w = self.watch
        try:
            assert w.wait(lambda w: "leak_test" in phases(w), WAIT_S), "no leak_test phase event"
            self.replies["reset"] = reply(w, send(w, "reset", "service-laptop", rule="lid_open"))
            self.replies["hold"] = reply(w, send(w, "hold", "scada-hd", reason="MQTT test hold"))
            assert w.wait(lambda w: last_state(w).get("run") == "held", WAIT_S), "state never said held"
            self.broker.stop()
            time.sleep(OUTAGE_S)          # the controller goes on without a broker, held in its leak test
            self.broker.start()
            self.replies["resume"] = reply(w, send(w, "resume", "scada-hd"))
            assert w.wait(lambda w: "purge" in phases(w), WAIT_S), "no purge phase event"
            self.replies["abort"] = reply(w, send(w, "abort", "scada-hd", reason="MQTT test abort"))
            assert w.wait(lambda w: any(e.body["record"] == "end" for e in envelopes(w, "batch")), WAIT_S), \
                "no end record"
            self.replies["mass_other"] = reply(w, send(w, "record_mass", "scada-hd", batch_id="another-batch",
                                                       mass_out_kg=24.9))
            self.replies["mass"] = reply(w, send(w, "record_mass", "scada-hd", batch_id="mqtt-test",
                                                 mass_out_kg=24.9))
        except BaseException:
            self.error = traceback.format_exc()


@pytest.mark.slow
def test_controller_publishes_every_message_and_obeys_mqtt_commands(tmp_path: pathlib.Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    watch = Watch(parse_broker_url(broker.url), site=TOPICS.site, station=TOPICS.station, client_id="test-watch",
                  protocol="5", keep=True).start()
    late: Watch | None = None
    try:
        script = Script(watch, broker)
        script.start()
        # 60 s telemetry windows, as the demo: 1 s windows at 200x are 200 messages a wall second, and on a
        # loaded machine the commands' replies then queue behind that backlog (the outbox keeps one order
        # across streams) for longer than any wait here. This test is about commands and gap-free delivery.
        record = run_scenario(load_scenario(SCENARIO), tmp_path / "report",
                              controller_args=("--broker", broker.url, "--mqtt-flush-s", "10",
                                               "--telemetry-window-s", "60"))
        script.join(WAIT_S)
        assert script.error is None, script.error
        assert record["outcome"] == "pass", (record["error"], record["measurements"])
        assert watch.wait(lambda w: w.offline_seen, WAIT_S), "the controller's offline status never arrived"
        # the stop's flush first: a flush cut short by its deadline leaves messages for the next start, and every
        # check below would then report a missing message without saying why
        exit_mqtt = mqtt_at_stop(tmp_path / "report" / f"{SCENARIO.stem}.work")
        assert exit_mqtt["flushed"] is True and exit_mqtt["remaining"] == 0, exit_mqtt

        # every message valid, and no sequence number missing on any stream, across the outage
        assert watch.invalid == []
        assert watch.gaps == [] and watch.tracker.lost == 0, watch.summary()
        births = [c.envelope.body for c in watch.snapshot()
                  if c.envelope is not None and c.envelope.stream == "status" and c.envelope.body["state"] == "online"]
        assert len(births) >= 2, "a birth at the start and one after the broker came back"

        # commands: executed on the controller and answered; the reset refused with its reason
        r = script.replies
        assert (r["hold"]["result"], r["resume"]["result"], r["abort"]["result"]) == ("accepted",) * 3
        assert (r["reset"]["result"], r["reset"]["code"]) == ("rejected", "not_allowed")
        assert "remote reset" in r["reset"]["message"]
        audit = [e.body for e in envelopes(watch, "event") if e.body.get("kind") == "command"]
        assert [(a["verb"], a["result"]) for a in audit] == [
            ("reset", "rejected"), ("hold", "accepted"), ("resume", "accepted"), ("abort", "accepted"),
            ("record_mass", "rejected"), ("record_mass", "accepted")]
        assert r["mass_other"]["code"] == "invalid" and "not this station's current batch" in r["mass_other"]["message"]
        operator = [e.body["message"] for e in envelopes(watch, "event") if e.body.get("kind") == "operator_action"]
        assert operator == ["hold: MQTT test hold", "resume", "abort: MQTT test abort",
                            "mass out of batch mqtt-test: 24.9 kg"]

        # the sequence as events, and the state that followed it
        seen = phases(watch)
        assert seen[:3] == ["load_check", "leak_test", "purge"] and seen[-1] == "aborted", seen
        assert last_state(watch)["run"] == "aborted"

        # batch records: start, end with the outcome, and the end amended with the mass out (revision 2)
        start, end, amended = (e.body for e in envelopes(watch, "batch"))
        assert (amended["record"], amended["revision"], amended["product"]["mass_out_kg"]) == ("end", 2, 24.9)
        assert amended["phases"] == end["phases"] and amended["accounting"] == end["accounting"]
        assert (start["record"], start["batch_id"], start["process"]) == ("start", "mqtt-test", "hd")
        assert (end["record"], end["outcome"], end["reason"]) == ("end", "aborted", "MQTT test abort")
        assert end["accounting"]["trips"] == 0 and end["revision"] == 1
        recorded = [p["phase"] for p in end["phases"]]
        assert recorded[:3] == ["load_check", "leak_test", "purge"] and "aborting" in recorded, recorded
        assert end["phases"][1]["duration_s"] > 0
        assert [e["message"] for e in end["events"] if e["kind"] == "operator"] == operator[:3]

        # telemetry: windows tile the core's ticks from its first one, none missing
        windows = [e.body["window"] for e in envelopes(watch, "telemetry")]
        assert windows[0]["first_tick"] <= 1
        for before, after in itertools.pairwise(windows):
            assert after["first_tick"] == before["last_tick"] + 1 and after["start_ns"] >= before["end_ns"]
        assert all(w["ticks_missed"] == 0 for w in windows)
        assert sum(w["samples"] for w in windows) == windows[-1]["last_tick"] - windows[0]["first_tick"] + 1
        assert all(w["end_utc"] > w["start_utc"] for w in windows)

        # the station description: one per start, named by every birth and every window (issue 16 item 11)
        (description,) = envelopes(watch, "description")
        sha = hashlib.sha256(canonical(description.body)).hexdigest()
        assert {b["description_sha256"] for b in births} == {sha}
        assert {e.body["description_sha256"] for e in envelopes(watch, "telemetry")} == {sha}

        # no lost tail: every stream has exactly what the controller put (one boot, fresh state dir)
        for stream, counter in COUNTERS.items():
            seqs = [e.seq for e in envelopes(watch, stream)]
            assert seqs == list(range(1, exit_mqtt[counter] + 1)), (stream, exit_mqtt[counter], seqs[-3:])

        # the state is retained: a consumer that comes later gets the last one at once
        late = Watch(parse_broker_url(broker.url), site=TOPICS.site, station=TOPICS.station, client_id="test-late",
                     keep=True).start()
        last_seq = envelopes(watch, "state")[-1].seq
        assert late.wait(lambda w: any(c.retained and c.envelope is not None and c.envelope.stream == "state"
                                       for c in w.messages), WAIT_S)
        retained = next(c.envelope for c in late.snapshot() if c.envelope is not None and c.envelope.stream == "state")
        assert retained.seq == last_seq and retained.body["run"] == "aborted"
        assert late.wait(lambda w: any(c.retained and c.envelope is not None and c.envelope.stream == "description"
                                       and c.envelope.seq == description.seq for c in w.messages), WAIT_S)
    finally:
        if late is not None:
            late.close()
        watch.close()
        broker.close()


def mqtt_at_stop(work: pathlib.Path) -> dict[str, Any]:
    """The ``mqtt`` fields of the controller's exit line, from its journal copy on stderr (controller.log)."""
    prefix = "reedge run: MQTT at stop: "
    lines = [ln for ln in (work / "controller.log").read_text().splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, lines
    result: dict[str, Any] = json.loads(lines[0][len(prefix):])
    return result


def exit_line(rig: VirtualRig, since: int) -> dict[str, Any]:
    """The controller's exit line (its stdout reader may still be catching up after the process ended)."""
    def found() -> dict[str, Any] | None:
        return next((ln.data for ln in rig.controller_lines(since) if ln.data.get("type") == "exit"), None)

    wait_until(lambda: found() is not None, "the controller's exit line")
    line = found()
    assert line is not None
    return line


def test_sigterm_while_the_broker_is_down_leaves_no_latched_deadman_trip(tmp_path: pathlib.Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    # A long flush (10 s of wall time, 5 times the dead-man's 2 s) against a broker that is down.
    cfg = RigConfig(station=HD_STATION, plant="hd_reactor", time_scale=50.0, workdir=tmp_path / "rig",
                    controller_args=("--broker", broker.url, "--mqtt-flush-s", "10"), stop_grace_s=60.0)
    rig = VirtualRig(cfg)
    watch: Watch | None = None
    try:
        rig.start()
        rig.start_controller(HD_RECIPE, "sigterm-test")
        wait_until(lambda: rig.status.get("phase") == "leak_test", "the batch in its leak test", WAIT_S)
        broker.stop()
        rig.signal_controller(signal.SIGTERM)
        assert rig.controller is not None
        assert rig.controller.wait(WAIT_S) == 0
        first = exit_line(rig, 0)
        assert first["mqtt"]["flushed"] is False and first["mqtt"]["remaining"] > 0
        events = [ln.data for ln in rig.controller_lines() if ln.data.get("type") == "event"]
        assert not [e for e in events if e.get("kind") == "trip"], "a trip during the stop"
        assert any(e["data"].get("core_kind") == "STOPPED" for e in events), "the core was stopped cleanly"

        broker.start()
        watch = Watch(parse_broker_url(broker.url), site=TOPICS.site, station=TOPICS.station,
                      client_id="test-restart", keep=True).start()
        since = len(rig.controller_lines())
        rig.start_controller()                    # recovers the batch; no latched trip comes back
        wait_until(lambda: any(ln.data.get("type") == "ready" for ln in rig.controller_lines(since)),
                   "the restarted controller ready", WAIT_S)
        restarted = [ln.data for ln in rig.controller_lines(since)]
        assert not [d for d in restarted if "latched trip" in str(d.get("message"))], restarted[:5]
        assert not [d for d in restarted if d.get("kind") == "trip"]

        # the first run's tail arrives after the outage, and the restarted core has nothing tripped
        assert watch.wait(lambda w: len({c.envelope.boot_id for c in w.messages if c.envelope is not None
                                         and c.envelope.stream == "state" and not c.retained}) >= 2, WAIT_S)
        states = [c.envelope for c in watch.snapshot() if c.envelope is not None and c.envelope.stream == "state"]
        assert all(st.body["interlocks"]["tripped"] == [] for st in states), [st.body["interlocks"] for st in states]
        assert watch.gaps == [], watch.summary()
    finally:
        if watch is not None:
            watch.close()
        rig.close()
        broker.close()


@pytest.mark.slow
def test_power_loss_of_the_controller_during_a_broker_outage_loses_no_message(tmp_path: pathlib.Path) -> None:
    """SIGKILL of the real controller (the rig's power loss) while the broker is down, with its outbox
    holding what it could not send; the restarted controller sends both boots' messages when the broker
    returns: every stream complete and in order, the old boot's tail included."""
    broker = Mosquitto(tmp_path / "broker").start()
    watch = Watch(parse_broker_url(broker.url), site=TOPICS.site, station=TOPICS.station, client_id="test-watch-pl",
                  protocol="5", keep=True).start()
    outage: dict[str, Any] = {}

    def outage_script() -> None:
        try:
            assert watch.wait(lambda w: "leak_test" in phases(w), WAIT_S), "the leak test never began"
            broker.stop()
            outage["stopped"] = time.monotonic()
            time.sleep(4.0)                      # the power loss (200 s at 200x: 1 s) and the restart happen now
            broker.start()
        except BaseException as exc:            # reported by the test
            outage["error"] = f"{exc}\n{traceback.format_exc()}"

    script = threading.Thread(target=outage_script, daemon=True)
    try:
        script.start()
        record = run_scenario(load_scenario(POWER_LOSS), tmp_path / "report",
                              # 30 s: a net for sending both boots' backlog on a busy machine
                              controller_args=("--broker", broker.url, "--mqtt-flush-s", "30"))
        script.join(WAIT_S)
        assert "error" not in outage, outage["error"]
        assert record["outcome"] == "pass", (record["error"], record["measurements"])
        assert watch.wait(lambda w: w.offline_seen, WAIT_S), "the controller's offline status never arrived"
        assert watch.invalid == []
        assert watch.gaps == [] and watch.tracker.lost == 0, watch.summary()
        boots = {c.envelope.boot_id for c in watch.snapshot()
                 if c.envelope is not None and c.envelope.stream != "status"}
        assert len(boots) == 2, f"messages of both boots arrived: {boots}"
        births = [c.envelope for c in watch.snapshot() if c.envelope is not None
                  and c.envelope.stream == "status" and c.envelope.body["state"] == "online"]
        # a birth per connection: both boots were born (a boot that reconnects on a busy machine is born again)
        assert len(births) >= 2 and births[0].boot_id != births[-1].boot_id and {b.boot_id for b in births} == boots, \
            "a birth of each boot: the first boot never connected, or the second never did"
        second = births[-1].body["previous_boot"]
        assert second is not None and second["boot_id"] in boots, "the new boot's birth names the old one"
        events = [e.body for e in envelopes(watch, "event")]
        assert any(e.get("kind") == "recovery" or "recover" in str(e.get("message", "")) for e in events)
        exit_mqtt = mqtt_at_stop(tmp_path / "report" / f"{POWER_LOSS.stem}.work")
        assert exit_mqtt["flushed"] is True and exit_mqtt["remaining"] == 0, exit_mqtt
    finally:
        watch.close()
        broker.close()
