"""Reading finished or running runs back: ``metrics.jsonl`` and ``results.json`` of run folders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError


@dataclass
class RunRecord:
    path: Path
    metrics: list[dict[str, Any]]
    results: dict[str, Any] | None
    config: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    """the label to show; default: derived from the config"""

    def label(self) -> str:
        """A short description: mode, readout norm when not batch norm, backbone."""
        if self.name:
            return self.name
        if not self.config:
            return self.path.name
        model, train = self.config["model"], self.config["train"]
        norm = {"batchnorm": "", "layernorm": " LN", "none": " no-BN"}.get(model["readout_norm"], f" {model['readout_norm']}")
        lean = " lean" if train.get("memory") == "lean" else ""
        return f"{train['mode']}{norm}{lean} ({model['backbone']})"

    def series(self, key: str) -> tuple[list[int], list[Any]]:
        """(epochs, values) of a metric, skipping epochs without it; nested keys use dots."""
        epochs, values = [], []
        for record in self.metrics:
            value: Any = record
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                epochs.append(record["epoch"])
                values.append(value)
        return epochs, values


def read_run(path: str | Path) -> RunRecord:
    path = Path(path)
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise DataError(f"{path} is not a run folder: it has no metrics.jsonl (give folders that train_vision.py wrote)")
    try:
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        results = json.loads((path / "results.json").read_text()) if (path / "results.json").is_file() else None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: unreadable metrics or results ({error})") from None
    config = (results or {}).get("config") or {}
    return RunRecord(path, metrics, results, config)


def find_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every results.json under the given folders (a run folder, or a sweep's parent), in path order."""
    found = []
    for root in map(Path, paths):
        files = [root / "results.json"] if (root / "results.json").is_file() else sorted(root.rglob("results.json"))
        if not files:
            raise DataError(f"no results.json in or under {root}; give run folders (or their parent) written by train_vision.py")
        found += [json.loads(f.read_text()) for f in files]
    return found
