#!/usr/bin/env python
"""Class-incremental learning: the classes arrive in tasks (5 x 2 by default), each task trained without
the old data (or with a small replay memory), and every class seen so far evaluated with no task label.
Prints, per task, the accuracy on the seen classes and on each task; then the average incremental
accuracy, the final accuracy, the forgetting and the backward transfer (capsmm/incremental.py).

With no argument: bp against caps on the offline digits (configs/incremental_digits.yaml), about a minute.

Examples:
  python scripts/train_incremental.py --dataset fashion-mnist --mode caps --set incremental.freeze_prototypes=true --epochs 2
  python scripts/train_incremental.py --config configs/incremental_fashion.yaml --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.cli import VISION_FLAGS, config_parser, guarded, runs_from_args, with_default_config
from capsmm.incremental import IncrementalRunConfig, run_incremental
from capsmm.reporting import comparison_report, record_of

QUICK = Path(__file__).resolve().parent.parent / "configs" / "incremental_digits.yaml"
FLAGS = VISION_FLAGS | {
    "--tasks": (("incremental.tasks",), int, "number of tasks the classes are split into (incremental.tasks)"),
    "--replay": (("incremental.replay",), int, "training samples kept per old class and replayed (incremental.replay)"),
}
#: what the closing table shows, from every run's results.json (accuracies, in percent)
COLUMNS = ["average_incremental_accuracy", "final_accuracy", "average_forgetting", "backward_transfer"]


def build_parser() -> argparse.ArgumentParser:
    return config_parser("train_incremental.py", __doc__, IncrementalRunConfig, FLAGS)


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(with_default_config(sys.argv[1:] if argv is None else argv, QUICK))
    results = [run_incremental(run, resume=args.resume, force=args.force) for run in runs_from_args(args, FLAGS, IncrementalRunConfig)]
    print(comparison_report([record_of(r) for r in results], columns=COLUMNS, metric="average_incremental_accuracy"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
