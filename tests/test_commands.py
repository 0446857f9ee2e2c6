"""Commands: validated, authorised, at most once by id (also across a restart), fresh, small, answered;
and an interlock has the last word (a reset the real core refuses is answered rejected, nothing changes)."""

from __future__ import annotations

import base64
import contextlib
import json
import pathlib
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from edge.core import Core
from edge.operator.execute import Operator
from edge.operator.target import CommandRefused
from edge.operator.verbs import StartRequest
from edge.spec.access import CommandSettings
from edge.spec.core import ChannelSpec, CoreSpec, DriverSpec, OutputSpec, RuleSpec
from edge.spec.reader import SpecError
from edge.spec.station import load_station, parse_station
from edge.telemetry import envelope as E
from edge.telemetry import schemas
from edge.telemetry.access import broker_acl
from edge.telemetry.commands import (
    MAX_JSON_DEPTH,
    CommandHandler,
    CommandLedger,
    Outcome,
    Received,
    command_digest,
    json_too_deep,
)
from edge.telemetry.topics import StationTopics, TopicError
from edge.timestamps import rfc3339_ms
from hil.regfile import RegisterFile

ROOT = pathlib.Path(__file__).resolve().parent.parent
T = StationTopics("pilot-line", "hd-01")
NOW = 1_741_944_413_589_000_000
SCADA = "scada-hd"
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

    def skip(self) -> None:
        self._do("skip")

    def ack_alarm(self, alarm: str) -> None:
        self._do("ack_alarm", alarm)

    def reset(self, rule: str | None, remote: bool = True) -> None:
        self._do("reset", rule)

    def record_mass(self, batch_id: str | None, mass_out_kg: float) -> None:
        self._do("record_mass", (batch_id, mass_out_kg))

    def autotune(self, loop: str, setpoint_c: float) -> None:
        self._do("autotune", (loop, setpoint_c))


def command(verb: str, args: dict[str, Any] | None = None, *, issuer: str | None = SCADA, issued_ns: int = NOW,
            command_id: str | None = None, **extra: Any) -> bytes:
    """A command payload; ``issuer=None`` leaves the (optional) field out."""
    doc = {"schema": f"https://reeproduce.eu/schemas/reedge/v1/cmd-{verb}.json",
           "command_id": command_id or str(uuid.uuid4()), "issued_at": rfc3339_ms(issued_ns),
           **({} if issuer is None else {"issuer": issuer}), **extra, "args": args or {}}
    return json.dumps(doc).encode()


@pytest.fixture
def ledger(tmp_path: pathlib.Path) -> Iterator[CommandLedger]:
    with CommandLedger(tmp_path / "commands.db") as led:
        yield led


def handler(target: Any, ledger: CommandLedger, *, allow_remote_reset: bool = False,
            settings: CommandSettings = SETTINGS, now: int = NOW) -> CommandHandler:
    return CommandHandler(topics=T, settings=settings, operator=Operator(target, allow_remote_reset=allow_remote_reset),
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
    out = handler(target, ledger).handle(T.cmd("hold", SCADA), command("hold", {"reason": "door check"}))
    assert out.accepted and out.executed and out.reply["code"] == "ok"
    assert target.calls == [("hold", "door check")]
    assert out.reply_topic == T.reply("hold")
    assert out.event.body["issuer"] == "scada-hd" and out.event.body["verb"] == "hold"
    check_outcome(out)


def test_start_passes_recipe_name_hash_and_batch(ledger: CommandLedger) -> None:
    target = Recorder()
    args = {"recipe": "hd_standard", "recipe_sha256": "ab" * 32, "batch_id": "hd-7"}
    out = handler(target, ledger).handle(T.cmd("start", SCADA), command("start", args))
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
    out = handler(target, ledger).handle(T.cmd(verb, SCADA), command(verb, payload))
    assert not out.accepted and out.reply["code"] == "invalid" and where in out.reply["message"]
    assert target.calls == []
    check_outcome(out)


def test_a_payload_for_another_verb_is_invalid(ledger: CommandLedger) -> None:
    target = Recorder()
    out = handler(target, ledger, allow_remote_reset=True).handle(T.cmd("hold", SCADA), command("reset", {}))
    assert out.reply["code"] == "invalid" and "/schema" in out.reply["message"]
    assert target.calls == []


@pytest.mark.parametrize(("issuer", "verb", "why"), [
    ("historian", "hold", "roles viewer"),
    ("stranger", "abort", "no role on this station"),
    ("scada-hd", "reset", "roles operator"),
])
def test_an_identity_without_the_role_is_rejected(ledger: CommandLedger, issuer: str, verb: str, why: str) -> None:
    target = Recorder()
    out = handler(target, ledger, allow_remote_reset=True).handle(T.cmd(verb, issuer), command(verb, issuer=issuer))
    assert out.reply["code"] == "unauthorised" and why in out.reply["message"]
    assert target.calls == []
    check_outcome(out)


def test_a_replayed_id_gets_the_original_answer_and_is_not_executed_again(tmp_path: pathlib.Path) -> None:
    target = Recorder()
    payload = command("abort", {"reason": "H2 empty"})
    with CommandLedger(tmp_path / "c.db") as led:
        first = handler(target, led).handle(T.cmd("abort", SCADA), payload)
        again = handler(target, led).handle(T.cmd("abort", SCADA), payload)
    with CommandLedger(tmp_path / "c.db") as led:      # after a restart of the station
        later = handler(target, led, now=NOW + 30 * 10**9).handle(T.cmd("abort", SCADA), payload)
    assert target.calls == [("abort", "H2 empty")]
    assert first.reply["replayed"] is False and again.reply["replayed"] is later.reply["replayed"] is True
    for out in (again, later):
        assert (out.reply["code"], out.reply["message"]) == (first.reply["code"], first.reply["message"])
        assert not out.executed


def test_a_rejection_is_replayed_too_and_an_id_cannot_be_reused(ledger: CommandLedger) -> None:
    target = Recorder()
    cid = str(uuid.uuid4())
    h = handler(target, ledger)
    denied = h.handle(T.cmd("hold", "historian"), command("hold", issuer="historian", command_id=cid))
    replay = h.handle(T.cmd("hold", "historian"), command("hold", issuer="historian", command_id=cid))
    reused = h.handle(T.cmd("hold", SCADA), command("hold", {"reason": "other"}, command_id=cid))
    # the very same payload from another sender is not a replay either (the digest covers the sender)
    other = h.handle(T.cmd("hold", SCADA), command("hold", issuer=None, command_id=cid))
    assert denied.reply["code"] == replay.reply["code"] == "unauthorised" and replay.reply["replayed"]
    assert reused.reply["code"] == other.reply["code"] == "id_reused"
    assert target.calls == []


def test_a_command_interrupted_by_a_restart_is_never_executed_again(ledger: CommandLedger) -> None:
    target = Recorder()
    payload = command("resume")
    cid = json.loads(payload)["command_id"]
    ledger.begin(cid, command_digest(SCADA, "resume", payload), "resume", SCADA, NOW)   # then the power went
    out = handler(target, ledger).handle(T.cmd("resume", SCADA), payload)
    assert out.reply["code"] == "outcome_unknown" and out.reply["replayed"]
    assert target.calls == []


@pytest.mark.parametrize(("offset_s", "code"), [(-61, "stale"), (6, "future"), (-59, "ok"), (4, "ok")])
def test_issued_at_must_be_within_the_window(ledger: CommandLedger, offset_s: int, code: str) -> None:
    target = Recorder()
    out = handler(target, ledger).handle(T.cmd("hold", SCADA), command("hold", issued_ns=NOW + offset_s * 10**9))
    assert out.reply["code"] == code
    assert len(target.calls) == (code == "ok")


def test_an_oversized_payload_is_rejected_before_parsing(ledger: CommandLedger) -> None:
    target = Recorder()
    small = CommandSettings(roles=SETTINGS.roles, max_payload_bytes=256)
    h = handler(target, ledger, settings=small)
    out = h.handle(T.cmd("hold", SCADA), b"[" * 300)           # would be a JSON error if it were parsed
    assert out.reply["code"] == "too_large" and "300 bytes" in out.reply["message"]
    big = command("hold", {"reason": "x" * 200})
    assert len(big) > 256
    assert h.handle(T.cmd("hold", SCADA), big).reply["code"] == "too_large"
    assert target.calls == []
    check_outcome(out)


@pytest.mark.parametrize(("payload", "code"), [(b"\xff\xfe{}", "not_json"), (b"{", "not_json"), (b"[]", "invalid")])
def test_garbage_is_answered(ledger: CommandLedger, payload: bytes, code: str) -> None:
    out = handler(Recorder(), ledger).handle(T.cmd("hold", SCADA), payload)
    assert out.reply["code"] == code and out.reply["command_id"] is None
    check_outcome(out)


@pytest.mark.parametrize("topic", [
    "reedge/v1/pilot-line/hd-01/cmd/scada-hd/explode",     # no such verb
    "reedge/v1/pilot-line/hd-01/cmd/hold",                 # the old layout, without the sender
    "reedge/v1/pilot-line/hd-02/cmd/scada-hd/hold",        # another station's
])
def test_unknown_verb_or_foreign_topic_is_answered_nowhere_a_requester_chose(ledger: CommandLedger,
                                                                             topic: str) -> None:
    target = Recorder()
    out = handler(target, ledger).handle(topic, command("hold"), response_topic=T.reply("hold"))
    assert out.reply["code"] == "unknown_verb" and out.reply_topic is None     # the audit event only
    assert target.calls == []
    check_outcome(out)


INBOX = f"{T.root}/reply/{SCADA}/req-42"


def test_reply_goes_to_the_senders_inbox_with_the_correlation_data(ledger: CommandLedger) -> None:
    h = handler(Recorder(), ledger)
    v5 = h.handle(T.cmd("hold", SCADA), command("hold"), response_topic=INBOX, correlation_data=b"req-42")
    assert v5.accepted and v5.reply_topic == INBOX and v5.correlation_data == b"req-42"
    assert base64.b64decode(v5.reply["correlation_data"]) == b"req-42"
    v311 = h.handle(T.cmd("hold", SCADA), command("hold", reply_to=INBOX + "/x"))
    assert v311.reply_topic == INBOX + "/x" and v311.accepted
    plain = h.handle(T.cmd("hold", SCADA), command("hold", reply_to=T.reply("hold")))
    assert plain.reply_topic == T.reply("hold") and plain.accepted
    check_outcome(v5)


@pytest.mark.parametrize("asked", [
    "scada/replies/x",                               # outside the station: the broker would refuse it
    T.state,                                         # a data stream
    f"{T.root}/reply/service/req-1",                 # another sender's inbox
    "reedge/v1/pilot-line/hd-02/reply/hold",         # another station's replies
    f"{T.root}/reply/{SCADA}",                       # an inbox needs a level of its own
    f"{T.root}/reply/{SCADA}//x",                    # ... and no empty one
])
def test_a_reply_topic_outside_the_senders_inbox_is_invalid_and_answered_on_reply_verb(
        ledger: CommandLedger, asked: str) -> None:
    target = Recorder()
    h = handler(target, ledger)
    for out in (h.handle(T.cmd("hold", SCADA), command("hold"), response_topic=asked),
                h.handle(T.cmd("hold", SCADA), command("hold", reply_to=asked))):
        assert out.reply["code"] == "invalid" and "reply" in out.reply["message"]
        assert out.reply_topic == T.reply("hold")
    assert target.calls == []


def test_a_rejected_sender_never_chooses_where_the_station_writes(ledger: CommandLedger) -> None:
    target = Recorder()
    h = handler(target, ledger)
    inbox = f"{T.root}/reply/historian/1"
    denied = h.handle(T.cmd("hold", "historian"), command("hold", issuer="historian"), response_topic=inbox)
    bad = h.handle(T.cmd("hold", SCADA), command("hold", {"reason": 3}), response_topic=INBOX)
    assert (denied.reply["code"], denied.reply_topic) == ("unauthorised", T.reply("hold"))
    assert (bad.reply["code"], bad.reply_topic) == ("invalid", T.reply("hold"))
    assert target.calls == []


# ---- the sender is the topic's identity, which the broker vouches for ------------------------

def test_roles_follow_the_topic_not_the_payloads_issuer(ledger: CommandLedger) -> None:
    """scada-hd (operator) claims to be "service" (maintenance) in the payload: rejected, nothing runs."""
    target = Recorder()
    h = handler(target, ledger, allow_remote_reset=True)
    forged = h.handle(T.cmd("reset", SCADA), command("reset", issuer="service"))
    assert forged.reply["code"] == "unauthorised"
    assert "'service' is not the sender 'scada-hd'" in forged.reply["message"]
    assert forged.event.body["issuer"] == SCADA
    # a verb scada-hd may use, but still naming someone else: rejected as well
    other = h.handle(T.cmd("hold", SCADA), command("hold", issuer="service"))
    assert other.reply["code"] == "unauthorised"
    assert target.calls == []
    check_outcome(forged)
    # without an issuer, the topic alone names the sender
    out = h.handle(T.cmd("hold", SCADA), command("hold", issuer=None))
    assert out.accepted and out.event.body["issuer"] == SCADA and target.calls == [("hold", "held by scada-hd")]


def test_start_names_the_topics_sender_as_issuer_and_default_operator(ledger: CommandLedger) -> None:
    target = Recorder()
    args = {"recipe": "hd_standard", "recipe_sha256": "ab" * 32, "batch_id": "hd-8"}
    out = handler(target, ledger).handle(T.cmd("start", SCADA), command("start", args, issuer=None))
    assert out.accepted
    assert target.calls == [("start", StartRequest("hd_standard", "ab" * 32, "hd-8", SCADA, SCADA))]


def test_remote_reset_only_where_the_station_allows_it(ledger: CommandLedger) -> None:
    target = Recorder()
    out = handler(target, ledger, allow_remote_reset=False).handle(T.cmd("reset", "service"),
                                                                   command("reset", issuer="service"))
    assert out.reply["code"] == "not_allowed" and target.calls == []


def test_target_refusals_are_answered_with_their_reason(ledger: CommandLedger) -> None:
    target = Recorder()
    target.refuse = CommandRefused("state", "no batch is running: nothing to hold")
    out = handler(target, ledger).handle(T.cmd("hold", SCADA), command("hold"))
    assert (out.reply["code"], out.reply["message"]) == ("state", "no batch is running: nothing to hold")
    target.refuse = RuntimeError("disk on fire")
    out = handler(target, ledger).handle(T.cmd("hold", SCADA), command("hold"))
    assert out.reply["code"] == "error" and "disk on fire" in out.reply["message"]


# ---- an interlock has the last word: the real core --------------------------------------------

class CoreTarget(Recorder):
    """Reset goes to the real core: it refuses while the trip condition persists."""

    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core

    def reset(self, rule: str | None, remote: bool = True) -> None:
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
    out = h.handle(T.cmd("reset", "service"), command("reset", {"rule": "chamber_overpressure"}, issuer="service"))
    assert out.reply["result"] == "rejected" and out.reply["code"] == "interlock"
    assert "chamber_overpressure" in out.reply["message"]
    assert (core.rules(), core.outputs()) == before, "the trip stays latched, the vent stays open"
    check_outcome(out)
    regs.set_ai(0, 1.0)                       # the condition clears: now the same request is accepted
    for _ in range(3):
        regs.advance(1_000_000)
        core.run_ticks(1)
    out = h.handle(T.cmd("reset", "service"), command("reset", {"rule": "chamber_overpressure"}, issuer="service"))
    assert out.accepted and not core.rules()["chamber_overpressure"].tripped


# ---- the station file -------------------------------------------------------------------------

def test_the_example_station_declares_roles() -> None:
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    assert station.commands.verbs_for("scada-hd") == {"start", "hold", "resume", "abort", "ack_alarm", "record_mass",
                                                      "resend"}
    assert station.commands.verbs_for("historian") == {"resend"}
    assert station.commands.verbs_for("nobody") == frozenset()


def test_mqtt_section_errors_name_the_key() -> None:
    text = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    text = text.replace("[mqtt.roles]", "[mqtt.roles]\nsupervisor = [\"x\"]")
    text = text.replace("max_payload_bytes = 16384", "max_payload_bytes = true")
    with pytest.raises(SpecError) as info:
        parse_station(text, "hd.toml")
    shown = str(info.value)
    assert "hd.toml: mqtt.roles.supervisor: unknown role 'supervisor'" in shown
    assert "mqtt.commands.max_payload_bytes: expected an integer from 256" in shown


def _acl_block(acl: list[str], user: str) -> list[str]:
    """The lines of one user's block (up to the blank line that ends it, or the end)."""
    at = acl.index(f"user {user}")
    end = next((i for i in range(at, len(acl)) if not acl[i]), len(acl))
    return acl[at + 1:end]


def test_broker_acl_lets_each_identity_publish_only_its_verbs_under_its_own_name() -> None:
    acl = broker_acl(SETTINGS, T).splitlines()
    scada = _acl_block(acl, SCADA)
    assert f"topic write {T.root}/cmd/scada-hd/hold" in scada
    assert [line for line in scada if "/cmd/" in line and "/cmd/scada-hd/" not in line] == []
    assert f"topic write {T.cmd('reset', SCADA)}" not in scada
    assert f"topic write {T.root}/cmd/service/reset" in _acl_block(acl, "service")
    # a viewer may write one verb: resend (lost messages again, nothing it could not read already)
    assert [line for line in _acl_block(acl, "historian") if line.startswith("topic write")] == [
        f"topic write {T.cmd('resend', 'historian')}"]


def test_broker_acl_lets_the_station_write_every_reply_topic_it_accepts() -> None:
    station = _acl_block(broker_acl(SETTINGS, T).splitlines(), "hd-01")
    assert f"topic write {T.root}/reply/#" in station and f"topic read {T.root}/cmd/+/+" in station
    assert {f"topic write {t}" for t in (T.status, T.telemetry, T.state, T.event, T.batch)} <= set(station)
    assert "user hd-01-cert" in broker_acl(SETTINGS, T, station_identity="hd-01-cert").splitlines()


def test_broker_acl_refuses_a_name_that_cannot_be_a_topic_level() -> None:
    bad = CommandSettings(roles={"scada/+": frozenset({"operator"})})
    with pytest.raises(TopicError, match="identity 'scada/\\+' cannot be a command topic level"):
        broker_acl(bad, T)


def test_broker_acl_refuses_an_identity_with_a_blank_at_its_end() -> None:
    """review15: mosquitto 2.0.11 trims an ACL line's ends: from ``user lead `` / ``topic write .../cmd/lead /hold``
    the client "lead" (any role, or none) got PUBACK success writing cmd/lead /hold, the operator "lead "'s name,
    and "lead " itself got 0x87."""
    bad = CommandSettings(roles={"lead ": frozenset({"operator"})})
    with pytest.raises(TopicError, match="identity 'lead ' cannot be a command topic level"):
        broker_acl(bad, T)
    assert broker_acl(CommandSettings(roles={"ops team": frozenset({"operator"})}), T)   # a blank inside is fine


# ---- hostile payloads: a command can never stop the controller -------------------------------

def deep_command(verb: str, levels: int) -> bytes:
    """A schema-shaped command whose ``args`` is ``levels`` nested arrays (~2 bytes a level)."""
    doc = json.loads(command(verb))
    doc["args"] = None
    return json.dumps(doc).replace("null", "[" * levels + "]" * levels).encode()


def test_deep_nesting_is_refused_before_parsing_and_the_handler_goes_on(ledger: CommandLedger) -> None:
    target = Recorder()
    h = handler(target, ledger)
    payload = deep_command("hold", 950)
    assert len(payload) < 2200 and isinstance(json.loads(payload), dict)   # json.loads alone lets it through
    out = h.handle(T.cmd("hold", SCADA), payload)
    assert out.reply["code"] == "invalid" and f"deeper than {MAX_JSON_DEPTH} levels" in out.reply["message"]
    assert out.reply_topic == T.reply("hold") and not out.executed
    check_outcome(out)
    assert target.calls == [] and ledger.lookup(json.loads(payload)["command_id"]) is None
    assert h.handle(T.cmd("hold", SCADA), command("hold")).accepted      # and still works
    assert target.calls == [("hold", "held by scada-hd")]


def test_the_depth_scan_ignores_brackets_inside_strings(ledger: CommandLedger) -> None:
    assert json_too_deep(b"[" * 33 + b"]" * 33) and not json_too_deep(b"[" * 32 + b"]" * 32)
    assert not json_too_deep(json.dumps({"reason": "[{" * 500, "q": "\\\"[[[" * 100}).encode())
    assert json_too_deep(json.dumps({"reason": "]\\\"", "a": [[[1]]]}).encode(), limit=3)
    out = handler(Recorder(), ledger).handle(T.cmd("hold", SCADA), command("hold", {"reason": "[[{\\\"" * 20}))
    assert out.accepted


def test_anything_unexpected_is_answered_error_and_changes_nothing(ledger: CommandLedger) -> None:
    target = Recorder()
    h = handler(target, ledger)
    out = h.handle(T.cmd("hold", SCADA), None)  # type: ignore[arg-type]   # not bytes: a caller's bug
    assert out.reply["code"] == "error" and "TypeError" in out.reply["message"]
    assert out.reply_topic is None and target.calls == []
    check_outcome(out)


# ---- the ledger failing: refuse before executing, answer after ---------------------------------

@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[None]:
    """Another connection holds the ledger's write lock (a second process, a backup tool)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_locked_ledger_refuses_the_command_quickly_and_nothing_runs(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.db"
    target = Recorder()
    with CommandLedger(path) as led:
        assert led._db.execute("PRAGMA busy_timeout").fetchone()[0] == 200   # ms: not the 5 s default
        h = handler(target, led)
        payload = command("hold")
        with locked(path):
            out = h.handle(T.cmd("hold", SCADA), payload)
            assert out.reply["code"] == "error" and "command ledger unavailable" in out.reply["message"]
            assert not out.executed and target.calls == []
            check_outcome(out)
            # a rejection is still answered with its own reason (it just is not remembered)
            denied = h.handle(T.cmd("hold", "historian"), command("hold", issuer="historian"))
            assert denied.reply["code"] == "unauthorised"
        again = h.handle(T.cmd("hold", SCADA), payload)      # nothing was recorded: the same id now runs
        assert again.accepted and not again.reply["replayed"] and target.calls == [("hold", "held by scada-hd")]


def test_a_damaged_ledger_refuses_the_command(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.db"
    target = Recorder()
    with CommandLedger(path) as led:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("DROP TABLE commands")
        other.close()
        out = handler(target, led).handle(T.cmd("hold", SCADA), command("hold"))
    assert out.reply["code"] == "error" and "command ledger unavailable" in out.reply["message"]
    assert target.calls == []


class LockingTarget(Recorder):
    """Executes, then another connection locks the ledger before the answer can be stored."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__()
        self.other = sqlite3.connect(path, isolation_level=None)

    def hold(self, reason: str) -> None:
        super().hold(reason)
        self.other.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.other.execute("ROLLBACK")
        self.other.close()


def test_an_answer_that_cannot_be_stored_is_still_given_and_never_executed_again(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.db"
    target = LockingTarget(path)
    payload = command("hold")
    with CommandLedger(path) as led:
        h = handler(target, led)
        out = h.handle(T.cmd("hold", SCADA), payload)
        target.release()
        assert out.accepted and out.executed
        replay = h.handle(T.cmd("hold", SCADA), payload)
    assert replay.reply["code"] == "outcome_unknown" and replay.reply["replayed"]
    assert target.calls == [("hold", "held by scada-hd")]


def test_old_ids_are_pruned_on_a_rejection_path_too(ledger: CommandLedger) -> None:
    old = str(uuid.uuid4())
    ledger.begin(old, "d", "hold", SCADA, NOW - 3600 * 10**9, {"code": "ok", "message": "held"})
    out = handler(Recorder(), ledger).handle(T.cmd("hold", SCADA), b"{")
    assert out.reply["code"] == "not_json"
    assert ledger.lookup(old) is None


# ---- floods: a budget per scan, one ledger transaction per batch -------------------------------

class Clock:
    """A ``timer`` that the target advances: time passes only when a command executes."""

    def __init__(self) -> None:
        self.t = 0.0


class SlowTarget(Recorder):
    def __init__(self, clock: Clock, cost_s: float) -> None:
        super().__init__()
        self.clock, self.cost_s = clock, cost_s

    def _do(self, name: str, arg: Any = None) -> None:
        super()._do(name, arg)
        self.clock.t += self.cost_s


def test_handle_many_answers_busy_once_the_budget_is_spent(ledger: CommandLedger) -> None:
    clock = Clock()
    target = SlowTarget(clock, cost_s=0.004)
    h = CommandHandler(topics=T, settings=SETTINGS, operator=Operator(target, allow_remote_reset=False),
                       ledger=ledger, clock=lambda: NOW, timer=lambda: clock.t)
    payloads = [command("hold", {"reason": f"r{i}"}) for i in range(5)]
    batch = [Received(T.cmd("hold", SCADA), p, correlation_data=b"c%d" % i) for i, p in enumerate(payloads)]
    outs = h.handle_many(batch, budget_s=0.01)
    assert [o.reply["code"] for o in outs] == ["ok", "ok", "ok", "busy", "busy"]
    assert target.calls == [("hold", "r0"), ("hold", "r1"), ("hold", "r2")]
    busy = outs[3]
    assert busy.reply["command_id"] == json.loads(payloads[3])["command_id"] and not busy.executed
    assert busy.reply_topic == T.reply("hold") and busy.correlation_data == b"c3" and "again" in busy.reply["message"]
    check_outcome(busy)
    # sent again, the same ids run: busy was not remembered
    again = h.handle_many([Received(T.cmd("hold", SCADA), p) for p in payloads[3:]], budget_s=1.0)
    assert [o.reply["code"] for o in again] == ["ok", "ok"] and len(target.calls) == 5
    # at least one is handled, even with no budget at all
    assert [o.reply["code"] for o in h.handle_many(batch[:2], budget_s=0)] == ["ok", "busy"]


def test_a_flood_of_rejections_is_remembered_in_one_batch(tmp_path: pathlib.Path) -> None:
    target = Recorder()
    flood = [Received(T.cmd("hold", "historian"), command("hold", issuer="historian")) for _ in range(50)]
    with CommandLedger(tmp_path / "c.db") as led:
        outs = handler(target, led).handle_many([*flood, Received(T.cmd("hold", SCADA), command("hold"))], 10.0)
    assert [o.reply["code"] for o in outs] == ["unauthorised"] * 50 + ["ok"]
    with CommandLedger(tmp_path / "c.db") as led:     # committed: a replay after a restart gets the same answer
        replays = handler(target, led).handle_many(flood[:3], 10.0)
    assert [(o.reply["code"], o.reply["replayed"]) for o in replays] == [("unauthorised", True)] * 3
    assert target.calls == [("hold", "held by scada-hd")]


def test_handle_many_refuses_a_bad_budget(ledger: CommandLedger) -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="budget_s"):
            handler(Recorder(), ledger).handle_many([], bad)
    batch = [Received(T.cmd("hold", SCADA), command("hold")) for _ in range(3)]
    assert [o.reply["code"] for o in handler(Recorder(), ledger).handle_many(batch, float("inf"))] == ["ok"] * 3


# ---- one operator-command path: stdin and MQTT get the same checks and the same answers -------

class Idle:
    """A station with no batch, as far as ``ControllerTarget``'s state checks look: nothing is running."""

    sequencer = None
    tuning = None

    class core:   # stands in for the controller's core attribute: no interlock tripped
        @staticmethod
        def rules() -> dict[str, Any]:
            return {}


def both_paths(tmp_path: pathlib.Path, payload: dict[str, Any], *,
               allow_remote_reset: bool = False) -> tuple[tuple[str, str], tuple[str, str]]:
    """(code, message) of the same command sent over MQTT (by the maintenance identity) and on stdin."""
    from edge.app.stdin_commands import answer, read_line
    from edge.operator.target import ControllerTarget

    verb, args = payload["cmd"], {k: v for k, v in payload.items() if k != "cmd"}
    operator = Operator(ControllerTarget(Idle(), tmp_path), allow_remote_reset=allow_remote_reset)  # type: ignore[arg-type]
    with CommandLedger(tmp_path / "c.db") as led:
        h = CommandHandler(topics=T, settings=SETTINGS, operator=operator, ledger=led, clock=lambda: NOW)
        mqtt = h.handle(T.cmd(verb, "service"), command(verb, args, issuer="service")).reply
    stdin = answer(operator, read_line(json.dumps(payload)))
    return (mqtt["code"], mqtt["message"]), (stdin.code, stdin.message)


@pytest.mark.parametrize(("payload", "code", "says"), [
    ({"cmd": "hold", "reason": "door"}, "state", "no batch is running: nothing to hold"),
    ({"cmd": "resume"}, "state", "no batch is running: nothing to resume"),
    ({"cmd": "abort"}, "state", "no batch is running: nothing to abort"),
    ({"cmd": "reset"}, "not_allowed", "remote reset"),
    ({"cmd": "start", "recipe": "hd_standard", "recipe_sha256": "ab" * 32, "batch_id": "b-1"}, "invalid",
     "no recipe 'hd_standard' on this station"),
])
def test_stdin_and_mqtt_refuse_the_same_command_the_same_way(tmp_path: pathlib.Path, payload: dict[str, Any],
                                                             code: str, says: str) -> None:
    mqtt, stdin = both_paths(tmp_path, payload)
    assert mqtt == stdin and mqtt[0] == code and says in mqtt[1], (mqtt, stdin)


def test_stdin_checks_the_arguments_mqtts_schema_checks() -> None:
    from edge.app.stdin_commands import answer, read_line

    target = Recorder()
    operator = Operator(target, allow_remote_reset=True)
    for line, says in (('{"cmd": "start", "recipe": "../../etc/passwd", "recipe_sha256": "' + "ab" * 32
                        + '", "batch_id": "b-1"}', "recipe: must be a recipe name"),
                       ('{"cmd": "resume", "reason": "x"}', "resume has no argument 'reason'"),
                       ('{"cmd": "hold", "reasn": "x"}', "did you mean 'reason'"),
                       ('{"cmd": "record_mass", "mass_out_kg": -3}', "mass out must be a number"),
                       ('{"cmd": "ack_alarm"}', "alarm: missing"),
                       ('{"cmd": "autotune", "loop": "chamber", "setpoint_c": -5}', "setpoint_c: expected a"),
                       ('{"cmd": "autotune", "setpoint_c": true}', "loop: missing"),
                       ('{"cmd": "vent"}', "unknown command 'vent'"),
                       ('{"cmd": "record_mass", "mass_out_kg": 1' + "0" * 400 + "}", "mass out must be a number"),
                       ('{"cmd": "start", "recipe": "hd_standard", "recipe_sha256": "' + "ab" * 32
                        + '", "batch_id": "b-1", "mass_in_kg": 1' + "0" * 400 + "}", "must be a number"),
                       ("[" * 200_000, "nested too deeply"),
                       ('[1]', "not a JSON object")):
        done = answer(operator, read_line(line))
        assert done.code == "invalid" and says in done.message, (line, done)
    assert target.calls == []
    assert answer(operator, read_line('{"cmd": "skip"}')).message == "segment skipped"
    assert target.calls == [("skip", None)]


def test_a_closed_path_refuses_everything_on_both_transports(ledger: CommandLedger) -> None:
    from edge.app.stdin_commands import answer, read_line

    target = Recorder()
    h = handler(target, ledger)
    h.operator.close("station stopping")
    out = h.handle(T.cmd("hold", SCADA), command("hold"))
    done = answer(h.operator, read_line('{"cmd": "hold"}'))
    assert (out.reply["code"], out.reply["message"]) == (done.code, done.message) == ("refused", "station stopping")
    assert target.calls == []


class Running:
    """A running batch as ``ControllerTarget`` sees it: held by an operator, by its own program, or not at all."""

    def __init__(self, *, operator_hold: bool, program_state: str) -> None:
        from edge.control.programmer import ProgState

        self.resumed = 0
        program = type("Program", (), {"state": ProgState[program_state]})()
        self.sequencer = type("Seq", (), {"running": True, "held": "door" if operator_hold else None,
                                          "program": program})()

    def resume(self) -> None:
        self.resumed += 1


@pytest.mark.parametrize(("operator_hold", "program_state", "resumed"), [
    (True, "RUN", True),       # an operator's hold
    (False, "HOLD", True),     # the program's own hold (a wait that timed out on_timeout = "hold", power-fail recovery)
    (False, "RUN", False),     # nothing held: refused, on both paths
])
def test_resume_releases_an_operators_or_the_programs_hold_on_both_paths(
        tmp_path: pathlib.Path, operator_hold: bool, program_state: str, resumed: bool) -> None:
    """A program hold waits for a person; the operator role may release it from SCADA as from the console (before
    the operator path was shared, MQTT refused it as "not held" and only an abort could end such a batch)."""
    from edge.app.stdin_commands import answer, read_line
    from edge.operator.target import ControllerTarget

    for via in ("mqtt", "stdin"):
        ctl = Running(operator_hold=operator_hold, program_state=program_state)
        operator = Operator(ControllerTarget(ctl, tmp_path), allow_remote_reset=False)  # type: ignore[arg-type]
        if via == "mqtt":
            with CommandLedger(tmp_path / f"{via}.db") as led:
                h = CommandHandler(topics=T, settings=SETTINGS, operator=operator, ledger=led, clock=lambda: NOW)
                reply = h.handle(T.cmd("resume", SCADA), command("resume")).reply
            code, message = reply["code"], reply["message"]
        else:
            done = answer(operator, read_line('{"cmd": "resume"}'))
            code, message = done.code, done.message
        assert (code == "ok", ctl.resumed) == (resumed, int(resumed)), (via, code, message)
        if not resumed:
            assert (code, message) == ("state", "the sequence is not held"), via
        (tmp_path / f"{via}.db").unlink(missing_ok=True)
