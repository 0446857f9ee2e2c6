"""Emulated field devices that the plant process serves on pseudo-terminals (serial gauges and the like)."""
