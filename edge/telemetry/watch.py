"""An in-process ``reedge tail``: subscribe to a station, check every message, count and track it.

``reedge demo`` runs one beside its controller to show what reached the broker (and that nothing
is missing), and the tests use it as their consumer. Each message goes through the same checks
as ``reedge tail`` (``check_message``: topic, envelope, schema) and the same ``StreamTracker``
(gaps, duplicates, lost tails per (boot, stream)).

The subscription is QoS 1 on a **persistent session** (a fixed client id, clean session off;
MQTT 5: clean start off with a session expiry), made before the station starts: a broker that
restarts with its persistence keeps the subscription and the messages queued for it, and paho
reconnects by itself, so an outage of the broker is not a gap here either.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.spec.broker import BrokerUrl
from edge.telemetry.tail import Checked, Finding, StreamTracker, check_message
from edge.telemetry.topics import subscription

SESSION_EXPIRY_S = 3600


class WatchError(RuntimeError):
    """The watch could not connect or subscribe."""


class Watch:
    """Subscribes to ``reedge/v1/{site}/{station}/#`` and checks what arrives (see the module docstring).

    ``keep`` keeps every checked message in ``messages`` (tests); the counts, problems and
    tracker are kept anyway.
    """

    def __init__(self, url: BrokerUrl, *, site: str = "+", station: str = "+", client_id: str = "reedge-watch",
                 protocol: Literal["5", "3.1.1"] = "3.1.1", keep: bool = False) -> None:
        self.url = url
        self.topic_filter = subscription(site, station)
        self.keep = keep
        self.tracker = StreamTracker()
        self.counts: collections.Counter[str] = collections.Counter()
        self.invalid: list[tuple[str, list[str]]] = []
        self.findings: list[Finding] = []
        self.messages: list[Checked] = []
        self.offline_seen = False         # a station's clean shutdown arrived (not a retained one)
        self._lock = threading.RLock()          # conditions given to wait() may look again (snapshot)
        self._changed = threading.Condition(self._lock)
        self._subscribed = threading.Event()
        self._protocol = protocol
        if protocol == "5":
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                      clean_session=False)
        self.client.reconnect_delay_set(1, 2)
        if url.tls:
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self, timeout_s: float = 30.0) -> Watch:
        """Connect and subscribe; returns once the broker confirmed the subscription."""
        try:
            if self._protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                self.client.connect(self.url.host, self.url.port, keepalive=10, clean_start=False, properties=props)
            else:
                self.client.connect(self.url.host, self.url.port, keepalive=10)
        except OSError as e:
            raise WatchError(f"cannot connect to {self.url}: {e}") from e
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.close()
            raise WatchError(f"{self.url}: no subscription to {self.topic_filter} within {timeout_s:g} s")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- paho's thread ----

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, reason: Any, _p: Any) -> None:
        if not reason.is_failure and not flags.session_present:
            client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        c = check_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._changed:
            if c.problems:
                self.invalid.append((msg.topic, c.problems))
            if c.envelope is not None:
                self.counts[c.envelope.stream] += 1
                body = c.envelope.body
                if c.envelope.stream == "status" and not c.retained and body.get("reason") == "shutdown":
                    self.offline_seen = True
                if not c.problems:
                    self.findings.extend(self.tracker.observe(c.envelope, retained=c.retained))
            elif c.command is not None:
                self.counts["cmd"] += 1
            if self.keep:
                self.messages.append(c)
            self._changed.notify_all()

    # ---- looking ----

    def wait(self, condition: Callable[[Watch], bool], timeout_s: float) -> bool:
        """Until ``condition(self)`` holds (checked under the lock at every message), or False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def snapshot(self) -> list[Checked]:
        with self._lock:
            return list(self.messages)

    @property
    def gaps(self) -> list[Finding]:
        """What the numbers say is missing (gaps and lost tails, minus what arrived late or was thinned)."""
        with self._lock:
            return [f for f in self.findings if f.kind in ("gap", "lost_tail")]

    def summary(self) -> str:
        """One line: messages per stream, and "no gaps" or what is missing."""
        with self._lock:
            shown = ", ".join(f"{stream} {n}" for stream, n in sorted(self.counts.items()))
            lost = self.tracker.lost
            dups = sum(1 for f in self.findings if f.kind == "duplicate")
            invalid = len(self.invalid)
        verdict = "no gaps" if lost == 0 else f"{lost} message(s) missing"
        extra = (f", {dups} duplicate(s) (re-sent after a reconnect)" if dups else "") + (
            f", {invalid} INVALID" if invalid else "")
        return f"received {shown or 'nothing'}; {verdict}{extra}"
