"""Telemetry: the durable outbox every message passes through before MQTT sends it (and, later, the session)."""
