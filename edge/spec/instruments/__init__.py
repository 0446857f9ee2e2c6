"""Serial instruments of the station file (``[instruments.NAME]``): one module per kind, found by ``type``.

``registry`` holds type name -> reader; importing this package imports every kind, which registers itself.
The pollers that talk to the instruments are ``edge.devices.pfeiffer`` and ``edge.devices.modbus``.
"""

from __future__ import annotations

from edge.spec.instruments import modbus, pfeiffer
from edge.spec.instruments.registry import instrument_kinds

__all__ = ["InstrumentConfig", "instrument_kinds"]

#: What an instrument kind's reader gives.
InstrumentConfig = pfeiffer.PfeifferConfig | modbus.ModbusConfig
