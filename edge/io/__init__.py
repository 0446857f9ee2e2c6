"""Slow devices in Python that feed the core as injected channels: serial sensor nodes (``sensornode``
over the framed link of ``link``), later Modbus instruments."""
