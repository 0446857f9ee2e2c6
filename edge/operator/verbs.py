"""The verbs an operator may use and the arguments each takes, checked before anything is done.

MQTT checks a command against its JSON schema first (``mqtt_schemas/cmd-VERB.json``); these checks
are the same rules, so that a line on stdin cannot ask for what a schema would refuse (a recipe name
that climbs out of the recipes folder, an unknown argument, a mass of -3 kg).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.spec.reader import did_you_mean

_RECIPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")       # a channel, interlock or alarm name of the station file
_SHA256 = re.compile(r"[0-9a-f]{64}")


class InvalidArguments(ValueError):
    """The arguments do not fit the verb; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, str) and pattern.fullmatch(value):
            return None
        return f"must be {what}, got {value!r:.80}"
    return check


def _text(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, str) and low <= len(value) <= high:
            return None
        return f"must be a text of {low} to {high} characters, got {value!r:.80}"
    return check


def _kg(what: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        # the range first: a huge JSON integer compares exactly, but math.isfinite would overflow on it
        if (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1e5
                and math.isfinite(value)):
            return None
        return f"{what} must be a number of kg above 0 and at most 100000, got {value!r:.80}"
    return check


@dataclass(frozen=True)
class Arg:
    name: str
    check: Callable[[object], str | None]     # None if the value is good, else what is wrong with it
    required: bool = False


@dataclass(frozen=True)
class Verb:
    name: str
    args: tuple[Arg, ...]
    does: str

    def read(self, args: Mapping[str, object]) -> dict[str, Any]:
        """The checked arguments; ``InvalidArguments`` with every problem if they do not fit."""
        known = {a.name: a for a in self.args}
        problems = []
        for name in args:
            if name not in known:
                takes = f"it takes {', '.join(known)}" if known else "it takes none"
                problems.append(f"{self.name} has no argument {name!r} ({takes}{did_you_mean(name, list(known))})")
        for a in self.args:
            if a.name not in args:
                if a.required:
                    problems.append(f"{a.name}: missing")
                continue
            problem = a.check(args[a.name])
            if problem is not None:
                problems.append(f"{a.name}: {problem}")
        if problems:
            raise InvalidArguments(problems)
        return dict(args)


def _celsius(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= 3000:
        return f"expected a temperature in degC above 0 and at most 3000, got {value!r}"
    return None


_REASON = Arg("reason", _text(1, 200))
_BATCH = _matching(_BATCH_ID, "a batch id (letters, digits, _ . : -; at most 64)")

VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("start", (Arg("recipe", _matching(_RECIPE, "a recipe name (letters, digits, _ . -; at most 64)"), True),
                   Arg("recipe_sha256", _matching(_SHA256, "the recipe file's SHA-256 (64 lower-case hex digits)"),
                       True),
                   Arg("batch_id", _BATCH, True), Arg("operator", _text(0, 64)), Arg("feed", _text(0, 500)),
                   Arg("mass_in_kg", _kg("mass in"))),
         "start a batch with a recipe of the station's recipes folder"),
    Verb("hold", (_REASON,), "hold the sequence (its timers stand still)"),
    Verb("resume", (), "leave a hold"),
    Verb("abort", (_REASON,), "go to the safe sequence"),
    Verb("skip", (), "end the current program segment now (never a phase)"),
    Verb("ack_alarm", (Arg("alarm", _matching(_NAME, "an alarm name"), True),), "acknowledge an alarm"),
    Verb("reset", (Arg("rule", _matching(_NAME, "an interlock name")),), "reset latched interlocks"),
    Verb("record_mass", (Arg("batch_id", _BATCH), Arg("mass_out_kg", _kg("mass out"), True)),
         "the product's mass weighed at unloading, for the batch record"),
    Verb("autotune", (Arg("loop", _matching(_NAME, "a loop name"), True), Arg("setpoint_c", _celsius, True)),
         "relay-autotune a loop around a setpoint between batches (maintenance; the gains come in the events)"),
)}


@dataclass(frozen=True)
class StartRequest:
    """A checked ``start``: what ``CommandTarget.start_batch`` gets."""

    recipe: str            # the recipe's name on the station (file name without .toml)
    recipe_sha256: str     # what the sender reviewed: a different file is refused
    batch_id: str
    operator: str
    issuer: str            # who asked (the MQTT identity the broker vouches for, or stdin)
    feed: str = ""         # what was loaded, for the batch record
    mass_in_kg: float | None = None
