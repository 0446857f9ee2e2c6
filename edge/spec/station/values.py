"""Typed values of the station file shared by its section readers: names, units, actions, gases."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import cast

from edge.spec.core import (
    ChannelSpec,
)
from edge.spec.reader import Bad as _Bad
from edge.spec.reader import Conv as _Conv
from edge.spec.reader import Table as _Table
from edge.spec.reader import choice as _choice
from edge.spec.reader import describe as _describe
from edge.spec.reader import did_you_mean as _did_you_mean
from edge.spec.reader import integer_in as _integer_in
from edge.spec.reader import join as _join
from edge.spec.reader import list_of as _list_of
from edge.spec.reader import matching as _matching
from edge.spec.reader import number_in as _number_in
from edge.spec.reader import short as _short
from edge.spec.station.model import (
    ALL_OUTPUTS,
    DEADMAN_RULE,
    EC_MAX_OUTPUTS,
    EC_MEDIAN_MAX,
    EC_NAME_LEN,
    GASES,
    GPIO_LINES_MAX,
    IDENT_RE,
    NAME_RE,
    PARAM_RE,
    RING_MAX,
    RING_MIN,
    TC_RANGE_C,
    UNIT_RE,
    Gas,
)


def _value_range(channel: ChannelSpec) -> tuple[float, float]:
    """What the channel can read: its declared range, narrowed to its thermocouple type; 0..1 if digital."""
    if channel.kind == "digital":
        return 0.0, 1.0
    lo, hi = channel.range_lo, channel.range_hi
    if channel.tc_type is not None:
        type_lo, type_hi = TC_RANGE_C[channel.tc_type]
        lo, hi = max(lo, type_lo), min(hi, type_hi)
    return lo, hi


# ============================================================================ station-specific converters


_NAME_HELP = (f"expected a lowercase letter, then lowercase letters, digits or _ ({EC_NAME_LEN - 1} characters "
              "at most)")





def _median(value: object) -> int:
    number = _integer_in(1, EC_MEDIAN_MAX)(value)
    if number % 2 == 0:
        raise _Bad(f"expected an odd window (1 = off, 3, 5, 7 or {EC_MEDIAN_MAX}), got {number}")
    return number


def _ring_size(value: object) -> int:
    number = _integer_in(RING_MIN, RING_MAX)(value)
    if number & (number - 1):
        raise _Bad(f"expected a power of two from {RING_MIN} to {RING_MAX}, got {number}")
    return number


def _deadman_ms(period_ms: float) -> _Conv[float]:
    """A dead-man must span several sampler ticks and at most ten minutes."""
    floor = max(10.0, 2.0 * period_ms)
    return _number_in(floor, 600_000.0)








_name = _matching(NAME_RE, _NAME_HELP)


def _named_tables(section: _Table) -> list[tuple[str, _Table | None]]:
    """[section.NAME] tables whose NAME is a station name (the dead-man rule's reserved name allowed)."""
    return section.named_tables(_name, allowed=(DEADMAN_RULE,) if section.path == "interlocks" else ())
_ident = _matching(IDENT_RE, "expected lowercase letters, digits, - and _ (32 characters at most)")
_unit = _matching(UNIT_RE, "expected a unit without spaces, 16 characters at most, e.g. \"bar\" or \"%LEL\"")
_param_text = _matching(PARAM_RE, "expected text without spaces, ';' or '='")
_absolute_path = _matching(re.compile(r"/" + PARAM_RE.pattern), "expected an absolute path without spaces, ';' "
                                                                "or '='")





def _action(value: object) -> tuple[str, ...] | str:
    """ "all", or a non-empty array of output names."""
    if value == ALL_OUTPUTS:
        return ALL_OUTPUTS
    if isinstance(value, str):
        raise _Bad(f"expected an array of output names or \"all\", got {_describe(value)}")
    names = _list_of(_name, "output names", max_len=EC_MAX_OUTPUTS)(value)
    if not names:
        raise _Bad("an interlock must force at least one output: the action is empty")
    return tuple(names)


def _line_offsets(value: object) -> list[int]:
    return _list_of(_integer_in(0, 65535), "GPIO line offsets", max_len=GPIO_LINES_MAX)(value)


def _join_ints(numbers: Iterable[int]) -> str:
    """A list as the C drivers parse it: "5,6,13"."""
    return ",".join(map(str, numbers))



def _gas_list(value: object) -> tuple[Gas, ...]:
    gases = _list_of(_choice(GASES), "gases", max_len=len(GASES))(value)
    if not gases:
        raise _Bad("expected at least one gas")
    return tuple(cast(Gas, gas) for gas in gases)


def _name_or_empty(value: object) -> str:
    """A name, or "" for a role the station does not have."""
    return "" if value == "" else _name(value)


def _gas_table(value: object) -> dict[str, str]:
    """{ H2 = "h2_inlet_valve", Ar = "ar_inlet_valve" }: known gases to output names."""
    if not isinstance(value, dict):
        raise _Bad(f"expected a table {{ H2 = \"OUTPUT\", ... }}, got {_describe(value)}")
    result: dict[str, str] = {}
    for gas, name in value.items():
        at = "." + _join("", gas)
        if gas not in GASES:
            raise _Bad(f"unknown gas '{_short(gas)}' (expected one of: {', '.join(GASES)})"
                       f"{_did_you_mean(gas, GASES)}", at=at)
        try:
            result[gas] = _name(name)
        except _Bad as bad:
            raise _Bad(str(bad), at=at) from None
    return result



def _number_table(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _Bad(f"expected a table {{ channel = degC, ... }}, got {_describe(value)}")
    result: dict[str, float] = {}
    for key, element in value.items():
        try:
            result[key] = _number_in(0.0, 2500.0, lo_open=True)(element)
        except _Bad as bad:
            raise _Bad(str(bad), at=f".{key}") from None
    return result
