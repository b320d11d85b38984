"""Option checks: accepted values come back converted, refused ones name the option."""

from __future__ import annotations

import math

import pytest

from actscope.errors import ActscopeError
from actscope.utils import checks


def test_integer_accepts_ints_in_range_and_refuses_the_rest() -> None:
    assert checks.integer(3, "n") == 3
    assert checks.integer(-2, "seed", None) == -2
    for value, message in (
        (0, "n must be >= 1, got 0"),
        (9, "n must be <= 8, got 9"),
        (True, "n must be an integer, got True"),
        (1.5, "n must be an integer, got 1.5"),
        ("4", "n must be an integer, got '4'"),
    ):
        with pytest.raises(ActscopeError, match=message):
            checks.integer(value, "n", 1, 8)


def test_number_intervals_open_and_closed() -> None:
    assert checks.number(1, "a", 0.0, 1.0) == 1.0
    with pytest.raises(ActscopeError, match=r"split must be in \(0, 1\), got 1"):
        checks.number(1, "split", 0.0, 1.0, low_open=True, high_open=True)
    with pytest.raises(ActscopeError, match=r"must be in \[0, inf\), got -1"):
        checks.number(-1, "ridge", 0.0)
    with pytest.raises(ActscopeError, match="finite"):
        checks.number(math.nan, "x")
    with pytest.raises(ActscopeError, match="must be a number"):
        checks.number("0.5", "x")


def test_one_of_and_strings() -> None:
    assert checks.one_of("last", "position", ("last", "mean")) == "last"
    with pytest.raises(ActscopeError, match="did you mean: mean"):
        checks.one_of("meen", "position", ("last", "mean"))
    assert checks.strings("a, b,,c", "sites") == ["a", "b", "c"]
    with pytest.raises(ActscopeError, match="sites must be a list of strings, got 3"):
        checks.strings(3, "sites")
    with pytest.raises(ActscopeError, match="at least one"):
        checks.strings([], "sites")


def test_parse_list() -> None:
    assert checks.parse_list("0.3, 0.5,", "--alphas", float) == [0.3, 0.5]
    assert checks.parse_list("1,2", "--topk", int) == [1, 2]
    with pytest.raises(ActscopeError, match="--topk must be comma-separated integers, got 'a,b'"):
        checks.parse_list("a,b", "--topk", int)
