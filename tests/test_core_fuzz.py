"""Fuzz the C core's entry points with hypothesis: any argument gives a code, never a crash.

Runs in-process against the real extension, so a crash takes the test run down with it
(which fails CI loudly). Bounded by max_examples so the suite stays quick.
"""

from __future__ import annotations

import pathlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core import native
from hil.regfile import RegisterFile

ffi, lib = native()
ERR = 256

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e308, -1e-308]))
ints = st.one_of(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.integers(min_value=-3, max_value=70))
names = st.binary(min_size=0, max_size=40).filter(lambda b: b"\0" not in b)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

OK_CODES = {0, -1, -2, -3, -4, -5, -6, -7, -8, -9}


def new_core(period: float = 1.0) -> Any:
    cfg = ffi.new("ec_core_cfg *")
    lib.ec_core_cfg_default(cfg)
    cfg.period_ms = period
    pp = ffi.new("ec_core **")
    err = ffi.new("char[]", ERR)
    assert lib.ec_core_new(cfg, pp, err, ERR) == 0
    return pp[0]


def regfile(tmp_path_factory: Any) -> pathlib.Path:
    path = pathlib.Path(tmp_path_factory.mktemp("fuzz")) / "f.regs"
    RegisterFile.create(path).close()
    return path


@SETTINGS
@given(period=floats, sample_ring=ints, event_ring=ints, rt=ints, reset=ints, wd=ints)
def test_core_new_any_config(period: float, sample_ring: int, event_ring: int, rt: int, reset: int, wd: int) -> None:
    cfg = ffi.new("ec_core_cfg *")
    lib.ec_core_cfg_default(cfg)
    cfg.period_ms = period
    cfg.sample_ring = sample_ring & 0xFFFFFFFF
    cfg.event_ring = event_ring & 0xFFFFFFFF
    cfg.rt_priority = rt
    cfg.reset_channel = reset
    cfg.watchdog_output = wd
    pp = ffi.new("ec_core **")
    err = ffi.new("char[]", ERR)
    rc = lib.ec_core_new(cfg, pp, err, ERR)
    assert rc in OK_CODES
    if rc == 0:
        assert 0.1 <= period <= 1000
        lib.ec_core_free(pp[0])
    else:
        assert pp[0] == ffi.NULL and ffi.string(err)


@SETTINGS
@given(name=names, kind=ints, driver=ints, inp=ints, scale=floats, offset=floats, lo=floats, hi=floats,
       tc=st.integers(min_value=0, max_value=255), cj=ints, median=ints, tau=floats, age=floats, window=floats,
       rule_kind=ints, threshold=floats, hyst=floats, debounce=floats, action=st.integers(0, 2**64 - 1),
       out_line=ints, safe=ints, max_on=floats, cycle=floats)
def test_configuration_calls_any_values(tmp_path_factory: Any, name: bytes, kind: int, driver: int, inp: int,
                                        scale: float, offset: float, lo: float, hi: float, tc: int, cj: int,
                                        median: int, tau: float, age: float, window: float, rule_kind: int,
                                        threshold: float, hyst: float, debounce: float, action: int,
                                        out_line: int, safe: int, max_on: float, cycle: float) -> None:
    path = regfile(tmp_path_factory)
    core = new_core()
    err = ffi.new("char[]", ERR)
    try:
        assert lib.ec_core_add_driver(core, b"sim", f"path={path}".encode(), err, ERR) == 0
        ch = ffi.new("ec_channel_cfg *")
        lib.ec_channel_cfg_default(ch)
        ffi.memmove(ch.name, name[:31], min(len(name), 31))
        ch.kind, ch.driver, ch.input = kind, driver, inp
        ch.scale, ch.offset, ch.range_lo, ch.range_hi = scale, offset, lo, hi
        ch.tc_type = bytes([tc])
        ch.cj_channel, ch.median_n = cj, median
        ch.ema_tau_ms, ch.max_age_ms, ch.rate_window_ms = tau, age, window
        rc_ch = lib.ec_core_add_channel(core, ch, err, ERR)
        assert rc_ch in OK_CODES
        out = ffi.new("ec_output_cfg *")
        lib.ec_output_cfg_default(out)
        out.name = b"out"
        out.line, out.safe_level, out.max_on_ms, out.duty_cycle_ms = out_line, safe, max_on, cycle
        rc_out = lib.ec_core_add_output(core, out, err, ERR)
        assert rc_out in OK_CODES
        rule = ffi.new("ec_rule_cfg *")
        lib.ec_rule_cfg_default(rule)
        ffi.memmove(rule.name, name[:31], min(len(name), 31))
        rule.kind, rule.channel, rule.threshold = rule_kind, 0, threshold
        rule.hysteresis, rule.debounce_ms, rule.action = hyst, debounce, action
        assert lib.ec_core_add_rule(core, rule, err, ERR) in OK_CODES
        # whatever was accepted must run
        assert lib.ec_core_run_ticks(core, 5) == 0
        samples = ffi.new("ec_sample[]", 8)
        events = ffi.new("ec_event[]", 8)
        assert lib.ec_core_drain_samples(core, samples, 8) == 5
        assert lib.ec_core_drain_events(core, events, 8) >= 0
    finally:
        lib.ec_core_free(core)


@SETTINGS
@given(calls=st.lists(st.tuples(st.sampled_from(["request", "duty", "inject", "reset", "tick", "heartbeat"]),
                                ints, floats, st.one_of(ints, st.integers(-(2**63), 2**63 - 1))), max_size=30))
def test_runtime_calls_any_order(tmp_path_factory: Any, calls: list[tuple[str, int, float, int]]) -> None:
    path = regfile(tmp_path_factory)
    core = new_core()
    err = ffi.new("char[]", ERR)
    try:
        assert lib.ec_core_add_driver(core, b"sim", f"path={path}".encode(), err, ERR) == 0
        ch = ffi.new("ec_channel_cfg *")
        lib.ec_channel_cfg_default(ch)
        ch.name, ch.kind, ch.max_age_ms = b"node", 3, 50.0
        assert lib.ec_core_add_channel(core, ch, err, ERR) == 0
        out = ffi.new("ec_output_cfg *")
        lib.ec_output_cfg_default(out)
        out.name = b"heater"
        assert lib.ec_core_add_output(core, out, err, ERR) == 0
        rule = ffi.new("ec_rule_cfg *")
        lib.ec_rule_cfg_default(rule)
        rule.name, rule.kind, rule.channel, rule.threshold, rule.action = b"hot", 0, 0, 100.0, 1
        assert lib.ec_core_add_rule(core, rule, err, ERR) == 0
        for verb, i, x, j in calls:
            if verb == "request":
                rc = lib.ec_core_request_output(core, i, max(min(j, 2**31 - 1), -(2**31)), err, ERR)
            elif verb == "duty":
                rc = lib.ec_core_set_duty(core, i, x, err, ERR)
            elif verb == "inject":
                rc = lib.ec_core_inject(core, i, x, j & 0xFFFFFFFF, j, err, ERR)
            elif verb == "reset":
                rc = lib.ec_core_reset(core, i, err, ERR)
            elif verb == "tick":
                rc = lib.ec_core_run_ticks(core, abs(i) % 20)
            else:
                rc = lib.ec_core_heartbeat(core)
            assert rc in OK_CODES
            levels = ffi.new("uint64_t *")
            forced = ffi.new("uint64_t *")
            lib.ec_core_outputs(core, levels, ffi.NULL, forced)
            assert not (levels[0] & forced[0] & 1), "a forced output is never energised (heater safe level is 0)"
    finally:
        lib.ec_core_free(core)


@SETTINGS
@given(params=st.binary(max_size=300), driver=st.sampled_from([b"sim", b"gpiochip", b"spidev", b"x", b""]))
def test_driver_params_any_bytes(params: bytes, driver: bytes) -> None:
    core = new_core()
    err = ffi.new("char[]", ERR)
    try:
        rc = lib.ec_core_add_driver(core, driver, params.replace(b"\0", b""), err, ERR)
        assert rc in OK_CODES or rc >= 0
    finally:
        lib.ec_core_free(core)
