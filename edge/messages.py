"""How the file loaders (station files, recipes) name a place and a mistake.

Shared so that every error a technician reads has one shape:
``file: key.path: unknown channel 'x' (expected one of: ...); did you mean 'y'?``.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Sequence


class FileError(ValueError):
    """One problem in a file a technician wrote (which file, which key, what was expected), or several.

    ``str()`` reads ``stations/hd.toml: interlocks.x.channel: unknown channel 'y' (...)``, one line per
    problem. ``line``/``column`` are set for syntax errors. The loaders subclass it (``ConfigError``,
    ``RecipeError``) and their "several" subclasses call ``_gather``.
    """

    def __init__(self, source: str, key_path: str, message: str, *, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(source, key_path, message)
        self.source = source
        self.key_path = key_path
        self.message = message
        self.line = line
        self.column = column
        self._several: tuple[FileError, ...] = ()

    def _gather(self, errors: Sequence[FileError]) -> None:
        self._several = tuple(errors)
        self.args = (self._several,)

    def __str__(self) -> str:
        if self._several:
            return "\n".join(str(error) for error in self._several)
        where = f"{self.source}: {self.key_path}" if self.key_path else self.source
        return f"{where}: {self.message}"


def parse_toml(text: str, source: str, error: type[FileError]) -> dict[str, object]:
    """TOML text -> a table; a syntax error becomes ``error`` (the loader's FileError) with the line and
    column tomllib reports, so every file a technician writes fails the same way."""
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer literal too long for int()
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        if found is None:
            message = re.sub(r"\s*\(at end of document\)$", " at the end of the file", message)
            raise error(source, "", f"TOML syntax error: {message}") from None
        line, column = int(found.group(1)), int(found.group(2))
        reason = message[: found.start()].rstrip()
        raise error(source, "", f"TOML syntax error at line {line}, column {column}: {reason}",
                    line=line, column=column) from None
    except RecursionError:
        raise error(source, "", "TOML syntax error: values nested too deeply") from None


def unknown(what: str, name: str, candidates: Iterable[str]) -> str:
    options = list(candidates)
    listed = ", ".join(options) if options else f"no {what} is declared"
    return f"unknown {what} '{short(name)}' (expected one of: {listed}){did_you_mean(name, options)}"


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    by_case = [c for c in candidates if c.lower() == word.lower()]
    close = by_case or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


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
