"""The one reader kernel for every file a technician writes (station, recipe, board, node, scenario, broker URL).

One error type, one shape of message, one converter library, so the same typo reads the same whatever the
file: ``stations/hd.toml: interlocks.x.channel: unknown channel 'y' (expected one of: ...); did you mean 'z'?``.

How a reader uses it (Klipper reads each option where it is used and then reports every option nobody read;
we do the same, and collect every problem before raising, so a technician fixes the file in one pass)::

    document = parse_toml(text, source)          # syntax errors carry line and column
    problems = Problems(source)
    top = Table(problems, document, "", noun="section")
    port = top.need("port", string, "a serial port path")
    baud = top.get("baud", one_of_ints(STANDARD_BAUDS), 9600)
    top.finish()                                 # every key not read is an error, with "did you mean"
    problems.raise_if_any()                      # SpecError with every problem, in file order

Converters are plain functions ``value -> typed value`` that raise ``Bad`` saying what was expected; a
``Table`` turns a ``Bad`` into a problem at the right key path and hands back the default, so one broken
value never stops the rest of the file from being checked.

This module imports nothing from ``edge``: it is the bottom of the house.
"""

from __future__ import annotations

import difflib
import math
import os
import pathlib
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar, overload

_T = TypeVar("_T")
Conv = Callable[[object], _T]


# ============================================================================ the error type


class SpecError(ValueError):
    """Every problem found in one file a technician wrote (which file, which key, what was expected).

    ``errors`` holds each problem as its own ``SpecError`` (``(self,)`` for a single one), in file order;
    ``source``/``key_path``/``message``/``line``/``column`` are those of the first. ``str()`` reads one
    line per problem: ``stations/hd.toml: interlocks.x.channel: unknown channel 'y' (...)``. ``line`` and
    ``column`` are set where the position is known (TOML syntax errors).
    """

    def __init__(self, source: str, key_path: str, message: str, *, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(source, key_path, message)
        self.source = source
        self.key_path = key_path
        self.message = message
        self.line = line
        self.column = column
        self._several: tuple[SpecError, ...] = ()

    @classmethod
    def several(cls, errors: Sequence[SpecError]) -> SpecError:
        """One error carrying all of ``errors`` (the first's place and message; ``str()`` lists them all)."""
        if not errors:
            raise ValueError("SpecError.several needs at least one error")
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        combined = cls(first.source, first.key_path, first.message, line=first.line, column=first.column)
        combined._several = tuple(errors)
        combined.args = (combined._several,)
        return combined

    @property
    def errors(self) -> tuple[SpecError, ...]:
        return self._several or (self,)

    def __str__(self) -> str:
        if self._several:
            return "\n".join(str(error) for error in self._several)
        where = f"{self.source}: {self.key_path}" if self.key_path else self.source
        return f"{where}: {self.message}"


# ============================================================================ reading the file


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """A file's text; unreadable is a ``SpecError`` naming the file and ``what`` it was meant to be."""
    source = os.fspath(path)
    try:
        return pathlib.Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, "", f"cannot read the {what}: {exc}") from exc


def parse_toml(text: str, source: str) -> dict[str, object]:
    """TOML text -> a table; a syntax error is a ``SpecError`` with the line and column tomllib reports."""
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer literal too long for int()
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        if found is None:
            message = re.sub(r"\s*\(at end of document\)$", " at the end of the file", message)
            raise SpecError(source, "", f"TOML syntax error: {message}") from None
        line, column = int(found.group(1)), int(found.group(2))
        reason = message[: found.start()].rstrip()
        raise SpecError(source, "", f"TOML syntax error at line {line}, column {column}: {reason}",
                        line=line, column=column) from None
    except RecursionError:
        raise SpecError(source, "", "TOML syntax error: values nested too deeply") from None


# ============================================================================ wording shared by every reader


def unknown(what: str, name: str, candidates: Iterable[str]) -> str:
    options = list(candidates)
    if not options:
        return f"unknown {what} '{short(name)}' (no {what} is declared)"
    return f"unknown {what} '{short(name)}' (expected one of: {', '.join(options)}){did_you_mean(name, options)}"


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    by_case = [c for c in candidates if c.lower() == word.lower()]
    close = by_case or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


#: Unit words that end key names (``to_c``, ``rate_c_per_min``), and some a file must NOT use, so that
#: ``timeout_s`` is recognised as "timeout in the wrong unit" (units are part of the key name).
UNIT_WORDS = frozenset({
    "c", "k", "f", "degc", "min", "mins", "h", "hr", "hrs", "s", "sec", "ms", "mbar", "bar", "pa", "kpa", "hpa",
    "psi", "torr", "pct", "percent", "kg", "g", "lb", "per",
})


def unit_stem(key: str) -> str:
    """The key without its unit words: ``rate_c_per_min`` -> ``rate``, ``to`` -> ``to``."""
    parts = key.split("_")
    cut = len(parts)
    while cut > 1 and parts[cut - 1].lower() in UNIT_WORDS:
        cut -= 1
    return "_".join(parts[:cut])


def unknown_with_unit(what: str, key: str, accepted: Sequence[str]) -> str:
    """``unknown`` for a key that may be an accepted one without its unit or with the wrong one."""
    same = [a for a in accepted if unit_stem(a) == unit_stem(key) and a != key]
    if same:
        if key == unit_stem(key):
            return f"missing unit: did you mean {same[0]}?"
        return f"wrong unit: did you mean {same[0]}? (units are part of the key name: {', '.join(same)})"
    return unknown(what, key, accepted)


def join(path: str, key: str) -> str:
    """A TOML key path: bare keys as they are, anything else quoted and escaped."""
    shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.encode("unicode_escape").decode() + '"'
    return f"{path}.{shown}" if path else shown


def short(value: object) -> str:
    """A value as it can be shown in one line: escaped, at most 40 characters."""
    text = repr(value)[1:-1] if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(value: object) -> str:
    """How a TOML value is named in messages: its TOML type and a short rendering."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {short(value)}"
    if isinstance(value, float):
        return f"number {short(value)}"
    if isinstance(value, str):
        return f"string \"{short(value)}\""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"date/time {short(str(value))}"


def counted(count: int, noun: str, plural: str = "") -> str:
    """``1 output``, ``4 outputs``, ``0 files``: a count with its noun agreeing (``plural`` when not noun + s)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def fmt(number: float) -> str:
    """A number as written in the file: 930 rather than 930.0, 25.78125 in full."""
    text = repr(float(number))
    return text[:-2] if text.endswith(".0") else text


# ============================================================================ collecting problems


class Bad(Exception):
    """A value of the wrong type or outside its range; ``at`` extends the key path (``[2]``, ``.x``).

    ``each`` holds every ``(at, message)`` when one value has several problems (an array with two bad
    elements): a ``Table`` reports them all, so the technician still fixes the file in one pass."""

    def __init__(self, message: str, at: str = "", *, each: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.at = at
        self.each: tuple[tuple[str, str], ...] = tuple(each) or ((at, message),)


class Problems:
    """Collects every problem of one file so that the technician sees them all in one pass."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[SpecError] = []

    def add(self, key_path: str, message: str) -> None:
        self.found.append(SpecError(self.source, key_path, message))

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_if_any(self, section_order: Sequence[str] = ()) -> None:
        """Raise in file order: problems sorted (stably) by their top-level key's place in ``section_order``."""
        if not self.found:
            return

        def place(error: SpecError) -> int:
            head = re.split(r"[.\[]", error.key_path, maxsplit=1)[0]
            return section_order.index(head) if head in section_order else len(section_order)

        raise SpecError.several(sorted(self.found, key=place))


class Table:
    """One TOML table being read: typed getters that report problems instead of raising, and remember which
    keys this table accepts so that ``finish`` can flag every other key.

    ``where`` prefixes every message of the table (and of the tables read inside it) with what it is to a
    person, e.g. ``ramp #2 "to 600"``. With ``units`` (for files whose key names end in their unit, like
    ``timeout_min``) an unknown key that is an accepted one without its unit or with another is worded
    "missing unit"/"wrong unit", and a required key is not also reported missing when the file has such a
    near miss of it: that key's own error says it all. Both pass on to the tables read inside this one.
    """

    def __init__(self, problems: Problems, data: Mapping[str, object], path: str, noun: str = "key", *,
                 where: str = "", units: bool = False) -> None:
        self.problems = problems
        self.data = data
        self.path = path
        self.noun = noun
        self.where = where
        self.units = units
        self.accepted: list[str] = []
        self.ok = True
        self._bad_keys: set[str] = set()

    def report(self, key: str | None, message: str) -> None:
        self.ok = False
        if key is not None:
            self._bad_keys.add(key)
        self._add(self.path if key is None else join(self.path, key), message)

    def _add(self, key_path: str, message: str) -> None:
        self.problems.add(key_path, f"{self.where}: {message}" if self.where else message)

    def _inner(self, data: Mapping[str, object], path: str) -> Table:
        return Table(self.problems, data, path, where=self.where, units=self.units)

    def mentions(self, *keys: str) -> bool:
        """Whether the table has one of ``keys`` misspelt or with a missing or wrong unit (``units`` only)."""
        if not self.units:
            return False
        stems = {unit_stem(key) for key in keys}
        return any(k not in keys and (unit_stem(k) in stems or difflib.get_close_matches(k, keys, n=1, cutoff=0.85))
                   for k in self.data)

    def _missing(self, key: str, expected: str) -> None:
        if self.mentions(key):
            self.ok = False
        else:
            self.report(key, f"missing: expected {expected}")

    def has_error(self, key: str) -> bool:
        return key in self._bad_keys

    def accept(self, *keys: str) -> None:
        self.accepted.extend(key for key in keys if key not in self.accepted)

    def has(self, key: str) -> bool:
        self.accept(key)
        return key in self.data

    @overload
    def get(self, key: str, conv: Conv[_T]) -> _T | None: ...
    @overload
    def get(self, key: str, conv: Conv[_T], default: _T) -> _T: ...
    def get(self, key: str, conv: Conv[_T], default: _T | None = None) -> _T | None:
        """The converted value; absent or invalid gives ``default`` (invalid is also reported)."""
        self.accept(key)
        if key not in self.data:
            return default
        try:
            return conv(self.data[key])
        except Bad as bad:
            self.ok = False
            self._bad_keys.add(key)
            for at, message in bad.each:
                self._add(join(self.path, key) + at, message)
            return default

    def need(self, key: str, conv: Conv[_T], expected: str) -> _T | None:
        """A required value; missing is reported with what was expected."""
        if key not in self.data:
            self.accept(key)
            self._missing(key, expected)
            return None
        return self.get(key, conv)

    def table(self, key: str, *, required: bool = False, expected: str = "a table") -> Table | None:
        self.accept(key)
        value = self.data.get(key)
        if value is None:
            if required:
                self._missing(key, expected)
            return None
        if not isinstance(value, dict):
            self.report(key, f"expected {expected}, got {describe(value)}")
            return None
        return self._inner(value, join(self.path, key))

    def sub(self, data: Mapping[str, object], at: str) -> Table:
        """A table found inside this one's values (an array element, an inline table) at ``path + at``."""
        return self._inner(data, self.path + at)

    def named_tables(self, name: Conv[str] | None = None,
                     allowed: Collection[str] = ()) -> list[tuple[str, Table | None]]:
        """The NAME tables of a section such as [channels.NAME], each name checked by ``name`` (a converter;
        ``allowed`` names pass as they are).

        A NAME that is not a table comes back with None: it is reported, and still counts as declared so
        that references to it do not cascade into more errors."""
        found: list[tuple[str, Table | None]] = []
        for key, value in self.data.items():
            self.accept(key)
            if not isinstance(value, dict):
                self.report(key, f"expected a table [{join(self.path, key)}], got {describe(value)}")
                found.append((key, None))
                continue
            if name is not None and key not in allowed:
                try:
                    name(key)
                except Bad as bad:
                    self.report(key, f"bad name: {bad}")
            found.append((key, self._inner(value, join(self.path, key))))
        return found

    def finish(self, elsewhere: Collection[str] = (), context: str = "") -> None:
        """Every key not read is an error: typos must not pass silently."""
        for key in self.data:
            if key in self.accepted:
                continue
            if key in elsewhere and not (self.units and any(unit_stem(a) == unit_stem(key) for a in self.accepted)):
                self.report(key, f"does not apply {context}")
            elif self.units:
                self.report(key, unknown_with_unit(self.noun, key, self.accepted))
            else:
                self.report(key, unknown(self.noun, key, self.accepted))


def lookup(t: Table, key: str, name: str, registry: Mapping[str, _T | None], what: str) -> _T | None:
    """Resolve a name. Unknown is reported; declared but broken gives None silently (already reported)."""
    if name not in registry:
        t.report(key, unknown(what, name, registry))
        return None
    return registry[name]


def valid(registry: Mapping[str, _T | None]) -> tuple[_T, ...]:
    """The items of a registry that were read without a problem."""
    return tuple(item for item in registry.values() if item is not None)


# ============================================================================ converters
# Each returns the typed value or raises Bad saying what was expected. Booleans are never numbers.


def number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bad(f"expected a number, got {describe(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise Bad("expected a number, got an integer too large to use") from None
    if not math.isfinite(result):
        raise Bad(f"expected a finite number, got {describe(value)}")
    return result


def number_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Conv[float]:
    if lo is not None and hi is not None:
        wanted = f"from {fmt(lo)} to {fmt(hi)}" if not lo_open else f"> {fmt(lo)} and <= {fmt(hi)}"
    elif lo is not None:
        wanted = f"{'>' if lo_open else '>='} {fmt(lo)}"
    else:
        wanted = f"<= {fmt(hi if hi is not None else math.inf)}"

    def convert(value: object) -> float:
        result = number(value)
        too_low = lo is not None and (result < lo or (lo_open and result == lo))
        if too_low or (hi is not None and result > hi):
            raise Bad(f"expected a number {wanted}, got {fmt(result)}")
        return result

    return convert


def integer_in(lo: int, hi: int) -> Conv[int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Bad(f"expected an integer from {lo} to {hi}, got {describe(value)}")
        if not lo <= value <= hi:
            raise Bad(f"expected an integer from {lo} to {hi}, got {short(value)}")
        return value

    return convert


def one_of_ints(options: Sequence[int]) -> Conv[int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in options:
            raise Bad(f"expected one of {', '.join(map(str, options))}, got {describe(value)}")
        return value

    return convert


def level(value: object) -> int:
    """An output or digital level: the integer 0 or 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise Bad(f"expected 0 or 1, got {describe(value)}")
    return value


def level_number(value: object) -> float:
    """A digital level where a number is expected (a threshold): 0 or 1, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise Bad(f"expected 0 or 1, got {describe(value)}")
    return float(value)


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {describe(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Bad(f"expected a string, got {describe(value)}")
    return value


def text(max_len: int, *, non_empty: bool = False) -> Conv[str]:
    """A string of at most ``max_len`` characters; with ``non_empty``, not only blanks."""
    def convert(value: object) -> str:
        result = string(value)
        if len(result) > max_len:
            raise Bad(f"expected at most {max_len} characters, got {len(result)}")
        if non_empty and not result.strip():
            raise Bad("expected a non-empty string")
        return result

    return convert


def matching(pattern: re.Pattern[str], help_text: str) -> Conv[str]:
    """A string the whole of which matches ``pattern``; ``help_text`` says what was expected."""
    def convert(value: object) -> str:
        if not isinstance(value, str):      # 7 for "7": say what was wanted, not only "a string"
            raise Bad(f"{help_text}, got {describe(value)}")
        if not pattern.fullmatch(value):
            raise Bad(f"{help_text}, got \"{short(value)}\"")
        return value

    return convert


def choice(options: Sequence[str]) -> Conv[str]:
    def convert(value: object) -> str:
        if not isinstance(value, str):      # 1 for "hd": list the options, not only "a string"
            raise Bad(f"expected one of: {', '.join(options)}; got {describe(value)}")
        result = value
        if result not in options:
            raise Bad(f"expected one of: {', '.join(options)}; got \"{short(result)}\"{did_you_mean(result, options)}")
        return result

    return convert


def exact(expected: str, why: str) -> Conv[str]:
    def convert(value: object) -> str:
        if string(value) != expected:
            raise Bad(f"expected \"{expected}\" ({why}), got {describe(value)}")
        return expected

    return convert


def list_of(item: Conv[_T], what: str, *, max_len: int, unique: bool = True) -> Conv[list[_T]]:
    def convert(value: object) -> list[_T]:
        if not isinstance(value, list):
            raise Bad(f"expected an array of {what}, got {describe(value)}")
        if len(value) > max_len:
            raise Bad(f"expected at most {max_len} {what}, got {len(value)}")
        items: list[_T] = []
        problems: list[tuple[str, str]] = []       # every bad element, not only the first
        for index, element in enumerate(value):
            try:
                converted = item(element)
            except Bad as bad:
                problems.extend((f"[{index}]{at}", message) for at, message in bad.each)
                continue
            if unique and converted in items:
                problems.append((f"[{index}]", f"{short(converted)} is listed twice"))
                continue
            items.append(converted)
        if problems:
            raise Bad(problems[0][1], at=problems[0][0], each=problems)
        return items

    return convert


def range_pair(value: object) -> tuple[float, float]:
    """[low, high] with low < high."""
    if not isinstance(value, list) or len(value) != 2:
        raise Bad(f"expected [low, high], got {describe(value)}")
    lo, hi = list_of(number, "numbers", max_len=2, unique=False)(value)
    if not lo < hi:
        raise Bad(f"expected [low, high] with low < high, got [{fmt(lo)}, {fmt(hi)}]")
    return lo, hi
