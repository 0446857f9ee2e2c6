"""``[instruments.NAME]`` with ``type = "pfeiffer"``: one Pfeiffer Vacuum gauge on RS-485.

The protocol and the poller are ``edge.devices.pfeiffer``; this is what the station file says about a gauge
and how it is checked. Whether its channel exists and is injected is judged by the station reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.spec.instruments.registry import register
from edge.spec.reader import Table, choice, exact, integer_in, matching, number_in, one_of_ints

__all__ = ["PARITY_LETTERS", "STANDARD_BAUDS", "PfeifferConfig", "read_pfeiffer"]

STANDARD_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITY_LETTERS = ("N", "E", "O")  # none, even, odd
CHANNEL_NAME = matching(re.compile(r"[a-z][a-z0-9_]{0,30}"), "expected a channel name (lowercase letter, then "
                                                            "lowercase letters, digits or _, at most 31)")
SERIAL_DEVICE = matching(re.compile(r"\S.*", re.S), "expected a serial device path")


@dataclass(frozen=True)
class PfeifferConfig:
    """One gauge on one serial port. Times in ms, as in the station file."""

    port: str                       # a stable name: /dev/serial/by-id/... or a udev symlink
    address: int = 1                # 1..255
    channel: str = "chamber_vacuum"  # the injected channel the pressure goes to (mbar)
    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"               # N, E or O
    stopbits: int = 1
    poll_ms: float = 200.0          # start to start of one poll cycle
    timeout_ms: float = 150.0       # per query: the whole answer must be in by then
    error_check_every: int = 1      # ask parameter 303 every n cycles; 0 = never (gauge without it)
    reconnect_max_ms: float = 5000.0  # reopen back-off doubles from 100 ms up to this

    def answer_time_ms(self) -> float:
        """Line time of one query plus its pressure answer (16 + 20 characters)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return 36 * bits * 1000.0 / self.baud


def read_pfeiffer(t: Table) -> PfeifferConfig | None:
    """``[instruments.NAME]`` with ``type = "pfeiffer"`` -> config; every problem is reported to ``t``."""
    defaults = PfeifferConfig(port="")
    t.need("type", exact("pfeiffer", "the instrument type"), "\"pfeiffer\"")
    port = t.need("port", SERIAL_DEVICE, "the serial device, e.g. \"/dev/ttyUSB0\"")
    cfg = PfeifferConfig(
        port=port or "",
        address=t.get("address", integer_in(1, 255), defaults.address),
        channel=t.get("channel", CHANNEL_NAME, defaults.channel),
        baud=t.get("baud", one_of_ints(STANDARD_BAUDS), defaults.baud),
        bytesize=t.get("bytesize", one_of_ints((7, 8)), defaults.bytesize),
        parity=t.get("parity", choice(PARITY_LETTERS), defaults.parity),
        stopbits=t.get("stopbits", one_of_ints((1, 2)), defaults.stopbits),
        poll_ms=t.get("poll_ms", number_in(20.0, 60_000.0), defaults.poll_ms),
        timeout_ms=t.get("timeout_ms", number_in(10.0, 10_000.0), defaults.timeout_ms),
        error_check_every=t.get("error_check_every", integer_in(0, 1000), defaults.error_check_every),
        reconnect_max_ms=t.get("reconnect_max_ms", number_in(100.0, 600_000.0), defaults.reconnect_max_ms),
    )
    t.finish()
    if not t.ok:
        return None
    if cfg.timeout_ms > cfg.poll_ms:
        t.report("timeout_ms", f"{cfg.timeout_ms:g} ms is longer than poll_ms ({cfg.poll_ms:g} ms): "
                               "a silent gauge would stretch every cycle")
    elif cfg.timeout_ms < 2 * cfg.answer_time_ms():
        t.report("timeout_ms", f"{cfg.timeout_ms:g} ms is too short: at {cfg.baud} Bd a query and its answer "
                               f"take {cfg.answer_time_ms():.0f} ms on the line (give at least twice that)")
    return cfg if t.ok else None


register("pfeiffer", read_pfeiffer)
