"""Tables of run results (markdown), for the CLI summary and reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "m":
        return f"{value / 1e6:.2f}"
    if kind == "ms":
        return f"{value:.2f}"
    if kind == "s":
        return f"{value:.0f}"
    return str(value)


COLUMNS = [
    ("dataset", "dataset", ""), ("backbone", "backbone", ""), ("mode", "mode", ""),
    ("epochs", "epochs", ""), ("test_error", "test err", "pct"), ("train_error", "train err", "pct"),
    ("params", "params (M)", "m"), ("forward_ms", "fwd ms", "ms"), ("backward_ms", "bwd ms", "ms"),
    ("wall_seconds", "wall s", "s"),
]


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table with one row per run (error, params, per-batch forward/backward time)."""
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(_fmt(r.get(key), kind) for key, _, kind in COLUMNS) + " |" for r in results]
    return "\n".join([header, rule, *rows])
