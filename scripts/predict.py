#!/usr/bin/env python
"""Predict with a trained run: one line per input with the top class, its probability and the CAP
similarity (the cosine between the input's pattern and that class's prototype).

Inputs are files of the run's modality, or folders (expanded to their files, recursively); images
of any size and mode (grey, RGB, RGBA, palette), audio of any sample rate and channel count, both
prepared as the run's training data was. A multimodal run takes pairs, ``--image A.png --audio
A.wav`` (repeat for more; the n-th of each go together), or either alone (the model predicts from
the modalities given), and prints each modality's own prediction and gate beside the joint one.
An unreadable file gets one line naming it; the others are still predicted, and the exit status
is then 2.

Examples:
  python scripts/predict.py runs/quickstart/bp/seed-0 digit.png more_digits/
  python scripts/predict.py runs/mm/seed-0 --image a.png --audio a.wav --top-k 3 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from capsmm.cli import OneLineArgumentParser, guarded, positive
from capsmm.errors import ConfigError, DataError
from capsmm.inference import INPUT_KINDS, TrainedModel, load_run

Item = dict[str, Path]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the folder of a finished run")
    parser.add_argument("inputs", nargs="*", type=Path, help="files or folders of the run's modality")
    for modality in INPUT_KINDS.names():
        parser.add_argument(f"--{modality}", action="append", default=[], type=Path, metavar="FILE",
                            help=f"a multimodal run's {modality} input (repeatable; paired by position with the other modalities')")
    parser.add_argument("--top-k", type=positive, default=1, metavar="K", help="print the K most probable classes (default 1)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    parser.add_argument("--batch-size", type=positive, default=256, help="inputs per forward pass (default 256)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    parser.add_argument("--data-root", help="only for a run older than input_pipeline.json: where its training data lies")
    return parser


def expand(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """A file as itself; a folder as its files with ``suffixes``, recursively, in sorted order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    return [path]


def items_from(args: argparse.Namespace, trained: TrainedModel) -> list[Item]:
    """What to predict: one dict modality -> file per prediction."""
    paired = {m: getattr(args, m) for m in INPUT_KINDS.names() if getattr(args, m)}
    foreign = sorted(set(paired) - set(trained.modalities))
    if foreign:
        raise ConfigError(f"this run reads {', '.join(trained.modalities)}, not {', '.join(foreign)}; drop --{foreign[0]}")
    if args.inputs and paired:
        raise ConfigError("give files either as arguments or with --" + " / --".join(trained.modalities) + ", not both")
    if paired:
        counts = {m: len(files) for m, files in paired.items()}
        if len(set(counts.values())) > 1:
            raise ConfigError(f"paired inputs need as many files of each modality; got {', '.join(f'{n} --{m}' for m, n in counts.items())}")
        return [{m: files[i] for m, files in paired.items()} for i in range(next(iter(counts.values())))]
    if not args.inputs:
        raise ConfigError("nothing to predict: give files or folders" + (" (or --image/--audio pairs)" if len(trained.modalities) > 1 else ""))
    if len(trained.modalities) > 1:
        raise ConfigError(f"a multimodal run takes its inputs as --{' FILE --'.join(trained.modalities)} FILE (or one of them alone)")
    modality = trained.modalities[0]
    suffixes = trained.input_kind(modality).suffixes
    return [{modality: path} for given in args.inputs for path in (expand(given, suffixes) or [given])]


def chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def top(probabilities: torch.Tensor, classes: Sequence[str], k: int) -> list[tuple[str, float, int]]:
    values, indices = probabilities.topk(min(k, len(classes)))
    return [(classes[i], float(v), int(i)) for v, i in zip(values.tolist(), indices.tolist())]


def describe(item: Item, result: dict[str, Any], row: int, trained: TrainedModel, k: int) -> dict[str, Any]:
    """The record of one prediction (what a JSON line holds)."""
    best = top(result["probabilities"][row], trained.classes, k)
    similarity = result["similarity"]
    record: dict[str, Any] = {"input": {m: str(p) for m, p in item.items()} if len(trained.modalities) > 1 else str(next(iter(item.values()))),
                              "top": [{"class": c, "probability": p} for c, p, _ in best],
                              "similarity": None if similarity is None else float(similarity[row, best[0][2]])}
    if len(item) > 1:
        names = sorted(item)
        gates = result.get("gates")
        record["modalities"] = {m: {"top": [{"class": c, "probability": p} for c, p, _ in top(result[f"probabilities.{m}"][row], trained.classes, k)],
                                    "gate": None if gates is None else float(gates[names.index(m), row])} for m in names}
    return record


def line(record: dict[str, Any]) -> str:
    """One text line: input, top class(es) with probability, CAP similarity, and per modality its own."""
    shown = lambda entries: ", ".join(f"{e['class']} {e['probability']:.3f}" for e in entries)
    where = record["input"] if isinstance(record["input"], str) else " + ".join(f"{m}={p}" for m, p in record["input"].items())
    text = f"{where}\t{shown(record['top'])}"
    if record["similarity"] is not None:
        text += f"\tsimilarity {record['similarity']:.3f}"
    for modality, own in record.get("modalities", {}).items():
        gate = "" if own["gate"] is None else f", gate {own['gate']:.2f}"
        text += f"\t{modality}: {shown(own['top'])}{gate}"
    return text


def predict_chunk(trained: TrainedModel, chunk: Sequence[Item], args: argparse.Namespace) -> int:
    """Read and predict one batch of items, printing a line each; returns how many failed to read."""
    read: list[tuple[Item, dict[str, torch.Tensor]]] = []
    failures = 0
    for item in chunk:
        try:
            read.append((item, {m: trained.read(m, p) for m, p in item.items()}))
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
    groups: dict[tuple[str, ...], list[tuple[Item, dict[str, torch.Tensor]]]] = {}
    for entry in read:
        groups.setdefault(tuple(sorted(entry[0])), []).append(entry)
    for names, entries in groups.items():
        result = trained.predict({m: torch.stack([stored[m] for _, stored in entries]) for m in names})
        for row, (item, _) in enumerate(entries):
            record = describe(item, result, row, trained, args.top_k)
            print(json.dumps(record) if args.json else line(record))
    return failures


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    trained = load_run(args.run, args.device, data_root=args.data_root)
    items = items_from(args, trained)
    failures = sum(predict_chunk(trained, chunk, args) for chunk in chunks(items, args.batch_size))
    if failures:
        print(f"error: {failures} of {len(items)} input(s) could not be read (named above); the others were predicted", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
