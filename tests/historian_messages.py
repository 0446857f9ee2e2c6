"""Real station messages for the historian's tests, built with the project's own envelope code.

    st = Station("pilot-line", "hd-01", boot="boot-a")
    st.birth(previous={"telemetry": 5}), st.description(), st.telemetry(6), st.event(1), st.state(1, phase=...),
    st.batch_start(1, "b-1"), st.batch_end(2, "b-1", revision=1), st.thinned(3, "telemetry", 10, 20)

Each returns a ``Received`` (topic, payload bytes, retained flag), valid against the schemas (the bodies
are the ones of ``mqtt_schemas/examples``, with the numbers a test needs).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from edge.historian.ingest import Received
from edge.spec import resources
from edge.telemetry import envelope as E
from edge.telemetry.description import canonical
from edge.telemetry.topics import StationTopics

T0_NS = 1_741_944_413_589_000_000      # 2025-03-14T09:26:53.589Z


@functools.cache
def example_body(name: str) -> dict[str, Any]:
    doc = json.loads((resources.schemas_dir() / "examples" / f"{name}.json").read_text(encoding="utf-8"))
    return dict(doc["body"])


class Station:
    """One simulated station: its topics, its boot id, and a clock for ``ts`` (a second per message)."""

    def __init__(self, site: str = "pilot-line", station: str = "hd-01", boot: str = "boot-a",
                 t0_ns: int = T0_NS) -> None:
        self.topics = StationTopics(site, station)
        self.site, self.station, self.boot = site, station, boot
        self.t_ns = t0_ns
        self.connection = 0
        self.description_sha256: str | None = None

    def _tick(self) -> int:
        self.t_ns += 1_000_000_000
        return self.t_ns

    def message(self, stream: str, seq: int, body: dict[str, Any], *, retained: bool = False,
                topic: str | None = None) -> Received:
        payload = E.build(site=self.site, station=self.station, boot_id=self.boot, stream=stream, seq=seq,
                          created_ns=self._tick(), body=body)
        if topic is None:
            topic = self.topics.reply("hold") if stream == "reply" else self.topics.topic(stream)
        return Received(topic, payload, retained)

    def birth(self, previous: dict[str, int] | None = None, *, previous_boot: str | None = None,
              retained: bool = False, description_sha256: str | None = None) -> Received:
        self.connection += 1
        prev = None if previous is None else E.PreviousBoot(previous_boot, previous)
        raw = E.birth(site=self.site, station=self.station, boot_id=self.boot, connection=self.connection,
                      now_ns=self._tick(), boot_started_ns=self.t_ns - 4_000_000_000, software="reedge 0.1.0",
                      previous=prev)
        return Received(self.topics.status, E.with_description(raw, description_sha256), retained)

    def offline(self) -> Received:
        return Received(self.topics.status, E.will(site=self.site, station=self.station, boot_id=self.boot,
                                                   connection=max(self.connection, 1), now_ns=self._tick()), True)

    def description(self, seq: int, *, unit: str = "degC", retained: bool = False) -> Received:
        """The example description with ``chamber_temp`` in ``unit``, its body in RFC 8785 bytes as the station
        sends it; ``self.description_sha256`` names it afterwards."""
        body = copy.deepcopy(example_body("description"))
        body["channels"]["chamber_temp"]["unit"] = unit
        raw = canonical(body)
        self.description_sha256 = hashlib.sha256(raw).hexdigest()
        payload = E.build(site=self.site, station=self.station, boot_id=self.boot, stream="description", seq=seq,
                          created_ns=self._tick(), body=raw)
        return Received(self.topics.description, payload, retained)

    def telemetry(self, seq: int, *, temp: float = 612.4, description_sha256: str | None = None,
                  heads: dict[str, int] | None = None) -> Received:
        body = copy.deepcopy(example_body("telemetry"))
        body.pop("heads", None)         # the example's numbers are not this station's
        if heads is not None:
            body["heads"] = heads
        body["channels"]["chamber_temp"]["last"] = temp
        if description_sha256 is not None:
            body["description_sha256"] = description_sha256
        else:
            body.pop("description_sha256", None)
        return self.message("telemetry", seq, body)

    def event(self, seq: int, *, message: str = "chamber temperature deviates from setpoint") -> Received:
        return self.message("event", seq, {**example_body("event-alarm"), "message": message})

    def thinned(self, seq: int, stream: str, first: int, last: int) -> Received:
        body = copy.deepcopy(example_body("event-thinned"))
        body["streams"] = [{"stream": stream, "first_seq": first, "last_seq": last, "removed": last - first + 1}]
        return self.message("event", seq, body)

    def state(self, seq: int, *, phase: str = "absorption", retained: bool = False) -> Received:
        return self.message("state", seq, {**example_body("state-running"), "phase": phase}, retained=retained)

    def batch_start(self, seq: int, batch_id: str = "b-1") -> Received:
        return self.message("batch", seq, {**example_body("batch-start"), "batch_id": batch_id})

    def batch_end(self, seq: int, batch_id: str = "b-1", *, revision: int = 1, mass_out_kg: float = 25.09) -> Received:
        body = copy.deepcopy(example_body("batch-end"))
        body.update(batch_id=batch_id, revision=revision)
        body["product"]["mass_out_kg"] = mass_out_kg
        return self.message("batch", seq, body)

    def reply(self, seq: int) -> Received:
        return self.message("reply", seq, example_body("reply-accepted"))
