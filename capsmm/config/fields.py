"""Field checks: a config field carries its ``--help`` text and the check its values must pass.

Every check is a function ``check(key, value) -> None | str`` (None: valid; else the one-line error),
so a schema states its ranges and choices next to its fields and :func:`check_fields` reports the
first problem as a :class:`ConfigError` before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError

Check = Callable[[str, Any], "str | None"]
"""A value check: ``check(key, value)`` is None when the value is valid, else the one-line error."""


def opt(help: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, check: Check | None = None) -> Any:
    """A dataclass field with its help text (shown by ``--help``) and the check its values must pass."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help, "check": check})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float, *, open_low: bool = False) -> Check:
    sign = ">" if open_low else ">="

    def check(key: str, value: Any) -> str | None:
        ok = _finite(value) and (value > low if open_low else value >= low)
        return None if ok else f"{key} must be a finite number {sign} {low:g}, got {value!r}"
    return check


def in_range(low: float, high: float, *, open_high: bool = True) -> Check:
    bracket = ")" if open_high else "]"

    def check(key: str, value: Any) -> str | None:
        ok = _finite(value) and low <= value and (value < high if open_high else value <= high)
        return None if ok else f"{key} must be in [{low:g}, {high:g}{bracket}, got {value!r}"
    return check


non_negative = at_least(0)


class one_of:  # noqa: N801 - used like the other check factories
    """Check: the value must be one of ``values``: a sequence owned by the module that implements the
    choice (``READOUT_NORMS``...), or a callable asked when checking (a registry's ``names``: plugins
    register late). ``--help`` lists the choices."""

    def __init__(self, values: Sequence[str] | Callable[[], Sequence[str]]) -> None:
        self.values = values

    def choices(self) -> list[str]:
        return list(self.values() if callable(self.values) else self.values)

    def __call__(self, key: str, value: Any) -> str | None:
        valid = self.choices()
        if value in valid:
            return None
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {key} '{value}'{hint}; valid: {', '.join(valid)}"


def increasing_epochs(key: str, values: Any) -> str | None:
    ok = all(isinstance(v, int) and v >= 1 for v in values) and all(a < b for a, b in zip(values, values[1:]))
    return None if ok else f"{key} must be increasing epoch numbers >= 1, got {values!r}"


def epoch_range(key: str, values: Any) -> str | None:
    ok = (isinstance(values, list) and len(values) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
          and 1 <= values[0] <= values[1])
    return None if ok else f"{key} must be [first, last] epochs with 1 <= first <= last, got {values!r}"


def check_fields(section: Any, prefix: str) -> None:
    """Run every field's check on ``section``; the first failure is a one-line :class:`ConfigError`."""
    for f in dataclasses.fields(section):
        check, value = f.metadata.get("check"), getattr(section, f.name)
        if check is not None and value is not None:
            problem = check(f"{prefix}.{f.name}", value)
            if problem:
                raise ConfigError(problem)
