from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import pytest

from actscope.data import mathgen


def test_formatting_helpers() -> None:
    assert mathgen.tex(Fraction(-3, 4)) == "-\\frac{3}{4}"
    assert mathgen.tex(6) == "6"
    assert mathgen.plain(Fraction(5, 2)) == "5/2"
    assert mathgen.poly([1, -1, 0, 3]) == "3x^3 - x + 1"
    assert mathgen.poly([Fraction(1, 2), 0, -1]) == "-x^2 + \\frac{1}{2}"
    assert mathgen.poly([0, 0]) == "0"
    assert mathgen.lin(1, -3) == "x - 3y"
    assert mathgen.lin(-2, 1) == "-2x + y"
    assert mathgen.signed(-2) == "- 2" and mathgen.paren(-2) == "(-2)"


@pytest.mark.parametrize(("n", "parts"), [(72, (6, 2)), (49, (7, 1)), (30, (1, 30)), (1, (1, 1))])
def test_sqrt_parts(n: int, parts: tuple[int, int]) -> None:
    assert mathgen._sqrt_parts(n) == parts


@pytest.mark.parametrize("family", sorted(mathgen.GENERATORS))
def test_every_generator_runs_on_many_draws(family: str) -> None:
    rng = random.Random(family)
    for _ in range(200):
        text = mathgen.GENERATORS[family](rng)
        assert len(text) > 80
        assert "None" not in text and "{{" not in text


def test_worked_documents_deterministic_and_sized() -> None:
    docs = mathgen.worked_documents(0, 40_000)
    assert docs == mathgen.worked_documents(0, 40_000)
    assert docs != mathgen.worked_documents(1, 40_000)
    assert sum(len(t) for *_, t in docs) >= 40_000
    assert {f for f, *_ in docs} == set(mathgen.GENERATORS)
    assert all(len(t) <= 2000 for *_, t in docs)


def test_euclid_steps_are_correct() -> None:
    rng = random.Random(7)
    for _ in range(50):
        text = mathgen.euclid(rng)
        a, b, g = map(int, re.search(r"gcd\((\d+), (\d+)\) = (\d+)\$", text).groups())  # type: ignore[union-attr]
        assert g == math.gcd(a, b)
        for q0, q, r1, r in re.findall(r"(\d+) &= (\d+) \\cdot (\d+) \+ (\d+)", text):
            assert int(q0) == int(q) * int(r1) + int(r) and int(r) < int(r1)
        s, t = re.search(r"\$s = (-?\d+)\$, \$t = (-?\d+)\$", text).groups()  # type: ignore[union-attr]
        assert a * int(s) + b * int(t) == g


def test_modular_powers_are_correct() -> None:
    rng = random.Random(11)
    for _ in range(50):
        text = mathgen.modpow(rng)
        a, k, r, m = map(
            int, re.search(r"(\d+)\^\{(\d+)\} \\equiv (\d+) \\pmod\{(\d+)\}", text).groups()
        )  # type: ignore[union-attr]
        assert pow(a, k, m) == r


def test_linear_equation_solution_checks() -> None:
    rng = random.Random(3)
    for _ in range(50):
        text = mathgen.linear_equation(rng)
        left, right = re.search(
            r"left side is \$.*= (.+?)\$ and the right side is \$.*= (.+?)\$", text
        ).groups()  # type: ignore[union-attr]
        assert left == right
