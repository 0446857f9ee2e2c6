"""A small plant's stream for the historian's fleet tests: real envelopes, as stations send them.

Built with the project's envelope code (``edge.telemetry.envelope.build``) from the examples in
``mqtt_schemas/examples`` and the batch record code (``mqtt_end_body`` of a local record), and put
into a store only through ``edge.historian.ingest.ingest``: what the tests see went the whole way a
message goes. Two stations of site ``pilot-line``:

- ``hd-01``: online, absorbing (a state with an unacknowledged alarm whose message is hostile HTML),
  tripped once, two finished batches in January 2027 (one with a complete accounting, one whose
  energy meter missed the start: a lower bound) and one running; telemetry windows over its first
  batch, with numbers 4 and 5 missing (an open gap) and 9 to 10 missing but named by a thinning
  report (explained); its second batch's id is hostile too (markup and a slash).
- ``sint-01``: offline, one finished batch whose feed was never weighed.
"""

from __future__ import annotations

import copy
import json
import pathlib
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.telemetry.description import canonical
from edge.telemetry.envelope import build
from edge.telemetry.topics import StationTopics

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "mqtt_schemas" / "examples"
SITE = "pilot-line"
BOOT = "0b5e1d7c2a9f4e3b8c6d1a0f9e8d7c6b"
HOSTILE_ALARM = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">&amp;"
HOSTILE_BATCH = "lot/7 <b>bold</b> & \"q\""
T0 = datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC)
Received = tuple[str, bytes, bool]


def example(name: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / f"{name}.json").read_text())["body"])


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


class Station:
    """Envelopes of one station's boot: each stream numbered from 1 (``seq=`` to number one by hand)."""

    def __init__(self, station: str, boot: str = BOOT) -> None:
        self.station, self.boot = station, boot
        self.topics = StationTopics(SITE, station)
        self.next: dict[str, int] = {}

    def msg(self, stream: str, body: dict[str, Any], at: datetime, *, seq: int | None = None,
            retained: bool = False) -> Received:
        number = seq if seq is not None else self.next.get(stream, 0) + 1
        self.next[stream] = max(self.next.get(stream, 0), number)
        raw = build(site=SITE, station=self.station, boot_id=self.boot, stream=stream, seq=number,
                    created_ns=ns(at), body=body)
        return (self.topics.topic(stream), raw, retained)


def description(station: str) -> tuple[dict[str, Any], str]:
    body = example("description")
    body["station"] = {**body["station"], "site": SITE, "id": station}
    import hashlib

    return body, hashlib.sha256(canonical(body)).hexdigest()


def end_body(batch_id: str, started: datetime, hours: float, *, mass_in: float | None, energy: float,
             energy_complete: bool = True, h2: float | None = 1400.0, trips: int = 0,
             process: str = "hd") -> dict[str, Any]:
    """An MQTT end record (schema 1.2) from the example, with these figures."""
    body = copy.deepcopy(example("batch-end"))
    ended = started + timedelta(hours=hours)
    body.update(batch_id=batch_id, process=process, started=ts(started), ended=ts(ended),
                duration_s=hours * 3600.0, phases=[{"phase": "absorption", "started": ts(started),
                                                    "ended": ts(ended), "duration_s": hours * 3600.0}])
    body["feed"] = {"description": "EoL motor magnets", "mass_in_kg": mass_in}
    body["events"] = [{"ts": ts(started + timedelta(minutes=30 + i)), "kind": "trip", "name": "h2_leak",
                       "message": "room H2 over 25 %LEL"} for i in range(trips)]
    acc = body["accounting"]
    grid = acc["grid_kg_co2e_per_kwh"]
    def per(v: float | None) -> float | None:
        return None if v is None or not mass_in else v / mass_in

    acc.update(energy_kwh=energy, energy_complete=energy_complete, h2_nl=h2, kg_co2e=energy * grid,
               kwh_per_kg=per(energy), nl_h2_per_kg=per(h2), kg_co2e_per_kg=per(energy * grid), trips=trips,
               complete=energy_complete and h2 is not None)
    meters = body["meters"]
    meters["energy"].update(value=energy, complete=energy_complete,
                            notes=[] if energy_complete else ["first reading 900 s after the start"])
    if h2 is None:
        meters["h2"] = None
        acc.pop("h2_complete", None)
    else:
        meters["h2"].update(value=h2)
    return body


def start_body(batch_id: str, started: datetime, mass_in: float | None) -> dict[str, Any]:
    body = example("batch-start")
    body.update(batch_id=batch_id, started=ts(started))
    body["feed"] = {"description": "EoL motor magnets", "mass_in_kg": mass_in}
    return body


def telemetry(window_end: datetime, desc_sha: str, temp: float) -> dict[str, Any]:
    body = example("telemetry")
    start = window_end - timedelta(minutes=30)
    body["window"] = {**body["window"], "start_utc": ts(start), "end_utc": ts(window_end)}
    body["channels"]["chamber_temp"].update(last=temp, min=temp - 1, max=temp + 1, mean=temp)
    body["description_sha256"] = desc_sha
    return body


def plant() -> list[Received]:
    """The whole plant's messages, in the order a consumer might get them."""
    out: list[Received] = []
    hd = Station("hd-01")
    desc, sha = description("hd-01")
    birth = example("status-online")
    birth.update(previous_boot=None, description_sha256=sha, boot_started=ts(T0 - timedelta(hours=1)))
    out.append(hd.msg("status", birth, T0 - timedelta(hours=1), retained=True))
    out.append(hd.msg("description", desc, T0 - timedelta(hours=1), retained=True))
    first = T0
    out.append(hd.msg("batch", start_body("hd-2027-001", first, 25.0), first))
    for n in range(1, 13):        # 30 min windows over the first batch; 4, 5 lost; 9, 10 thinned
        if n in (4, 5, 9, 10):
            hd.next["telemetry"] = n
            continue
        out.append(hd.msg("telemetry", telemetry(first + timedelta(minutes=30 * n), sha, 20.0 + 50 * n), first,
                          seq=n))
    thinned = example("event-thinned")
    thinned["streams"] = [{"stream": "telemetry", "first_seq": 9, "last_seq": 10, "removed": 2}]
    thinned["removed"] = 2
    out.append(hd.msg("event", thinned, first + timedelta(hours=5)))
    out.append(hd.msg("batch", end_body("hd-2027-001", first, 6.0, mass_in=25.0, energy=50.0, trips=1),
                      first + timedelta(hours=6)))
    second = T0 + timedelta(days=2)
    out.append(hd.msg("batch", end_body(HOSTILE_BATCH, second, 6.0, mass_in=20.0, energy=30.0,
                                        energy_complete=False), second + timedelta(hours=6)))
    trip = example("event-trip")
    out.append(hd.msg("event", trip, second + timedelta(hours=1)))
    third = T0 + timedelta(days=4)
    out.append(hd.msg("batch", start_body("hd-2027-003", third, 24.0), third))
    alarm = example("event-alarm")
    alarm.update(message=HOSTILE_ALARM, alarm="chamber_temp_deviation")
    out.append(hd.msg("event", alarm, third + timedelta(hours=1)))
    state = example("state-running")
    state["batch"] = {**state["batch"], "id": "hd-2027-003"}
    state["alarms"] = {"active": ["chamber_temp_deviation"], "unacknowledged": ["chamber_temp_deviation"]}
    out.append(hd.msg("state", state, third + timedelta(hours=1), retained=True))

    sint = Station("sint-01", boot="9a8b7c6d5e4f30211f2e3d4c5b6a7988")
    desc2, sha2 = description("sint-01")
    birth2 = example("status-online")
    birth2.update(previous_boot=None, description_sha256=sha2, boot_started=ts(T0))
    out.append(sint.msg("status", birth2, T0, retained=True))
    out.append(sint.msg("description", desc2, T0, retained=True))
    out.append(sint.msg("batch", end_body("sint-2027-001", T0 + timedelta(days=1), 10.0, mass_in=None,
                                          energy=80.0, h2=None, process="sintering"),
                        T0 + timedelta(days=1, hours=10)))
    idle = example("state-running")
    idle.update(run="idle", phase=None, batch=None)
    idle["outputs"] = {k: {**v, "level": 0} for k, v in idle["outputs"].items()}
    out.append(sint.msg("state", idle, T0 + timedelta(days=1, hours=10), retained=True))
    offline = example("status-offline")
    out.append(sint.msg("status", offline, T0 + timedelta(days=1, hours=11), seq=2, retained=True))
    return out
