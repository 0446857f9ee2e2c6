# Sensor node firmware: sample the converters, hold the outputs under a dead-man, speak the framed link.
#
# One loop, no threads and no IRQ work, so that a Ctrl-C, an exception or the edge's ENTER_REPL
# frame always ends in the same `finally` that drives every output to its safe level.
# Protocol and LED meanings: ../README.md.

import json
import select
import struct
import sys
import time

import machine
import nodelink as L
from ads1115 import ADS1115
from max31856 import CJ_RANGE, MAX31856, NO_CHIP, NOT_READY, OPEN, OVUV, TC_RANGE

try:                        # for mypy only: MicroPython has no typing module and never evaluates annotations
    from collections.abc import Callable
    from typing import Any, TypeAlias

    from _mpy_shed.time_mp import _TicksMs as Ticks

    Reader: TypeAlias = "Callable[[], tuple[float, int, int]]"    # -> (value, status, detail)
except ImportError:
    pass

VERSION = "2.0.0"
PROTOCOL = 2          # link protocol (nodelink.py); the edge refuses any other, naming it
CONFIG_FILE = "node.json"

# reading status bits (the edge maps them onto the core's channel status)
ST_FAULT = 1
ST_RANGE = 2

WINDOW = 16          # unacknowledged frames kept for retransmission
RTO_MS = 500         # retransmit the whole window when its oldest frame is unacknowledged this long
EXPIRE_MS = 3000     # give a frame up after this long; the edge learns it from `base`
STATUS_MS = 1000
# Bytes taken from the console per loop pass. Without a bound a host writing as fast as the node reads
# (USB flow control lets any writer do that) kept the loop reading forever: no dead-man check, no sample.
# 64 bytes keep a pass far shorter than the shortest sample period (20 ms); the virtual node still reads
# about 50 kB/s so, far more than an edge sends.
RX_BUDGET = 64
# Retransmissions per loop pass: a write can wait (a Pico's USB CDC waits up to 500 ms for a host that holds
# the port open without reading), so a pass's writes are bounded; the rest of the window goes next pass.
RETX_PER_PASS = 4
# First send time of the newest SENT_RING sequence numbers (independent of the retransmit window): an OUTPUTS
# frame echoes the newest node seq the edge received, and that seq's first send is the earliest the edge can
# have made the frame. 64 frames cover >= 1.2 s at the fastest frame rate (period 20 ms plus STATUS).
SENT_RING = 64

# LED: (period ms, on ms) per state
LED_CONFIG_ERROR = (1000, 1000)   # solid: node.json missing or invalid
LED_WAITING = (2000, 1000)        # slow blink: no edge yet since boot
LED_LINKED = (1000, 80)           # heartbeat flash: the edge keeps the dead-man fed
LED_TRIPPED = (200, 100)          # fast blink: dead-man tripped, outputs held safe

# The only payloads the node acts on, by frame type: a length for OUTPUTS, the exact bytes for the rest.
# A checked frame with any other payload (or of another type) is refused whole and counted: it comes
# from an edge speaking another protocol, and guessing at it could drive an output.
OUTPUTS_LEN = 4          # levels u16 | echo u16
EXACT_PAYLOAD = {L.HELLO_REQ: b"", L.ENTER_REPL: b"REPL", L.RESET: b"RESET"}


class Pending:
    """A sequenced frame waiting for the edge's acknowledgement."""

    def __init__(self, seq: int, wire: bytes, now: Ticks) -> None:
        self.seq = seq
        self.wire = wire
        self.first = now
        self.last = now


class EnterRepl(Exception):
    """The edge asked the node to stop and leave the console to the REPL."""


def _pin(p: int | str) -> machine.Pin:
    return machine.Pin(p)


def load_config(path: str = CONFIG_FILE) -> tuple[dict[str, Any], str]:
    """(config, hash); the hash is the first 16 hex digits of SHA-256 over the file's bytes."""
    import binascii
    import hashlib

    with open(path, "rb") as f:
        raw = f.read()
    digest = binascii.hexlify(hashlib.sha256(raw).digest()[:8]).decode()
    try:
        cfg = json.loads(raw)
    except ValueError:
        raise ValueError("node.json is not valid JSON") from None
    if not isinstance(cfg, dict):
        raise ValueError("node.json must hold an object")
    node_id = cfg.get("node_id")
    if not isinstance(node_id, str) or not 0 < len(node_id) <= 32:
        raise ValueError("node_id must be a string of 1..32 characters")
    for key, limit in (("thermocouples", 8), ("analog", 16), ("outputs", 16)):
        items = cfg.get(key, [])
        if not isinstance(items, list) or len(items) > limit:
            raise ValueError(key + " must be a list of at most " + str(limit))
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ValueError("every entry of " + key + " needs a name")
    for o in cfg.get("outputs", []):
        if o.get("safe", 0) not in (0, 1):
            raise ValueError("output " + o["name"] + ": safe must be 0 or 1")
    deadman = cfg.get("deadman_ms", 1000)
    period = cfg.get("period_ms", 200)
    if not isinstance(deadman, int) or not 100 <= deadman <= 60000:
        raise ValueError("deadman_ms must be 100..60000")
    if not isinstance(period, int) or not 20 <= period <= 10000:
        raise ValueError("period_ms must be 20..10000")
    if deadman < 2 * frame_gap_ms(period):
        raise ValueError("deadman_ms " + str(deadman) + " leaves no margin: it must be at least twice the gap "
                         "between the node's frames (2 x " + str(frame_gap_ms(period)) + " ms)")
    return cfg, digest


def frame_gap_ms(period_ms: int) -> int:
    """Longest gap between two sequenced frames of the node: a sample every period_ms, STATUS every STATUS_MS.

    An OUTPUTS frame can only echo a seq this old at best (plus the edge's keep-alive and the link's latency),
    so a dead-man shorter than twice this would trip on an edge that does everything right."""
    return min(period_ms, STATUS_MS)


class Node:
    def __init__(self, stdin: Any, stdout: Any) -> None:
        import random

        self.stdin = stdin
        self.stdout = stdout
        self.boot = random.getrandbits(16) or 1
        self.seq = 0
        self.window: list[Pending] = []
        self.resend: int | None = None      # go-back-N in progress: the next seq to retransmit
        self.sent_seq = [-1] * SENT_RING    # seq -> first send time, by seq % SENT_RING
        self.sent_at: list[Any] = [0] * SENT_RING
        self.decoder = L.Decoder()
        self.t0 = time.ticks_ms()
        self.uptime = 0
        self.last_tick = self.t0
        self.sample_no = 0
        self.rx_frames = 0
        self.rx_refused = 0
        self.rx_dup = 0
        self.rx_gap = 0
        self.rx_last: int | None = None
        self.tx_retransmits = 0
        self.tx_expired = 0
        self.deadman_trips = 0
        self.commanded = 0
        self.last_cmd: Ticks | None = None
        self.tripped = False
        self.error = ""
        self.cfg: dict[str, Any] = {}
        self.cfg_hash = ""
        self.outputs: list[tuple[str, machine.Pin, int]] = []
        self.channels: list[str] = []    # in reading order
        self.readers: list[Reader] = []
        self.led: machine.Pin | None = None
        try:
            self.cfg, self.cfg_hash = load_config()
            self._build()
        except Exception as e:
            self.error = str(e) or type(e).__name__
            self.outputs = []
            self.channels = []
            self.readers = []
        try:
            self.led = machine.Pin(self.cfg.get("led", "LED"), machine.Pin.OUT, value=0)
        except ValueError:
            self.led = None
        self.deadman_ms = self.cfg.get("deadman_ms", 1000)
        self.period_ms = self.cfg.get("period_ms", 200)

    # ---- hardware ----

    def _build(self) -> None:
        cfg = self.cfg
        # outputs first, straight to their safe level
        for o in cfg.get("outputs", []):
            safe = int(o.get("safe", 0))
            self.outputs.append((o["name"], machine.Pin(o["pin"], machine.Pin.OUT, value=safe), safe))
        tcs = cfg.get("thermocouples", [])
        if tcs:
            b = cfg.get("spi", {})
            spi = machine.SPI(b.get("id", 0), baudrate=b.get("baudrate", 1000000), polarity=0, phase=1,
                              sck=_pin(b.get("sck", 18)), mosi=_pin(b.get("mosi", 19)), miso=_pin(b.get("miso", 16)))
            for t in tcs:
                chip = MAX31856(spi, _pin(t["cs"]), t.get("type", "K"), t.get("averaging", 1))
                cache: list[Any] = [float("nan"), float("nan"), NO_CHIP]
                self._add(t["name"], self._tc_reader(chip, cache, True))
                self._add(t["name"] + "_cj", self._tc_reader(chip, cache, False))
        ans = cfg.get("analog", [])
        if ans:
            b = cfg.get("i2c", {})
            i2c = machine.I2C(b.get("id", 0), scl=_pin(b.get("scl", 5)), sda=_pin(b.get("sda", 4)),
                              freq=b.get("freq", 400000))
            adcs: dict[int, ADS1115] = {}
            for a in ans:
                addr = a.get("address", 0x48)
                adc = adcs.get(addr) or ADS1115(i2c, addr)
                adcs[addr] = adc
                self._add(a["name"], self._adc_reader(adc, a.get("input", 0), a.get("full_scale", 4.096)))

    def _add(self, name: str, reader: Reader) -> None:
        self.channels.append(name)
        self.readers.append(reader)

    @staticmethod
    def _tc_reader(chip: MAX31856, cache: list[Any], thermocouple: bool) -> Reader:
        def read() -> tuple[float, int, int]:
            if thermocouple:                 # one SPI burst serves both channels of the chip
                cache[0], cache[1], cache[2] = chip.read()
            fault = cache[2]
            status = 0
            if fault & (OPEN | OVUV | NO_CHIP | NOT_READY):
                status |= ST_FAULT
            if fault & (TC_RANGE if thermocouple else CJ_RANGE):
                status |= ST_RANGE
            return (cache[0] if thermocouple else cache[1], status, fault & 0xFF)
        return read

    @staticmethod
    def _adc_reader(adc: ADS1115, channel: int, full_scale: float) -> Reader:
        def read() -> tuple[float, int, int]:
            try:
                volts = adc.read_volts(channel, full_scale)
            except OSError as e:
                return (float("nan"), ST_FAULT, (e.args[0] if e.args else 0) & 0xFF)
            status = ST_RANGE if abs(volts) >= full_scale * 0.999 else 0
            return (volts, status, 0)
        return read

    def drive(self, levels: int | None) -> None:
        """Outputs to the commanded levels, or every one to its safe level when levels is None."""
        for i, (_name, pin, safe) in enumerate(self.outputs):
            pin.value(safe if levels is None else (levels >> i) & 1)

    def actual_levels(self) -> int:
        bits = 0
        for i, (_name, pin, _safe) in enumerate(self.outputs):
            bits |= (pin.value() & 1) << i
        return bits

    # ---- link ----

    def _write(self, wire: bytes) -> None:
        # Checked before EVERY write: a write can wait for the host (500 ms on a Pico's USB CDC), so a
        # pass of waiting writes cannot postpone a trip by more than one write's wait.
        self.check_deadman(time.ticks_ms())
        self.stdout.write(wire)

    def send_hello(self) -> None:
        base = self.window[0].seq if self.window else self.seq
        info = {"proto": PROTOCOL, "fw": VERSION, "node": self.cfg.get("node_id", ""), "cfg": self.cfg_hash,
                "uid": "".join(f"{b:02x}" for b in machine.unique_id()), "boot": self.boot,
                "channels": self.channels, "outputs": [o[0] for o in self.outputs],
                "safe": [o[2] for o in self.outputs],
                "deadman_ms": self.deadman_ms, "period_ms": self.period_ms, "error": self.error}
        self._write(L.encode(L.HELLO, self.boot, base, self.rx_last or 0, json.dumps(info).encode()))

    def send(self, ftype: int, payload: bytes, now: Ticks) -> None:
        """A sequenced frame: kept in the window until the edge acknowledges it."""
        if len(self.window) >= WINDOW:
            self.window.pop(0)
            self.tx_expired += 1
        base = self.window[0].seq if self.window else self.seq
        wire = L.encode(ftype, self.boot, self.seq, self.rx_last or 0, struct.pack(">H", base) + payload)
        self.window.append(Pending(self.seq, wire, now))
        self.sent_seq[self.seq % SENT_RING] = self.seq
        self.sent_at[self.seq % SENT_RING] = now
        self.seq = (self.seq + 1) & 0xFFFF
        self._write(wire)

    def service_window(self, now: Ticks) -> None:
        while self.window and time.ticks_diff(now, self.window[0].first) > EXPIRE_MS:
            self.window.pop(0)
            self.tx_expired += 1
        if self.resend is None and self.window and time.ticks_diff(now, self.window[0].last) > RTO_MS:
            self.resend = self.window[0].seq      # go-back-N: everything from the oldest unacknowledged ...
        if self.resend is None:
            return
        budget = RETX_PER_PASS                    # ... but a few per pass, the rest next pass
        for entry in self.window:
            if (entry.seq - self.resend) & 0xFFFF >= 0x8000:
                continue                          # resent earlier in this round
            if not budget:
                return
            budget -= 1
            self._write(entry.wire)
            entry.last = now
            self.tx_retransmits += 1
            self.resend = (entry.seq + 1) & 0xFFFF
        self.resend = None

    def sent_time(self, seq: int) -> Ticks | None:
        """When the node first sent sequenced frame `seq`, if it is one of its last SENT_RING; else None."""
        i = seq % SENT_RING
        return self.sent_at[i] if self.sent_seq[i] == seq else None

    def on_frame(self, frame: L.Frame, now: Ticks) -> None:
        ftype, boot, seq, ack, payload = frame
        if not (len(payload) == OUTPUTS_LEN if ftype == L.OUTPUTS else EXACT_PAYLOAD.get(ftype) == payload):
            self.rx_refused += 1
            return
        self.rx_frames += 1
        if self.rx_last is not None:
            d = (seq - self.rx_last) & 0xFFFF
            if d == 0 or d >= 0x8000:
                self.rx_dup += 1
            elif d > 1:
                self.rx_gap += d - 1
        if self.rx_last is None or 0 < ((seq - self.rx_last) & 0xFFFF) < 0x8000:
            self.rx_last = seq
        if boot == self.boot:
            while self.window and ((ack - self.window[0].seq) & 0xFFFF) < 0x8000:
                self.window.pop(0)
        if ftype == L.OUTPUTS and boot == self.boot:
            # Freshness is proven by the edge, not assumed from arrival: the frame was made after the edge
            # received node frame `echo`, so no earlier than that frame's first send. A frame that waited in
            # any buffer (the host's, the pty's, this FIFO) carries an old echo and is refused.
            # (Older than the last obeyed is judged only while obeying: a trip long ago would wrap ticks_diff.)
            t = self.sent_time((payload[2] << 8) | payload[3])
            if t is None or time.ticks_diff(now, t) > self.deadman_ms or (
                    self.last_cmd is not None and not self.tripped and time.ticks_diff(t, self.last_cmd) < 0):
                self.rx_refused += 1        # never sent, forgotten, too old, or older than what we obey
                return
            self.commanded = (payload[0] << 8) | payload[1]
            self.last_cmd = t
            if self.tripped:
                self.tripped = False
            self.drive(self.commanded)
        elif ftype == L.HELLO_REQ:
            self.send_hello()
        elif ftype == L.ENTER_REPL:
            raise EnterRepl()
        elif ftype == L.RESET:
            self.drive(None)
            machine.reset()

    # ---- the loop ----

    def check_deadman(self, now: Ticks) -> None:
        """Outputs safe deadman_ms after the first send of the newest node frame a fresh OUTPUTS echoed;
        checked on every loop pass and before every write."""
        if self.last_cmd is not None and not self.tripped and \
                time.ticks_diff(now, self.last_cmd) > self.deadman_ms:
            self.tripped = True
            self.deadman_trips += 1
            self.drive(None)

    def sample(self, now: Ticks) -> None:
        self.sample_no = (self.sample_no + 1) & 0xFFFFFFFF
        out = bytearray(struct.pack(">IIB", self.sample_no, self.uptime, len(self.readers)))
        for i, read in enumerate(self.readers):
            value, status, detail = read()
            out += struct.pack(">BBBf", i, status, detail, value)
        self.send(L.READINGS, bytes(out), now)

    def status(self, now: Ticks) -> None:
        d = self.decoder
        flags = (1 if self.last_cmd is not None and not self.tripped else 0) | (2 if self.tripped else 0) | (
            4 if self.error else 0)
        counters = (self.rx_frames, d.crc_errors, d.framing_errors, d.oversize, self.rx_dup, self.rx_gap,
                    self.tx_retransmits, self.tx_expired, self.deadman_trips, self.rx_refused)
        payload = struct.pack(">IBHH", self.uptime, flags, self.actual_levels(), self.commanded)
        payload += struct.pack(">10H", *[c & 0xFFFF for c in counters])
        self.send(L.STATUS, payload, now)

    def led_pattern(self) -> tuple[int, int]:
        if self.error:
            return LED_CONFIG_ERROR
        if self.tripped:
            return LED_TRIPPED
        return LED_WAITING if self.last_cmd is None else LED_LINKED

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.stdin, select.POLLIN)
        self.drive(None)
        self._write(b"\x00")       # ends whatever the console printed before (boot text), so HELLO arrives whole
        self.send_hello()
        next_sample = next_status = time.ticks_ms()
        while True:
            now = time.ticks_ms()
            self.uptime = (self.uptime + time.ticks_diff(now, self.last_tick)) & 0xFFFFFFFF
            self.last_tick = now
            budget = RX_BUDGET          # bounded: a host that never stops writing cannot hold the loop
            while budget and poller.poll(0):
                data = self.stdin.read(1)
                if not data:
                    break
                budget -= 1
                for frame in self.decoder.feed(data):
                    self.on_frame(frame, time.ticks_ms())   # the dead-man runs from when a frame came
            self.check_deadman(time.ticks_ms())
            if time.ticks_diff(now, next_sample) >= 0:
                next_sample = time.ticks_add(next_sample, self.period_ms)
                if time.ticks_diff(now, next_sample) > 0:   # fell behind: do not burst
                    next_sample = time.ticks_add(now, self.period_ms)
                self.sample(now)
            if time.ticks_diff(now, next_status) >= 0:
                next_status = time.ticks_add(now, STATUS_MS)
                self.status(now)
            self.service_window(now)
            if self.led is not None:
                period, on = self.led_pattern()
                self.led.value(1 if time.ticks_diff(now, self.t0) % period < on else 0)
            poller.poll(2)


def main() -> None:
    """Entry point from main.py. Outputs are safe whenever this returns or raises."""
    node = Node(sys.stdin.buffer, sys.stdout.buffer)
    try:
        node.run()
    except EnterRepl:
        pass
    finally:
        node.drive(None)
        if node.led is not None:
            node.led.value(0)
