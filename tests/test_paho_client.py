"""``connection.PahoClient`` acknowledges a success PUBACK without building objects for it: what its
``on_publish`` gets must be what stock paho's gets, for the short success form and for a refusal with a reason
code (a real mosquitto, an ACL that refuses one topic), in MQTT 5 and 3.1.1."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.telemetry.connection import PahoClient
from tests.mqtt_broker import Mosquitto

N = 200


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    d = tmp_path_factory.mktemp("broker")
    acl = d / "acl"
    acl.write_text("topic write ok/#\ntopic read #\n")   # anonymous clients may write ok/..., and read
    b = Mosquitto(d, extra=f"acl_file {acl}").start()
    # a subscriber: without one mosquitto acknowledges with 0x10 "no matching subscribers" (3 bytes), never
    # the short success form this is about
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="listener", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect("127.0.0.1", b.port)
    sub.subscribe("#", qos=0)
    sub.loop_start()
    try:
        assert subscribed.wait(30), "no SUBACK"
        yield b
    finally:
        sub.disconnect()
        sub.loop_stop()
        b.close()


def acks(cls: type[mqtt.Client], port: int, protocol: MQTTProtocolVersion, topics: list[str]) -> list[tuple[Any, ...]]:
    """What on_publish received for each of ``topics`` published QoS 1, in mid order."""
    got: dict[int, tuple[Any, ...]] = {}
    done = threading.Event()
    kwargs: dict[str, Any] = {"clean_session": True} if protocol == mqtt.MQTTv311 else {}
    c = cls(CallbackAPIVersion.VERSION2, client_id=f"{cls.__name__}-{protocol}", protocol=protocol, **kwargs)

    def on_publish(_c: mqtt.Client, _u: object, mid: int, rc: Any, props: Any) -> None:
        got[mid] = (rc.value, rc.getName(), rc.is_failure, type(rc).__name__, props.json() if props else None)
        if len(got) == len(topics):
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        mids = [c.publish(t, b"{}", qos=1).mid for t in topics]
        assert done.wait(30), f"{len(got)} of {len(topics)} acknowledged"
    finally:
        c.disconnect()
        c.loop_stop()
    return [got[m] for m in mids]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_puback_handling_is_paho_s_whether_accepted_or_refused(broker: Mosquitto,
                                                              protocol: MQTTProtocolVersion) -> None:
    topics = [f"ok/{i}" if i % 7 else f"refused/{i}" for i in range(N)]
    mine = acks(PahoClient, broker.port, protocol, topics)
    stock = acks(mqtt.Client, broker.port, protocol, topics)
    assert mine == stock
    assert PahoClient._FAST        # the short path was the one taken (the internals it needs exist)
    refused = {r[0] for r, t in zip(mine, topics, strict=True) if t.startswith("refused/")}
    # MQTT 5: the broker says no (0x87, a 3-byte PUBACK: paho's own path); 3.1.1 cannot, it acknowledges
    assert refused == ({0x87} if protocol == mqtt.MQTTv5 else {0})
    assert {r[0] for r, t in zip(mine, topics, strict=True) if t.startswith("ok/")} == {0}


def test_the_short_path_is_taken_for_a_success_puback(broker: Mosquitto, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: pathlib.Path) -> None:
    """Without it paho builds a ReasonCode per PUBACK; with it, none (so the test above compares two paths)."""
    built = []
    real = ReasonCode.__init__

    def counting(self: Any, *a: Any, **k: Any) -> None:
        built.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(ReasonCode, "__init__", counting)
    acks(PahoClient, broker.port, mqtt.MQTTv5, [f"ok/{i}" for i in range(N)])
    mine = len(built)
    built.clear()
    acks(mqtt.Client, broker.port, mqtt.MQTTv5, [f"ok/{i}" for i in range(N)])
    assert built and len(built) - mine >= N, (mine, len(built))
