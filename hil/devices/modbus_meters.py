"""Modbus RTU meters on an RS-485 bus, on the master side of a pty: the slaves the edge polls.

The plant process owns the meters as it owns the vacuum gauge: every plant step it calls
``update`` on each meter with the heater power, the energy, the gas flows and totals of its
model, then ``serve()`` on the bus, which answers whatever complete requests arrived since the
last step. The edge side (``edge.devices.modbus.ModbusBus``, minimalmodbus over pyserial) opens the
slave path and cannot tell the difference.

Written without the client library on purpose (own CRC, own framing, own register encoding),
so a test checks the client against a second, independent reading of the protocol:

- a frame is address, function, data, CRC-16/MODBUS (low byte first);
- read holding / input registers (functions 3 and 4) answer ``address, function, byte count,
  registers (high byte first), CRC``; any other function is answered with exception 01 (illegal
  function), a register outside the device's map with exception 02 (illegal data address), a
  count outside 1..125 with exception 03 (illegal data value);
- only the addresses on the bus answer; a request for another address, or to the broadcast
  address 0, is silence, as on a real multi-drop bus; so is a frame with a bad CRC (real slaves
  discard it without a word, and the master times out).

Framing: on a real line a frame ends with 3.5 character times of silence; a pty carries no line
timing, so frames are found by their length (a read request is 8 bytes; functions 15 and 16 carry
their byte count) and their CRC. Bytes that do not start a frame with a good CRC are skipped one
at a time until one does, and whatever is left when a plant step brings nothing new is dropped as
a frame cut short: silence ends a frame.

Register maps: :class:`Sdm630Meter` speaks the Eastron SDM630 input registers the edge reads
(float32, high word first: 0x0000/2/4 phase voltages, 0x0006/8/A phase currents, 0x0034 total
power W, 0x0048 total import kWh); :class:`MassFlowMeter` the project's own ``reedge_mfc`` map
(0x0000 flow NL/min float32, 0x0002 total uint32 in 0.001 NL wrapping at 2**32, 0x0004 status:
0 = ok). Both are documented in ``edge/spec/instruments/modbus.py``.

Faults for scenarios: ``silent(address, on)`` a dead meter, ``crc_burst(n)`` the next n answers
corrupted on the line, ``garbage(n)`` noise towards the edge, ``device_fault(address, on)`` a
flow meter reporting a fault in its status word. Closing the bus is pulling the cable.

Non-blocking throughout: ``serve`` never waits, so a plant step is never held by the line.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Sequence

from hil.devices.pty_line import PtyLine

__all__ = ["MassFlowMeter", "MeterBus", "ModbusDevice", "Sdm630Meter", "crc16_modbus"]

READ_HOLDING = 3
READ_INPUT = 4
ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
MAX_READ = 125
TOTAL_LSB_NL = 0.001          # reedge_mfc totaliser resolution
STATUS_OK = 0
STATUS_SENSOR_FAULT = 0x0001


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16_modbus(frame: bytes) -> bytes:
    """The two CRC bytes of a frame body, low byte first (table-driven; the client computes it bitwise)."""
    crc = 0xFFFF
    for byte in frame:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return bytes((crc & 0xFF, crc >> 8))


def _float_words(value: float) -> tuple[int, int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return high, low


def _request_length(buf: bytes | bytearray) -> int | None:
    """Bytes of the request starting at buf[0], if its function says (None: not known yet, or never)."""
    function = buf[1]
    if function in (1, 2, 3, 4, 5, 6, 8):
        return 8
    if function in (7, 11, 12, 17):
        return 4
    if function in (15, 16):
        return 9 + buf[6] if len(buf) > 6 else None
    return None


class ModbusDevice:
    """A slave: its address and its register maps (holding = function 3, input = function 4)."""

    def __init__(self, address: int) -> None:
        if not 1 <= address <= 247:
            raise ValueError(f"address {address}: a slave has an individual address 1..247")
        self.address = address
        self.holding: dict[int, int] = {}
        self.input: dict[int, int] = {}
        self.fault = False

    def set_fault(self, on: bool) -> None:
        raise ValueError(f"device at address {self.address} has no status word to report a fault")

    def read(self, function: int, start: int, count: int) -> list[int] | int:
        """The registers asked for, or the exception code to answer."""
        if function not in (READ_HOLDING, READ_INPUT):
            return ILLEGAL_FUNCTION
        if not 1 <= count <= MAX_READ:
            return ILLEGAL_DATA_VALUE
        table = self.holding if function == READ_HOLDING else self.input
        wanted = range(start, start + count)
        if any(a not in table for a in wanted):
            return ILLEGAL_DATA_ADDRESS
        return [table[a] for a in wanted]

    def _set_float(self, address: int, value: float) -> None:
        self.input[address], self.input[address + 1] = _float_words(value)


class Sdm630Meter(ModbusDevice):
    """Eastron SDM630: three-phase power meter, float32 input registers."""

    def __init__(self, address: int, energy_kwh: float = 0.0) -> None:
        super().__init__(address)
        self.update(0.0, energy_kwh)

    def update(self, power_w: float, energy_kwh: float, volts: float = 230.0, amps: float | None = None) -> None:
        """Balanced phases: each at ``volts``, ``amps`` (default: the power at unity power factor)."""
        if amps is None:
            amps = power_w / (3.0 * volts) if volts else 0.0
        for phase in range(3):
            self._set_float(0x0000 + 2 * phase, volts)
            self._set_float(0x0006 + 2 * phase, amps)
        self._set_float(0x0034, power_w)
        self._set_float(0x0048, energy_kwh)


class MassFlowMeter(ModbusDevice):
    """A mass-flow meter speaking the ``reedge_mfc`` map: flow, totaliser (0.001 NL, wraps at 2**32), status."""

    def __init__(self, address: int, total_nl: float = 0.0) -> None:
        super().__init__(address)
        self.update(0.0, total_nl)

    def update(self, flow_nl_min: float, total_nl: float) -> None:
        if not math.isfinite(total_nl) or total_nl < 0:
            raise ValueError(f"total {total_nl!r} NL: a totaliser counts up from 0")
        self._set_float(0x0000, flow_nl_min)
        counts = round(total_nl / TOTAL_LSB_NL) % 2**32
        self.input[0x0002], self.input[0x0003] = counts >> 16, counts & 0xFFFF
        self.input[0x0004] = STATUS_SENSOR_FAULT if self.fault else STATUS_OK

    def set_fault(self, on: bool) -> None:
        self.fault = on
        self.input[0x0004] = STATUS_SENSOR_FAULT if on else STATUS_OK


class MeterBus(PtyLine):
    """The RS-485 bus with its meters, on ``master_fd`` (made non-blocking). Call ``serve`` every plant step."""

    def __init__(self, master_fd: int, devices: Sequence[ModbusDevice], *, rng: random.Random | None = None) -> None:
        self.devices: dict[int, ModbusDevice] = {}
        for device in devices:
            if device.address in self.devices:
                raise ValueError(f"two devices at address {device.address} on one bus")
            self.devices[device.address] = device
        super().__init__(master_fd, rng)
        self._in = bytearray()
        self._silent: set[int] = set()
        self._corrupt_next = 0
        self._corrupt_for: dict[int, int] = {}       # address -> answers still to corrupt
        self._hunting = False
        # what happened on the line, for scenario records and tests
        self.requests: dict[int, int] = {a: 0 for a in self.devices}   # good requests per address, answered or not
        self.answered = 0         # answers sent (exception answers included)
        self.exceptions_sent = 0
        self.corrupted = 0        # answers sent with a broken CRC (crc_burst)
        self.ignored = 0          # good frames for another address, broadcast, or a silent device
        self.rx_errors = 0        # runs of bytes that were not a frame with a good CRC (not answered)

    # ---- faults ----

    def silent(self, address: int, on: bool) -> None:
        """A dead meter: its requests are read and never answered."""
        self._device(address)
        if on:
            self._silent.add(address)
        else:
            self._silent.discard(address)

    def crc_burst(self, n: int, address: int | None = None) -> None:
        """The next n answers (of the device at ``address``, or of any device) leave with a corrupted CRC."""
        if address is None:
            self._corrupt_next += n
        else:
            self._device(address)
            self._corrupt_for[address] = self._corrupt_for.get(address, 0) + n

    def device_fault(self, address: int, on: bool) -> None:
        """The meter's status word reports a fault (a flow meter; the SDM630 map has no status word)."""
        self._device(address).set_fault(on)

    def _device(self, address: int) -> ModbusDevice:
        try:
            return self.devices[address]
        except KeyError:
            raise ValueError(f"no device at address {address} on this bus "
                             f"(there are: {', '.join(map(str, self.devices))})") from None

    def _take_corruption(self, address: int) -> bool:
        """Whether this answer leaves corrupted: the device's own burst first, then the bus-wide one."""
        if self._corrupt_for.get(address, 0) > 0:
            self._corrupt_for[address] -= 1
            return True
        if self._corrupt_next > 0:
            self._corrupt_next -= 1
            return True
        return False

    # ---- the plant step ----

    def serve(self) -> None:
        """Answer every complete request that arrived since the last step."""
        self._flush()
        data = self._read_available()
        self._in += data
        while len(self._in) >= 4:
            length = _request_length(self._in) or self._length_by_crc()
            if length is None:
                later = self._next_frame_start()
                if later is None:
                    break                      # wait for more, or for silence
                self._skip(later)
                continue
            if len(self._in) < length:
                break
            frame = bytes(self._in[:length])
            if crc16_modbus(frame[:-2]) != frame[-2:]:
                self._skip(1)
                continue
            del self._in[:length]
            self._hunting = False
            self._handle(frame)
        if not data and self._in:              # a quiet step: what is left is a frame cut short
            if not self._hunting:
                self.rx_errors += 1
            self._in.clear()
            self._hunting = False
        self._flush()

    def _length_by_crc(self) -> int | None:
        """An unknown function: the shortest prefix that ends in its own CRC, if any."""
        for n in range(4, min(len(self._in), 256) + 1):
            if crc16_modbus(bytes(self._in[:n - 2])) == self._in[n - 2:n]:
                return n
        return None

    def _next_frame_start(self) -> int | None:
        """Where, after noise, a complete frame of a known function with a good CRC starts."""
        for k in range(1, len(self._in) - 3):
            length = _request_length(self._in[k:])
            if length is not None and k + length <= len(self._in):
                frame = bytes(self._in[k:k + length])
                if crc16_modbus(frame[:-2]) == frame[-2:]:
                    return k
        return None

    def _skip(self, n: int) -> None:
        if not self._hunting:
            self.rx_errors += 1
            self._hunting = True
        del self._in[:n]

    def _handle(self, frame: bytes) -> None:
        address, function = frame[0], frame[1]
        device = self.devices.get(address)
        if device is None or address in self._silent:
            self.ignored += 1
            if device is not None:
                self.requests[address] += 1
            return
        self.requests[address] += 1
        if len(frame) == 8:
            start, count = struct.unpack(">HH", frame[2:6])
            result = device.read(function, start, count)
        else:
            result = ILLEGAL_FUNCTION
        if isinstance(result, int):
            body = bytes((address, function | 0x80, result))
            self.exceptions_sent += 1
        else:
            body = bytes((address, function, 2 * len(result))) + struct.pack(f">{len(result)}H", *result)
        crc = crc16_modbus(body)
        if self._take_corruption(address):
            self.corrupted += 1
            crc = bytes((crc[0] ^ 0x5A, crc[1]))
        self._out += body + crc
        self.answered += 1
