"""One serial sensor node (a Pico running ``boards/firmware/pico_node``) as injected channels of the core.

A background thread (``edge.devices.serial_device``: reopening, counters, surviving errors) owns the port:
it opens it (exclusively), checks the node's HELLO against what
the station expects (node id, firmware version, config hash, channel and output names), feeds each
accepted reading into the core with the node's own timestamp mapped onto the core clock, and sends
OUTPUTS frames (the levels the core's gate gives the mapped outputs, the acknowledgement, and the newest node
seq received, which the node takes as proof of how fresh the frame is) every ``keepalive_ms``, once a first
sequenced frame of the boot came. It stops sending them when the core stops, so the node's dead-man drops its
outputs. A node whose dead-man is too short for that echo (``edge.spec.node.deadman_margin_problem``) is refused.

Nothing is hidden: CRC and framing errors, duplicates, gaps, frames the node gave up on, node resets,
reconnects, HELLO mismatches and frames of link protocol 1 (a node to reflash: named, never linked,
never sent OUTPUTS) are counted in :class:`LinkStats`; every accepted reading also goes to
``on_reading`` when given. Staleness is the core's job: a quiet or unplugged node simply stops
injecting, and each mapped channel's ``max_age_ms`` turns it STALE so the interlocks act.

A node silent for 2 s (or three of its sample periods) loses its link: keep-alives stop and HELLO is
asked for again; silent for ``revive_after_s``, it is sent Ctrl-C, Ctrl-B, Ctrl-D, which restarts its
firmware from whatever state it is in (a stray Ctrl-C leaves a node at its REPL). A node the edge itself
sent to its REPL (:meth:`SensorNode.enter_repl`) is *parked* instead: the edge sends it nothing at all until
:meth:`SensorNode.resume` or a HELLO of a new boot, because every byte reaching a REPL is typed at it (a
0x04 inside a keep-alive soft-resets the node back into its firmware, under the feet of whoever wanted it).

Reliability: node frames are sequenced and delivered in order (go-back-N). A frame ahead of the
expected one means frames were lost; it is dropped and counted, and the node resends from the oldest
unacknowledged frame. A frame behind is a duplicate. The node gives a frame up after a few seconds and
says so with ``base``; the edge counts those as ``lost``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import serial  # type: ignore[import-untyped]

from edge.core import ChannelStatus, Core
from edge.devices.node import link
from edge.devices.node.link import Frame, FrameType, Hello, LinkError, NodeStatus
from edge.devices.serial_device import SerialDevice
from edge.spec.node import deadman_margin_problem
from edge.spec.sensor_node import ChannelMap, SensorNodeConfig

log = logging.getLogger(__name__)

# Restart a node that stopped answering: Ctrl-C stops whatever runs (firmware or a half-typed REPL
# line), Ctrl-B leaves a raw REPL, Ctrl-D at the friendly REPL soft-resets, which runs main.py again.
REVIVE_BYTES = b"\r\x03\x03\x02\x04"
NODE_TYPES = frozenset({FrameType.HELLO, FrameType.READINGS, FrameType.STATUS})
#: Protocol-1 frames on one connection before the edge says "reflash": a damaged protocol-2 frame passes
#: the protocol-1 check about once in 65,536, a node running the old firmware sends several a second.
OLD_PROTOCOL_FRAMES = 3


@dataclass
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    open_failures: int = 0
    bytes_rx: int = 0
    bytes_tx: int = 0
    frames: int = 0
    crc_errors: int = 0
    framing_errors: int = 0
    oversize: int = 0
    old_protocol: int = 0         # whole frames of link protocol 1: the node's firmware is older than the edge
    duplicates: int = 0
    gaps: int = 0                 # holes seen in the node's sequence (each later filled or counted lost)
    out_of_order: int = 0         # frames dropped because they came after a hole
    lost: int = 0                 # frames the node gave up before the edge had them
    bad_payloads: int = 0
    unsynced: int = 0             # frames of a node boot whose HELLO the edge has not accepted
    hellos: int = 0
    hello_mismatches: int = 0
    node_resets: int = 0
    accepted: int = 0             # sequenced frames taken in order
    samples: int = 0              # READINGS frames taken
    missed_samples: int = 0       # holes in the node's sample counter (end-to-end check of all the above)
    readings: int = 0             # accepted readings (each mapped channel of each frame)
    injected: int = 0
    keepalives: int = 0
    silences: int = 0             # the node fell silent: session dropped, keep-alives stopped
    revives: int = 0
    internal_errors: int = 0      # unexpected errors on the link (logged; the port is reopened)
    last_error: str = ""
    node_status: NodeStatus | None = None


class Port(Protocol):
    """The slice of ``serial.Serial`` the link uses (lets tests wrap the real port to corrupt bytes)."""

    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def close(self) -> None: ...


def open_serial(port: str, baudrate: int) -> Port:
    """Exclusive: a second program on a node's port (a forgotten mpremote) fails loudly, not by interleaving."""
    opened: Port = serial.Serial(port, baudrate, timeout=0.02, write_timeout=1.0, exclusive=True)
    return opened


class _ClockMap:
    """Node uptime (ms, wraps at 2**32) -> core clock (ns): the offset is the smallest seen over a window,
    i.e. the frame that travelled fastest, so transport delay does not age readings."""

    def __init__(self, window: int = 64) -> None:
        self._offsets: collections.deque[int] = collections.deque(maxlen=window)
        self._last_raw: int | None = None
        self._wraps = 0

    def unwrap(self, t_ms: int) -> int:
        if self._last_raw is not None and t_ms < self._last_raw and self._last_raw - t_ms > 1 << 31:
            self._wraps += 1
        self._last_raw = t_ms
        return (self._wraps << 32) + t_ms

    def observe(self, node_ms: int, core_now_ns: int) -> None:
        self._offsets.append(core_now_ns - node_ms * 1_000_000)

    def to_core(self, node_ms: int, core_now_ns: int) -> int:
        return min(node_ms * 1_000_000 + min(self._offsets), core_now_ns)


class _Session:
    """One boot of the node whose HELLO was accepted."""

    def __init__(self, hello: Hello, expected: int, cfg: SensorNodeConfig) -> None:
        self.hello = hello
        self.expected = expected
        self.hole_at: int | None = None
        self.clock = _ClockMap()
        index = {name: i for i, name in enumerate(hello.channels)}
        self.channel_of: dict[int, tuple[ChannelMap, ...]] = {}
        for cm in cfg.channels:
            self.channel_of.setdefault(index[cm.node], ())
            self.channel_of[index[cm.node]] += (cm,)
        out_index = {name: i for i, name in enumerate(hello.outputs)}
        self.output_bits = tuple((out_index[om.node], om.core) for om in cfg.outputs)
        self.last_t_ns: dict[str, int] = {}
        self.last_sample: int | None = None
        self.newest: int | None = None      # newest node seq received (in order or not): echoed in OUTPUTS


@dataclass(frozen=True)
class AcceptedReading:
    """One reading as it went into the core, with where it came from."""

    channel: str          # core channel
    value: float          # scaled
    status: ChannelStatus
    t_ns: int             # core clock
    node_boot: int
    node_sample: int
    node_t_ms: int


ReadingSink = Callable[[AcceptedReading], None]


class SensorNode(SerialDevice[Port]):
    """The link to one node, on its own thread (:class:`SerialDevice`). ``start()``/``stop()`` or a context manager.

    Each exchange reads what arrived (20 ms at most), answers it and sends what is due (commands, HELLO
    requests, keep-alives, a revive), so the loop has no wait of its own; the port is retried every
    ``reconnect_s`` (the back-off's floor and cap are both ``reconnect_s``).
    """

    def __init__(self, config: SensorNodeConfig, core: Core, *, on_reading: ReadingSink | None = None,
                 opener: Callable[[str, int], Port] = open_serial) -> None:
        super().__init__(f"sensor node {config.name}", config.port, backoff_min_s=config.reconnect_s,
                         backoff_max_s=config.reconnect_s)
        self.config = config
        self.core = core
        self.on_reading = on_reading
        self._opener = opener
        for cm in config.channels:
            spec = next((c for c in core.spec.channels if c.name == cm.core), None)
            if spec is None:
                raise ValueError(f"sensor node {config.name!r}: core has no channel {cm.core!r}")
            if spec.kind != "injected":
                raise ValueError(f"sensor node {config.name!r}: core channel {cm.core!r} is {spec.kind}, "
                                 "not injected")
            if spec.max_age_ms <= 0:
                raise ValueError(f"sensor node {config.name!r}: core channel {cm.core!r} has no max_age_ms, "
                                 "so a quiet node would never make it STALE")
        for om in config.outputs:
            if om.core not in core.output_names:
                raise ValueError(f"sensor node {config.name!r}: core has no output {om.core!r}")
        self._stats = LinkStats()
        self._decoder = link.Decoder()
        self._session: _Session | None = None
        self._pending_boot: int | None = None
        self._last_boot: int | None = None
        self._tx_seq = 0
        self._commands: collections.deque[Frame] = collections.deque()
        self._last_rx = 0.0
        self._last_keepalive = 0.0
        self._last_hello_req = 0.0
        self._last_revive = 0.0
        self._old_at_open = 0             # decoder.old_protocol when the port was opened
        self._old_named = False
        self._parked = False              # the node was sent to its REPL on purpose: send it nothing
        self._resume = False

    # ---- what callers see ----

    def stats(self) -> LinkStats:
        """A snapshot of the counters (decoder counters folded in)."""
        line = self.line_counters()
        with self._lock:
            d = self._decoder
            return replace(self._stats, frames=d.frames, crc_errors=d.crc_errors,
                           framing_errors=d.framing_errors, oversize=d.oversize, old_protocol=d.old_protocol,
                           connects=line.opens,
                           disconnects=line.port_lost, open_failures=line.open_failures,
                           internal_errors=line.internal_errors, last_error=line.last_error)

    @property
    def hello(self) -> Hello | None:
        """The accepted HELLO of the node's current boot, or None while not linked."""
        s = self._session
        return s.hello if s else None

    def enter_repl(self) -> None:
        """Ask the node to drive its outputs safe and stop at the REPL (for flashing); the link is then parked:
        nothing more is sent to the node (no keep-alive, HELLO request or revive) until :meth:`resume`."""
        self._command(FrameType.ENTER_REPL, link.REPL_MAGIC)

    def resume(self) -> None:
        """Restart a parked node's firmware (Ctrl-C, Ctrl-B, Ctrl-D at its REPL) and link to it again."""
        self._resume = True

    @property
    def parked(self) -> bool:
        """True from the ENTER_REPL frame sent until :meth:`resume` or a HELLO of a new boot."""
        return self._parked

    def reset_node(self) -> None:
        """Ask the node for a hard reset (outputs safe first)."""
        self._command(FrameType.RESET, link.RESET_MAGIC)

    def _command(self, ftype: FrameType, payload: bytes) -> None:
        s = self._session
        self._commands.append(Frame(ftype, s.hello.boot if s else 0, 0, 0, payload))

    # ---- the thread ----

    def _open_port(self) -> Port:
        port = self._opener(self.config.port, self.config.baudrate)
        try:
            port.write(b"\x00")              # end whatever half frame the node holds from before
        except BaseException:
            self._close_port(port)
            raise
        with self._lock:
            self._decoder = _fold(self._decoder)
            self._old_at_open = self._decoder.old_protocol
        self._old_named = False
        self._last_rx = time.monotonic()
        self._last_hello_req = 0.0
        self._session = None            # a new connection: trust nothing until the next HELLO
        self._pending_boot = None
        return port

    def _close_port(self, port: Port) -> None:
        with contextlib.suppress(Exception):
            port.close()
        self._session = None

    def _exchange(self, port: Port) -> float:
        self._service(port)
        return 0.0

    def _send(self, port: Port, frame: Frame) -> None:
        wire = link.encode(frame)
        port.write(wire)
        with self._lock:
            self._stats.bytes_tx += len(wire)

    def _service(self, port: Port) -> None:
        data = port.read(max(1, port.in_waiting))
        now = time.monotonic()
        if data:
            with self._lock:
                self._stats.bytes_rx += len(data)
                frames = self._decoder.feed(data)
            for f in frames:
                if f.type in NODE_TYPES:        # a REPL echoes our own frames back: those prove nothing
                    self._last_rx = now
                self._on_frame(f)
            self._check_old_protocol()
        while self._commands and not self._parked:
            frame = self._commands.popleft()
            self._send(port, frame)
            if frame.type == FrameType.ENTER_REPL:
                self._parked = True         # at its REPL every byte is typed: from now on, silence
                self._session = None
        if self._resume:
            self._resume = False
            if self._parked:
                self._parked = False
                self._commands.clear()
                self._last_rx = now         # its silence while parked says nothing: time it anew
                self._revive(port, now)
        if self._parked:
            return
        s = self._session
        if s is not None and now - self._last_rx > max(2.0, 3 * s.hello.period_ms / 1000):
            self._session = s = None            # silent node: stop feeding its dead-man, ask for HELLO
            self._count("silences")
        unknown = s is None or self._pending_boot is not None   # not linked, or frames of a boot we do not know
        if unknown and now - self._last_hello_req >= self.config.hello_retry_s:
            self._last_hello_req = now
            self._send(port, Frame(FrameType.HELLO_REQ, 0, self._next_seq(), 0))
        if s is not None and s.newest is not None and now - self._last_keepalive >= self.config.keepalive_ms / 1000 \
                and self._core_alive():
            self._last_keepalive = now
            self._send(port, Frame(FrameType.OUTPUTS, s.hello.boot, self._next_seq(), (s.expected - 1) & 0xFFFF,
                             link.outputs_payload(self._levels(s), s.newest)))
            with self._lock:
                self._stats.keepalives += 1
        revive = self.config.revive_after_s
        if revive and now - self._last_rx > revive and now - self._last_revive > revive:
            self._revive(port, now)

    def _revive(self, port: Port, now: float) -> None:
        """Restart the node's firmware from whatever state it is in (REVIVE_BYTES), counted."""
        self._last_revive = now
        port.write(REVIVE_BYTES + b"\x00")     # the 0x00 ends the junk, so the next frame is whole
        with self._lock:
            self._stats.revives += 1

    def _check_old_protocol(self) -> None:
        """Name a node that still speaks protocol 1 (its frames never reach _on_frame, so it is never linked)."""
        if self._old_named or self._session is not None:
            return
        if self._decoder.old_protocol - self._old_at_open >= OLD_PROTOCOL_FRAMES:
            self._old_named = True
            problem = (f"sensor node {self.config.name} on {self.config.port} speaks link protocol 1, this edge "
                       f"speaks {link.PROTOCOL}: reflash the node (reedge flash); its frames are ignored")
            self._note(problem)
            log.error("%s", problem)

    def _next_seq(self) -> int:
        self._tx_seq = (self._tx_seq + 1) & 0xFFFF
        return self._tx_seq

    def _core_alive(self) -> bool:
        try:
            return self.core.stats().running
        except Exception:  # a closed core is not alive
            return False

    def _levels(self, s: _Session) -> int:
        outs = self.core.outputs()
        bits = 0
        for i, safe in enumerate(s.hello.safe_levels):
            bits |= safe << i
        for i, core_name in s.output_bits:
            bits = (bits & ~(1 << i)) | (outs[core_name].level << i)
        return bits

    # ---- frames ----

    def _on_frame(self, f: Frame) -> None:
        if f.type == FrameType.HELLO:
            self._on_hello(f)
            return
        if f.type not in link.SEQUENCED:
            self._count("bad_payloads")
            return
        s = self._session
        if s is None or f.boot != s.hello.boot:
            self._count("unsynced")
            if self._pending_boot != f.boot:    # a boot we have not heard HELLO from: ask at once
                self._pending_boot = f.boot
                self._last_hello_req = 0.0
            return
        if s.newest is None or 0 < (f.seq - s.newest) & 0xFFFF < 0x8000:
            s.newest = f.seq                    # the freshest proof we heard the node, whatever its order
        try:
            base = link.payload_base(f.payload)
        except LinkError:
            self._count("bad_payloads")
            return
        ahead = (base - s.expected) & 0xFFFF
        if 0 < ahead < 0x8000:                  # the node gave these up: they will never come
            self._count("lost", ahead)
            s.expected = base
            s.hole_at = None
        d = (f.seq - s.expected) & 0xFFFF
        if d >= 0x8000:
            self._count("duplicates")
            return
        if d > 0:
            self._count("out_of_order")
            if s.hole_at != s.expected:
                s.hole_at = s.expected
                self._count("gaps")
            return
        s.expected = (s.expected + 1) & 0xFFFF
        s.hole_at = None
        self._count("accepted")
        try:
            if f.type == FrameType.READINGS:
                self._on_readings(s, link.parse_readings(f.payload))
            else:
                status = link.parse_status(f.payload)
                with self._lock:
                    self._stats.node_status = status
        except LinkError as e:
            self._count("bad_payloads")
            self._note(f"node {self.config.name}: {e}")

    def _on_hello(self, f: Frame) -> None:
        self._count("hellos")
        try:
            hello = link.parse_hello(f.payload)
        except LinkError as e:
            self._count("bad_payloads")
            self._note(str(e))
            return
        problem = self._check(hello)
        if problem:
            self._count("hello_mismatches")
            self._note(f"sensor node {self.config.name}: {problem}")
            log.error("sensor node %s: %s; its readings are ignored", self.config.name, problem)
            self._session = None
            self._last_hello_req = time.monotonic() + 5.0   # ask again, but not in a tight loop
            return
        s = self._session
        if s is not None and s.hello.boot == hello.boot:
            return                                          # a repeat (we asked twice): nothing changes
        if self._parked and hello.boot == self._last_boot:
            return                                          # sent before it stopped at its REPL: still parked
        if self._last_boot is not None and hello.boot != self._last_boot:
            self._count("node_resets")      # a new boot of a node we knew: reset, power cycle or replug
        self._last_boot = hello.boot
        self._pending_boot = None
        self._parked = False                # a new boot: the node left its REPL (reset by hand, power cycle)
        self._session = _Session(hello, f.seq, self.config)
        log.info("sensor node %s linked: %s fw %s cfg %s boot %04x", self.config.name, hello.node_id,
                 hello.firmware, hello.config_hash, hello.boot)

    def _check(self, h: Hello) -> str:
        c = self.config
        if h.protocol != link.PROTOCOL:
            return f"link protocol {h.protocol}, the edge speaks {link.PROTOCOL}: reflash the node (reedge flash)"
        if h.error:
            return f"node reports a configuration error: {h.error}"
        problem = deadman_margin_problem(h.deadman_ms, h.period_ms, c.keepalive_ms)
        if problem:
            return problem
        if c.expect_node_id is not None and h.node_id != c.expect_node_id:
            return f"node id {h.node_id!r}, expected {c.expect_node_id!r} (wrong node on this port?)"
        if c.expect_firmware is not None and h.firmware != c.expect_firmware:
            return f"firmware {h.firmware}, expected {c.expect_firmware} (flash the node)"
        if c.expect_config_hash is not None and h.config_hash != c.expect_config_hash:
            return f"config hash {h.config_hash}, expected {c.expect_config_hash} (provision the node)"
        missing = [m.node for m in c.channels if m.node not in h.channels]
        if missing:
            return f"node has no channel {missing[0]!r} (it has {', '.join(h.channels) or 'none'})"
        missing = [m.node for m in c.outputs if m.node not in h.outputs]
        if missing:
            return f"node has no output {missing[0]!r} (it has {', '.join(h.outputs) or 'none'})"
        return ""

    def _on_readings(self, s: _Session, r: link.Readings) -> None:
        self._count("samples")
        if s.last_sample is not None and r.sample != (s.last_sample + 1) & 0xFFFFFFFF:
            self._count("missed_samples", (r.sample - s.last_sample - 1) & 0xFFFFFFFF)
        s.last_sample = r.sample
        now = self.core.now_ns()
        node_ms = s.clock.unwrap(r.t_ms)
        s.clock.observe(node_ms, now)
        t_ns = s.clock.to_core(node_ms, now)
        for item in r.items:
            for cm in s.channel_of.get(item.index, ()):
                status = ChannelStatus.OK
                if item.status & link.NODE_FAULT:
                    status |= ChannelStatus.FAULT
                if item.status & link.NODE_RANGE:
                    status |= ChannelStatus.RANGE
                value = item.value * cm.scale + cm.offset
                self._count("readings")
                last = s.last_t_ns.get(cm.core)
                t = t_ns if last is None or t_ns > last else last
                s.last_t_ns[cm.core] = t
                self.core.inject(cm.core, value, status, t)
                self._count("injected")
                if self.on_reading is not None:
                    self.on_reading(AcceptedReading(cm.core, value, status, t, s.hello.boot, r.sample, r.t_ms))

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + n)


def _fold(old: link.Decoder) -> link.Decoder:
    """A fresh decoder for a new connection that keeps the old one's counters."""
    new = link.Decoder()
    new.frames, new.crc_errors, new.framing_errors, new.oversize, new.old_protocol = (
        old.frames, old.crc_errors, old.framing_errors, old.oversize, old.old_protocol)
    return new
