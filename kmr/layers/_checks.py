"""Argument checks shared by the layers: one wording for every invalid argument."""

from __future__ import annotations

import numbers


def _invalid(name: str, expected: str, value: object) -> ValueError:
    return ValueError(
        f"Invalid value received for argument `{name}`. "
        f"Expected {expected}. Received: {name}={value!r}"
    )


def check_positive_int(name: str, value: object) -> int:
    """Returns ``value`` as an int, or raises ValueError if it is not an int > 0.

    Booleans and floats (even 3.0) are refused: a table size is a count.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise _invalid(name, "a positive int", value)
    return int(value)


def check_non_negative_float(name: str, value: object) -> float:
    """Returns ``value`` as a float, or raises ValueError if it is not a finite real >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value >= 0  # also refuses NaN
        or value == float("inf")
    ):
        raise _invalid(name, "a finite float >= 0", value)
    return float(value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Returns ``value`` if it is one of ``choices``, else raises ValueError."""
    if value not in choices:
        raise _invalid(name, f"one of {choices}", value)
    return str(value)
