# ADS1115 16-bit ADC over I2C: single-shot conversions of one input against GND.

import time

from machine import I2C

# full-scale range (V) -> PGA bits
GAINS = {6.144: 0, 4.096: 1, 2.048: 2, 1.024: 3, 0.512: 4, 0.256: 5}


class ADS1115:
    def __init__(self, i2c: I2C, address: int = 0x48) -> None:
        self.i2c = i2c
        self.address = address

    def read_volts(self, channel: int, full_scale: float = 4.096) -> float:
        """Start a conversion of AINx vs GND at 860 SPS, wait for it, return volts (OSError when absent)."""
        if not 0 <= channel <= 3:
            raise ValueError("ADS1115 inputs are 0..3")
        pga = GAINS.get(full_scale)
        if pga is None:
            raise ValueError("full scale is one of 6.144, 4.096, 2.048, 1.024, 0.512, 0.256 V")
        config = 0x8000 | ((4 + channel) << 12) | (pga << 9) | 0x0100 | (0x7 << 5) | 0x3
        self.i2c.writeto(self.address, bytes([0x01, config >> 8, config & 0xFF]))
        for _ in range(20):                       # 860 SPS: about 1.2 ms per conversion
            self.i2c.writeto(self.address, b"\x01")
            if self.i2c.readfrom(self.address, 2)[0] & 0x80:
                break
            time.sleep_ms(1)
        else:
            raise OSError(110)                    # ETIMEDOUT: conversion never finished
        self.i2c.writeto(self.address, b"\x00")
        raw = self.i2c.readfrom(self.address, 2)
        counts = (raw[0] << 8) | raw[1]
        if counts & 0x8000:
            counts -= 0x10000
        return counts * full_scale / 32768.0
