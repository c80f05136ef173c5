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

Inputs are predicted in batches (``--batch-size``); worker processes (``--workers``) read the next
batches while the model predicts on this one, which changes no prediction: the batches are the
same.

Examples:
  python scripts/predict.py runs/quickstart/bp/seed-0 digit.png more_digits/
  python scripts/predict.py runs/mm/seed-0 --image a.png --audio a.wav --top-k 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from capsmm.cli import OneLineArgumentParser, guarded, non_negative, positive
from capsmm.errors import ConfigError
from capsmm.inference import INPUT_KINDS, ReadBatch, TrainedModel, load_run, read_batches

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
    parser.add_argument("--workers", type=non_negative, metavar="N",
                        help="processes that read the next batches' files while the model predicts "
                             "(default: half the CPUs, at most 8; 0: read each batch in this process, then predict it)")
    parser.add_argument("--threads", type=positive, metavar="N",
                        help="CPU threads of the forward pass (default: torch's, less the CPUs the reading workers take)")
    parser.add_argument("--data-root", help="only for a run older than input_pipeline.json: where its training data lies")
    return parser


def expand(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """A file as itself; a folder as its files with ``suffixes``, recursively (not into linked
    folders, as ``Path.rglob``), in ``Path`` order. One ``scandir`` per folder and no ``stat`` per
    file: ``rglob`` and ``is_file`` on 10,000 files took half as long as decoding them."""
    if not path.is_dir():
        return [path]
    found, folders = [], [os.fspath(path)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in suffixes and entry.is_file():
                    found.append(entry.path)
    return [Path(p) for p in sorted(found, key=lambda p: os.path.normcase(p).split(os.sep))]  # Path compares part by part


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


def top(probabilities: torch.Tensor, classes: Sequence[str], k: int) -> tuple[list[list[dict[str, Any]]], torch.Tensor]:
    """(B, C) probabilities -> per row its ``k`` most probable classes, most probable first, and
    their (B, k) indices (one topk and one tolist for the batch, not tensor operations per row)."""
    values, indices = probabilities.topk(min(k, len(classes)), dim=1)
    entries = [[{"class": classes[i], "probability": v} for v, i in zip(row_values, row_indices)]
               for row_values, row_indices in zip(values.tolist(), indices.tolist())]
    return entries, indices


def describe(items: Sequence[Item], result: dict[str, Any], trained: TrainedModel, k: int) -> list[dict[str, Any]]:
    """The records of a batch's predictions (what its JSON lines hold), one per item; the items give
    the same modalities."""
    best, indices = top(result["probabilities"], trained.classes, k)
    similarity = result["similarity"]
    if similarity is not None:
        similarity = similarity.gather(1, indices[:, :1])[:, 0].tolist()  # to the top class's prototype
    names = sorted(items[0]) if items else []
    own = {m: top(result[f"probabilities.{m}"], trained.classes, k)[0] for m in names} if len(names) > 1 else {}
    gates = None if result.get("gates") is None else result["gates"].tolist()
    records = []
    for row, item in enumerate(items):
        record: dict[str, Any] = {"input": {m: str(p) for m, p in item.items()} if len(trained.modalities) > 1 else str(next(iter(item.values()))),
                                  "top": best[row], "similarity": None if similarity is None else similarity[row]}
        if own:
            record["modalities"] = {m: {"top": own[m][row], "gate": None if gates is None else gates[names.index(m)][row]} for m in names}
        records.append(record)
    return records


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


def predict_batch(trained: TrainedModel, batch: Sequence[Item], read: ReadBatch, args: argparse.Namespace) -> int:
    """Predict one batch as read, writing a line per input (the batch's lines in one write, not a
    print each); returns how many of its inputs could not be read."""
    for error in read.errors:
        print(f"error: {error}", file=sys.stderr)
    lines = []
    for positions, stored in read.groups:
        result = trained.predict(stored)
        for record in describe([batch[p] for p in positions], result, trained, args.top_k):
            lines.append(json.dumps(record) if args.json else line(record))
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    return len(read.errors)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def reading_plan(args: argparse.Namespace) -> tuple[int, int]:
    """(reading worker processes, forward-pass threads): by default half the CPUs read (at most 8)
    and the forward pass keeps the rest, so that the two do not contend for the same CPUs."""
    cpus = available_cpus()
    workers = min(8, cpus // 2) if args.workers is None else args.workers
    threads = args.threads or (min(torch.get_num_threads(), max(1, cpus - workers)) if workers else torch.get_num_threads())
    return workers, threads


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    workers, threads = reading_plan(args)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # loading too: building the model runs it once
    try:
        trained = load_run(args.run, args.device, data_root=args.data_root)
        items = items_from(args, trained)
        failures = sum(predict_batch(trained, batch, read, args)
                       for batch, read in read_batches(items, trained.pipelines, args.batch_size, workers))
    finally:
        torch.set_num_threads(previous)  # main() is also called in-process (tests, bench_predict.py)
    if failures:
        print(f"error: {failures} of {len(items)} input(s) could not be read (named above); the others were predicted", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
