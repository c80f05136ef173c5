#!/usr/bin/env python
"""Throughput of predict.py: 10,000 28x28 grey PNG files (written to a temporary folder) predicted
by an MLP run, against the time that decoding them alone takes (PIL, as predict.py decodes).

The run folder is made here, untrained (the weights do not change the cost): the MLP of the peers
study (3 x 1024, batch-norm blocks), or ``--hidden 3000`` for the paper's. Each repeat measures,
side by side on the same files, one JSON line (then the spread of the ratio over the repeats):

- ``bytes_s``: reading the files' bytes alone (from the file cache);
- ``decode_s``: decoding alone (PIL, one process), the yardstick;
- ``read_s``: predict.py's reading alone (decoding, fitting to the run's pipeline, stacking batches);
- ``load_s``: loading the run (``load_run``); ``list_s``: expanding the folder to its files;
- ``forward_s``: the model alone (normalisation included) on stored batches of predict.py's size,
  with its threads; ``lines_s``: turning those predictions into text lines;
- ``sequential_s``: predict.py reading each batch and then predicting it (``--workers 0``), about
  the sum of the above less ``bytes_s`` and ``decode_s``;
- ``predict_s``: predict.py as run, its workers reading ahead of the forward pass, and ``ratio``,
  ``predict_s / decode_s`` (the target: at most 2). With the reading overlapped, ``predict_s``
  cannot fall below ``load_s + list_s + forward_s + lines_s``.

Example:
  python scripts/bench_predict.py --files 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from capsmm.checkpoint import atomic_write_json, save_checkpoint
from capsmm.cli import OneLineArgumentParser, guarded, non_negative, positive
from capsmm.config import build_runs
from capsmm.inference import TrainedModel, load_run, read_batches
from capsmm.pipeline import save_input_pipeline
from capsmm.training import model_from_config


def write_run(folder: Path, hidden: int) -> None:
    """A run folder of an untrained caps MLP on 28x28 grey inputs, as training would leave it."""
    [config] = build_runs(None, ["data.name=digits", "model.backbone=mlp", f"model.hidden={hidden}", "model.block_batchnorm=true",
                                 "train.mode=caps", f"out={folder}"])
    model = model_from_config(config, 10, (1, 28, 28))
    save_checkpoint(folder / "checkpoint.safetensors", {"config": config.to_dict(), "model": model.state_dict()})
    atomic_write_json(folder / "results.json", {"config": config.to_dict()})
    save_input_pipeline(folder, {"image": {"in_shape": [1, 28, 28], "classes": [str(c) for c in range(10)], "mean": [0.3], "std": [0.35]}})


def write_images(folder: Path, count: int) -> list[Path]:
    generator = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.png"
        Image.fromarray(generator.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def decode_seconds(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            np.asarray(image.convert("L"))
    return time.perf_counter() - start


def bytes_seconds(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        path.read_bytes()
    return time.perf_counter() - start


def forward_seconds(trained: TrainedModel, files: int, batch_size: int) -> tuple[float, list[dict[str, Any]]]:
    """The model alone on ``files`` stored 28x28 grey inputs in predict.py's batches, and its results."""
    batch = torch.randint(0, 256, (batch_size, 1, 28, 28), dtype=torch.uint8)
    trained.predict({"image": batch})  # warm up
    start = time.perf_counter()
    results = [trained.predict({"image": batch[:min(batch_size, files - first)]}) for first in range(0, files, batch_size)]
    return time.perf_counter() - start, results


def lines_seconds(predict: ModuleType, trained: TrainedModel, results: list[dict[str, Any]], paths: list[Path]) -> float:
    """predict.py's text lines of ``results``, one batch at a time."""
    start = time.perf_counter()
    first = 0
    for result in results:
        items = [{"image": path} for path in paths[first:first + len(result["probabilities"])]]
        first += len(items)
        "\n".join(predict.line(record) for record in predict.describe(items, result, trained, 1))
    return time.perf_counter() - start


def predict_seconds(predict: ModuleType, argv: list[str], files: int) -> float | None:
    """predict.py's wall time, its lines kept in memory; None when it failed or missed a line."""
    lines = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(lines):
        code = predict.main(argv)
    seconds = time.perf_counter() - start
    return seconds if code == 0 and len(lines.getvalue().splitlines()) == files else None


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="bench_predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=positive, default=10_000)
    parser.add_argument("--hidden", type=positive, default=1024, help="MLP width (3 blocks)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=positive, default=3, help="side-by-side measurements (default 3)")
    parser.add_argument("--workers", type=non_negative, metavar="N", help="predict.py --workers (default: its own)")
    parser.add_argument("--threads", type=positive, metavar="N", help="predict.py --threads (default: its own)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import predict

    options = ["--device", args.device] + (["--workers", str(args.workers)] if args.workers is not None else []) \
        + (["--threads", str(args.threads)] if args.threads else [])
    workers, threads = predict.reading_plan(predict.build_parser().parse_args(["run", *options]))
    batch_size = predict.build_parser().get_default("batch_size")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        run, images = Path(tmp) / "run", Path(tmp) / "images"
        images.mkdir()
        write_run(run, args.hidden)
        paths = write_images(images, args.files)
        trained = load_run(run, args.device)
        decode_seconds(paths[:200])  # warm the file cache and PIL's plugins
        for _ in range(args.repeats):
            times = {"bytes_s": bytes_seconds(paths), "decode_s": decode_seconds(paths)}
            start = time.perf_counter()
            for _batch in read_batches([{"image": p} for p in paths], trained.pipelines, batch_size):
                pass
            times["read_s"] = time.perf_counter() - start
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                start = time.perf_counter()
                load_run(run, args.device)
                times["load_s"] = time.perf_counter() - start
                start = time.perf_counter()
                predict.expand(images, trained.input_kind("image").suffixes)
                times["list_s"] = time.perf_counter() - start
                times["forward_s"], results = forward_seconds(trained, args.files, batch_size)
                times["lines_s"] = lines_seconds(predict, trained, results, paths)
            finally:
                torch.set_num_threads(previous)
            sequential = predict_seconds(predict, [str(run), str(images), *options, "--workers", "0", "--threads", str(threads)], args.files)
            total = predict_seconds(predict, [str(run), str(images), *options], args.files)
            if sequential is None or total is None:
                print("error: predict.py failed on the benchmark's files (its error is above)", file=sys.stderr)
                return 1
            times |= {"sequential_s": sequential, "predict_s": total}
            ratios.append(total / times["decode_s"])
            print(json.dumps({"files": args.files, "mlp_hidden": args.hidden, "workers": workers, "threads": threads,
                              **{name: round(seconds, 3) for name, seconds in times.items()}, "ratio": round(ratios[-1], 2)}), flush=True)
    print(json.dumps({"repeats": args.repeats, "ratio_min": round(min(ratios), 2), "ratio_median": round(statistics.median(ratios), 2),
                      "ratio_max": round(max(ratios), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
