"""Fake ``machine`` module of the virtual sensor node (MicroPython, runs inside the node).

It has the subset of the rp2 port's ``machine`` API the node firmware uses, with the same
names, argument orders and errors, so the firmware runs unchanged. Pins, the watchdog and
resets go to the Node.js host (``_vnode_host``), which the test harness reads; the values
the chips report come from the harness's ``peripherals.json``:

    {"pins": {"GP2": 1},                                      # input levels
     "max31856": {"GP5": {"tc_c": 850.0, "cj_c": 25.0, "fault": 0}},  # keyed by chip-select pin
     "ads1115": {"72": {"counts": [0, 12000, 0, 0]}},         # keyed by I2C address (decimal)
     "spi": {"miso": 0}}                                      # MISO stuck low (1: high), every bus

Chips are register-level models (MAX31856 over SPI mode 1, ADS1115 over I2C), so the
firmware's drivers are exercised byte for byte, not bypassed.

A MAX31856 with ``"present": false`` is unplugged: it drives nothing, and its registers are lost
(it comes back unconfigured, as after a power cycle). Nothing driving MISO reads 0x00: the RP2040's
pads come out of reset with their pull-down on, and machine.SPI does not change that.
"""

import json

import _vnode_host

PWRON_RESET = 1
WDT_RESET = 3

_state = {"text": None, "data": {}}
_selected = {}          # chip-select pin name -> chip model, while its CS is low


def _peripherals():
    text = _vnode_host.peripherals()
    if text != _state["text"]:
        try:
            _state["data"] = json.loads(text)
        except ValueError:  # a half-written file: keep the last good state
            _state["text"] = None
            return _state["data"]
        _state["text"] = text
    return _state["data"]


def _pin_name(pin_id):
    if isinstance(pin_id, int):
        if not 0 <= pin_id <= 29:
            raise ValueError("invalid pin")
        return "GP" + str(pin_id)
    if isinstance(pin_id, str):
        if pin_id == "LED" or pin_id == "WL_GPIO0":
            return "LED"
        if pin_id.startswith("GP") and pin_id[2:].isdigit():
            return _pin_name(int(pin_id[2:]))
    raise ValueError("invalid pin")


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, pin_id, mode=-1, pull=-1, *, value=None):
        self._name = _pin_name(pin_id)
        self._mode = Pin.IN
        self._pull = -1
        self._level = 0
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None):
        if pull != -1:
            self._pull = pull
        if value is not None:
            self._level = 1 if value else 0
        if mode != -1:
            self._mode = mode
        if self._mode == Pin.OUT:
            self._drive()
        else:
            _vnode_host.pin_release(self._name)

    def _drive(self):
        _vnode_host.pin_write(self._name, self._level)
        chip = _chip_for(self._name)
        if chip is not None:
            if self._level:
                _selected.pop(self._name, None)
            else:
                chip.select()
                _selected[self._name] = chip

    def value(self, v=None):
        if v is None:
            if self._mode == Pin.OUT:
                return self._level
            levels = _peripherals().get("pins", {})
            return 1 if levels.get(self._name, 1 if self._pull == Pin.PULL_UP else 0) else 0
        self._level = 1 if v else 0
        if self._mode == Pin.OUT:
            self._drive()
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    high = on
    low = off

    def toggle(self):
        self.value(1 - self._level)

    def __repr__(self):
        return "Pin({}, mode={})".format(self._name, "OUT" if self._mode == Pin.OUT else "IN")


class _Max31856:
    """Register model: address byte (bit 7 = write), then auto-incrementing data bytes."""

    def __init__(self, cs_name):
        self.cs = cs_name
        self.addr = None
        self.present = True
        self._power_on()

    def _power_on(self):
        self.regs = bytearray(16)
        self.regs[0x01] = 0x03       # CR1 reset value: type K, 1 sample

    def _cfg(self):
        return _peripherals().get("max31856", {}).get(self.cs, {})

    def select(self):
        self.addr = None
        present = bool(self._cfg().get("present", True))
        if not present:
            self._power_on()         # unplugged: what was configured is gone
        self.present = present

    def _live(self):
        cfg = self._cfg()
        tc = round(float(cfg.get("tc_c", 25.0)) * 128) & 0x7FFFF     # 19 bits, 2^-7 degC
        cj = round(float(cfg.get("cj_c", 25.0)) * 64) & 0x3FFF       # 14 bits, 2^-6 degC
        r = self.regs
        r[0x0A], r[0x0B] = (cj >> 6) & 0xFF, (cj << 2) & 0xFC
        v = tc << 5
        r[0x0C], r[0x0D], r[0x0E] = (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xE0
        r[0x0F] = int(cfg.get("fault", 0)) & 0xFF

    def transfer(self, byte):
        """The byte the chip drives onto MISO, or None when it drives nothing (unplugged)."""
        if not self.present:
            return None
        if self.addr is None:
            self.addr = byte
            if not byte & 0x80:
                self._live()
            return 0xFF
        reg = self.addr & 0x0F
        out = self.regs[reg]
        if self.addr & 0x80 and reg < 0x0C:
            self.regs[reg] = byte
            if reg == 0x00 and byte & 0x02:      # FAULTCLR
                self.regs[0x00] = byte & ~0x02
        self.addr = (self.addr & 0x80) | ((reg + 1) & 0x0F)
        return out


_chips = {}   # chip-select pin name -> chip model


def _chip_for(cs_name):
    chip = _chips.get(cs_name)
    if chip is None and cs_name in _peripherals().get("max31856", {}):
        chip = _chips[cs_name] = _Max31856(cs_name)
    return chip


class SPI:
    MSB = 0

    def __init__(self, spi_id, baudrate=1000000, *, polarity=0, phase=0, bits=8, firstbit=0,
                 sck=None, mosi=None, miso=None):
        if spi_id not in (0, 1):
            raise ValueError(f"SPI({spi_id}) doesn't exist")
        self.id = spi_id
        self.init(baudrate, polarity=polarity, phase=phase)
        for name in _peripherals().get("max31856", {}):
            _chip_for(name)

    def init(self, baudrate=1000000, *, polarity=0, phase=0, bits=8, firstbit=0, sck=None, mosi=None, miso=None):
        self.baudrate, self.polarity, self.phase = baudrate, polarity, phase

    def deinit(self):
        pass

    def _xfer(self, wbuf, rbuf):
        chips = list(_selected.values())
        stuck = _peripherals().get("spi", {}).get("miso")
        for i in range(len(rbuf) if rbuf is not None else len(wbuf)):
            out = None
            w = wbuf[i] if wbuf is not None else 0
            if len(chips) == 1 and self.phase == 1:   # MAX31856 samples on the second edge (mode 1/3)
                out = chips[0].transfer(w)
            if out is None:
                out = 0x00                            # nothing drives MISO: the pad's pull-down
            if stuck is not None:
                out = 0xFF if stuck else 0x00         # shorted to 3V3 or GND: whatever the chip drives
            if rbuf is not None:
                rbuf[i] = out

    def write(self, buf):
        self._xfer(buf, None)

    def read(self, nbytes, write=0):
        buf = bytearray(nbytes)
        self._xfer(bytes([write]) * nbytes, buf)
        return bytes(buf)

    def readinto(self, buf, write=0):
        self._xfer(bytes([write]) * len(buf), buf)

    def write_readinto(self, wbuf, rbuf):
        if len(wbuf) != len(rbuf):
            raise ValueError("buffers must be the same length")
        self._xfer(wbuf, rbuf)


class _Ads1115:
    """Pointer register, config (single-shot conversions, MUX selects the input), conversion."""

    def __init__(self, address):
        self.address = address
        self.pointer = 0
        self.config = 0x8583
        self.mux = 4

    def write(self, data):
        if not data:
            return
        self.pointer = data[0] & 0x03
        if self.pointer == 1 and len(data) >= 3:
            self.config = (data[1] << 8) | data[2]
            self.mux = (self.config >> 12) & 0x07

    def read(self, n):
        if self.pointer == 0:
            cfg = _peripherals().get("ads1115", {}).get(str(self.address), {})
            counts = cfg.get("counts", [0, 0, 0, 0])
            value = int(counts[self.mux - 4]) if self.mux >= 4 else 0
            value = max(-32768, min(32767, value)) & 0xFFFF
        else:
            value = self.config | 0x8000       # OS = 1: conversion done
        out = bytes([(value >> 8) & 0xFF, value & 0xFF])
        return (out * ((n + 1) // 2))[:n]


_i2c_devices = {}


class I2C:
    def __init__(self, i2c_id, *, scl=None, sda=None, freq=400000, timeout=50000):
        if i2c_id not in (0, 1):
            raise ValueError(f"I2C({i2c_id}) doesn't exist")
        self.id = i2c_id
        self.freq = freq

    def _dev(self, addr):
        if str(addr) not in _peripherals().get("ads1115", {}):
            raise OSError(5)            # NACK: what rp2 raises (EIO)
        dev = _i2c_devices.get(addr)
        if dev is None:
            dev = _i2c_devices[addr] = _Ads1115(addr)
        return dev

    def scan(self):
        return sorted(int(a) for a in _peripherals().get("ads1115", {}))

    def writeto(self, addr, buf, stop=True):
        self._dev(addr).write(bytes(buf))
        return len(buf)

    def readfrom(self, addr, nbytes, stop=True):
        return self._dev(addr).read(nbytes)

    def readfrom_into(self, addr, buf, stop=True):
        data = self._dev(addr).read(len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._dev(addr).write(bytes([memaddr]) + bytes(buf))

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        dev = self._dev(addr)
        dev.write(bytes([memaddr]))
        return dev.read(nbytes)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        data = self.readfrom_mem(addr, memaddr, len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]


class WDT:
    def __init__(self, wdt_id=0, timeout=5000):
        if not 1 <= timeout <= 8388:
            raise ValueError("WDT timeout too long")
        _vnode_host.wdt_start(timeout)

    def feed(self):
        _vnode_host.wdt_feed()


def reset():
    _vnode_host.hard_reset()


def soft_reset():
    _vnode_host.soft_reset()


def reset_cause():
    return WDT_RESET if _vnode_host.reset_cause() == "watchdog" else PWRON_RESET


def unique_id():
    hexid = _vnode_host.unique_id()
    return bytes(int(hexid[i:i + 2], 16) for i in range(0, len(hexid), 2))


def freq(hz=None):
    return 125000000


def idle():
    _vnode_host.peripherals()   # pumps the console, as a real idle() lets IRQs run
