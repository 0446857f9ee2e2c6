"""The command intake (``edge.telemetry.intake``): priority by role, the per-identity rate limit, bounded memory,
and the station file keys that set the limit."""

from __future__ import annotations

import json
import pathlib
import tracemalloc

import pytest

from edge.spec.access import CommandSettings
from edge.spec.reader import SpecError
from edge.spec.station import parse_station
from edge.telemetry import intake as I
from edge.telemetry.intake import Intake, Waiting
from edge.telemetry.topics import StationTopics

ROOT = pathlib.Path(__file__).resolve().parent.parent
T = StationTopics("pilot-line", "hd-01")
ROLES = {"scada-hd": frozenset({"operator"}), "historian": frozenset({"viewer"})}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def cmd(identity: str, verb: str = "hold", n: int = 0, payload: bytes | None = None) -> Waiting:
    body = payload if payload is not None else json.dumps({"command_id": f"id-{identity}-{n:06d}"}).encode()
    return Waiting(T.cmd(verb, identity), body, None, None, lambda: None)


def test_commands_the_sender_may_send_are_taken_before_the_others() -> None:
    intake = Intake(CommandSettings(roles=ROLES))
    for i in range(5):
        assert intake.offer(cmd("historian", n=i))
    assert intake.offer(cmd("nobody", n=0))
    assert intake.offer(cmd("scada-hd", "reset", n=0))     # operator, but not a verb of its role
    assert intake.offer(cmd("scada-hd", n=1))
    taken = intake.take(3)
    assert [c.topic for c in taken] == [T.cmd("hold", "scada-hd"), T.cmd("hold", "historian"),
                                        T.cmd("hold", "historian")]
    assert len(intake.take(100)) == 5      # the rest, in arrival order


def test_a_burst_of_resends_waits_behind_an_operators_hold() -> None:
    """Every role may send resend, but it serves a consumer, not the process: queued after every process verb,
    so the hold sent after a burst of resends (each tens of ms of outbox work) is the next command taken."""
    intake = Intake(CommandSettings(roles=ROLES))
    for i in range(20):
        assert intake.offer(cmd("historian", "resend", n=i))
    assert intake.offer(cmd("scada-hd", "resend", n=0))     # the operator's own resend waits too
    assert intake.offer(cmd("scada-hd", n=1))
    assert [c.topic for c in intake.take(1)] == [T.cmd("hold", "scada-hd")]
    assert [c.topic for c in intake.take(100)] == [T.cmd("resend", "historian")] * 20 + [T.cmd("resend", "scada-hd")]


def test_one_identity_over_its_rate_is_turned_away_and_another_is_not() -> None:
    clock = Clock()
    intake = Intake(CommandSettings(roles=ROLES, burst=5, rate_per_minute=60), timer=clock)
    for i in range(50):
        intake.offer(cmd("historian", n=i))
    assert intake.offer(cmd("scada-hd", n=1))
    turned = intake.take_turned(100)
    assert len(turned) == 45 and {t.reason for t in turned} == {"rate"} and {t.identity for t in turned} == {
        "historian"}
    assert turned[0].command_id == "id-historian-000005"        # the id is kept for the busy answer
    assert intake.take(100)[0].topic == T.cmd("hold", "scada-hd")
    clock.t += 2.0                                              # 1 a second: two more
    assert [intake.offer(cmd("historian", n=100 + i)) for i in range(3)] == [True] * 3
    assert len(intake.take(100)) == 2 and len(intake.take_turned(100)) == 1


def test_unlisted_identities_share_one_bucket() -> None:
    intake = Intake(CommandSettings(roles=ROLES, burst=3, rate_per_minute=1), timer=Clock())
    for name in ("a", "b", "c", "d", "e"):
        intake.offer(cmd(name))
    assert len(intake.take(100)) == 3 and [t.identity for t in intake.take_turned(100)] == ["d", "e"]


def test_a_flood_of_large_payloads_holds_a_bounded_number_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MB payloads: at most MAX_WAITING_BYTES of them wait; the rest keep no payload (and have no id to
    read: too large), and past MAX_TURNED_WAITING the caller must answer the backlog first."""
    monkeypatch.setattr(I, "MAX_TURNED_WAITING", 20)
    intake = Intake(CommandSettings(roles=ROLES, burst=1000, rate_per_minute=60_000))
    big = b"x" * (1 << 20)
    results = [intake.offer(cmd("scada-hd", payload=big)) for _ in range(40)]
    assert results.count(False) == 40 - I.MAX_WAITING_BYTES // len(big) - 20
    turned = intake.take_turned(100)
    assert len(turned) == 20 and all(t.reason == "full" and t.command_id is None for t in turned)
    assert not any(hasattr(t, "payload") for t in turned)
    assert len(intake.take(100)) == I.MAX_WAITING_BYTES // len(big)


def test_the_rate_limit_is_read_from_the_station_file_and_checked() -> None:
    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    settings = parse_station(text.replace("[mqtt.commands]", "[mqtt.commands]\nburst = 7\nrate_per_minute = 30"),
                             "hd.toml").commands
    assert (settings.burst, settings.rate_per_minute) == (7, 30)
    assert (CommandSettings().burst, CommandSettings().rate_per_minute) == (20, 120)
    with pytest.raises(SpecError) as info:
        parse_station(text.replace("[mqtt.commands]", "[mqtt.commands]\nburst = 0\nrate_per_minute = 1.5"), "hd.toml")
    shown = str(info.value)
    assert "hd.toml: mqtt.commands.burst: expected an integer from 1 to 1000" in shown
    assert "mqtt.commands.rate_per_minute: expected an integer from 1 to 60000" in shown


def test_a_flood_with_large_correlation_data_holds_little_memory() -> None:
    """review15: MQTT 5 correlation data (up to 64 KiB, any sender) was kept whole for every command turned away,
    though its busy answer never echoes more than MAX_CORRELATION: 3,000 such commands held 198 MB (660 MB at
    MAX_TURNED_WAITING)."""
    intake = Intake(CommandSettings(roles=ROLES, burst=20, rate_per_minute=120), timer=Clock())
    tracemalloc.start()
    try:
        for i in range(3000):
            c = cmd("historian", n=i)
            intake.offer(Waiting(c.topic, c.payload, None, bytes(bytearray(b"c" * 65535)), c.ack))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert intake.waiting == 3000
    assert held < 8 << 20, f"{held / 1e6:.0f} MB held for 3,000 commands"
    assert len(intake.take(100)) == 20 and all(t.correlation_data is None for t in intake.take_turned(5000))
