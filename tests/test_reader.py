"""The reader kernel (edge.spec.reader) that every file a technician writes goes through."""

from __future__ import annotations

import re

import pytest

from edge.spec.reader import Problems, SpecError, Table, choice, integer_in, list_of, matching, parse_toml


def read(text: str, key: str, conv) -> tuple[object, list[tuple[str, str]]]:
    problems = Problems("f.toml")
    t = Table(problems, parse_toml(text, "f.toml"), "")
    value = t.get(key, conv)
    t.finish()
    return value, [(e.key_path, e.message) for e in problems.found]


def test_every_bad_element_of_an_array_is_reported_in_one_pass() -> None:
    value, found = read("ports = [1, 300, 2, 0, 2]", "ports", list_of(integer_in(1, 247), "addresses", max_len=8))
    assert value is None
    assert found == [("ports[1]", "expected an integer from 1 to 247, got 300"),
                     ("ports[3]", "expected an integer from 1 to 247, got 0"),
                     ("ports[4]", "2 is listed twice")]


def test_a_number_for_a_name_says_what_was_expected() -> None:
    _, found = read("parity = 0", "parity", choice(("N", "E", "O")))
    assert found == [("parity", "expected one of: N, E, O; got integer 0")]
    _, found = read("pin = 7", "pin", matching(re.compile(r"X?\d+"), "expected a header pin such as \"11\""))
    assert found == [("pin", "expected a header pin such as \"11\", got integer 7")]


def test_unknown_keys_are_named_with_a_suggestion_and_all_problems_raised_at_once() -> None:
    problems = Problems("f.toml")
    t = Table(problems, parse_toml("baud = 9600\nadress = 3\nparity = \"n\"", "f.toml"), "bus")
    t.get("baud", integer_in(1200, 115200))
    t.get("address", integer_in(1, 247))
    t.get("parity", choice(("N", "E", "O")))
    t.finish()
    with pytest.raises(SpecError) as info:
        problems.raise_if_any()
    assert [str(e) for e in info.value.errors] == [
        "f.toml: bus.parity: expected one of: N, E, O; got \"n\"; did you mean 'N'?",
        "f.toml: bus.adress: unknown key 'adress' (expected one of: baud, address, parity); did you mean 'address'?"]


def test_a_syntax_error_has_its_line_and_column() -> None:
    with pytest.raises(SpecError) as info:
        parse_toml("a = 1\nb = = 2\nc = 3\n", "f.toml")
    assert (info.value.line, info.value.column) == (2, 5)
    assert str(info.value).startswith("f.toml: TOML syntax error at line 2, column 5: ")
