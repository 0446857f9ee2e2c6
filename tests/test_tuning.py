"""A loop's autotune run by the controller (edge.control.tuning) on the real C core and the HD plant model in
lockstep: it converges to gains near the hand-tuned ones, reports each cycle, a trip (even one that cleared
between scans) or air coming in aborts it with the heater safe, and it is refused while a batch runs, a trip
stands, the vessel is not under vacuum or the setpoint leaves no room below the limit."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from edge.control.controller import BatchRejected, Controller
from edge.control.tuning import TuneRejected
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import load_station
from hil.lockstep import LockstepRig
from hil.plants.hd_reactor import HDReactor

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATION = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
SETPOINT = 450.0     # under vacuum the retort couples by radiation: at 150 degC a relay cycle takes ~25 min


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[tuple[LockstepRig, Controller, HDReactor]]:
    plant = HDReactor()
    with LockstepRig(STATION, plant, dt_s=2.0) as lockstep:
        ctl = Controller(lockstep.core, lockstep.station, state_path=tmp_path / "run.json")
        plant.s.n_air = 0.0                   # pumped down, as a recipe leaves it before it heats
        lockstep.run_until(lambda: False, 20, ctl.step)
        yield lockstep, ctl, plant


def tune_events(ctl: Controller) -> list[dict[str, object]]:
    return [{"message": e.message, **e.data} for e in ctl.events if e.kind == "autotune"]


def test_an_autotune_converges_to_gains_near_the_hand_tuned_ones(rig: tuple[LockstepRig, Controller,
                                                                             HDReactor]) -> None:
    lockstep, ctl, plant = rig
    ctl.start_autotune("chamber", SETPOINT)
    peak = 0.0

    def scan() -> None:
        nonlocal peak
        ctl.step()
        peak = max(peak, plant.s.charge_c)

    assert lockstep.run_until(lambda: ctl.tuning is None, 6 * 3600, scan)
    events = tune_events(ctl)
    states = [e["state"] for e in events]
    assert states[0] == "started" and states[-1] == "done" and states.count("cycle") >= 4, events
    done = events[-1]
    hand = STATION.loops[0].gains
    for key, theirs in (("kp", hand.kp), ("ti_s", hand.ti_s), ("td_s", hand.td_s)):
        assert 0.4 < float(done[key]) / theirs < 2.5, (key, done[key], theirs)   # type: ignore[arg-type]
    assert "kp" in str(done["message"]) and peak < SETPOINT + 30.0   # the relay swings a few degC around it
    lockstep.run_until(lambda: False, 60, ctl.step)
    assert ctl.core.snapshot().outputs["heater"].level == 0            # heater off after the tune


def test_a_trip_that_cleared_between_two_scans_still_ends_the_tune(rig: tuple[LockstepRig, Controller,
                                                                              HDReactor]) -> None:
    """A non-latched trip (the lid, 50 ms debounce) that trips and clears between two scans: a batch aborts on its
    TRIP event, and so does the tune now (it went on and switched the heater on again)."""
    lockstep, ctl, plant = rig
    ctl.start_autotune("chamber", SETPOINT)
    assert lockstep.run_until(lambda: plant.s.charge_c > 100.0, 3 * 3600, ctl.step)
    plant.s.lid_open = True
    for _ in range(2):
        lockstep.step(ctl.core.heartbeat)                               # no scan: the core trips on its own
    assert ctl.core.snapshot().tripped == ("lid_open",)
    plant.s.lid_open = False
    for _ in range(2):
        lockstep.step(ctl.core.heartbeat)                               # and clears (not latched)
    assert not ctl.core.snapshot().tripped
    ctl.step()
    last = tune_events(ctl)[-1]
    assert ctl.tuning is None and last["state"] == "failed" and "interlock lid_open tripped" in str(last["message"])


@pytest.mark.parametrize("leak, reached", [(0.0, True), (5000.0, False)])
def test_from_atmosphere_it_pumps_down_before_it_heats(tmp_path: pathlib.Path, leak: float, reached: bool) -> None:
    """Like a recipe, no heat before the station's vacuum before heating: the tune pumps down first, the heater off,
    then the relay starts; a vessel that does not get there (a leak) ends it without ever heating."""
    plant = HDReactor()                                                 # at atmosphere, full of air
    plant.s.extra_air_leak_mbar_l_s = leak
    with LockstepRig(STATION, plant, dt_s=2.0) as lockstep:
        ctl = Controller(lockstep.core, lockstep.station, state_path=tmp_path / "run.json")
        lockstep.step(ctl.step)
        ctl.start_autotune("chamber", SETPOINT)
        heated_above_limit = []

        def scan() -> None:
            ctl.step()
            snap = ctl.core.snapshot()
            if snap.outputs["heater"].level and not snap.readings["chamber_vacuum"] <= 0.1:
                heated_above_limit.append(snap.readings["chamber_vacuum"])

        assert lockstep.run_until(lambda: ctl.tuning is None or ctl.tuning.pumped, 3600, scan)
        assert heated_above_limit == []
        if reached:
            assert [e["state"] for e in tune_events(ctl)] == ["started", "pumped"]
        else:
            assert "after 30 min of pumping" in str(tune_events(ctl)[-1]["message"])
            assert plant.s.heater_j == 0.0


def test_air_coming_in_ends_the_tune(rig: tuple[LockstepRig, Controller, HDReactor]) -> None:
    lockstep, ctl, plant = rig
    ctl.start_autotune("chamber", SETPOINT)
    assert lockstep.run_until(lambda: plant.s.charge_c > 100.0, 3 * 3600, ctl.step)
    assert ctl.core.snapshot().outputs["vacuum_pump"].level == 1        # the pump keeps the vacuum meanwhile
    plant.s.extra_air_leak_mbar_l_s = 5000.0                            # a seal lets go
    assert lockstep.run_until(lambda: ctl.tuning is None, 600, ctl.step)
    assert "air or gas is coming in" in str(tune_events(ctl)[-1]["message"])
    lockstep.run_until(lambda: False, 10, ctl.step)
    assert ctl.core.snapshot().outputs["heater"].level == 0 and ctl.core.snapshot().outputs["vacuum_pump"].level == 0


@pytest.mark.parametrize("fault, words", [
    ("lid_open", "lid"),            # a permissive of the heater and an interlock: the core refuses the duty
    ("estop_pressed", "interlock estop tripped"),    # an interlock only: the core forces the heater safe
])
def test_a_trip_aborts_the_tune_and_the_heater_stays_safe(rig: tuple[LockstepRig, Controller, HDReactor],
                                                          fault: str, words: str) -> None:
    lockstep, ctl, plant = rig
    ctl.start_autotune("chamber", SETPOINT)
    assert lockstep.run_until(lambda: plant.s.charge_c > 100.0, 3 * 3600, ctl.step)
    setattr(plant.s, fault, True)
    assert lockstep.run_until(lambda: ctl.tuning is None, 120, ctl.step)
    last = tune_events(ctl)[-1]
    assert last["state"] == "failed" and "aborted" in str(last["message"]) and words in str(last["message"]), last
    assert ctl.core.snapshot().outputs["heater"].level == 0
    setattr(plant.s, fault, False)
    lockstep.run_until(lambda: False, 120, ctl.step)
    assert ctl.core.snapshot().outputs["heater"].level == 0            # not asked again: the tune is over
    assert ctl.loops["chamber"][1].mode == "manual"


def test_a_tune_is_refused_when_it_cannot_run_safely(rig: tuple[LockstepRig, Controller, HDReactor]) -> None:
    lockstep, ctl, plant = rig
    with pytest.raises(TuneRejected, match=r"no loop 'oven' on this station \(its loops: chamber\)"):
        ctl.start_autotune("oven", 150.0)
    with pytest.raises(TuneRejected, match=r"at least 12 degC below the station's limit for chamber_temp"):
        ctl.start_autotune("chamber", STATION.limits.max_temperature_for("chamber_temp") - 5.0)
    with pytest.raises(TuneRejected, match="setpoint must be a number"):
        ctl.start_autotune("chamber", float("nan"))
    plant.s.lid_open = True
    lockstep.run_until(lambda: False, 10, ctl.step)
    with pytest.raises(TuneRejected, match="interlocks tripped: lid_open"):
        ctl.start_autotune("chamber", SETPOINT)
    plant.s.lid_open = False
    lockstep.run_until(lambda: False, 10, ctl.step)
    ctl.start_autotune("chamber", SETPOINT)
    with pytest.raises(BatchRejected, match="loop chamber is being autotuned"):
        ctl.start_batch(load_recipe(ROOT / "recipes" / "hd_standard.toml"), batch_id="b-2")
    with pytest.raises(TuneRejected, match="loop chamber is being autotuned already"):
        ctl.start_autotune("chamber", SETPOINT)
    ctl.abort("operator stop")                                          # no batch: the abort ends the tune
    assert ctl.tuning is None and tune_events(ctl)[-1]["state"] == "failed"
    ctl.tune_only = True                                                # `reedge autotune`: no batch by command
    with pytest.raises(BatchRejected, match="runs `reedge autotune`"):
        ctl.start_batch(load_recipe(ROOT / "recipes" / "hd_standard.toml"), batch_id="b-3")
    ctl.tune_only = False
    ctl.start_batch(load_recipe(ROOT / "recipes" / "hd_standard.toml"), batch_id="b-1")
    with pytest.raises(TuneRejected, match="batch b-1 is running"):
        ctl.start_autotune("chamber", SETPOINT)


def test_the_maintenance_role_alone_starts_a_tune_over_mqtt(rig: tuple[LockstepRig, Controller, HDReactor],
                                                           tmp_path: pathlib.Path) -> None:
    """The autotune command (schema-checked, role-checked) on the real controller: the operator and a viewer are
    not allowed, maintenance is; a bad loop is refused with the reason; the tune then runs to its gains."""
    from edge.operator.execute import Operator
    from edge.operator.target import ControllerTarget
    from edge.spec.access import CommandSettings
    from edge.telemetry.commands import CommandHandler, CommandLedger
    from edge.telemetry.topics import StationTopics
    from tests.test_commands import NOW, command

    lockstep, ctl, _ = rig
    topics = StationTopics("pilot-line", "hd-01")
    settings = CommandSettings(roles={"scada": frozenset({"operator"}), "dash": frozenset({"viewer"}),
                                      "service": frozenset({"maintenance"})})
    operator = Operator(ControllerTarget(ctl, tmp_path), allow_remote_reset=False)
    with CommandLedger(tmp_path / "c.db") as ledger:
        handler = CommandHandler(topics=topics, settings=settings, operator=operator, ledger=ledger,
                                 clock=lambda: NOW)

        def send(who: str, args: dict[str, object]) -> tuple[str, str]:
            reply = handler.handle(topics.cmd("autotune", who), command("autotune", args, issuer=who)).reply
            return reply["code"], reply["message"]

        assert send("scada", {"loop": "chamber", "setpoint_c": SETPOINT})[0] == "unauthorised"
        assert send("dash", {"loop": "chamber", "setpoint_c": SETPOINT})[0] == "unauthorised"
        assert ctl.tuning is None
        code, message = send("service", {"loop": "oven", "setpoint_c": SETPOINT})
        assert code == "refused" and "no loop 'oven'" in message
        code, message = send("service", {"loop": "chamber", "setpoint_c": SETPOINT})
        assert code == "ok" and "autotune of loop chamber around 450 degC started" in message
    assert lockstep.run_until(lambda: ctl.tuning is None, 6 * 3600, ctl.step)
    assert tune_events(ctl)[-1]["state"] == "done"


def test_the_gains_go_into_the_station_file_only_as_asked_and_the_old_ones_stay(tmp_path: pathlib.Path) -> None:
    """``reedge autotune --write``: kp, ti_s, td_s of the one loop change, their comments and everything else
    stay, a comment keeps the old values, the file still loads with exactly the new gains; a file changed since
    the tune began is not written."""
    import hashlib

    from edge.app.tune import write_gains
    from edge.spec.loops import PidGains
    from edge.spec.reader import SpecError

    path = tmp_path / "hd.toml"
    original = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    path.write_text(original)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = {"ku": 0.0989, "tu_s": 517.3, "rule": "tyreus_luyben_pid"}
    write_gains(path, "chamber", PidGains(0.044951, 1138.07, 82.11), before, result)
    text = path.read_text()
    assert load_station(path).loops[0].gains == PidGains(0.04495, 1138.0, 82.11)
    assert "# reedge autotune " in text and "were kp = 0.08, ti_s = 800.0, td_s = 100.0" in text
    assert "kp = 0.04495                    # 8 % duty per degC" in text       # the line's comment stays
    changed = [line for line in text.splitlines() if line not in original.splitlines()]
    assert len(changed) == 4, changed                                    # the note and the three gains only
    with pytest.raises(SpecError, match="changed while the loop was tuned"):
        write_gains(path, "chamber", PidGains(0.05, 900.0, 90.0), before, result)
    assert path.read_text() == text
    with pytest.raises(SpecError, match=r"no \[loops.oven\] table"):
        write_gains(path, "oven", PidGains(0.05, 900.0, 90.0), hashlib.sha256(path.read_bytes()).hexdigest(), result)
