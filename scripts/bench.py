#!/usr/bin/env python
"""Cost of the training modes side by side: parameters, peak memory, forward / backward /
optimizer / whole-step milliseconds per batch (medians after warm-up), ratios to bp, and the
backward floor (the smallest caps/bp backward ratio a stop-gradient can reach on this device).

Example:
  python scripts/bench.py --backbones vgg11,mlp --dataset cifar10 --iters 20 --json bench.json
  python scripts/bench.py --backbones vgg11 --modes bp,caps --options adam_impl=foreach,fused
  python scripts/bench.py --backbones vgg11 --modes bp,caps,caps-lean --options lean_segments=1,2,4,auto
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from capsmm.benchmark import DEFAULT_OPTIONS, BENCH_MODES, DATASET_SHAPES, OPTIONS, markdown_table, measure_backbone, parse_options
from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.errors import ConfigError
from capsmm.training import resolve_device


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="vgg11,mlp", help="comma-separated backbones (default vgg11,mlp)")
    parser.add_argument("--modes", default="bp,caps,caps-full,local,caps-lean", help=f"comma-separated, from {', '.join(BENCH_MODES)}")
    parser.add_argument("--dataset", default="cifar10", help=f"input shape and classes of: {', '.join(DATASET_SHAPES)}")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps per variant first")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    parser.add_argument("--options", action="append", default=[], metavar="KEY=V1,V2",
                        help=f"measure every combination of speed options; KEY in {', '.join(OPTIONS)} (repeatable)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--no-floor", action="store_true", help="skip the per-layer backward floor")
    parser.add_argument("--json", type=Path, help="write the records as a JSON list here")
    parser.add_argument("--plot", type=Path, help="draw the memory/time trade-off (activations vs bp, step vs caps) into this PNG; "
                        "needs the modes bp and caps")
    return parser


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    option_sets = parse_options(args.options)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.plot and (not {"bp", "caps"} <= set(modes) or args.no_memory):
        raise ConfigError("--plot draws memory against bp's and time against caps's: give --modes with bp and caps, without --no-memory")
    records, floors = [], {}
    for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        rows, floor = measure_backbone(
            backbone, modes, option_sets, dataset=args.dataset, batch_size=args.batch_size, iters=args.iters,
            warmup=args.warmup, width_mult=args.width_mult, device=device, memory=not args.no_memory, floor=not args.no_floor,
        )
        records += rows
        if floor:
            floors[backbone] = floor
            for row in rows:
                row["backward_floor"] = floor["floor"]
    print(f"\n{args.dataset} shapes, batch {args.batch_size}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if records and "memory_method" in records[0]:
        print(f"memory: {records[0]['memory_method']}; resting parameters + optimizer state + the step's peak")
    print(markdown_table(records))
    for backbone, floor in floors.items():
        line = (f"\n{backbone} backward floor: weight-grad {floor['weight_grad_ms']:.1f} ms, input-grad {floor['input_grad_ms']:.1f} ms "
                f"-> caps/bp backward >= {floor['floor']:.2f}")
        caps = next((r for r in records if r["backbone"] == backbone and r["mode"] == "caps" and "backward_vs_bp" in r), None)
        if caps:
            line += f"; measured {caps['backward_vs_bp']:.2f} (floor + {caps['backward_vs_bp'] - floor['floor']:.2f})"
        bp = next((r for r in records if r["backbone"] == backbone and r["mode"] == "bp" and r["options"] == DEFAULT_OPTIONS), None)
        if bp:  # what the stop-gradient can actually remove: the input-gradient time, nothing else
            line += (f"\n{backbone} with the rest of the backward (batch-norm, ReLU, pooling, which caps still runs): "
                     f"(bp backward - input-grad) / bp backward = {1 - floor['input_grad_ms'] / bp['backward_ms']:.2f}")
        print(line)
    for backbone in dict.fromkeys(r["backbone"] for r in records if "lean_floor_mib" in r):
        lean = next(r for r in records if r["backbone"] == backbone and "lean_floor_mib" in r)
        bp = next((r for r in records if r["backbone"] == backbone and r["mode"] == "bp" and "activation_mib" in r), None)
        versus = f" = {lean['lean_floor_mib'] / bp['activation_mib']:.2f}x bp activations" if bp else ""
        print(f"{backbone} lean floor: block {lean['lean_floor_block'] + 1} alone needs {lean['lean_floor_mib']:.0f} MiB{versus} "
              "(whole-block recomputation can't go below it; train.lean_segments splits blocks into micro-batches)")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    if args.plot:
        from capsmm.plotting import plot_cost_tradeoff  # matplotlib only when a figure is asked for

        print(f"trade-off figure: {plot_cost_tradeoff(records, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
