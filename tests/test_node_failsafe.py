"""The sensor node fails safe against a hostile console and a lost converter: the real firmware, compiled as
flashed, in real MicroPython (the virtual node), timed on the node's own clock (its pin log), never by racing it.

* A host that babbles (garbage, frames of another boot, frames of the wrong type) at any rate cannot hold off
  the dead-man: outputs are safe within deadman_ms + one sample period of the last valid OUTPUTS frame, and the
  node keeps sampling and reporting. The virtual node's console has a Pico's bounded receive FIFO, so a host
  writing faster than the firmware reads is throttled by back-pressure, as USB flow control does.
* A MAX31856 unplugged after boot, or a stuck MISO line, reads FAULT, never a plausible 0.0 degC.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import serial  # type: ignore[import-untyped]

from edge.devices.node import link
from edge.devices.node.link import Frame, FrameType
from hil.virtual_node import PinChange, VirtualNode
from tests.support_node import H2_VALVE_PIN, NODE_JSON, PERIPHERALS, TC_CS, VENT_PIN, stage_firmware

TIMEOUT = 60.0           # safety net only: every wait below ends on a condition
DEADMAN_MS = NODE_JSON["deadman_ms"]
PERIOD_MS = NODE_JSON["period_ms"]
H2, VENT = f"GP{H2_VALVE_PIN}", f"GP{VENT_PIN}"     # safe levels 0 and 1
CTRL_C = 0x03            # a technician's stop (it ends the firmware, outputs safe): not part of the babble


class Listener(threading.Thread):
    """Reads and decodes everything the node sends, so its output never backs up."""

    def __init__(self, port: serial.Serial) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.frames: list[Frame] = []
        self.stop = threading.Event()

    def run(self) -> None:
        dec = link.Decoder()
        while not self.stop.is_set():
            self.frames.extend(dec.feed(self.port.read(max(1, self.port.in_waiting))))

    def of(self, ftype: FrameType, boot: int | None = None) -> list[Frame]:
        return [f for f in list(self.frames) if f.type == ftype and (boot is None or f.boot == boot)]

    def newest(self, boot: int) -> int:
        """The newest node seq received, as the edge echoes it in OUTPUTS (a test never sees the seq wrap)."""
        wait_for(lambda: self.of(FrameType.READINGS, boot), "a first READINGS frame")
        return max(f.seq for f in list(self.frames) if f.boot == boot and f.type in link.SEQUENCED)


class Babbler(threading.Thread):
    """Writes ``source()`` chunks at ``rate`` bytes/s (None: flat out, as fast as the port takes them)."""

    def __init__(self, port: serial.Serial, source: Callable[[], bytes], rate: float | None) -> None:
        super().__init__(daemon=True)
        self.port, self.source, self.rate = port, source, rate
        self.written = 0
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            chunk = self.source()
            try:
                self.written += self.port.write(chunk) or 0
            except serial.SerialTimeoutException:
                continue                      # the node's FIFO is full: back-pressure, try again
            if self.rate is not None:         # pacing the load only; nothing is asserted on host time
                ahead = start + self.written / self.rate - time.monotonic()
                if ahead > 0:
                    self.stop.wait(ahead)


def garbage(rng: random.Random) -> Callable[[], bytes]:
    return lambda: bytes(b for b in rng.randbytes(256) if b != CTRL_C)


def frames_of(make: Callable[[int], Frame]) -> Callable[[], bytes]:
    seq = iter(range(1000, 10**9))
    return lambda: b"".join(link.encode(make(next(seq) & 0xFFFF)) for _ in range(4))


@pytest.fixture
def node(tmp_path: pathlib.Path) -> Iterator[VirtualNode]:
    stage_firmware(tmp_path, compiled=True)            # as flashed: compiled modules
    with VirtualNode(tmp_path, peripherals=PERIPHERALS) as n:
        yield n


def wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def hello_boot(s: serial.Serial, listener: Listener) -> int:
    s.write(link.encode(Frame(FrameType.HELLO_REQ, 0, 1, 0)))
    wait_for(lambda: listener.of(FrameType.HELLO), "HELLO")
    return link.parse_hello(listener.of(FrameType.HELLO)[-1].payload).boot


def tripped(log: list[PinChange], boot: int) -> bool:
    try:
        trip_after_last_command(log, boot)
    except (AssertionError, ValueError):
        return False
    return True


def trip_after_last_command(log: list[PinChange], boot: int) -> tuple[int, int]:
    """(node ms of the last OUTPUTS frame, node ms the dead-man drove h2 safe) from the pin log.

    The commands alternate 0b01 / 0b11 and end with 0b01, so every one moves the vent and the last one
    drives it to 0; the dead-man then drives h2 (held at 1 by every command) to its safe 0.
    """
    ev = [e for e in log if e.boot == boot and e.pin in (H2, VENT)]
    last = max(i for i, e in enumerate(ev) if e.pin == VENT and e.level == 0)
    trips = [e for e in ev[last + 1:] if e.pin == H2 and e.level == 0]
    assert trips, f"h2 never went safe after the last command: {ev[last:]}"
    return ev[last].t_ms, trips[0].t_ms


# Rates in bytes/s. The firmware reads at most RX_BUDGET (64) bytes per loop pass; flat out it read about
# 52 kB/s here (the firmware before the budget: 38 kB/s, and no sample, no dead-man check meanwhile), so
# these are about 0.3x, 1.5x and 10x of its read rate, then as fast as the port takes bytes (back-pressure
# sets the pace).
RATES = {"0.3x": 15_000.0, "1.5x": 75_000.0, "10x": 500_000.0, "flat-out": None}


@pytest.mark.parametrize(("kind", "rate"), [*(("garbage", r) for r in RATES), ("foreign-boot", "flat-out"),
                                            ("wrong-type", "flat-out")])
def test_a_babbling_host_cannot_hold_off_the_dead_man(node: VirtualNode, kind: str, rate: str) -> None:
    with serial.Serial(node.port, 115200, timeout=0.05, write_timeout=0.5) as s:
        listener = Listener(s)
        listener.start()
        try:
            boot = hello_boot(s, listener)
            source = {
                "garbage": garbage(random.Random(14)),
                # valid frames that command h2 open, but of another boot: must not feed the dead-man
                "foreign-boot": frames_of(lambda q: Frame(FrameType.OUTPUTS, boot ^ 0x5A5A, q, 0,
                                                          link.outputs_payload(0b01, listener.newest(boot)))),
                # valid frames of this boot, of every type but OUTPUTS that the node ignores
                "wrong-type": frames_of(lambda q: Frame((FrameType.READINGS, FrameType.STATUS, FrameType.HELLO,
                                                         0x7E)[q % 4], boot, q, 0,
                                                         link.outputs_payload(0b01, listener.newest(boot)))),
            }[kind]
            levels = [0b01, 0b11] * 3 + [0b01]
            for seq, bits in enumerate(levels, start=2):
                s.write(link.encode(Frame(FrameType.OUTPUTS, boot, seq, 0,
                                          link.outputs_payload(bits, listener.newest(boot)))))
                time.sleep(0.05)
            babbler = Babbler(s, source, RATES[rate])
            babbler.start()
            try:
                # the dead-man trips, and the node goes on sampling and reporting while babbled at
                wait_for(lambda: tripped(node.pin_log(), 1)
                         and any(link.parse_status(f.payload).tripped for f in listener.of(FrameType.STATUS, boot)),
                         "the dead-man to trip and STATUS to report it")
                seen = {link.parse_readings(f.payload).sample for f in listener.of(FrameType.READINGS, boot)}
                written = babbler.written
                wait_for(lambda: len({link.parse_readings(f.payload).sample
                                      for f in listener.of(FrameType.READINGS, boot)} - seen) >= 10
                         and babbler.written > written, "ten more samples while babbled at")
            finally:
                babbler.stop.set()
                babbler.join(timeout=TIMEOUT)
        finally:
            listener.stop.set()
            listener.join(timeout=TIMEOUT)
    t_last, t_trip = trip_after_last_command(node.pin_log(), 1)
    held = t_trip - t_last
    # time after the dead-man's deadline in which this busy machine gave the interpreter no CPU at all
    # (a Pico never loses it) is the machine's delay, not the firmware's
    due = t_last + DEADMAN_MS
    lost = sum(max(0, min(st.t_ms, t_trip) - max(st.t_ms - st.lost_ms, due)) for st in node.stalls() if st.boot == 1)
    print(f"{kind} at {rate}: safe {held} ms after the last command (dead-man {DEADMAN_MS} ms, "
          f"period {PERIOD_MS} ms; {lost} ms without CPU), {babbler.written} bytes babbled")
    # The dead-man runs from the first send of the node frame the last command echoed, which the host had
    # received up to one sample period (plus its own read latency) before it wrote the command: the trip comes
    # up to that much sooner after the command's arrival, never later than deadman_ms + one period.
    assert DEADMAN_MS - 3 * PERIOD_MS <= held - lost <= DEADMAN_MS + PERIOD_MS
    assert node.outputs()[H2] == 0 and node.outputs()[VENT] == 1
    statuses = [link.parse_status(f.payload) for f in listener.of(FrameType.STATUS, boot)]
    assert max(st.deadman_trips for st in statuses) == 1      # once: nothing of the babble fed it again


def test_a_host_writing_to_a_node_that_does_not_read_is_held_back(tmp_path: pathlib.Path) -> None:
    """The virtual node's receive FIFO is bounded: with firmware that never reads, a host's writes stop being
    taken after a few kB (the FIFO and the pty's own buffer), as USB flow control stops them on a Pico."""
    (tmp_path / "main.py").write_text("import time\nwhile True:\n    time.sleep_ms(5)\n")
    with VirtualNode(tmp_path) as n, serial.Serial(n.port, 115200, timeout=0.05) as s:
        fd = s.fileno()
        os.set_blocking(fd, False)
        taken = 0
        deadline = time.monotonic() + TIMEOUT
        stalled_since: float | None = None
        while taken < 4_000_000 and time.monotonic() < deadline:
            try:
                taken += os.write(fd, bytes(range(4, 254)) * 40)     # no Ctrl-C, no Ctrl-D
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 2.0:           # refused for 2 s: held back
                    break
                time.sleep(0.01)
    print(f"a node that does not read took {taken} bytes")
    assert taken < 200_000


def readings(listener: Listener, boot: int) -> list[link.Readings]:
    """Every sample the node sent, once each (the node resends unacknowledged ones), in sample order."""
    by_sample = {r.sample: r for r in (link.parse_readings(f.payload) for f in listener.of(FrameType.READINGS, boot))}
    return [by_sample[k] for k in sorted(by_sample)]


TC, TC_CJ = 0, 1           # reading indices of retort_tc and retort_tc_cj (HELLO's channel order)
TC_C = PERIPHERALS["max31856"][f"GP{TC_CS}"]["tc_c"]


@pytest.mark.parametrize("fault", ["unplugged", "miso-low", "miso-high"])
def test_a_thermocouple_converter_lost_after_boot_reads_fault(node: VirtualNode, fault: str) -> None:
    """Never a plausible 0.0 degC with status OK: a reading is the chip's real value or FAULT (NaN), and the
    channel comes back by itself when the chip does."""
    with serial.Serial(node.port, 115200, timeout=0.05) as s:
        listener = Listener(s)
        listener.start()
        try:
            boot = hello_boot(s, listener)

            def ok_after(sample: int) -> bool:
                return any(r.sample > sample and r.items[TC].status == 0 and r.items[TC].value == TC_C
                           for r in readings(listener, boot))

            wait_for(lambda: ok_after(0), "a good reading before the fault")
            before = readings(listener, boot)[-1].sample
            {"unplugged": lambda: node.set_max31856(TC_CS, present=False),
             "miso-low": lambda: node.set_spi_miso(0),
             "miso-high": lambda: node.set_spi_miso(1)}[fault]()

            def faults_after(sample: int) -> list[int]:
                return [r.sample for r in readings(listener, boot)
                        if r.sample > sample and r.items[TC].status & link.NODE_FAULT]

            wait_for(lambda: len(faults_after(before)) >= 10, "ten FAULT readings")
            first_fault = faults_after(before)[0]
            cleared = readings(listener, boot)[-1].sample
            if fault == "unplugged":
                node.set_max31856(TC_CS, present=True)      # plugged back, unconfigured: the node sets it up
            else:
                node.set_spi_miso(None)
            wait_for(lambda: ok_after(cleared), "a good reading after the fault cleared")
        finally:
            listener.stop.set()
            listener.join(timeout=TIMEOUT)
    seen = readings(listener, boot)
    for r in seen:
        tc, cj = r.items[TC], r.items[TC_CJ]
        if tc.status & link.NODE_FAULT:
            assert math.isnan(tc.value) and math.isnan(cj.value) and cj.status & link.NODE_FAULT, r
        else:
            assert (tc.value, cj.value) == (TC_C, PERIPHERALS["max31856"][f"GP{TC_CS}"]["cj_c"]), r
    # from the node's first FAULT until the fault was cleared, every reading is FAULT
    assert all(r.items[TC].status & link.NODE_FAULT for r in seen if first_fault <= r.sample <= cleared)
    assert seen[-1].items[TC].status == 0


def next_status(listener: Listener) -> link.NodeStatus:
    """The first STATUS the node sends from now on (its counters then include everything it read before)."""
    start = len(listener.frames)
    wait_for(lambda: any(f.type == FrameType.STATUS for f in listener.frames[start:]), "a STATUS")
    return link.parse_status(next(f for f in listener.frames[start:] if f.type == FrameType.STATUS).payload)


TX_WAIT_MS = 500         # a Pico's USB CDC write waits this long for a host that holds the port without reading
FILL_S = 12.0            # how long the host commands without reading (the review measured 10-111 s held)


def test_a_host_that_commands_without_reading_cannot_hold_the_outputs(node: VirtualNode) -> None:
    """The review's scenario: a host keeps the port open, writes OUTPUTS every 50 ms and never reads. The node's
    writes wait 500 ms each (as a Pico's do) while old OUTPUTS pile up in its FIFO and the pty; decoded much later
    they used to re-drive the outputs (h2 held 10-111 s). Every command echoes the last node frame the host read
    before it stopped reading, so the node obeys them only until that frame is deadman_ms old."""
    with serial.Serial(node.port, 115200, timeout=0.05, write_timeout=0.5) as s:
        listener = Listener(s)
        listener.start()
        boot = hello_boot(s, listener)
        echo = listener.newest(boot)
        listener.stop.set()                  # from here on nothing is read; the port stays open
        listener.join(timeout=TIMEOUT)
        seq, start = 2, time.monotonic()
        while time.monotonic() - start < FILL_S:    # pacing the load only; nothing is asserted on host time
            with contextlib.suppress(serial.SerialTimeoutException):    # the FIFO and the pty are full
                s.write(link.encode(Frame(FrameType.OUTPUTS, boot, seq, echo,
                                          link.outputs_payload(0b01 if seq % 2 else 0b11, echo))))
            seq += 1
            time.sleep(0.05)
        s.write(link.encode(Frame(FrameType.OUTPUTS, boot, seq, echo, link.outputs_payload(0b01, echo))))
        wait_for(lambda: tripped(node.pin_log(), 1), "the dead-man to trip")
        waited = node.tx_timeouts()
        # read again: the node drains everything still buffered; a HELLO_REQ behind it marks the end
        listener = Listener(s)
        listener.start()
        try:
            hellos = len(listener.of(FrameType.HELLO))
            s.write(link.encode(Frame(FrameType.HELLO_REQ, 0, seq + 1, 0)))
            wait_for(lambda: len(listener.of(FrameType.HELLO)) > hellos, "HELLO after the buffered commands")
            status = next_status(listener)
        finally:
            listener.stop.set()
            listener.join(timeout=TIMEOUT)
    log = [e for e in node.pin_log() if e.boot == 1 and e.pin in (H2, VENT)]
    first = next(e.t_ms for e in log if e.pin == H2 and e.level == 1)
    t_last, t_trip = trip_after_last_command(log, 1)
    lost = sum(st.lost_ms for st in node.stalls() if st.boot == 1 and first < st.t_ms <= t_trip)
    print(f"{seq - 1} commands in {FILL_S:.0f} s without reading: obeyed for {t_last - first} ms, h2 safe "
          f"{t_trip - first} ms after the first (dead-man {DEADMAN_MS} ms, period {PERIOD_MS} ms, {lost} ms without "
          f"CPU); {waited} node writes waited {TX_WAIT_MS} ms and were dropped; {status.rx_refused} commands refused")
    assert waited > 0, "the scenario never made a node write wait: it tests nothing"
    # echo was first sent before the first command was obeyed: nothing is obeyed deadman_ms after it ...
    assert t_last - first <= DEADMAN_MS
    # ... and the trip comes at most one pass (a sample period, or one write's wait) after the deadline
    assert t_trip - first - lost <= DEADMAN_MS + max(PERIOD_MS, TX_WAIT_MS) + PERIOD_MS
    # every command decoded after the trip, however long it waited in a buffer, was refused: h2 stays safe
    assert [e for e in log if e.t_ms > t_trip and e.pin == H2] == []
    assert node.outputs()[H2] == 0 and node.outputs()[VENT] == 1
    assert status.deadman_trips == 1 and status.tripped and status.rx_refused > 0


def test_a_replayed_or_invented_echo_never_drives_an_output(node: VirtualNode) -> None:
    """Commands whose echo is too old (a frame replayed from a buffer after the trip) or names a node frame never
    sent are refused and counted; only a fresh echo drives the outputs again."""
    with serial.Serial(node.port, 115200, timeout=0.05) as s:
        listener = Listener(s)
        listener.start()
        try:
            boot = hello_boot(s, listener)
            echo = listener.newest(boot)
            replay = link.encode(Frame(FrameType.OUTPUTS, boot, 2, echo, link.outputs_payload(0b01, echo)))
            s.write(replay)
            wait_for(lambda: tripped(node.pin_log(), 1), "h2 commanded open, then the dead-man to trip")
            trips = len([e for e in node.pin_log() if e.pin == H2])
            never_sent = (listener.newest(boot) + 1000) & 0xFFFF
            hellos = len(listener.of(FrameType.HELLO))
            invented = Frame(FrameType.OUTPUTS, boot, 3, echo, link.outputs_payload(0b01, never_sent))
            s.write(replay + link.encode(invented) + link.encode(Frame(FrameType.HELLO_REQ, 0, 4, 0)))
            wait_for(lambda: len(listener.of(FrameType.HELLO)) > hellos, "HELLO after the two commands")
            status = next_status(listener)
            assert len([e for e in node.pin_log() if e.pin == H2]) == trips, "a refused command moved h2"
            assert status.rx_refused == 2 and status.tripped and status.deadman_trips == 1
            # the same command with a fresh echo is obeyed: it was the echo that was refused
            fresh = listener.newest(boot)
            s.write(link.encode(Frame(FrameType.OUTPUTS, boot, 5, fresh, link.outputs_payload(0b01, fresh))))
            wait_for(lambda: node.outputs().get(H2) == 1, "h2 commanded open by a fresh echo")
        finally:
            listener.stop.set()
            listener.join(timeout=TIMEOUT)
