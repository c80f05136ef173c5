#!/usr/bin/env python
"""Block-parallel CAPs versus pipeline-parallel bp over torch.distributed (gloo on CPU processes):
bytes sent per step, counted exactly from the tensors sent, and median step time, with and without
micro-batch pipelining; one-process caps as the reference.

Example:
  python scripts/bench_distributed.py --backbone vgg8 --dataset fashion-mnist --world 2 --micro-batches 1,4 --iters 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from capsmm import build_model
from capsmm.benchmark import DATASET_SHAPES
from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.config import TrainConfig
from capsmm.distributed import DistContext
from capsmm.errors import ConfigError
from capsmm.strategies import build_strategy


def _model(args: argparse.Namespace, mode: str):
    in_shape, classes = DATASET_SHAPES[args.dataset]
    torch.manual_seed(0)
    return build_model(args.backbone, num_classes=classes, in_shape=in_shape, mode=mode, width_mult=args.width_mult), in_shape, classes


def _batch(args: argparse.Namespace, in_shape, classes):
    torch.manual_seed(1)
    return torch.randn(args.batch_size, *in_shape), torch.randint(0, classes, (args.batch_size,))


def _worker(rank: int, world: int, port: int, method: str, micro_batches: int, args: argparse.Namespace, out: Path) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mode = "caps" if method == "caps" else "bp"
    model, in_shape, classes = _model(args, mode)
    stage = build_strategy(model, TrainConfig(mode=mode, parallel="blocks", micro_batches=micro_batches), torch.device("cpu"),
                           DistContext(rank, world, rank))
    images, labels = _batch(args, in_shape, classes)
    times = []
    for step in range(args.warmup + args.iters):
        dist.barrier()
        start = time.perf_counter()
        stage.step(images, labels)
        dist.barrier()
        if step >= args.warmup:
            times.append((time.perf_counter() - start) * 1000)
    sent = torch.tensor([stage.traffic.total / (args.warmup + args.iters)], dtype=torch.float64)
    dist.all_reduce(sent)
    if rank == 0:
        (out / f"{method}-{world}-{micro_batches}.json").write_text(json.dumps({"step_ms": statistics.median(times), "bytes": sent.item()}))
    dist.destroy_process_group()


def _single_process_caps(args: argparse.Namespace) -> float:
    torch.set_num_threads(os.cpu_count() or 1)
    model, in_shape, classes = _model(args, "caps")
    strategy = build_strategy(model, TrainConfig(mode="caps"), torch.device("cpu"))
    images, labels = _batch(args, in_shape, classes)
    times = []
    for step in range(args.warmup + args.iters):
        start = time.perf_counter()
        strategy.step(images, labels)
        if step >= args.warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="bench_distributed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vgg8")
    parser.add_argument("--dataset", default="fashion-mnist", help=f"input shape and classes of: {', '.join(DATASET_SHAPES)}")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--world", default="2", help="comma-separated numbers of ranks")
    parser.add_argument("--micro-batches", default="1,4", help="comma-separated micro-batch counts")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.dataset not in DATASET_SHAPES:
        raise ConfigError(f"unknown dataset '{args.dataset}'; valid: {', '.join(DATASET_SHAPES)}")
    worlds = [int(w) for w in args.world.split(",")]
    micro = [int(m) for m in args.micro_batches.split(",")]
    reference = _single_process_caps(args)
    records = [{"method": "caps (1 process)", "world": 1, "micro_batches": 1, "step_ms": reference, "bytes": 0}]
    with tempfile.TemporaryDirectory() as folder:
        for world in worlds:
            for method in ("caps", "bp"):
                for m in micro:
                    mp.spawn(_worker, args=(world, _free_port(), method, m, args, Path(folder)), nprocs=world, join=True)
                    record = json.loads((Path(folder) / f"{method}-{world}-{m}.json").read_text())
                    name = "block-parallel caps" if method == "caps" else "pipeline-parallel bp"
                    records.append({"method": name, "world": world, "micro_batches": m, **record})
    print(f"\n{args.backbone} x{args.width_mult:g}, {args.dataset} shapes, batch {args.batch_size}, CPU processes (gloo), "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    print("| method | ranks | micro-batches | step (ms) | vs 1-process caps | sent per step (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['method']} | {r['world']} | {r['micro_batches']} | {r['step_ms']:.0f} | {r['step_ms'] / reference:.2f}x | {r['bytes'] / 2**20:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
