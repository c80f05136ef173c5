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
    rows = ["| " + " | ".join(method_name(r) if key == "mode" else _fmt(r.get(key), kind) for key, _, kind in COLUMNS) + " |"
            for r in results]
    return "\n".join([header, rule, *rows])


def method_name(result: dict[str, Any]) -> str:
    """The mode, tagged with what else distinguishes the run (readout norm, lean memory, head)."""
    config = result.get("config", {})
    model, train = config.get("model", {}), config.get("train", {})
    tags = []
    if model.get("readout_norm", "batchnorm") != "batchnorm":
        tags.append({"none": "no-BN", "layernorm": "LN"}.get(model["readout_norm"], model["readout_norm"]))
    if model.get("head", "cosine") != "cosine":
        tags.append(model["head"])
    if train.get("memory", "standard") != "standard":
        tags.append(train["memory"])
    return result["mode"] + (f" ({', '.join(tags)})" if tags else "")


def paper_table(results: Sequence[dict[str, Any]]) -> str:
    """Results in the shape of the paper's Tables 1-4: one row per backbone (and width) and method,
    one error column per data set, then params, memory and per-batch forward/backward time (taken
    from the row's first data set)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for result in results:
        width = result.get("config", {}).get("model", {}).get("width_mult", 1.0)
        backbone = result["backbone"] + (f" {width:g}x" if width != 1.0 else "")
        key, repeat = (backbone, method_name(result)), 1
        while result["dataset"] in rows.get(key, {}):  # another run of the same cell (seed, width...): own row
            repeat += 1
            key = (backbone, f"{method_name(result)} #{repeat}")
        rows.setdefault(key, {})[result["dataset"]] = result
    header = ["backbone", "method", *[f"{d} error" for d in datasets], "params (M)", "memory (MiB)", "forward (ms)", "backward (ms)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (backbone, method), by_dataset in rows.items():
        first = next(iter(by_dataset.values()))
        cells = [backbone, method, *[_fmt(by_dataset[d]["test_error"], "pct") if d in by_dataset else "-" for d in datasets],
                 _fmt(first.get("params"), "m"), _fmt(first.get("peak_memory_mib"), "s"), _fmt(first.get("forward_ms"), "ms"),
                 _fmt(first.get("backward_ms"), "ms")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
