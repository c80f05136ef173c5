#!/usr/bin/env python
"""Throughput of predict.py: 10,000 28x28 grey PNG files (written to a temporary folder) predicted
by an MLP run, against the time that decoding them alone takes (PIL, as predict.py decodes).

The run folder is made here, untrained (the weights do not change the cost): the MLP of the peers
study (3 x 1024, batch-norm blocks), or ``--hidden 3000`` for the paper's. Prints both times and
their ratio (the target: at most 2), and ``read_s``: decoding plus fitting each image to the run's
input pipeline, predict.py's reading without the model.

Example:
  python scripts/bench_predict.py --files 10000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from capsmm.checkpoint import atomic_write_json, save_checkpoint
from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.config import build_runs
from capsmm.inference import load_run
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


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="bench_predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width (3 blocks)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import predict

    with tempfile.TemporaryDirectory() as tmp:
        run, images = Path(tmp) / "run", Path(tmp) / "images"
        images.mkdir()
        write_run(run, args.hidden)
        paths = write_images(images, args.files)
        decode_seconds(paths[:200])  # warm the file cache and PIL's plugins
        decode = decode_seconds(paths)
        trained = load_run(run, args.device)
        start = time.perf_counter()
        for path in paths:
            trained.read("image", path)
        read = time.perf_counter() - start  # decoding plus bringing to the run's pipeline (predict.py's reading)
        lines = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(lines):
            code = predict.main([str(run), str(images), "--device", args.device])
        total = time.perf_counter() - start
    if code != 0 or len(lines.getvalue().splitlines()) != args.files:
        print(f"error: predict.py failed (exit status {code})", file=sys.stderr)
        return 1
    print(json.dumps({"files": args.files, "mlp_hidden": args.hidden, "decode_s": round(decode, 3), "read_s": round(read, 3), "predict_s": round(total, 3),
                      "ratio": round(total / decode, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
