# MAX31856 thermocouple converter over SPI (mode 1), continuous conversion, fault bits kept.
#
# Every read takes the whole register block and checks it before trusting a temperature: a chip
# unplugged, unpowered or reset after boot, or a stuck MISO line, would otherwise read as a plausible
# 0.0 degC (all 0x00) with no fault bit. Checked: CR0, CR1 and MASK still as written (an all-0x00 or
# all-0xFF block never is), the cold junction inside the chip's -55..125 degC, and a conversion since
# set-up (the data registers read 0 until the first one).

import time

from machine import SPI, Pin

TC_TYPES = {"B": 0, "E": 1, "J": 2, "K": 3, "N": 4, "R": 5, "S": 6, "T": 7}

# fault status register (SR, 0x0F)
OPEN = 0x01        # thermocouple open circuit
OVUV = 0x02        # input over/under voltage
TC_LOW = 0x04
TC_HIGH = 0x08
CJ_LOW = 0x10
CJ_HIGH = 0x20
TC_RANGE = 0x40    # outside the type's range
CJ_RANGE = 0x80
NO_CHIP = 0x100    # not a chip bit: the chip does not answer as configured (missing, reset, stuck bus)
NOT_READY = 0x200  # not a chip bit: no conversion since set-up yet

CJ_MIN, CJ_MAX = -55.0, 125.0     # the chip's own operating range: a cold junction outside it is no reading
# First conversion in continuous mode: at most 185 ms (60 Hz filter), about 20 % longer with the 50 Hz
# filter, plus one conversion time per extra averaged sample.
FIRST_CONVERSION_MS = 250
PER_AVERAGED_MS = 45


class MAX31856:
    def __init__(self, spi: SPI, cs: Pin, tc_type: str = "K", averaging: int = 1) -> None:
        if tc_type not in TC_TYPES:
            raise ValueError("unknown thermocouple type " + tc_type)
        avg = {1: 0, 2: 1, 4: 2, 8: 3, 16: 4}.get(averaging)
        if avg is None:
            raise ValueError("averaging is 1, 2, 4, 8 or 16")
        self.spi = spi
        self.cs = cs
        self.cs.init(Pin.OUT, value=1)
        # CR0: automatic conversion, open-circuit detection on; CR1: averaging and type
        self.cr0 = 0x90
        self.cr1 = (avg << 4) | TC_TYPES[tc_type]
        self.config = bytes([self.cr0, self.cr1, 0x00])     # CR0, CR1, MASK (every fault reported)
        self.settle_ms = FIRST_CONVERSION_MS + PER_AVERAGED_MS * (averaging - 1)
        self.present = False
        self.ready_at = time.ticks_ms()
        self._setup()

    def _setup(self) -> None:
        """Write CR0, CR1 and MASK; the chip is present when they read back."""
        self._write(0x00, self.config)
        self.present = self._read(0x00, 3) == self.config
        self.ready_at = time.ticks_add(time.ticks_ms(), self.settle_ms)

    def _write(self, reg: int, data: bytes) -> None:
        self.cs.value(0)
        try:
            self.spi.write(bytes([0x80 | reg]) + data)
        finally:
            self.cs.value(1)

    def _read(self, reg: int, n: int) -> bytes:
        buf = bytearray(n + 1)
        self.cs.value(0)
        try:
            self.spi.write_readinto(bytes([reg]) + bytes(n), buf)
        finally:
            self.cs.value(1)
        return bytes(buf[1:])

    def read(self) -> tuple[float, float, int]:
        """(thermocouple degC, cold junction degC, fault bits): one burst over every register, checked."""
        nan = float("nan")
        if not self.present:
            self._setup()                         # a chip plugged in (or powered) late, or back after a loss
            if not self.present:
                return (nan, nan, NO_CHIP)
        r = self._read(0x00, 16)
        if r[0:3] != self.config:                 # gone, reset by a power glitch, or MISO stuck: set up again
            self.present = False
            return (nan, nan, NO_CHIP)
        if time.ticks_diff(time.ticks_ms(), self.ready_at) < 0:
            return (nan, nan, NOT_READY)
        cj = ((r[0x0A] << 8) | r[0x0B]) >> 2
        if cj & 0x2000:
            cj -= 0x4000
        tc = ((r[0x0C] << 16) | (r[0x0D] << 8) | r[0x0E]) >> 5
        if tc & 0x40000:
            tc -= 0x80000
        cj_c = cj / 64.0
        if not CJ_MIN <= cj_c <= CJ_MAX:
            return (nan, nan, NO_CHIP | r[0x0F])
        return (tc / 128.0, cj_c, r[0x0F])
