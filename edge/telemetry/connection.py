"""One connection attempt to a broker: its paho client (MQTT version, TLS, credentials, Will), its
CONNECT, its state, and the MQTT 5 properties of what is sent on it.

The session (``edge.telemetry.session``) decides when to connect and to which broker, and drives
the client on its network thread; this module sets a client up the same way every time and says
which MQTT version to speak (``VersionChoice``). TLS verification is always on: the broker's
certificate must chain to the CA and name the host. paho holds no message of its own: no queue,
no inflight limit (the session's window decides what is sent), and incoming messages are
acknowledged by the session (``manual_ack``).

**MQTT 5, else 3.1.1.** With ``protocol = "auto"`` the session speaks MQTT 5; a broker that answers
CONNACK "unsupported protocol version" (0x84; a 3.1.1 broker's return code 1 reads the same) is
remembered as 3.1.1-only for the life of the session and reconnected at once with 3.1.1. Some
3.1.1 brokers hang up on an MQTT 5 CONNECT instead of answering (amqtt 0.12.1, the demo's embedded
broker, misreads the Will properties of an MQTT 5 CONNECT and then neither answers nor closes):
a v5 attempt that gets no CONNACK (closed, or nothing within ``connect_timeout_s``/keepalive) is
retried at once with 3.1.1, and if that one is accepted the broker is remembered as 3.1.1-only;
this guess is made only for a broker that has never accepted MQTT 5 in this session, so a network
outage never downgrades a broker we know speaks 5. (A real MQTT 5 broker that was unreachable in
just that way at start-up and came back between the two attempts is spoken to in 3.1.1 until the
next start: it still works, it only loses PUBACK reason codes; the "protocol_fallback" event says
so. Set ``protocol = "5"`` to rule that out, or ``"3.1.1"`` for a known 3.1.1 broker such as
``EmbeddedBroker``, which also saves the wait.)
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import ctypes
import dataclasses
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.spec.broker import BrokerSettings, BrokerUrl
from edge.telemetry.outbox import Message

Protocol = Literal["5", "3.1.1"]

V311_WINDOW = 20            # 3.1.1 brokers do not announce a receive maximum; mosquitto's default inflight
V5_DEFAULT_RECEIVE_MAX = 65535  # MQTT 5: a CONNACK without Receive Maximum means 65535
UNSUPPORTED_PROTOCOL = 0x84
KEEPALIVE_TIMEOUT = 0x8D


@dataclass
class Connection:
    """The state of one connection attempt; thrown away with its paho client."""

    client: mqtt.Client
    broker: BrokerUrl
    protocol: Protocol
    started: float
    connected: bool = False
    refused: ReasonCode | None = None
    window: int = V311_WINDOW
    mids: dict[int, int] = dataclasses.field(default_factory=dict)     # paho mid -> outbox id
    keys: dict[int, Message] = dataclasses.field(default_factory=dict)  # outbox id -> message (for reports)
    control_mids: set[int] = dataclasses.field(default_factory=set)    # birth / offline status
    acked: list[int] = dataclasses.field(default_factory=list)
    offline_mid: int | None = None
    offline_sent_at: float = 0.0
    offline_acked: bool = False
    lost: bool = False
    timed_out: bool = False
    close_rc: ReasonCode | None = None
    sub_mid: int | None = None
    max_packet: int | None = None      # the broker's Maximum Packet Size (MQTT 5 CONNACK), None: no limit said
    ready: collections.deque[Message] = dataclasses.field(default_factory=collections.deque)  # read ahead, in flight
    set_aside: dict[int, float] = dataclasses.field(default_factory=dict)   # refused for the moment: id -> retry at
    refusals: dict[int, int] = dataclasses.field(default_factory=dict)      # id -> refusals on this connection


class VersionChoice:
    """Which MQTT version to speak to each broker of a session (module docstring: MQTT 5, else 3.1.1)."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.setting = settings.protocol
        self.v311_only: set[BrokerUrl] = set() if settings.protocol != "3.1.1" else set(settings.brokers)
        self.probing: set[BrokerUrl] = set()    # next attempt: 3.1.1, to see whether 5 was the problem
        self.v5_seen: set[BrokerUrl] = set()    # accepted MQTT 5 once: a later silence is the network's

    def for_attempt(self, broker: BrokerUrl) -> Protocol:
        return "3.1.1" if broker in self.v311_only | self.probing else "5"

    def refused(self, conn: Connection, rc: ReasonCode) -> bool:
        """A refused CONNACK; True if it refused MQTT 5 itself: 3.1.1 from now on, at once."""
        if conn.protocol == "5" and rc.value in (UNSUPPORTED_PROTOCOL, 1) and self.setting == "auto":
            self.v311_only.add(conn.broker)
            return True
        return False

    def no_connack(self, conn: Connection) -> bool:
        """No CONNACK at all; True to try 3.1.1 once, at once (a broker that never accepted 5 here)."""
        if (conn.protocol == "5" and self.setting == "auto" and conn.broker not in self.probing
                and conn.broker not in self.v5_seen):
            # Some 3.1.1 brokers (amqtt) hang up on, or never answer, an MQTT 5 CONNECT: try 3.1.1 once.
            self.probing.add(conn.broker)
            return True
        self.probing.discard(conn.broker)
        return False

    def accepted(self, conn: Connection) -> bool:
        """A CONNACK; True if it answered the 3.1.1 try after 5 was hung up on: 3.1.1-only from now on."""
        if conn.protocol == "5":
            self.v5_seen.add(conn.broker)
        if conn.broker in self.probing:
            self.probing.discard(conn.broker)
            self.v311_only.add(conn.broker)
            return True
        return False


def no_connack_reason(conn: Connection, settings: BrokerSettings) -> str:
    """Why an attempt that got no CONNACK failed, in words for the operator."""
    timed_out = conn.timed_out or (conn.close_rc is not None and conn.close_rc.value == KEEPALIVE_TIMEOUT)
    why = (f"no CONNACK within {min(settings.connect_timeout_s, settings.keepalive_s):g} s"
           if timed_out else "the connection closed before CONNACK")
    if conn.broker.tls and not timed_out:
        why += (" (over TLS this is how a broker refuses a client certificate, or the lack of one:"
                " check cert_file and key_file)")
    return why


def properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho's constructor has no annotations


class PahoClient(mqtt.Client):
    """paho's client, acknowledging a PUBACK of success without building two objects for it.

    A broker acknowledges nearly every QoS 1 message with the 2-byte PUBACK (the message id alone: success, no
    reason code, no properties; the only form MQTT 3.1.1 has). paho decodes each into a new ``ReasonCode``
    and a new ``Properties``, which was 9 % of the session bench's GIL time (py-spy, 2 x 20,000 messages): the
    session's network thread is the one that also reads the outbox. This one answers that form with one shared
    success code and one empty property set (nothing mutates either: paho passes them to ``on_publish``,
    which only reads them); any longer PUBACK (a reason code: 0x10 no subscribers, 0x87 not authorised...),
    a PUBCOMP, and a paho whose internals are not the ones this was written against (2.x: ``_in_packet``,
    ``_out_messages``, ``_do_on_publish``) take paho's own path (tests/test_paho_client.py compares the two).
    """

    _FAST = all(hasattr(mqtt.Client, name) for name in ("_handle_pubackcomp", "_do_on_publish", "_easy_log"))

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = getattr(self, "_in_packet", {}).get("packet") if self._FAST else None
        if cmd != "PUBACK" or packet is None or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received PUBACK (Mid: %d)", mid)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _PUBACK_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_PUBACK_PROPERTIES = properties(PacketTypes.PUBACK)


def make_client(settings: BrokerSettings, broker: BrokerUrl, protocol: Protocol, *, client_id: str,
                will_topic: str, will_payload: bytes) -> mqtt.Client:
    """A paho client for one attempt, not yet connected; OSError / ssl.SSLError / BrokerUrlError if it
    cannot be set up (a certificate file that cannot be read, a password file missing)."""
    s = settings
    # manual_ack: incoming messages are acknowledged by the session or by their handler (subscribe_acked)
    if protocol == "5":
        client = PahoClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)
    else:
        client = PahoClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                            clean_session=False, manual_ack=True)
    client.connect_timeout = s.connect_timeout_s
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(V5_DEFAULT_RECEIVE_MAX)   # the window is the session's; paho must not hold any
    if broker.tls:
        client.tls_set_context(tls_context(s))
    if s.username is not None:
        client.username_pw_set(s.username, s.password())
    if protocol == "5":
        props = properties(PacketTypes.WILLMESSAGE)
        props.ContentType = "application/json"
        client.will_set(will_topic, will_payload, qos=1, retain=True, properties=props)
    else:
        client.will_set(will_topic, will_payload, qos=1, retain=True)
    return client


def tls_context(settings: BrokerSettings) -> ssl.SSLContext:
    """Verification on, always: the broker's certificate must chain to the CA and name the host."""
    s = settings
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(s.ca_file) if s.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if s.cert_file is not None and s.key_file is not None:
        ctx.load_cert_chain(str(s.cert_file), str(s.key_file))
    return ctx


def send_connect(conn: Connection, settings: BrokerSettings) -> None:
    """The CONNECT: a persistent session (the broker keeps our subscriptions while we are away)."""
    if conn.protocol == "5":
        props = properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = settings.session_expiry_s
        conn.client.connect(conn.broker.host, conn.broker.port, settings.keepalive_s, clean_start=False,
                            properties=props)
    else:
        conn.client.connect(conn.broker.host, conn.broker.port, settings.keepalive_s)


def window(protocol: Protocol, connack: Properties | None, max_inflight: int) -> int:
    """How many publishes may be unacknowledged: the broker's Receive Maximum (MQTT 5), else 20, capped."""
    if protocol == "5":
        receive_max = getattr(connack, "ReceiveMaximum", V5_DEFAULT_RECEIVE_MAX) if connack else V5_DEFAULT_RECEIVE_MAX
        return max(1, min(int(receive_max), max_inflight))
    return max(1, min(V311_WINDOW, max_inflight))


def stored_body(msg: Message) -> dict[str, Any]:
    """The stored body of an outbox message as a dict ({} if it is not a JSON object)."""
    try:
        body = json.loads(msg.payload)
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def reply_properties(msg: Message) -> Properties | None:
    """The reply's MQTT 5 ``CorrelationData``, from the base64 ``correlation_data`` of its stored body;
    None without one. ValueError if it is not base64 (the caller sends the reply without it)."""
    encoded = stored_body(msg).get("correlation_data")
    if not isinstance(encoded, str):
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("correlation_data is not base64") from None
    props = properties(PacketTypes.PUBLISH)
    props.CorrelationData = data
    return props


def _libc_setsockopt() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).setsockopt
    except (OSError, AttributeError):   # no C library to call: Python's own setsockopt
        return None


_SETSOCKOPT = _libc_setsockopt()
_OFF = ctypes.c_int(0)


def _uncork(sock: socket.socket, cork: int) -> None:
    """Clear ``TCP_CORK``. The kernel transmits the whole held window inside this call (loopback: it also runs
    the broker's receive path), so it is made through ctypes, which lets go of the GIL for it: Python's
    ``socket.setsockopt`` keeps the GIL, and the producer thread would wait on the network for the length of it
    (in the session bench: 15 % of the network thread's GIL time). An error is ignored, as Python's would be:
    the socket is going away and paho sees that on its next read or write."""
    if _SETSOCKOPT is None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 0)
        return
    _SETSOCKOPT(sock.fileno(), socket.IPPROTO_TCP, cork, ctypes.byref(_OFF), ctypes.sizeof(_OFF))


@contextlib.contextmanager
def corked(sock: object) -> Iterator[None]:
    """Hold the TCP segments of a window's publishes (one ``send`` each, by paho) until all are written: the
    kernel sends them together instead of waking the broker once per message (Linux ``TCP_CORK``)."""
    cork = getattr(socket, "TCP_CORK", None)
    if cork is None or not isinstance(sock, socket.socket):
        yield
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        _uncork(sock, cork)


def packet_size(msg: Message, payload: bytes, props: Properties | None, protocol: Protocol) -> int:
    """The bytes of the PUBLISH paho will send for ``msg`` (fixed header, topic, packet id, properties, payload)."""
    rest = 2 + len(msg.topic.encode()) + (2 if msg.qos else 0) + len(payload)
    if protocol == "5":
        rest += len(props.pack()) if props is not None else 1   # type: ignore[no-untyped-call]
    return 1 + (1 if rest < 128 else 2 if rest < 16_384 else 3 if rest < 2_097_152 else 4) + rest
