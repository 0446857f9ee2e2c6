"""A Pfeiffer Vacuum gauge (Pirani / cold cathode, RS-485) on the master side of a pty.

The plant process owns the gauge as it owns the thermocouples: every plant step it calls
``serve(pressure_mbar)`` with the chamber pressure of its model, and the emulator answers
whatever complete queries arrived since the last step, the way the gauge on the reactor would.
The edge side (``edge.devices.pfeiffer.GaugePoller``) opens the slave path with pyserial and
cannot tell the difference; the telegrams come from the same codec, so the emulator is only
as right as the codec, and the codec is checked against the manufacturer's examples.

Behaviour copied from the real transmitters:
- a telegram with a bad checksum or a broken structure is not answered (the master times out);
- only its own address is answered; the global (000) and group (9xx) addresses never are;
- parameter 740 answers the pressure (u_expo_new, mbar), clamped to the measuring span (a
  Pirani reads its top end at and above atmosphere), parameter 303 the error code
  (``000000``, or ``Err001`` = transmitter defective); any other parameter ``NO_DEF``;
  a write (action 10) to 303 or 740 ``_LOGIC`` (this emulator takes no settings).

Faults for scenarios: ``garbage(n)`` puts n random bytes on the line towards the edge,
``silent(True)`` is a dead gauge (reads, never answers), ``sensor_error(True)`` a gauge
that still answers plausible pressures but reports ``Err001`` on parameter 303 (the case
that must never reach the core as a good value). Closing the emulator is pulling the cable.

Non-blocking throughout: ``serve`` never waits, so a plant step is never held by the line.
"""

from __future__ import annotations

import math
import random

from edge.devices.pfeiffer import (
    ACTION_QUERY,
    NO_SENSOR_ERROR,
    PARAM_ERROR_CODE,
    PARAM_PRESSURE,
    QUERY_DATA,
    PfeifferError,
    TelegramSplitter,
    decode_telegram,
    encode_answer,
    encode_pressure,
)
from hil.devices.pty_line import PtyLine

SENSOR_ERROR_CODE = "Err001"          # transmitter defective
DEFAULT_SPAN_MBAR = (5e-9, 1000.0)    # a Pirani / cold-cathode combination gauge


class GaugeEmulator(PtyLine):
    """The gauge at ``address`` on ``master_fd`` (made non-blocking). Call ``serve`` every plant step."""

    def __init__(self, master_fd: int, address: int = 1, *, span_mbar: tuple[float, float] = DEFAULT_SPAN_MBAR,
                 rng: random.Random | None = None) -> None:
        if not 1 <= address <= 255:
            raise ValueError(f"address {address}: a gauge has an individual address 1..255")
        super().__init__(master_fd, rng)
        self.address = address
        self.span_mbar = span_mbar
        self._splitter = TelegramSplitter()
        self._silent = False
        self._sensor_error = False
        # what happened on the line, for scenario records
        self.answered = 0         # answers sent
        self.ignored = 0          # valid telegrams for another address, or while silent
        self.rx_errors = 0        # telegrams with a bad checksum or structure (not answered)

    # ---- faults ----

    def silent(self, on: bool) -> None:
        """A dead gauge: queries are read and never answered."""
        self._silent = on

    def sensor_error(self, on: bool) -> None:
        """Parameter 303 reports ``Err001``; parameter 740 still answers a plausible pressure."""
        self._sensor_error = on

    # ---- the plant step ----

    def serve(self, pressure_mbar: float) -> None:
        """Answer every complete query that arrived, with the chamber at ``pressure_mbar``."""
        if not math.isfinite(pressure_mbar):
            raise ValueError(f"pressure {pressure_mbar!r} mbar: the plant must give a finite number")
        self._flush()
        for line in self._splitter.feed(self._read_available()):
            self._handle(line, pressure_mbar)
        self._flush()

    def reading(self, pressure_mbar: float) -> str:
        """The u_expo_new string the gauge shows at this pressure (clamped to its span)."""
        lo, hi = self.span_mbar
        return encode_pressure(min(max(pressure_mbar, lo), hi))

    def _handle(self, line: bytes, pressure_mbar: float) -> None:
        try:
            telegram = decode_telegram(line)
        except PfeifferError:
            self.rx_errors += 1
            return
        if telegram.address != self.address or self._silent:
            self.ignored += 1
            return
        known = (PARAM_ERROR_CODE, PARAM_PRESSURE)
        if telegram.parameter not in known:
            data = "NO_DEF"
        elif telegram.action != ACTION_QUERY:
            data = "_LOGIC"
        elif telegram.data != QUERY_DATA:
            data = "_RANGE"
        elif telegram.parameter == PARAM_ERROR_CODE:
            data = SENSOR_ERROR_CODE if self._sensor_error else NO_SENSOR_ERROR
        else:
            data = self.reading(pressure_mbar)
        self._out += encode_answer(self.address, telegram.parameter, data)
        self.answered += 1
