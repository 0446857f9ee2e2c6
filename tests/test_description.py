"""The station description on MQTT (issue 16 item 11): what it says against the station file, its schema, its
RFC 8785 hash in the birth and in every telemetry window, retained at a real mosquitto and put again when it
changes; telemetry rounded to each channel's resolution (the control keeps every digit) with UTC window times."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import re
import threading
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge import __version__
from edge.batch.record import BatchRecorder
from edge.control.controller import Controller
from edge.operator.execute import Operator
from edge.operator.target import ControllerTarget
from edge.spec.broker import parse_broker_url
from edge.spec.reader import SpecError
from edge.spec.sensor_node import SensorNodeConfig
from edge.spec.station import Station, load_station, parse_station
from edge.telemetry import schemas
from edge.telemetry.aggregate import Aggregator
from edge.telemetry.description import Describer, canonical, resolution, rounders
from edge.telemetry.envelope import Envelope, build
from edge.telemetry.publisher import Publisher, PublisherSettings
from edge.telemetry.watch import Watch
from edge.timestamps import parse_rfc3339, rfc3339_ms
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor
from tests.mqtt_broker import Mosquitto

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATIONS = sorted((ROOT / "stations").glob("*.toml"))
WAIT_S = 60.0                      # safety nets, never measurements
EPOCH_S = 1_765_000_000.0          # the rig's plant clock starts here (unix s), as reedge run's binding does


def describe_file(path: pathlib.Path, **kw: Any) -> tuple[dict[str, Any], bytes, str]:
    d = Describer(load_station(path), window_s=1.0, recipes_dir=ROOT / "recipes", **kw).current()
    return json.loads(d.body), d.body, d.sha256


# ---- the description's content, schema and hash -------------------------------------------------------

@pytest.mark.parametrize("path", STATIONS, ids=lambda p: p.name)
def test_the_description_says_what_the_station_file_says(path: pathlib.Path) -> None:
    """Read against the TOML itself, not against the loader's objects: a dashboard's labels come from here."""
    raw = tomllib.loads(path.read_text())
    desc, _, _ = describe_file(path)
    assert list(desc["channels"]) == sorted(raw["channels"])              # canonical order: sorted keys
    by_index = sorted(desc["channels"], key=lambda n: desc["channels"][n]["index"])
    assert by_index == list(raw["channels"])                              # the core's order is the file's
    for name, t in raw["channels"].items():
        ch = desc["channels"][name]
        assert ch["kind"] == t["kind"], name
        assert ch["unit"] == t.get("unit", "degC" if t["kind"] == "thermocouple" else ""), name
        if "range" in t:
            assert ch["range"] == t["range"], name
        if t["kind"] == "digital":
            assert ch["range"] is None and ch["resolution"] == 1, name
    for name, t in raw["outputs"].items():
        assert desc["outputs"][name]["safe_level"] == t["safe_level"], name
    for name, t in raw["interlocks"].items():
        lock = desc["interlocks"][name]
        assert (lock["kind"], lock["channel"]) == (t["kind"], t.get("channel")), name
        if "threshold" in t:
            assert lock["threshold"] == t["threshold"], name
        # what the core forces: the file's action ("all": every output but the watchdog line), plus each
        # contactor feeding one of them (stations/README.md)
        action = ({o for o, spec in desc["outputs"].items() if not spec["watchdog"]} if t["action"] == "all"
                  else set(t["action"]))
        contactors = {o for o, spec in desc["outputs"].items() if set(spec["supplies"]) & action}
        assert set(lock["forces_safe"]) == action | contactors, name
    for output, conds in raw.get("permissives", {}).items():
        assert [c["channel"] for c in desc["permissives"][output]] == [c["channel"] for c in conds]
    assert set(desc["alarms"]) == set(raw.get("alarms", {}))
    assert desc["station"] == {"site": raw["station"]["site"], "id": raw["station"]["id"],
                               "kind": raw["station"]["kind"], "description": raw["station"].get("description", ""),
                               "board": desc["station"]["board"]}
    assert desc["station_file"] == {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert desc["software"] == {"reedge": __version__}
    assert {n: f["expected"] for n, f in desc["firmware"].items()} == {
        n: t.get("firmware") for n, t in raw.get("sensor_nodes", {}).items()}
    stem = {"hd_reactor": "hd_standard", "sintering_furnace": "sintering_standard"}[raw["station"]["kind"]]
    recipe_file = ROOT / "recipes" / f"{stem}.toml"
    recipe = tomllib.loads(recipe_file.read_text())["recipe"]
    assert desc["recipes"] == {stem: {"name": recipe["name"], "version": recipe["version"],
                                      "sha256": hashlib.sha256(recipe_file.read_bytes()).hexdigest(),
                                      "phases": desc["recipes"][stem]["phases"]}}   # only this process's recipes
    assert desc["recipes"][stem]["phases"] and "idle" in desc["process"]["other_phases"]


@pytest.mark.parametrize("path", STATIONS, ids=lambda p: p.name)
def test_the_description_is_valid_and_named_by_the_sha256_of_its_canonical_bytes(path: pathlib.Path) -> None:
    desc, body, sha = describe_file(path)
    assert canonical(desc) == body                      # a consumer re-canonicalising gets the same bytes
    assert sha == hashlib.sha256(body).hexdigest()
    message = build(site="pilot-line", station="hd-01", boot_id="boot-a", stream="description", seq=1,
                    created_ns=0, body=body)
    assert message.endswith(b',"body":' + body + b"}")  # spliced byte for byte
    assert schemas.errors(json.loads(message), "description.json") == []


def test_canonical_json_is_rfc_8785() -> None:
    """The RFC's own examples (sections 3.2.2.2, 3.2.3 and appendix B)."""
    assert canonical([333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001]) == \
        b"[333333333.3333333,1e+30,4.5,0.002,1e-27]"
    assert canonical({"numbers": [1e21, 1e-7, 0.000001, -0.0, 100.0, 9007199254740991],
                      "string": "\u20ac$\u000f\nA'B\"\\\\\"/", "literals": [None, True, False]}) == (
        b'{"literals":[null,true,false],"numbers":[1e+21,1e-7,0.000001,0,100,9007199254740991],'
        b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert canonical({"\u20ac": 1, "\r": 2, "1": 3, "\U0001f600": 4, "\ufb33": 5}) == \
        '{"\\r":2,"1":3,"\u20ac":1,"\U0001f600":4,"\ufb33":5}'.encode()   # UTF-16 order: the emoji before U+FB33


def test_a_node_reporting_its_firmware_changes_the_description_and_a_dropped_link_does_not() -> None:
    reported: dict[str, str | None] = {"node_a": None}
    describer = Describer(load_station(ROOT / "stations" / "hd-02.toml"), window_s=1.0,
                          firmware=lambda: reported)
    first = describer.current()
    assert json.loads(first.body)["firmware"] == {"node_a": {"expected": "2.0.0", "reported": None}}
    reported["node_a"] = "2.0.0"
    second = describer.current()
    assert second.sha256 != first.sha256
    assert json.loads(second.body)["firmware"]["node_a"]["reported"] == "2.0.0"
    reported["node_a"] = None                       # the link dropped: what it last said still holds
    assert describer.current() == second


# ---- resolution and rounding ---------------------------------------------------------------------------

def test_each_channel_is_rounded_to_its_resolution_from_the_station_the_instrument_or_the_default() -> None:
    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    text = text.replace('[channels.chamber_temp]      # control TC, in the charge: read by the PID\n',
                        '[channels.chamber_temp]\nresolution = 0.5\n', 1)
    station = parse_station(text, "hd_reactor_sim.toml")
    ch = {c.name: c for c in station.core.channels}
    got = {n: (r.step, r.digits, r.source) for n in ch for r in [resolution(station, ch[n])]}
    assert got["chamber_temp"] == (0.5, None, "station")
    assert got["chamber_vacuum"] == (None, 4, "instrument")      # a Pfeiffer gauge: 4 significant digits
    assert got["h2_flow"] == (None, 6, "instrument")             # a Modbus float32 register
    assert got["chamber_pressure"] == (None, 6, "default")
    assert got["lid_closed"] == (1.0, None, "default")
    rnd = dict(zip([c.name for c in station.core.channels], rounders(station), strict=True))
    assert rnd["chamber_pressure"](20.899999999999995) == 20.9
    assert rnd["chamber_pressure"](612.3123456) == 612.312
    assert rnd["chamber_temp"](612.26) == 612.5 and rnd["chamber_temp"](-0.2) == 0.0
    assert rnd["chamber_vacuum"](0.0012345678) == 0.001235
    assert rnd["lid_closed"](1.0) == 1.0


@pytest.mark.parametrize(("channel", "value", "error"), [
    ("chamber_temp", "0", "expected a number > 0"), ("chamber_temp", '"fine"', "expected a number"),
    ("lid_closed", "1", "resolution")])     # a digital channel is 0 or 1: the key is not one of its keys
def test_a_bad_resolution_is_one_clear_error(channel: str, value: str, error: str) -> None:
    text = re.sub(rf"\[channels\.{channel}\][^\n]*\n", f"[channels.{channel}]\nresolution = {value}\n",
                  (ROOT / "stations" / "hd_reactor_sim.toml").read_text(), count=1)
    with pytest.raises(SpecError) as info:
        parse_station(text, "x.toml")
    (problem,) = info.value.errors
    assert f"channels.{channel}.resolution" in str(problem) and error in str(problem), str(problem)
    assert "\n" not in str(problem)


def test_the_aggregator_publishes_rounded_values_and_keeps_the_samples_it_was_given() -> None:
    agg = Aggregator(["t", "p"], window_s=1.0, rounding=[lambda v: round(v, 1) + 0.0, float])
    values = [20.899999999999995, 1.0000000000000002]
    agg.add(1, 0, values, [0, 0])
    agg.add(2, 10_000_000, [21.04999999, 2.0], [0, 0])
    body = agg.flush()
    assert values == [20.899999999999995, 1.0000000000000002]
    assert body is not None
    assert body["channels"]["t"] == {"last": 21.0, "min": 20.9, "max": 21.0, "mean": 21.0, "count": 2,
                                     "valid": 2, "status": []}
    assert body["channels"]["p"]["min"] == 1.0000000000000002       # float: published as it is


# ---- at a real broker ------------------------------------------------------------------------------------

def _station(chamber_temp_resolution: float = 50.0) -> Station:
    """The HD simulation with a sensor node declared (not run: its firmware is what the test says it reported)
    and a coarse chamber_temp resolution, so rounding is visible against what the controller reads."""
    base = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    channels = tuple(dataclasses.replace(c, resolution=chamber_temp_resolution) if c.name == "chamber_temp" else c
                     for c in base.core.channels)
    return dataclasses.replace(base, core=dataclasses.replace(base.core, channels=channels),
                               sensor_nodes={"node_a": SensorNodeConfig("node_a", "/dev/null",
                                                                        expect_firmware="2.0.0")})


def retained(url: str, topic: str) -> tuple[bool, bytes]:
    """What a consumer that subscribes now gets first on ``topic``: (retain flag, payload)."""
    got: list[tuple[bool, bytes]] = []
    arrived = threading.Event()
    broker = parse_broker_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-late-consumer", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        got.append((bool(m.retain), bytes(m.payload)))
        arrived.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert arrived.wait(WAIT_S), f"nothing retained on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def body_bytes(payload: bytes) -> bytes:
    return payload[payload.index(b',"body":') + len(b',"body":'):-1]


Running = tuple[LockstepRig, Controller, Publisher]


@contextlib.contextmanager
def running(station: Station, state: pathlib.Path, url: str,
            firmware: Callable[[], dict[str, str | None]] | None = None) -> Iterator[Running]:
    """``reedge run``'s publisher on the lockstep rig; the controller's wall clock is the plant's."""
    assert station.mqtt is not None
    settings = PublisherSettings(broker=station.mqtt.with_brokers((parse_broker_url(url),)),
                                 site="pilot-line", station="hd-01", state_dir=state, window_s=5.0)
    with LockstepRig(station, HDReactor(), dt_s=1.0) as rig:
        core = rig.core
        ctl = Controller(core, rig.station, state_path=state / "run-state.json",
                         wall_clock=lambda: EPOCH_S + core.now_ns() / 1e9)
        recorder = BatchRecorder(state, rig.station, site="pilot-line", station_id="hd-01",
                                 config=rig.station.accounting)
        operator = Operator(ControllerTarget(ctl, ROOT / "recipes", recorder), allow_remote_reset=False)
        publisher = Publisher(core, ctl, settings, recorder, operator, firmware=firmware).start()
        try:
            yield rig, ctl, publisher
        finally:
            publisher.stop(ctl, flush_timeout_s=5.0)


Station_ = tuple[LockstepRig, Controller, Publisher, Watch, Mosquitto, dict[str, str | None]]


@pytest.fixture
def described(tmp_path: pathlib.Path) -> Iterator[Station_]:
    broker = Mosquitto(tmp_path / "broker").start()
    watch = Watch(parse_broker_url(broker.url), site="pilot-line", station="hd-01", client_id="test-describe",
                  protocol="5", keep=True).start()
    firmware: dict[str, str | None] = {"node_a": None}
    try:
        with running(_station(), tmp_path / "state", broker.url, lambda: firmware) as (rig, ctl, publisher):
            yield rig, ctl, publisher, watch, broker, firmware
    finally:
        watch.close()
        broker.close()


def of(watch: Watch, stream: str) -> list[Envelope]:
    return [c.envelope for c in watch.snapshot() if c.envelope is not None and c.envelope.stream == stream
            and not c.retained]


def run_until(rig: LockstepRig, ctl: Controller, publisher: Publisher, watch: Watch,
              done: Callable[[Watch], bool]) -> None:
    def scan() -> None:
        ctl.step()
        publisher.scan(ctl)
    assert rig.run_until(lambda: watch.wait(done, 0.02), 2_000, scan), watch.summary()


def test_the_retained_description_labels_the_birth_and_every_window_and_is_put_again_on_a_change(
        described: Station_) -> None:
    rig, ctl, publisher, watch, broker, firmware = described
    run_until(rig, ctl, publisher, watch, lambda w: len(of(w, "telemetry")) >= 3 and bool(of(w, "status")))
    assert watch.invalid == [], watch.invalid                  # every message valid under the 1.2 schemas
    (first,) = of(watch, "description")
    flag, payload = retained(broker.url, publisher.topics.description)
    assert flag and json.loads(payload)["seq"] == first.seq == 1
    sha = hashlib.sha256(body_bytes(payload)).hexdigest()
    assert sha == hashlib.sha256(canonical(first.body)).hexdigest()
    assert first.body["channels"]["chamber_temp"]["unit"] == "degC"
    assert first.body["firmware"] == {"node_a": {"expected": "2.0.0", "reported": None}}
    assert [b.body["description_sha256"] for b in of(watch, "status")] == [sha]
    windows = of(watch, "telemetry")
    assert {w.body["description_sha256"] for w in windows} == {sha}

    # UTC beside the core clock: the controller's wall clock is the plant's (EPOCH_S + core time)
    for w in windows:
        win = w.body["window"]
        assert win["start_utc"] == rfc3339_ms(round(EPOCH_S * 1e9) + win["start_ns"])
        assert parse_rfc3339(win["end_utc"], "end") - parse_rfc3339(win["start_utc"], "start") == 5_000_000_000
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", win["end_utc"])

    # rounded as published, every digit where the control reads it
    for w in windows:
        temps = w.body["channels"]["chamber_temp"]
        assert all(temps[k] % 50 == 0 for k in ("last", "min", "max", "mean")), temps
        for name, ch in w.body["channels"].items():
            for k in ("last", "min", "max", "mean"):
                if isinstance(ch[k], float):
                    assert len(repr(abs(ch[k])).replace(".", "").lstrip("0").split("e")[0]) <= 6, (name, ch)
    assert ctl.readings()["chamber_temp"] % 50 != 0       # ~20 degC: the PID sees it, the dashboard 0 or 50

    # a node's HELLO reports its firmware: a new description, retained, and the windows after it name it
    firmware["node_a"] = "2.0.0"
    run_until(rig, ctl, publisher, watch, lambda w: len(of(w, "description")) == 2 and any(
        t.body["description_sha256"] != sha for t in of(w, "telemetry")))
    second = of(watch, "description")[1]
    assert second.seq == 2 and second.body["firmware"]["node_a"]["reported"] == "2.0.0"
    new_sha = hashlib.sha256(canonical(second.body)).hexdigest()
    flag, payload = retained(broker.url, publisher.topics.description)
    assert flag and hashlib.sha256(body_bytes(payload)).hexdigest() == new_sha
    shas = [t.body["description_sha256"] for t in of(watch, "telemetry")]
    assert set(shas) == {sha, new_sha} and shas == sorted(shas, key=lambda s: s == new_sha)   # old, then new
    assert publisher.counters.descriptions == 2


def test_a_start_with_another_station_file_puts_a_new_description_numbered_after_the_last(
        tmp_path: pathlib.Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        digests = []
        for step in (50.0, 0.1):               # the technician changed chamber_temp's resolution, then restarted
            with running(_station(step), tmp_path / "state", broker.url) as (_, _, publisher):
                assert publisher.session.wait_flushed(WAIT_S)
                flag, payload = retained(broker.url, publisher.topics.description)
            doc = json.loads(payload)
            assert flag and doc["body"]["channels"]["chamber_temp"]["resolution"] == step
            digests.append((doc["seq"], hashlib.sha256(body_bytes(payload)).hexdigest()))
        (seq1, sha1), (seq2, sha2) = digests
        assert (seq1, seq2) == (1, 2) and sha1 != sha2
    finally:
        broker.close()
