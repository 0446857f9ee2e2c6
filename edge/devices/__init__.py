"""Devices on serial lines (Pfeiffer gauges, Modbus meters, sensor nodes), feeding the core as injected channels."""
