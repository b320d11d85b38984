"""A self-checking task for CLUE: small arithmetic problems asked with a few-shot prompt.

Problems are ``a + b``, ``a - b`` (a >= b) with operands in ``[1, max_operand]`` and ``a * b``
with operands in ``[2, 12]``, drawn with a seeded generator. The model's answer is the first
line it generates; it is correct when the last integer on that line equals the true result.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

FEW_SHOT = (
    "Question: What is 3 + 4?\nAnswer: 3 + 4 = 7\n\n"
    "Question: What is 12 + 9?\nAnswer: 12 + 9 = 21\n\n"
    "Question: What is 15 - 6?\nAnswer: 15 - 6 = 9\n\n"
    "Question: What is 8 * 6?\nAnswer: 8 * 6 = 48\n\n"
)
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One question with its true result and the prompt the model completes."""

    a: int
    op: str
    b: int
    result: int

    @property
    def question(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    @property
    def prompt(self) -> str:
        return f"{FEW_SHOT}Question: {self.question}\nAnswer:"


def arithmetic_problems(n: int, seed: int = 0, max_operand: int = 60) -> list[Problem]:
    """``n`` distinct problems (fewer if the operand ranges run out), reproducible by seed."""
    rng = random.Random(seed)
    seen: set[tuple[int, str, int]] = set()
    out: list[Problem] = []
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
        else:
            a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
            if op == "-" and b > a:
                a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        result = a + b if op == "+" else a - b if op == "-" else a * b
        out.append(Problem(a, op, b, result))
    return out


def parse_answer(response: str) -> int | None:
    """The last integer on the first line of ``response``, or None."""
    line = response.strip().split("\n", 1)[0]
    found = _INT.findall(line)
    return int(found[-1]) if found else None


def is_correct(problem: Problem, response: str) -> bool:
    return parse_answer(response) == problem.result
