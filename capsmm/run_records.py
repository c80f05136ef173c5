"""Reading runs back: the run folders under some paths, their ``metrics.jsonl`` and ``results.json``,
and their grouping into *cells* (runs whose configs differ only in the seed)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import INCIDENTAL_SUFFIXES, shown, with_added_keys
from .errors import DataError

#: config keys that never tell two runs' methods apart: where they ran, how they were shown and named
INCIDENTAL = ("out", "train.seed", "train.progress")


@dataclass
class RunRecord:
    path: Path
    metrics: list[dict[str, Any]]
    results: dict[str, Any] | None
    config: dict[str, Any] = field(default_factory=dict)
    """the run's resolved config, flattened to ``section.key``"""

    @property
    def seed(self) -> int | None:
        return self.config.get("train.seed")

    def replicate(self, pooled: Sequence[str] = ()) -> str:
        """What makes this run one replicate of its cell: its seed and the values of the ``pooled``
        keys (a leave-one-speaker-out fold, say); two methods are paired on equal replicates."""
        return json.dumps([self.seed, *(self.config.get(k) for k in pooled)])

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

    def value(self, key: str) -> Any:
        """A figure of results.json (dots reach into nested ones: ``test_error_by_modality.audio``;
        a key that holds a dot itself is found too: ``evaluation.test.adversarial.pgd.0.1``).
        Evaluations (``evaluation/<name>.json``) are under ``evaluation.<name>``."""
        value: Any = self.results or {}
        parts = key.split(".")
        while parts and isinstance(value, dict):
            length = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in value), 1)
            value, parts = value.get(".".join(parts[:length])), parts[length:]
        return None if parts else value


def is_run_folder(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "results.json").is_file()


def read_run(path: str | Path) -> RunRecord:
    path = Path(path)
    metrics_path = path / "metrics.jsonl"
    if not is_run_folder(path):
        raise DataError(f"{path} is not a run folder: it has no metrics.jsonl or results.json (give run folders, or folders holding them)")
    try:
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.is_file() else []
        results = json.loads((path / "results.json").read_text()) if (path / "results.json").is_file() else None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: unreadable metrics or results ({error})") from None
    if results is None:
        try:  # an unfinished run: its config is in the checkpoint
            from .checkpoint import load_checkpoint

            config = load_checkpoint(path / "checkpoint.safetensors")["config"]
        except Exception:  # noqa: BLE001 - no checkpoint yet: the run is shown by folder only
            config = {}
    else:
        config = results.get("config") or {}
        evaluations = {}
        for file in sorted((path / "evaluation").glob("*.json")):  # scripts/evaluate.py's figures
            try:
                evaluations[file.stem] = json.loads(file.read_text())
            except json.JSONDecodeError as error:
                raise DataError(f"{file}: unreadable evaluation ({error}); run evaluate.py again") from None
        if evaluations:
            results = results | {"evaluation": evaluations}
    return RunRecord(path, metrics, results, with_added_keys(config))


def run_folders(root: Path) -> list[Path]:
    """``root`` if it is a run folder, else the run folders under it at any depth (not looking inside
    a run folder: a class-incremental run keeps its tasks' runs there)."""
    if is_run_folder(root):
        return [root]
    return [folder for child in sorted(p for p in root.iterdir() if p.is_dir()) for folder in run_folders(child)]


def find_runs(paths: Iterable[str | Path], finished: bool = False) -> list[RunRecord]:
    """Every run folder given, or found (at any depth) under the folders given, in path order.

    ``finished``: only runs with a results.json. A path that holds no run is a :class:`DataError`.
    """
    runs = []
    for root in map(Path, paths):
        if not root.exists():
            raise DataError(f"{root} does not exist")
        folders = run_folders(root)
        found = [read_run(folder) for folder in folders]
        found = [run for run in found if run.results is not None] if finished else found
        if not found:
            raise DataError(f"no {'finished ' if finished else ''}run in or under {root}: give run folders (with "
                            f"{'results.json' if finished else 'metrics.jsonl'}) or folders holding them")
        runs += found
    return runs


def varying_keys(runs: Sequence[RunRecord], pooled: Sequence[str] = ()) -> list[str]:
    """The config keys whose values differ among ``runs`` (seed, output folder, keys that do not change
    what a run computes, and the ``pooled`` keys excluded): what tells the runs' cells apart, in config
    order. ``train.epochs`` counts: it names no folder (a resumed run may extend it), but runs of
    different lengths are different cells."""
    keys = list(dict.fromkeys(k for run in runs for k in run.config))
    ignored = lambda k: k in INCIDENTAL or k in pooled or k.endswith(INCIDENTAL_SUFFIXES)  # noqa: E731
    return [k for k in keys if not ignored(k) and len({json.dumps(run.config.get(k), sort_keys=True) for run in runs}) > 1]


def cells(runs: Sequence[RunRecord], keys: Sequence[str] | None = None) -> dict[tuple[Any, ...], list[RunRecord]]:
    """Runs grouped by the values of ``keys`` (default: :func:`varying_keys`), in first-seen order;
    a cell's runs differ in nothing else that matters (their seeds, mostly)."""
    keys = varying_keys(runs) if keys is None else keys
    grouped: dict[tuple[Any, ...], list[RunRecord]] = {}
    for run in runs:
        grouped.setdefault(tuple(json.dumps(run.config.get(k)) for k in keys), []).append(run)
    return grouped


def short_key(key: str, keys: Sequence[str]) -> str:
    """``train.mode`` -> ``mode``, unless another key of ``keys`` ends the same (then the full key)."""
    name = key.rsplit(".", 1)[-1]
    return name if sum(k.rsplit(".", 1)[-1] == name for k in keys) == 1 else key


def cell_label(run: RunRecord, keys: Sequence[str]) -> str:
    """``mode=caps, readout_norm=none``: the values that tell this run's cell from the others."""
    if not keys:
        return run.path.parent.name if run.path.name.startswith("seed-") else run.path.name
    return ", ".join(f"{short_key(k, keys)}={shown(run.config.get(k))}" for k in keys)
