"""The MQTT session: sends the outbox to a broker and deletes a message only once the broker has it.

The outbox (``edge.telemetry.outbox``) is the source of truth; this module only moves messages out
of it. The producer side (controller thread) calls ``put``: the message is committed when it
returns (a process kill keeps it; the outbox's group commit fsyncs it a few ms later, and always
before it is sent: ``edge.telemetry.outbox_commit``), and the network thread is woken. Commands
are acknowledged to the broker (``subscribe_acked``) only after ``outbox.sync()``, so the answer
the handler stored before calling ``ack`` is on disk first. The network thread owns everything paho: one
``paho.mqtt.client.Client`` per connection attempt, driven by our own ``select`` loop (paho's
external-loop API), so there is exactly one thread touching paho and no message lives only in
paho's memory. What happens on each connection:

1. ``outbox.requeue_inflight()``: whatever was sent on the last connection and not acknowledged is
   pending again, in its place (so it is sent again: a duplicate the consumer recognises by its
   (boot, stream, seq), never a gap).
2. CONNECT with ``clean_start=False`` and a session expiry (MQTT 5), or ``clean_session=False``
   (3.1.1): the broker keeps our command subscriptions while we are away. It does not matter for
   what we publish: that waits in the outbox, not in the broker.
3. The birth: ``status`` online, retained, QoS 1, straight to paho (not through the outbox: it
   describes this connection, and the next connection sends a fresh one). The Will, set in the
   CONNECT, is ``status`` offline, retained: the broker publishes it if we vanish.
4. The outbox is published in its order (``Outbox.pending``: everything that is not telemetry
   first, so a trip after a long outage is in the first window, then telemetry; each stream in
   order), read ahead one window at a time (marked in flight at once), with at most ``window``
   messages unacknowledged; PUBACKed messages are deleted in one transaction per half window:
   the broker's Receive Maximum (MQTT 5 CONNACK), capped by ``max_inflight``; 20 under 3.1.1
   (mosquitto's default ``max_inflight_messages``; 3.1.1 brokers do not say). On PUBACK the message
   is deleted from the outbox. A PUBACK with a reason code >= 0x80 (MQTT 5; e.g. 0x87 not
   authorised by the broker's ACL) means the broker did not take it, and is reported
   (``SessionEvent`` "rejected", ``stats().rejected``). What happens to the message depends on
   whether the refusal can pass: a **permanent** one (``PERMANENT_REFUSALS``: 0x87 not
   authorised, 0x90 topic name invalid, 0x99 payload format invalid) of anything but telemetry
   (typically a reply to a response topic the ACL does not let the station write) would be
   re-sent at every connection forever, never thinned, and would keep ``stop`` from ever
   flushing: it is deleted, and an event on the ``event`` stream names it (boot, stream, seq,
   topic, reason code; ``kind`` "other", ``data.original_kind`` "message_refused"), put before the
   delete, so nothing disappears silently (``stats().dropped``). Any other refusal (quota
   exceeded, server busy...), and every refused telemetry message (the quota thins those), stays
   in the outbox, set aside: sent again after ``ASIDE_S`` on the same connection (doubling up to
   ``ASIDE_MAX_S``) and at the next connection; it does not hold up the rest (a stream
   whose message was refused shows that gap to consumers until the broker accepts it: the event
   says why). Under MQTT 3.1.1 a broker that refuses a publish still acknowledges it (the
   protocol has no way to say no), so such a message cannot be told from a delivered one: run
   MQTT 5 against a broker with ACLs.
5. **Maximum Packet Size** (MQTT 5 CONNACK; mosquitto ``max_packet_size``): a message whose
   PUBLISH would be larger is never handed to paho (the broker would disconnect us, and the
   message would be re-sent at every connection forever). It takes the path of a permanent
   refusal above: reported on the event stream (reason code 0x95, packet too large), deleted,
   counted in ``stats().dropped``; whatever its stream, since no re-send can pass.
6. Replies (``reply`` stream) carry the command's MQTT 5 correlation data as the PUBLISH property
   ``CorrelationData``, rebuilt at send time from the ``correlation_data`` (base64) the command
   handler stored in the body, so an MQTT 5 requester can match the answer without reading it.

**Subscriptions** (``subscribe``) are made on every connection without a stored session, and
again on every connection after the broker refused one (the ACL may have been fixed since). The
SUBACK is checked: a refused filter (e.g. the ACL does not let the station read its ``cmd``
topics: commands would never arrive) is an "error" ``SessionEvent``, once until it is granted.
Incoming messages are acknowledged by the session after their handler returned, except for
``subscribe(..., manual_ack=True)``: the handler gets an ``ack`` callable and calls it once the
message is handled for good (a command: once its answer is stored in the outbox). A message never
acknowledged is sent again by the broker on the next connection (a persistent session), so a
station that stops or dies between receiving a command and storing its answer does not lose it.

**Reconnect** with exponential backoff and full jitter: after the n-th failure in a row the wait is
uniform in [0, min(backoff_max_s, backoff_min_s * 2**n)], so a plant full of stations does not
reconnect in lockstep after a broker restart. A failed attempt moves on to the next broker of the
list (failover); a connection that was up and dropped is retried on the same broker first.
A CONNACK must come within ``connect_timeout_s`` (paho has no such limit: a network that accepts
TCP and then black-holes would otherwise hang the session). Keepalive detects a dead link.

**MQTT 5, else 3.1.1**, chosen per broker (``protocol = "auto"``, the default) as
``edge.telemetry.connection.VersionChoice`` says.

**Stopping** (``stop``): new puts still go to the outbox; the network thread keeps publishing until
the outbox is empty or ``flush_timeout_s`` has passed, publishes ``status`` offline (retained) and
waits for its PUBACK, then sends DISCONNECT (so the broker does not also publish the Will).
Whatever was not sent stays in the outbox for the next start. ``stop`` blocks for up to
``flush_timeout_s`` + a few seconds: a caller that guards a dead-man must not call it while the
core still expects heartbeats (``reedge run`` stops the core first). If the network thread does
not end (a socket call hung), ``network_thread_alive`` says so: the owner must then leave the
outbox open rather than close it under that thread.

``on_event`` callbacks and ``subscribe`` handlers run on the network thread: keep them short.
Tested against mosquitto and amqtt in ``tests/test_mqtt_session.py`` (outages, SIGKILL, black-holed
network, failover) and ``tests/test_mqtt_tls.py`` (TLS, ACL refusals, passwords).

Envelopes, the birth and the Will are built by ``edge.telemetry.envelope``. A message the
envelope cannot be built for (a body that is not a JSON object, put behind the session's back:
``put`` refuses those) is set aside like a rejected one and reported, never dropped and never
allowed to block the messages behind it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge import __version__
from edge.spec.broker import BrokerSettings, BrokerUrl, BrokerUrlError
from edge.telemetry.connection import (
    Connection,
    Protocol,
    VersionChoice,
    corked,
    make_client,
    no_connack_reason,
    packet_size,
    reply_properties,
    send_connect,
    stored_body,
    window,
)
from edge.telemetry.envelope import EnvelopeError, PreviousBoot, birth, envelope, previous_boot, will
from edge.telemetry.outbox import Draft, Message, Outbox, OutboxError, Priority
from edge.telemetry.topics import STREAMS, StationTopics

__all__ = ["MqttSession", "SessionError", "SessionEvent", "SessionStats", "StopResult", "backoff_delay"]

log = logging.getLogger(__name__)

STATUS_WAIT_S = 2.0         # at stop, how long the offline status may take at least
TICK_S = 1.0                # the select timeout: keepalive and timeouts are checked at least this often
MAX_REJECTED_KEPT = 100
#: PUBACK reason codes that will not pass on a re-send (the ACL, the topic or the payload is the problem)
PERMANENT_REFUSALS = frozenset({0x87, 0x90, 0x99})
ASIDE_S, ASIDE_MAX_S = 30.0, 600.0   # a message refused for the moment is sent again after 30 s, doubling to 10 min
#: what a message larger than the broker's Maximum Packet Size is reported as (0x95, MQTT 5 "Packet too large")
TOO_LARGE = ReasonCode(PacketTypes.DISCONNECT, identifier=0x95)
REFUSED_KIND = "message_refused"     # data.original_kind of the event that reports a deleted message

PutItem = tuple[str, bytes | Mapping[str, Any], Priority | None, str | None]   # stream, body, priority, verb
Ack = Callable[[], None]
EventKind = Literal["connected", "disconnected", "connect_failed", "protocol_fallback", "rejected", "error"]


class SessionError(RuntimeError):
    """The session cannot do what was asked (not started, already stopped, bad stream...)."""


@dataclass(frozen=True)
class SessionEvent:
    """Something the operator should be able to see: the session hands each one to ``on_event`` and logs it."""

    kind: EventKind
    broker: str
    detail: str
    reason_code: int | None = None
    message: tuple[str, str, int] | None = None    # (boot, stream, seq) for "rejected"


@dataclass(frozen=True)
class SessionStats:
    """A snapshot of the session, for the status message and ``reedge doctor``."""

    connected: bool
    broker: str | None
    protocol: str | None            # "5" or "3.1.1" on the current connection
    window: int                     # unacknowledged publishes allowed on the current connection
    connects: int                   # successful CONNACKs since start
    failures: int                   # failed attempts and dropped connections since start
    published: int                  # outbox messages handed to the broker (re-sends included)
    acked: int                      # outbox messages the broker acknowledged (and the outbox deleted)
    rejected: int                   # PUBACKs with a reason code >= 0x80
    last_error: str | None
    dropped: int = 0                # permanently refused messages deleted (each one reported on the event stream)


@dataclass(frozen=True)
class StopResult:
    """What ``stop`` achieved: ``flushed`` when the outbox was empty at the end."""

    flushed: bool
    remaining: int                  # messages left in the outbox (sent at the next start)
    offline_published: bool         # the offline status was acknowledged by the broker


# ---------------------------------------------------------------------------------------------------------


def backoff_delay(failures_in_row: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_s, min_s * 2**n)], so stations do not reconnect in lockstep."""
    return rng.uniform(0.0, min(max_s, min_s * (2 ** min(max(failures_in_row, 0), 30))))


@dataclass
class _Subscription:
    topic_filter: str
    qos: int
    handler: Callable[[mqtt.MQTTMessage], None] | None
    acked_handler: Callable[[mqtt.MQTTMessage, Ack], None] | None = None


class MqttSession:
    """Publishes one station's outbox to its brokers. Thread-safe ``put``; one network thread.

    ``on_event`` is called from the network thread for every ``SessionEvent`` (keep it short).
    ``previous`` is where the previous boot left each stream, for the birth: read right after
    opening the outbox, before anything is put (the default reads it now, which is right when the
    session is made before the first put). ``rng`` is for the backoff jitter (tests may fix it).
    """

    def __init__(self, outbox: Outbox, settings: BrokerSettings, *, site: str, station: str,
                 on_event: Callable[[SessionEvent], None] | None = None, previous: PreviousBoot | None = None,
                 rng: random.Random | None = None) -> None:
        if not isinstance(settings, BrokerSettings):
            raise TypeError(f"settings must be BrokerSettings, got {type(settings).__name__}")
        if not settings.brokers:
            raise BrokerUrlError("at least one broker is needed")
        self.outbox = outbox
        self.settings = settings
        self.topics = StationTopics(site, station)
        self.site, self.station = site, station
        self.client_id = settings.client_id or f"reedge-{site}-{station}"
        self._on_event = on_event
        self._rng = rng or random.Random()
        self._previous = previous if previous is not None else previous_boot(outbox)
        self._boot_started_ns = time.time_ns()
        self._attempts = 0                                   # CONNECTs sent: the n of the status seq
        self._versions = VersionChoice(settings)
        self._subs: list[_Subscription] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stop_deadline: float | None = None
        self._stopped = threading.Event()
        self._connected_event = threading.Event()
        self._flushed = threading.Condition(self._lock)
        self._conn: Connection | None = None
        self._connects = self._failures = self._published = self._acked = self._rejected = self._dropped = 0
        self._acks: list[tuple[Connection, int, int]] = []      # (connection, mid, qos) to PUBACK: see subscribe
        self._acks_refused = False       # the fsync before acknowledging commands failed (reported once per streak)
        self._sub_refused = False               # the last SUBACK refused a filter (reported once)
        self._last_error: str | None = None
        self.rejected_messages: deque[tuple[tuple[str, str, int], int, str]] = deque(maxlen=MAX_REJECTED_KEPT)
        self._result: StopResult | None = None

    # ---- producer side (any thread) ------------------------------------------------------------------

    def put(self, stream: str, body: bytes | Mapping[str, Any], *, priority: Priority | None = None,
            verb: str | None = None) -> Message:
        """Store one message (committed when this returns, fsynced before it is sent) and wake the network thread."""
        return self.put_many([(stream, body, priority, verb)])[0]

    def put_many(self, items: list[PutItem]) -> list[Message]:
        """Several messages in one outbox transaction: ``(stream, body, priority or None, verb or None)``."""
        drafts = []
        for stream, body, priority, verb in items:
            spec = STREAMS.get(stream)
            if spec is None or spec.priority is None or spec.direction != "publish":
                sendable = [s.name for s in STREAMS.values() if s.priority is not None and s.direction == "publish"]
                raise SessionError(f"cannot put on stream {stream!r}: expected one of {', '.join(sendable)}")
            if isinstance(body, bytes | bytearray):
                try:
                    decoded = json.loads(body)
                except (ValueError, RecursionError) as e:
                    raise SessionError(f"{stream}: the body must be a JSON object, got bytes that are not JSON:"
                                       f" {e}") from None
                if not isinstance(decoded, dict):
                    raise SessionError(f"{stream}: the body must be a JSON object, got {type(decoded).__name__}")
            drafts.append(Draft(stream, self.topics.topic(stream, verb), body,
                                spec.priority if priority is None else priority, spec.qos, spec.retain))
        msgs = self.outbox.put_many(drafts)
        self._wake()
        return msgs

    def subscribe(self, topic_filter: str, qos: int, handler: Callable[[mqtt.MQTTMessage], None]) -> None:
        """Subscribe on every connection that has no stored session; ``handler`` runs on the network thread.
        Each message is acknowledged once ``handler`` returned."""
        self._add_subscription(_Subscription(topic_filter, qos, handler))

    def subscribe_acked(self, topic_filter: str, qos: int, handler: Callable[[mqtt.MQTTMessage, Ack], None]) -> None:
        """Like ``subscribe``, but ``handler(message, ack)`` acknowledges the message itself, from any
        thread, once it is handled for good; never acknowledged, the broker sends it again on the next
        connection (why: a command must not be lost between its arrival and its stored answer)."""
        self._add_subscription(_Subscription(topic_filter, qos, None, handler))

    def _add_subscription(self, sub: _Subscription) -> None:
        if self._thread is not None:
            raise SessionError("subscribe before start(): subscriptions are part of every connection")
        if sub.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {sub.qos!r}")
        self._subs.append(sub)

    # ---- life cycle ----------------------------------------------------------------------------------

    def start(self) -> MqttSession:
        """Start the network thread (it connects, and reconnects, by itself)."""
        if self._thread is not None:
            raise SessionError("the session was already started")
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush_timeout_s: float = 10.0) -> StopResult:
        """Flush the outbox (up to ``flush_timeout_s``), publish offline, disconnect. Idempotent."""
        if self._thread is None:
            raise SessionError("the session was never started")
        if self._result is not None:
            return self._result
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + max(0.0, flush_timeout_s)
            self._wake()
        self._thread.join(timeout=max(0.0, flush_timeout_s) + STATUS_WAIT_S + self.settings.connect_timeout_s + 5)
        if self._thread.is_alive():  # pragma: no cover - only a hung socket call gets here
            log.error("mqtt session %s: network thread did not stop: the outbox must stay open", self.client_id)
        else:
            with contextlib.suppress(OSError):
                self._wake_r.close()
                self._wake_w.close()
        remaining = self.outbox.stats().count
        conn = self._conn
        self._result = StopResult(remaining == 0, remaining, bool(conn and conn.offline_acked))
        return self._result

    @property
    def network_thread_alive(self) -> bool:
        """True while the network thread runs (after ``stop``: it hung, so the outbox must not be closed)."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> MqttSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self.stop()

    def wait_connected(self, timeout: float) -> bool:
        """True once a connection is up (for tests and start-up messages; not needed to ``put``)."""
        return self._connected_event.wait(timeout)

    def wait_flushed(self, timeout: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self.outbox.stats().count:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped.is_set():
                    return False
                self._flushed.wait(min(left, 0.5))
        return True

    def stats(self) -> SessionStats:
        conn = self._conn
        return SessionStats(
            connected=bool(conn and conn.connected), broker=str(conn.broker) if conn else None,
            protocol=conn.protocol if conn and conn.connected else None,
            window=conn.window if conn and conn.connected else 0, connects=self._connects,
            failures=self._failures, published=self._published, acked=self._acked, rejected=self._rejected,
            last_error=self._last_error, dropped=self._dropped)

    # ---- the network thread --------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _stopping(self) -> bool:
        return self._stop_deadline is not None

    def _past_deadline(self) -> bool:
        return self._stop_deadline is not None and time.monotonic() >= self._stop_deadline

    def _event(self, kind: EventKind, broker: BrokerUrl | str, detail: str, reason_code: int | None = None,
               message: tuple[str, str, int] | None = None) -> None:
        ev = SessionEvent(kind, str(broker), detail, reason_code, message)
        level = logging.INFO if kind in ("connected", "protocol_fallback") else logging.WARNING
        log.log(level, "mqtt %s %s: %s", kind, broker, detail)
        if kind in ("connect_failed", "disconnected", "rejected", "error"):
            self._last_error = f"{broker}: {detail}"
        if self._on_event is not None:
            try:
                self._on_event(ev)
            except Exception:
                log.exception("mqtt session: on_event raised")

    def _run(self) -> None:
        brokers = self.settings.brokers
        index, failures_in_row = 0, 0
        try:
            while True:
                broker = brokers[index]
                try:
                    outcome = self._connection(broker)
                except Exception as e:  # a bug must not end publishing: report, back off, go on
                    log.exception("mqtt session %s: connection to %s failed", self.client_id, broker)
                    self._event("error", broker, f"unexpected error, reconnecting: {e!r}")
                    outcome = "failed"
                if outcome == "done":
                    return
                if outcome == "fallback":
                    continue                       # same broker at once, with 3.1.1
                if outcome == "dropped":
                    failures_in_row = 0            # it was up: the same broker first, short wait
                else:
                    failures_in_row += 1
                    index = (index + 1) % len(brokers)
                self._failures += 1
                if self._past_deadline():
                    return
                self._backoff(failures_in_row)
                if self._past_deadline():
                    return
        except Exception as e:  # never die silently: the outbox keeps everything, but nobody would send it
            log.exception("mqtt session %s: network thread failed", self.client_id)
            self._event("error", brokers[index], f"network thread failed: {e!r}")
        finally:
            self._finish()

    def _finish(self) -> None:
        self._connected_event.clear()
        with contextlib.suppress(Exception):   # nothing is in flight once the session is over
            self.outbox.requeue_inflight()
        self._stopped.set()
        with self._flushed:
            self._flushed.notify_all()

    def _backoff(self, failures_in_row: int) -> None:
        s = self.settings
        delay = backoff_delay(failures_in_row, s.backoff_min_s, s.backoff_max_s, self._rng)
        if self._stop_deadline is not None:
            delay = min(delay, max(0.0, self._stop_deadline - time.monotonic()))
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            select.select([self._wake_r], [], [], left)
            self._drain_wake()
            if self._past_deadline():
                return

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _make_client(self, broker: BrokerUrl, protocol: Protocol) -> mqtt.Client:
        will_payload = will(site=self.site, station=self.station, boot_id=self.outbox.boot_id,
                            connection=self._attempts, now_ns=time.time_ns())
        return make_client(self.settings, broker, protocol, client_id=self.client_id, will_topic=self.topics.status,
                           will_payload=will_payload)

    def _birth(self) -> bytes:
        return birth(site=self.site, station=self.station, boot_id=self.outbox.boot_id, connection=self._attempts,
                     now_ns=time.time_ns(), boot_started_ns=self._boot_started_ns, software=f"reedge {__version__}",
                     previous=self._previous)

    def _offline(self) -> bytes:
        return will(site=self.site, station=self.station, boot_id=self.outbox.boot_id, connection=self._attempts,
                    now_ns=time.time_ns(), reason="shutdown")

    def _connection(self, broker: BrokerUrl) -> Literal["done", "fallback", "dropped", "failed"]:
        """One connection attempt and, if it comes up, its whole life."""
        protocol = self._versions.for_attempt(broker)
        if self._past_deadline():
            return "done"
        self.outbox.requeue_inflight()
        self._attempts += 1
        try:
            client = self._make_client(broker, protocol)
        except (OSError, ssl.SSLError, BrokerUrlError) as e:
            self._event("connect_failed", broker, f"cannot set up the client: {e}")
            return "failed"
        conn = Connection(client, broker, protocol, time.monotonic())
        self._conn = conn
        client.on_connect = lambda _c, _u, flags, rc, props: self._on_connect(conn, flags, rc, props)
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self._on_disconnect(conn, rc)
        client.on_publish = lambda _c, _u, mid, rc, _p: self._on_publish(conn, mid, rc)
        client.on_message = lambda _c, _u, m: self._on_message(conn, m)
        client.on_subscribe = lambda _c, _u, mid, codes, _p: self._on_subscribe(conn, mid, codes)
        try:
            send_connect(conn, self.settings)
        except ssl.SSLCertVerificationError as e:
            self._event("connect_failed", broker, f"TLS: the broker's certificate was not accepted: {e.verify_message}"
                                                  " (check ca_file and the host name in the URL)")
            return "failed"
        except (OSError, ssl.SSLError) as e:
            self._event("connect_failed", broker, f"cannot connect: {e}")
            return "failed"
        try:
            return self._serve(conn)
        finally:
            self._connected_event.clear()
            sock = client.socket()
            if sock is not None:     # abandoned without DISCONNECT, so that the broker publishes the Will
                with contextlib.suppress(OSError):
                    sock.close()

    def _serve(self, conn: Connection) -> Literal["done", "fallback", "dropped", "failed"]:
        client = conn.client
        while True:
            sock = client.socket()
            if sock is None or conn.lost:
                break
            if conn.refused is not None:
                break
            if not conn.connected and time.monotonic() - conn.started > self.settings.connect_timeout_s:
                conn.timed_out = True
                break
            wait = TICK_S
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                wait = 0
            rlist, wlist, _ = select.select([sock, self._wake_r], [sock] if client.want_write() else [], [], wait)
            if self._wake_r in rlist:
                self._drain_wake()
            if sock in rlist or wait == 0:
                client.loop_read()
            if client.socket() is not None and (sock in wlist or client.want_write()):
                client.loop_write()
            if client.socket() is not None:
                client.loop_misc()
            self._apply_acks(conn, now=self._stopping())
            self._send_acks(conn)
            if conn.connected and not conn.lost:
                if self._stopping() and self._stop_step(conn):
                    return "done"
                if conn.offline_mid is None:
                    self._retry_set_aside(conn)
                    self._pump(conn)
            elif self._past_deadline():
                return "done"                                # stopping, and no connection to flush through
        if conn.refused is not None:
            rc = conn.refused
            if self._versions.refused(conn, rc):
                self._event("protocol_fallback", conn.broker, "the broker refused MQTT 5: using MQTT 3.1.1",
                            rc.value)
                return "fallback"
            self._event("connect_failed", conn.broker, f"the broker refused the connection: {rc.getName()}"
                                                       f" (0x{rc.value:02x})", rc.value)
            return "failed"
        self._apply_acks(conn, now=True)
        if conn.connected:
            return "dropped"
        why = no_connack_reason(conn, self.settings)
        if self._versions.no_connack(conn):
            self._event("connect_failed", conn.broker, f"{why}; trying MQTT 3.1.1")
            return "fallback"
        self._event("connect_failed", conn.broker, why)
        return "failed"

    # paho callbacks (network thread, inside loop_read / loop_misc)

    def _on_connect(self, conn: Connection, flags: mqtt.ConnectFlags, rc: ReasonCode, props: Properties | None) -> None:
        if rc.is_failure:
            conn.refused = rc
            return
        conn.connected = True
        if self._versions.accepted(conn):     # 5 was hung up on, 3.1.1 works: a 3.1.1-only broker
            self._event("protocol_fallback", conn.broker, "MQTT 5 was hung up on, MQTT 3.1.1 works: using 3.1.1")
        conn.window = window(conn.protocol, props, self.settings.max_inflight)
        conn.max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self._connects += 1
        self._connected_event.set()
        self._event("connected", conn.broker, f"MQTT {conn.protocol}, window {conn.window},"
                                              f" session present {bool(flags.session_present)}")
        if self._subs and (not flags.session_present or self._sub_refused):
            _, conn.sub_mid = conn.client.subscribe([(s.topic_filter, s.qos) for s in self._subs])
        info = conn.client.publish(self.topics.status, self._birth(), qos=1, retain=True)
        conn.control_mids.add(info.mid)

    def _on_disconnect(self, conn: Connection, rc: ReasonCode) -> None:
        if conn.lost:        # paho may report the same loss twice (keepalive, then the ping check)
            return
        conn.lost = True
        conn.close_rc = rc
        if conn.connected and conn.offline_mid is None:
            self._event("disconnected", conn.broker, f"connection lost: {rc.getName()}",
                        rc.value if rc.value else None)

    def _on_publish(self, conn: Connection, mid: int, rc: ReasonCode) -> None:
        if mid in conn.control_mids:
            conn.control_mids.discard(mid)
            if mid == conn.offline_mid:
                conn.offline_acked = not rc.is_failure
            elif rc.is_failure:
                self._event("rejected", conn.broker, f"the status message was refused: {rc.getName()}", rc.value)
            return
        msg_id = conn.mids.pop(mid, None)
        if msg_id is None:
            return
        msg = conn.keys.pop(msg_id)
        if rc.is_failure:
            if (rc.value in PERMANENT_REFUSALS and msg.priority is not Priority.TELEMETRY
                    and self._drop_refused(conn, msg, rc)):
                return
            # kept in the outbox, marked in flight: set aside, sent again on this connection later, and on the next
            conn.refusals[msg_id] = n = conn.refusals.get(msg_id, 0) + 1
            conn.set_aside[msg_id] = time.monotonic() + (after := min(ASIDE_MAX_S, ASIDE_S * 2 ** (n - 1)))
            self._rejected += 1
            self.rejected_messages.append((msg.key, rc.value, rc.getName()))
            if n == 1:      # said once a connection: the refusals of its next tries are counted (stats) only
                self._event("rejected", conn.broker, f"{msg.topic} {msg.stream} seq {msg.seq} not accepted:"
                            f" {rc.getName()} (kept in the outbox, sent again in {after:g} s, then less often)",
                            rc.value, msg.key)
            return
        conn.acked.append(msg_id)

    def _on_subscribe(self, conn: Connection, mid: int, codes: list[ReasonCode]) -> None:
        """Check the SUBACK: a refused filter means its messages never arrive; say so once."""
        if mid != conn.sub_mid:
            return
        refused = [(s, rc) for s, rc in zip(self._subs, codes, strict=False) if rc.is_failure]
        if refused and not self._sub_refused:
            what = "; ".join(f"{s.topic_filter}: {rc.getName()} (0x{rc.value:02x})" for s, rc in refused)
            self._event("error", conn.broker, f"the broker refused the subscription ({what}): those messages"
                                              " (commands) will not arrive; check the broker's ACL",
                        refused[0][1].value)
        elif not refused and self._sub_refused:
            log.info("mqtt %s: subscriptions granted", conn.broker)
        self._sub_refused = bool(refused)

    def _on_message(self, conn: Connection, message: mqtt.MQTTMessage) -> None:
        manual = False
        for sub in self._subs:
            if mqtt.topic_matches_sub(sub.topic_filter, message.topic):
                try:
                    if sub.acked_handler is not None:
                        manual = True
                        sub.acked_handler(message, self._acker(conn, message.mid, message.qos))
                    elif sub.handler is not None:
                        sub.handler(message)
                except Exception:
                    log.exception("mqtt session: handler for %s raised", sub.topic_filter)
        if not manual and message.qos > 0:
            conn.client.ack(message.mid, message.qos)

    def _acker(self, conn: Connection, mid: int, qos: int) -> Ack:
        """The ``ack`` of one message: thread-safe, once; sent by the network thread on that connection only."""
        done = [qos == 0]

        def ack() -> None:
            with self._lock:
                if done[0]:
                    return
                done[0] = True
                self._acks.append((conn, mid, qos))
            self._wake()
        return ack

    def _send_acks(self, conn: Connection) -> None:
        with self._lock:
            acks, self._acks = self._acks, []
        if acks:   # an ack follows the put of its answer: once the fsync covers that put, the broker may forget
            try:
                self.outbox.sync()
            except OutboxError as e:   # acknowledged after the next fsync that works (the broker would send them
                with self._lock:         # again only on a new connection: a live one would keep them unanswered)
                    self._acks[:0] = acks
                if not self._acks_refused:    # once per streak: this runs at every pass of the network loop
                    self._event("error", conn.broker, f"commands not acknowledged yet: {e}")
                self._acks_refused = True
                return
            self._acks_refused = False
        for c, mid, qos in acks:
            # an ack for a connection that is gone is moot: the broker sends that message again
            if c is conn and conn.connected and not conn.lost and conn.client.socket() is not None:
                conn.client.ack(mid, qos)

    def _drop_refused(self, conn: Connection, msg: Message, rc: ReasonCode) -> bool:
        """A permanent refusal: report the message on the event stream, then delete it (module docstring).
        False (message kept) if the report cannot be stored: nothing leaves the outbox without a trace."""
        self._rejected += 1
        self.rejected_messages.append((msg.key, rc.value, rc.getName()))
        boot, stream, seq = msg.key
        code = f"{rc.getName()} (0x{rc.value:02x})"
        what = f"{stream} #{seq} of boot {boot} to {msg.topic[:200]}"
        if _is_refusal_report(msg):   # the event topic itself is refused: a report of the report would loop
            log.error("mqtt %s: %s refused for good: %s; it reported a refused message: deleted, logged only",
                      conn.broker, what, code)
        else:
            body = {"kind": "other", "source": "controller", "severity": "alarm",
                    "message": f"{what} refused by the broker for good: {code}; deleted from the outbox"[:1000],
                    "data": {"original_kind": REFUSED_KIND, "boot": boot, "stream": stream, "seq": seq,
                             "topic": msg.topic, "reason_code": rc.value, "reason": rc.getName()}}
            try:
                self.outbox.put_many([Draft("event", self.topics.event, body, Priority.ALARM,
                                            STREAMS["event"].qos, STREAMS["event"].retain)])
            except OutboxError as e:
                self._event("rejected", conn.broker, f"{what} not accepted: {code}; kept in the outbox (its"
                                                     f" report could not be stored: {e})", rc.value, msg.key)
                return False
            self._wake()
        self.outbox.ack_many([msg.id], drop=True)     # not kept as history: a resend would send it again
        self._dropped += 1
        self._event("rejected", conn.broker, f"{what} not accepted: {code}; a permanent refusal: deleted from the"
                                             " outbox and reported on the event stream", rc.value, msg.key)
        with self._flushed:
            self._flushed.notify_all()
        return True

    # sending

    def _apply_acks(self, conn: Connection, *, now: bool = False) -> None:
        """Delete what the broker acknowledged: one transaction per half window, or at once when nothing else
        is in flight (a flush waits for it) or the connection ends (``now``)."""
        if not conn.acked or not (now or not conn.mids or len(conn.acked) * 2 >= conn.window):
            return
        acked, conn.acked = conn.acked, []
        self.outbox.ack_many(acked)
        self._acked += len(acked)
        with self._flushed:
            self._flushed.notify_all()

    def _retry_set_aside(self, conn: Connection) -> None:
        """What the broker refused for the moment and whose time has come: pending again, in its place."""
        due = [i for i, at in conn.set_aside.items() if at <= time.monotonic()] if conn.set_aside else []
        if due:
            self.outbox.requeue_inflight(due)
            conn.set_aside = {i: at for i, at in conn.set_aside.items() if i not in due}

    def _pump(self, conn: Connection) -> None:
        """Fill the window from the outbox, in its order (``Outbox.pending``)."""
        if len(conn.mids) < conn.window:      # (a put wakes this thread also while the window is full)
            with corked(conn.client.socket()):
                self._fill(conn)

    def _fill(self, conn: Connection) -> None:
        """Publish from ``conn.ready``, read ahead a window at a time and marked in flight at once (this
        connection holds them; a reconnect requeues them): a PUBACK is answered by the next publish
        without an outbox read each time. A message put meanwhile waits at most one window more."""
        while conn.window - len(conn.mids) > 0:
            if not conn.ready:
                batch = self.outbox.pending(conn.window, wait=False)
                if not batch:
                    return
                self.outbox.mark_inflight(m.id for m in batch)
                conn.ready.extend(batch)
            msg = conn.ready.popleft()
            try:
                payload = envelope(msg, site=self.site, station=self.station)
            except EnvelopeError as e:   # set aside (in flight) until the next connection, reported
                self._event("error", conn.broker, f"{msg.stream} seq {msg.seq} cannot be sent: {e}"
                                                  " (kept in the outbox)", message=msg.key)
                continue
            props = self._reply_properties(msg) if conn.protocol == "5" and msg.stream == "reply" else None
            most = conn.max_packet
            if most is not None and packet_size(msg, payload, props, conn.protocol) > most:
                self._drop_refused(conn, msg, TOO_LARGE)   # the broker would hang up on it; kept if not reported
                continue
            info = conn.client.publish(msg.topic, payload, qos=msg.qos, retain=msg.retain, properties=props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and conn.client.socket() is None:
                return                               # the connection went while sending
            self._published += 1
            if msg.qos == 0:
                conn.acked.append(msg.id)            # at most once by definition: handed to the socket
            else:
                conn.mids[info.mid] = msg.id
                conn.keys[msg.id] = msg

    @staticmethod
    def _reply_properties(msg: Message) -> Properties | None:
        try:
            return reply_properties(msg)
        except ValueError as e:
            log.warning("mqtt session: reply %s #%d: %s: sent without it", msg.stream, msg.seq, e)
            return None

    def _stop_step(self, conn: Connection) -> bool:
        """While stopping: True once the offline status is acknowledged (or the deadline has passed)."""
        if conn.offline_mid is None:
            empty = not conn.mids and not conn.ready and not self.outbox.pending(1)
            if not (empty or self._past_deadline()):
                return False
            info = conn.client.publish(self.topics.status, self._offline(), qos=1, retain=True)
            conn.offline_mid = info.mid
            conn.control_mids.add(info.mid)
            conn.offline_sent_at = time.monotonic()
            return False
        waited = time.monotonic() - conn.offline_sent_at
        if conn.offline_acked or waited > STATUS_WAIT_S:
            conn.client.disconnect()
            with contextlib.suppress(Exception):
                while conn.client.want_write() and conn.client.socket() is not None:
                    if conn.client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
            return True
        return False


def _is_refusal_report(msg: Message) -> bool:
    if msg.stream != "event":
        return False
    data = stored_body(msg).get("data")
    return isinstance(data, dict) and data.get("original_kind") == REFUSED_KIND
