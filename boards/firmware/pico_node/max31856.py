# MAX31856 thermocouple converter over SPI (mode 1), continuous conversion, fault bits kept.

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
NO_CHIP = 0x100    # not a chip bit: the configuration did not read back


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
        self.present = False
        self._setup()

    def _setup(self) -> None:
        """Write CR0, CR1 and MASK; the chip is present when they read back."""
        self._write(0x00, bytes([self.cr0, self.cr1, 0x00]))
        self.present = self._read(0x00, 2) == bytes([self.cr0, self.cr1])

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
        """(thermocouple degC, cold junction degC, fault bits): one burst from CJTH to SR."""
        if not self.present:
            self._setup()                         # a chip plugged in (or powered) late
            if not self.present:
                return (float("nan"), float("nan"), NO_CHIP)
        r = self._read(0x0A, 6)
        cj = ((r[0] << 8) | r[1]) >> 2
        if cj & 0x2000:
            cj -= 0x4000
        tc = ((r[2] << 16) | (r[3] << 8) | r[4]) >> 5
        if tc & 0x40000:
            tc -= 0x80000
        return (tc / 128.0, cj / 64.0, r[5])
