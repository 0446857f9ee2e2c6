"""Commands: validated, authorised, at most once by id (also across a restart), fresh, small, answered;
and an interlock has the last word (a reset the real core refuses is answered rejected, nothing changes)."""

from __future__ import annotations

import base64
import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from edge.config import ConfigError, load_station, parse_station
from edge.core import Core
from edge.corespec import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, RuleSpec
from edge.telemetry import envelope as E
from edge.telemetry import schemas
from edge.telemetry.access import CommandSettings, broker_acl
from edge.telemetry.commands import CommandHandler, CommandLedger, CommandRefused, Outcome, StartRequest
from edge.telemetry.topics import StationTopics
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent
T = StationTopics("pilot-line", "hd-01")
NOW = 1_741_944_413_589_000_000
SETTINGS = CommandSettings(roles={"scada-hd": frozenset({"operator"}), "historian": frozenset({"viewer"}),
                                  "service": frozenset({"maintenance"})})


class Recorder:
    """A CommandTarget that records calls; ``refuse`` makes the next call raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.refuse: Exception | None = None

    def _do(self, name: str, arg: Any = None) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append((name, arg))

    def start_batch(self, request: StartRequest) -> None:
        self._do("start", request)

    def hold(self, reason: str) -> None:
        self._do("hold", reason)

    def resume(self) -> None:
        self._do("resume")

    def abort(self, reason: str) -> None:
        self._do("abort", reason)

    def ack_alarm(self, alarm: str) -> None:
        self._do("ack_alarm", alarm)

    def reset(self, rule: str | None) -> None:
        self._do("reset", rule)


def command(verb: str, args: dict[str, Any] | None = None, *, issuer: str = "scada-hd", issued_ns: int = NOW,
            command_id: str | None = None, **extra: Any) -> bytes:
    doc = {"schema": f"https://reeproduce.eu/schemas/reedge/v1/cmd-{verb}.json",
           "command_id": command_id or str(uuid.uuid4()), "issued_at": E.rfc3339_ms(issued_ns), "issuer": issuer,
           **extra, "args": args or {}}
    return json.dumps(doc).encode()


@pytest.fixture
def ledger(tmp_path: pathlib.Path) -> Iterator[CommandLedger]:
    with CommandLedger(tmp_path / "commands.db") as led:
        yield led


def handler(target: Any, ledger: CommandLedger, *, allow_remote_reset: bool = False,
            settings: CommandSettings = SETTINGS, now: int = NOW) -> CommandHandler:
    return CommandHandler(topics=T, settings=settings, allow_remote_reset=allow_remote_reset, target=target,
                          ledger=ledger, clock=lambda: now)


def check_outcome(out: Outcome) -> None:
    """Reply and audit event are valid messages of their streams."""
    reply = json.loads(E.build(site="pilot-line", station="hd-01", boot_id="b", stream="reply", seq=1, created_ns=NOW,
                               body=out.reply))
    assert schemas.errors(reply, "reply.json") == []
    event = json.loads(E.build(site="pilot-line", station="hd-01", boot_id="b", stream="event", seq=1,
                               created_ns=NOW, body=out.event.body))
    assert schemas.errors(event, "event.json") == []


def test_a_valid_command_is_executed_once_and_answered(ledger: CommandLedger) -> None:
    target = Recorder()
    out = handler(target, ledger).handle(T.cmd("hold"), command("hold", {"reason": "door check"}))
    assert out.accepted and out.executed and out.reply["code"] == "ok"
    assert target.calls == [("hold", "door check")]
    assert out.reply_topic == T.reply("hold")
    assert out.event.body["issuer"] == "scada-hd" and out.event.body["verb"] == "hold"
    check_outcome(out)


def test_start_passes_recipe_name_hash_and_batch(ledger: CommandLedger) -> None:
    target = Recorder()
    args = {"recipe": "hd_standard", "recipe_sha256": "ab" * 32, "batch_id": "hd-7"}
    out = handler(target, ledger).handle(T.cmd("start"), command("start", args))
    assert out.accepted
    assert target.calls == [("start", StartRequest("hd_standard", "ab" * 32, "hd-7", "scada-hd", "scada-hd"))]


@pytest.mark.parametrize(("verb", "payload", "where"), [
    ("hold", {"reason": 3}, "/args/reason"),
    ("resume", {"force": True}, "/args"),
    ("start", {"recipe": "hd_standard", "batch_id": "x"}, "/args"),
    ("ack_alarm", {"alarm": "Not A Name"}, "/args/alarm"),
])
def test_a_command_against_its_schema_is_rejected_and_nothing_runs(ledger: CommandLedger, verb: str,
                                                                   payload: dict[str, Any], where: str) -> None:
    target = Recorder()
    out = handler(target, ledger).handle(T.cmd(verb), command(verb, payload))
    assert not out.accepted and out.reply["code"] == "invalid" and where in out.reply["message"]
    assert target.calls == []
    check_outcome(out)


def test_a_payload_for_another_verb_is_invalid(ledger: CommandLedger) -> None:
    target = Recorder()
    out = handler(target, ledger, allow_remote_reset=True).handle(T.cmd("hold"), command("reset", {}))
    assert out.reply["code"] == "invalid" and "/schema" in out.reply["message"]
    assert target.calls == []


@pytest.mark.parametrize(("issuer", "verb", "why"), [
    ("historian", "hold", "roles viewer"),
    ("stranger", "abort", "no role on this station"),
    ("scada-hd", "reset", "roles operator"),
])
def test_an_identity_without_the_role_is_rejected(ledger: CommandLedger, issuer: str, verb: str, why: str) -> None:
    target = Recorder()
    out = handler(target, ledger, allow_remote_reset=True).handle(T.cmd(verb), command(verb, issuer=issuer))
    assert out.reply["code"] == "unauthorised" and why in out.reply["message"]
    assert target.calls == []
    check_outcome(out)


def test_a_replayed_id_gets_the_original_answer_and_is_not_executed_again(tmp_path: pathlib.Path) -> None:
    target = Recorder()
    payload = command("abort", {"reason": "H2 empty"})
    with CommandLedger(tmp_path / "c.db") as led:
        first = handler(target, led).handle(T.cmd("abort"), payload)
        again = handler(target, led).handle(T.cmd("abort"), payload)
    with CommandLedger(tmp_path / "c.db") as led:      # after a restart of the station
        later = handler(target, led, now=NOW + 30 * 10**9).handle(T.cmd("abort"), payload)
    assert target.calls == [("abort", "H2 empty")]
    assert first.reply["replayed"] is False and again.reply["replayed"] is later.reply["replayed"] is True
    for out in (again, later):
        assert (out.reply["code"], out.reply["message"]) == (first.reply["code"], first.reply["message"])
        assert not out.executed


def test_a_rejection_is_replayed_too_and_an_id_cannot_be_reused(ledger: CommandLedger) -> None:
    target = Recorder()
    cid = str(uuid.uuid4())
    h = handler(target, ledger)
    denied = h.handle(T.cmd("hold"), command("hold", issuer="historian", command_id=cid))
    replay = h.handle(T.cmd("hold"), command("hold", issuer="historian", command_id=cid))
    reused = h.handle(T.cmd("hold"), command("hold", {"reason": "other"}, command_id=cid))
    assert denied.reply["code"] == replay.reply["code"] == "unauthorised" and replay.reply["replayed"]
    assert reused.reply["code"] == "id_reused"
    assert target.calls == []


def test_a_command_interrupted_by_a_restart_is_never_executed_again(ledger: CommandLedger) -> None:
    target = Recorder()
    payload = command("resume")
    cid = json.loads(payload)["command_id"]
    import hashlib
    ledger.begin(cid, hashlib.sha256(payload).hexdigest(), "resume", "scada-hd", NOW)   # then the power went
    out = handler(target, ledger).handle(T.cmd("resume"), payload)
    assert out.reply["code"] == "outcome_unknown" and out.reply["replayed"]
    assert target.calls == []


@pytest.mark.parametrize(("offset_s", "code"), [(-61, "stale"), (6, "future"), (-59, "ok"), (4, "ok")])
def test_issued_at_must_be_within_the_window(ledger: CommandLedger, offset_s: int, code: str) -> None:
    target = Recorder()
    out = handler(target, ledger).handle(T.cmd("hold"), command("hold", issued_ns=NOW + offset_s * 10**9))
    assert out.reply["code"] == code
    assert len(target.calls) == (code == "ok")


def test_an_oversized_payload_is_rejected_before_parsing(ledger: CommandLedger) -> None:
    target = Recorder()
    small = CommandSettings(roles=SETTINGS.roles, max_payload_bytes=256)
    h = handler(target, ledger, settings=small)
    out = h.handle(T.cmd("hold"), b"[" * 300)           # would be a JSON error if it were parsed
    assert out.reply["code"] == "too_large" and "300 bytes" in out.reply["message"]
    big = command("hold", {"reason": "x" * 200})
    assert len(big) > 256
    assert h.handle(T.cmd("hold"), big).reply["code"] == "too_large"
    assert target.calls == []
    check_outcome(out)


@pytest.mark.parametrize(("payload", "code"), [(b"\xff\xfe{}", "not_json"), (b"{", "not_json"), (b"[]", "invalid")])
def test_garbage_is_answered(ledger: CommandLedger, payload: bytes, code: str) -> None:
    out = handler(Recorder(), ledger).handle(T.cmd("hold"), payload)
    assert out.reply["code"] == code and out.reply["command_id"] is None
    check_outcome(out)


def test_unknown_verb_or_foreign_topic(ledger: CommandLedger) -> None:
    h = handler(Recorder(), ledger)
    out = h.handle("reedge/v1/pilot-line/hd-01/cmd/explode", command("hold"))
    assert out.reply["code"] == "unknown_verb" and out.reply_topic is None
    out = h.handle("reedge/v1/pilot-line/hd-02/cmd/hold", command("hold"), response_topic="scada/r/1")
    assert out.reply["code"] == "unknown_verb" and out.reply_topic == "scada/r/1"
    check_outcome(out)


def test_reply_goes_to_the_response_topic_or_reply_to_with_the_correlation_data(ledger: CommandLedger) -> None:
    h = handler(Recorder(), ledger)
    v5 = h.handle(T.cmd("hold"), command("hold"), response_topic="scada/replies/hd-01", correlation_data=b"req-42")
    assert v5.reply_topic == "scada/replies/hd-01" and v5.correlation_data == b"req-42"
    assert base64.b64decode(v5.reply["correlation_data"]) == b"req-42"
    v311 = h.handle(T.cmd("hold"), command("hold", reply_to="scada/replies/x"))
    assert v311.reply_topic == "scada/replies/x" and v311.accepted
    into_data = h.handle(T.cmd("hold"), command("hold", reply_to=T.state))
    assert into_data.reply["code"] == "invalid" and into_data.reply_topic == T.reply("hold")
    check_outcome(v5)


def test_remote_reset_only_where_the_station_allows_it(ledger: CommandLedger) -> None:
    target = Recorder()
    out = handler(target, ledger, allow_remote_reset=False).handle(T.cmd("reset"), command("reset", issuer="service"))
    assert out.reply["code"] == "not_allowed" and target.calls == []


def test_target_refusals_are_answered_with_their_reason(ledger: CommandLedger) -> None:
    target = Recorder()
    target.refuse = CommandRefused("state", "no batch is running: nothing to hold")
    out = handler(target, ledger).handle(T.cmd("hold"), command("hold"))
    assert (out.reply["code"], out.reply["message"]) == ("state", "no batch is running: nothing to hold")
    target.refuse = RuntimeError("disk on fire")
    out = handler(target, ledger).handle(T.cmd("hold"), command("hold"))
    assert out.reply["code"] == "error" and "disk on fire" in out.reply["message"]


# ---- an interlock has the last word: the real core --------------------------------------------

class CoreTarget(Recorder):
    """Reset goes to the real core: it refuses while the trip condition persists."""

    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core

    def reset(self, rule: str | None) -> None:
        self.core.reset(rule)


@pytest.fixture
def tripped_core(tmp_path: pathlib.Path) -> Iterator[tuple[RegisterFile, Core]]:
    path = tmp_path / "plant.regs"
    regs = RegisterFile.create(path)
    regs.use_plant_clock(start_ns=1_000_000_000)
    core = Core(CoreSpec(period_ms=1.0, drivers=(DriverSpec("plant", "sim", {"path": str(path)}),),
                         channels=(ChannelSpec("chamber_pressure", "analog", "plant", 0, range_lo=0, range_hi=10),),
                         outputs=(OutputSpec("vent_valve", "plant", 0, 1),),
                         rules=(RuleSpec("chamber_overpressure", "high", "chamber_pressure", 2.5, ("vent_valve",),
                                         hysteresis=0.1),)))
    regs.set_ai(0, 2.9)
    for _ in range(3):
        regs.advance(1_000_000)
        core.run_ticks(1)
    assert core.rules()["chamber_overpressure"].tripped
    try:
        yield regs, core
    finally:
        core.close()
        regs.close()


def test_reset_the_core_refuses_is_rejected_and_changes_nothing(ledger: CommandLedger,
                                                                tripped_core: tuple[RegisterFile, Core]) -> None:
    regs, core = tripped_core
    h = handler(CoreTarget(core), ledger, allow_remote_reset=True)
    before = (core.rules(), core.outputs())
    out = h.handle(T.cmd("reset"), command("reset", {"rule": "chamber_overpressure"}, issuer="service"))
    assert out.reply["result"] == "rejected" and out.reply["code"] == "interlock"
    assert "chamber_overpressure" in out.reply["message"]
    assert (core.rules(), core.outputs()) == before, "the trip stays latched, the vent stays open"
    check_outcome(out)
    regs.set_ai(0, 1.0)                       # the condition clears: now the same request is accepted
    for _ in range(3):
        regs.advance(1_000_000)
        core.run_ticks(1)
    out = h.handle(T.cmd("reset"), command("reset", {"rule": "chamber_overpressure"}, issuer="service"))
    assert out.accepted and not core.rules()["chamber_overpressure"].tripped


# ---- the station file -------------------------------------------------------------------------

def test_the_example_station_declares_roles() -> None:
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    assert station.commands.verbs_for("scada-hd") == {"start", "hold", "resume", "abort", "ack_alarm"}
    assert station.commands.verbs_for("nobody") == frozenset()


def test_mqtt_section_errors_name_the_key() -> None:
    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    text = text.replace("[mqtt.roles]", "[mqtt.roles]\nsupervisor = [\"x\"]")
    text = text.replace("max_payload_bytes = 16384", "max_payload_bytes = true")
    with pytest.raises(ConfigError) as info:
        parse_station(text, "hd.toml")
    shown = str(info.value)
    assert "hd.toml: mqtt.roles.supervisor: unknown role 'supervisor'" in shown
    assert "mqtt.commands.max_payload_bytes: expected an integer from 256" in shown


def test_broker_acl_lets_each_identity_publish_only_its_verbs() -> None:
    acl = broker_acl(SETTINGS, T).splitlines()
    at = acl.index("user scada-hd")
    block = acl[at:acl.index("", at)]
    assert f"topic write {T.cmd('hold')}" in block and f"topic write {T.cmd('reset')}" not in block
    at = acl.index("user historian")
    assert not [line for line in acl[at:acl.index("", at)] if line.startswith("topic write")]
