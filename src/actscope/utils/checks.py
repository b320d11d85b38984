"""Checks of option values, shared by the config objects and the command line.

Each check returns the value it accepted (converted where that is lossless) or raises
:class:`~actscope.errors.ActscopeError` naming the option, what it must be, and what it got.
Booleans are refused where a number is expected (``True`` is an ``int`` in Python, but a YAML
``true`` given for ``top_k`` is a mistake, not 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from actscope.errors import ActscopeError, suggest

T = TypeVar("T", int, float)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def integer(value: Any, name: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]`` (None = unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ActscopeError(f"{name} must be an integer, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise ActscopeError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ActscopeError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high``.

    The bounds are included unless ``low_open`` / ``high_open`` (then the interval is open
    on that side); None leaves a side unbounded.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ActscopeError(f"{name} must be a number, got {_show(value)}")
    x = float(value)
    if not math.isfinite(x):
        raise ActscopeError(f"{name} must be a finite number, got {value}")
    below = low is not None and (x <= low if low_open else x < low)
    above = high is not None and (x >= high if high_open else x > high)
    if below or above:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ActscopeError(f"{name} must be in {left}{lo}, {hi}{right}, got {value}")
    return x


def one_of(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices`` (a close match is suggested otherwise)."""
    if not isinstance(value, str) or value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ActscopeError(
            f"{name} must be one of {', '.join(choices)}, got {_show(value)}{hint}"
        )
    return value


def strings(value: Any, name: str, *, allow_empty: bool = False) -> list[str]:
    """``value`` as a list of strings (a comma-separated string is split)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ActscopeError(f"{name} must be a list of strings, got {_show(value)}")
    if not value and not allow_empty:
        raise ActscopeError(f"{name} must name at least one entry")
    return list(value)


def parse_list(text: str, name: str, kind: Callable[[str], T]) -> list[T]:
    """Comma-separated numbers: ``"0.3,0.5"`` -> ``[0.3, 0.5]`` (``kind`` is int or float)."""
    what = "integers" if kind is int else "numbers"
    try:
        return [kind(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ActscopeError(f"{name} must be comma-separated {what}, got '{text}'") from None

