"""The serial-device base (edge.devices.serial_device) on a real pty: what every device on it is promised.

A small line protocol stands in for the real ones (ask ``?``, the peer answers two bytes): the base must keep
its thread through a protocol surprise, reopen a port that went away, cap its back-off, and stop promptly
while a read is blocked on the line or while it backs off. The peer is the pty master, served by the test
thread; every wait is on a condition with a generous safety net. The stop() latencies measured are printed
(``pytest -s``) and bounded far below the read timeout and back-off they cut short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterator

import pytest
import serial  # type: ignore[import-untyped]

from edge.devices.serial_device import SerialDevice
from hil.devices.pty_line import open_pty

SAFETY_S = 30.0          # safety net for conditions: never a timing expectation
LONG_S = 60.0            # a read timeout / back-off that stop() must cut short
PROMPT_S = 2.0           # stop() must return well within this (it waits LONG_S otherwise)


class AskDevice(SerialDevice[serial.Serial]):
    """Ask ``?``; the peer answers ``ok`` (counted good), ``XX`` (a reply this protocol never expects: it raises
    KeyError, an error that is no OSError) or nothing (the read waits its timeout)."""

    def __init__(self, path: pathlib.Path, *, backoff_min_s: float = 0.01, backoff_max_s: float = 0.04,
                 read_timeout_s: float = 0.05) -> None:
        super().__init__("ask device", str(path), backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s)
        self.path = path
        self.read_timeout_s = read_timeout_s
        self.good = 0
        self.waits: list[float] = []     # every back-off the loop asked for, in order

    def _open_port(self) -> serial.Serial:
        return serial.Serial(str(self.path), 115200, timeout=self.read_timeout_s, write_timeout=1.0, exclusive=True)

    def _exchange(self, port: serial.Serial) -> float:
        port.write(b"?")
        answer = port.read(2)
        if answer == b"XX":
            raise KeyError("a reply the protocol never expected")
        if answer == b"ok":
            with self._lock:
                self.good += 1
        return 0.0

    def _sleep(self, seconds: float) -> None:
        if seconds != 0.0:
            self.waits.append(seconds)
        super()._sleep(seconds)

    def good_count(self) -> int:
        with self._lock:
            return self.good


class Peer:
    """The device end of the line (a pty master): answers each ``?`` with ``reply``, or stays silent."""

    def __init__(self, link: pathlib.Path) -> None:
        self.link = link
        self.reply = b"ok"
        self.asked = 0
        self.master: int | None = None
        self.plug()

    def plug(self) -> None:
        """A new pty, and the configured name (a symlink, as udev makes one) pointed at it atomically."""
        master, slave = open_pty()
        fresh = self.link.with_name(self.link.name + ".new")
        fresh.symlink_to(slave)
        os.replace(fresh, self.link)
        self.master = master

    def unplug(self) -> None:
        """The device gone: its pty closed and the link removed, as udev does. A link left behind names a pts
        number the next pty opened anywhere gets (the lowest free one): another test's, whose device this
        one's then opens and locks (seen in CI: a HIL rig's gauge locked out for 31 s, its interlock tripped)."""
        if self.master is not None:
            os.close(self.master)
            self.master = None
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()

    def serve(self) -> None:
        if self.master is None:
            return
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        for _ in range(data.count(b"?")):
            self.asked += 1
            if self.reply:
                os.write(self.master, self.reply)

    def until(self, cond: Callable[[], bool], wall_s: float = SAFETY_S) -> bool:
        """Serve the line until cond holds; the wall limit is only a safety net."""
        deadline = time.monotonic() + wall_s
        while time.monotonic() < deadline:
            if cond():
                return True
            self.serve()
            time.sleep(0.001)
        return cond()


@pytest.fixture
def peer(tmp_path: pathlib.Path) -> Iterator[Peer]:
    p = Peer(tmp_path / "ttyASK")
    yield p
    p.unplug()


def timed_stop(device: SerialDevice[serial.Serial], what: str) -> float:
    started = time.monotonic()
    device.stop(timeout_s=LONG_S)
    took = time.monotonic() - started
    print(f"\nstop() {what}: {took * 1000:.1f} ms")
    return took


def test_an_error_that_is_no_oserror_keeps_the_thread_counted_logged_once_per_streak(
        peer: Peer, caplog: pytest.LogCaptureFixture) -> None:
    device = AskDevice(peer.link)
    caplog.set_level(logging.DEBUG, logger="edge.devices.serial_device")
    with device:
        assert peer.until(lambda: device.good_count() >= 3)
        peer.reply = b"XX"
        assert peer.until(lambda: device.line_counters().internal_errors >= 3)   # a streak of three
        assert device.alive
        peer.reply = b"ok"
        good = device.good_count()
        assert peer.until(lambda: device.good_count() >= good + 3)               # served again: streak over
        peer.reply = b"XX"
        errors = device.line_counters().internal_errors
        assert peer.until(lambda: device.line_counters().internal_errors >= errors + 1)
        peer.reply = b"ok"
        good = device.good_count()
        assert peer.until(lambda: device.good_count() >= good + 1)
        line = device.line_counters()
        assert device.alive and line.connected
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and "unexpected error" in r.getMessage()]
    assert len(logged) == 2, [r.getMessage() for r in logged]            # one per streak, with its traceback
    assert all(r.exc_info is not None and r.exc_info[0] is KeyError for r in logged)
    assert line.internal_errors >= 4 and line.port_lost == 0
    assert line.reconnects == line.internal_errors                        # each surprise: a fresh port
    assert "KeyError" in line.last_error and "never expected" in line.last_error


def test_the_port_is_reopened_after_it_is_lost(peer: Peer) -> None:
    device = AskDevice(peer.link)
    with device:
        assert peer.until(lambda: device.good_count() >= 3)
        peer.unplug()                                                      # pull the cable
        assert peer.until(lambda: device.line_counters().port_lost == 1)
        assert peer.until(lambda: device.line_counters().open_failures >= 1)    # nothing there yet: back-off
        assert not device.line_counters().connected
        peer.plug()
        good = device.good_count()
        assert peer.until(lambda: device.good_count() >= good + 3)
        line = device.line_counters()
    assert (line.opens, line.reconnects, line.port_lost, line.internal_errors) == (2, 1, 1, 0)
    assert line.connected and "cannot open" in line.last_error      # the last failure: the reopen that waited


def test_the_back_off_doubles_up_to_its_cap_and_returns_to_its_floor(peer: Peer) -> None:
    peer.unplug()                                                          # no port at all
    device = AskDevice(peer.link, backoff_min_s=0.01, backoff_max_s=0.04)
    with device:
        assert peer.until(lambda: device.line_counters().open_failures >= 8)
        assert device.waits[:6] == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
        assert max(device.waits) == 0.04 and device.line_counters().backoff_s == 0.04
        peer.plug()
        assert peer.until(lambda: device.good_count() >= 2)
        line = device.line_counters()
    assert line.backoff_s == 0.01 and line.opens == 1 and line.reconnects == 0
    assert "cannot open" in line.last_error


def test_stop_is_prompt_while_a_read_is_blocked_on_the_line(peer: Peer) -> None:
    peer.reply = b""                                                       # the device never answers
    device = AskDevice(peer.link, read_timeout_s=LONG_S)
    device.start()
    try:
        assert peer.until(lambda: peer.asked >= 1)                         # asked: now reading for LONG_S
    finally:
        took = timed_stop(device, "during a blocked read")
    assert took < PROMPT_S and not device.alive
    line = device.line_counters()
    assert line.port_lost == line.internal_errors == 0 and not line.connected


def test_stop_is_prompt_during_a_back_off(peer: Peer) -> None:
    peer.unplug()
    device = AskDevice(peer.link, backoff_min_s=LONG_S, backoff_max_s=LONG_S)
    device.start()
    try:
        assert peer.until(lambda: device.line_counters().open_failures >= 1)   # now backing off for LONG_S
    finally:
        took = timed_stop(device, "during a back-off")
    assert took < PROMPT_S and not device.alive


def test_a_stopped_device_can_start_again(peer: Peer) -> None:
    device = AskDevice(peer.link)
    with device:
        assert peer.until(lambda: device.good_count() >= 1)
        with pytest.raises(RuntimeError, match="already started"):
            device.start()
    with device:
        good = device.good_count()
        assert peer.until(lambda: device.good_count() >= good + 1)
    assert not device.alive and device.line_counters().opens == 2


def test_a_thread_stops_even_when_the_protocol_never_returns_to_the_loop(peer: Peer) -> None:
    """A protocol that ignores ``stopping`` in its own loop is still unblocked: its read is cancelled."""

    class Stubborn(AskDevice):
        def _exchange(self, port: serial.Serial) -> float:
            port.write(b"?")
            while not self.stopping:
                port.read(2)
            return 0.0

    peer.reply = b""
    device = Stubborn(peer.link, read_timeout_s=LONG_S)
    device.start()
    try:
        assert peer.until(lambda: peer.asked >= 1)
    finally:
        took = timed_stop(device, "with a protocol looping on its own")
    assert took < PROMPT_S and not device.alive
