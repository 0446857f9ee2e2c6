"""Thermocouple conversions on the NIST ITS-90 reference functions, done by the C core.

The same C code converts the plant's thermocouple channels inside the sampler, so
Python (recipes, tools, tests) gets exactly the numbers the controller acts on. A
sequence crosses into C once, as one batch, so converting a whole log stays cheap.

Type B's EMF dips below zero between 0 and about 42.13 degC (its minimum is near 21 degC),
so an EMF there names two temperatures: its inverse accepts 0 mV upward and answers
from about 42.13 degC (see ``tc_range``); its forward function covers 0..1820 degC.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Literal, NamedTuple, overload

from edge.core import native

__all__ = [
    "TC_TYPES",
    "TcRange",
    "ThermocoupleRangeError",
    "celsius_to_emf",
    "emf_to_celsius",
    "tc_range",
]

TC_TYPES = "BEJKNRST"
"""The accepted type letters (either case)."""

OutOfRange = Literal["raise", "nan"]

_EC_OK = 0
_EC_ERANGE = -2
_SHOW_BAD = 5  # bad indices named in an error message


class ThermocoupleRangeError(ValueError):
    """A temperature or EMF outside the type's NIST range; ``indices`` names bad entries of a sequence."""

    def __init__(self, message: str, indices: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.indices = indices


class TcRange(NamedTuple):
    """Forward temperature range and the EMF range the inverse accepts (0 degC reference)."""

    t_min_c: float
    t_max_c: float
    emf_min_mv: float
    emf_max_mv: float


def _letter(tc_type: str) -> bytes:
    """The C ``char`` for a type letter; a clear error beats the core's bare EC_EINVAL."""
    if isinstance(tc_type, str) and len(tc_type) == 1 and tc_type.upper() in TC_TYPES:
        return tc_type.upper().encode("ascii")
    raise ValueError(f"unknown thermocouple type {tc_type!r}; accepted: {', '.join(TC_TYPES)} (either case)")


def _check_mode(out_of_range: str) -> None:
    if out_of_range not in ("raise", "nan"):
        raise ValueError(f"out_of_range must be 'raise' or 'nan', not {out_of_range!r}")


@cache
def _range(letter: bytes) -> TcRange:
    ffi, lib = native()
    vals = ffi.new("double[4]")
    rc = lib.ec_tc_range(letter, vals, vals + 1, vals + 2, vals + 3)
    if rc != _EC_OK:  # pragma: no cover - _letter already refused unknown types
        raise ValueError(f"thermocouple type {letter.decode()!r} refused by the core ({rc})")
    return TcRange(vals[0], vals[1], vals[2], vals[3])


def tc_range(tc_type: str) -> TcRange:
    """Limits to validate set points and channel ranges against before they reach the core.

    For type B, ``emf_min_mv`` is 0 mV (its 0 degC value) but the inverse answers from
    about 42.13 degC, where the EMF climbs back to 0 mV after its minimum near 21 degC.
    """
    return _range(_letter(tc_type))


def _t_span(r: TcRange) -> str:
    return f"{r.t_min_c:g} to {r.t_max_c:g} degC"


def _inverse_t_span(letter: bytes) -> str:
    r = _range(letter)
    if letter != b"B":
        return _t_span(r)
    ffi, lib = native()
    low = ffi.new("double *")
    lib.ec_tc_emf_to_celsius(letter, r.emf_min_mv, low)
    return f"{low[0]:.6g} to {r.t_max_c:g} degC, where type B's EMF is unambiguous"


def _emf_span(r: TcRange) -> str:
    return f"{r.emf_min_mv:.6g} to {r.emf_max_mv:.6g} mV"


def _c_doubles(ffi: Any, values: Sequence[float]) -> Any:
    """A C ``double[]`` view of the input: shared with an ``array('d')``, else one copy."""
    if isinstance(values, array) and values.typecode == "d":
        return ffi.from_buffer("double[]", values)
    if not isinstance(values, list | tuple):
        values = list(values)
    return ffi.new("double[]", values)  # cffi fills it in C: faster than array('d', list)


def _batch_errors(status: bytearray, n: int) -> tuple[int, ...]:
    """Indices whose status is not OK (the scan only runs when some entry failed)."""
    if status.count(0) == n:
        return ()
    return tuple(i for i, s in enumerate(status) if s)


def _bad_message(what: str, bad: tuple[int, ...], n: int, span: str, type_letter: str) -> str:
    shown = ", ".join(str(i) for i in bad[:_SHOW_BAD])
    more = f" (first {_SHOW_BAD} of {len(bad)})" if len(bad) > _SHOW_BAD else ""
    return (f"{len(bad)} of {n} {what} are outside type {type_letter}'s range {span} at indices "
            f"[{shown}]{more}; pass out_of_range='nan' to get NaN for them")


@overload
def celsius_to_emf(tc_type: str, t_c: float, *, out_of_range: OutOfRange = "raise") -> float: ...
@overload
def celsius_to_emf(tc_type: str, t_c: Sequence[float], *,
                   out_of_range: OutOfRange = "raise") -> list[float]: ...
def celsius_to_emf(tc_type: str, t_c: float | Sequence[float], *,
                   out_of_range: OutOfRange = "raise") -> float | list[float]:
    """EMF in mV (reference junction at 0 degC) a thermocouple at ``t_c`` produces.

    A sequence comes back as a list, converted in one call into C. Out of range raises
    ThermocoupleRangeError, or gives NaN for that value with ``out_of_range="nan"``.
    """
    letter = _letter(tc_type)
    _check_mode(out_of_range)
    ffi, lib = native()
    if isinstance(t_c, int | float):
        t = float(t_c)
        out = ffi.new("double *")
        rc = lib.ec_tc_celsius_to_emf(letter, t, out)
        if rc == _EC_OK:
            return float(out[0])
        if out_of_range == "nan":
            return math.nan
        raise ThermocoupleRangeError(
            f"{t!r} degC is outside type {letter.decode()}'s range {_t_span(_range(letter))}")
    dst, bad = _run_batch(ffi, t_c, lambda src, out, st, n: lib.ec_tc_celsius_to_emf_batch(letter, src, out, st, n))
    if bad and out_of_range == "raise":
        raise ThermocoupleRangeError(
            _bad_message("temperatures", bad, len(dst), _t_span(_range(letter)), letter.decode()), bad)
    return dst.tolist()


def _run_batch(ffi: Any, values: Sequence[float],
               call: Callable[[Any, Any, Any, int], int]) -> tuple[array[float], tuple[int, ...]]:
    """One crossing into C for a whole sequence: ``call(src, dst, status, n)`` on flat buffers.
    Returns the results and the indices the core marked out of range."""
    if isinstance(values, str | bytes):
        raise TypeError("expected a float or a sequence of floats, not a string")
    n = len(values)
    dst = array("d", [0.0]) * n
    if n == 0:
        return dst, ()
    status = bytearray(n)
    rc = call(_c_doubles(ffi, values), ffi.from_buffer("double[]", dst, require_writable=True),
              ffi.from_buffer("uint8_t[]", status, require_writable=True), n)
    if rc != _EC_OK:  # pragma: no cover - arguments were checked before
        raise ValueError(f"thermocouple batch refused by the core ({rc})")
    return dst, _batch_errors(status, n)


def _cj_error(letter: bytes, cj: float) -> ThermocoupleRangeError:
    return ThermocoupleRangeError(
        f"cold junction {cj!r} degC is outside type {letter.decode()}'s range {_t_span(_range(letter))}")


def _cj_ok(letter: bytes, cj: float) -> bool:
    r = _range(letter)
    return r.t_min_c <= cj <= r.t_max_c


@overload
def emf_to_celsius(tc_type: str, emf_mv: float, cold_junction_c: float = 0.0, *,
                   out_of_range: OutOfRange = "raise") -> float: ...
@overload
def emf_to_celsius(tc_type: str, emf_mv: Sequence[float], cold_junction_c: float = 0.0, *,
                   out_of_range: OutOfRange = "raise") -> list[float]: ...
def emf_to_celsius(tc_type: str, emf_mv: float | Sequence[float], cold_junction_c: float = 0.0, *,
                   out_of_range: OutOfRange = "raise") -> float | list[float]:
    """Hot-junction temperature in degC from a measured EMF and the cold-junction temperature.

    Solves the exact NIST reference function (not NIST's approximate inverse polynomial,
    which is off by up to 0.06 degC), so it agrees with ``celsius_to_emf`` to better than
    1e-7 degC (about 1e-9 over most of each range).
    A cold junction outside the type's range always raises; it is configuration, not data.
    """
    letter = _letter(tc_type)
    _check_mode(out_of_range)
    cj = float(cold_junction_c)
    if not _cj_ok(letter, cj):
        raise _cj_error(letter, cj)
    ffi, lib = native()
    r = _range(letter)
    if isinstance(emf_mv, int | float):
        e = float(emf_mv)
        out = ffi.new("double *")
        rc = lib.ec_tc_compensated(letter, e, cj, out)
        if rc == _EC_OK:
            return float(out[0])
        if rc == _EC_ERANGE and out_of_range == "nan":
            return math.nan
        at = ""
        if cj != 0.0:
            total = e + celsius_to_emf(tc_type, cj)
            at = f" with the cold junction at {cj:g} degC ({total:.6g} mV referred to 0 degC)"
        raise ThermocoupleRangeError(
            f"{e!r} mV{at} is outside type {letter.decode()}'s range {_emf_span(r)} "
            f"(0 degC reference; {_inverse_t_span(letter)})")
    dst, bad = _run_batch(ffi, emf_mv,
                          lambda src, out, st, n: lib.ec_tc_emf_to_celsius_batch(letter, src, cj, out, st, n))
    if bad and out_of_range == "raise":
        span = _emf_span(r) + (f" after adding the cold junction's {cj:g} degC" if cj != 0.0 else "")
        raise ThermocoupleRangeError(_bad_message("EMFs", bad, len(dst), span, letter.decode()), bad)
    return dst.tolist()
