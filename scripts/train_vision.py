#!/usr/bin/env python
"""Train an image classifier with CAPs (or bp / caps-full / local) and record error and cost.

With no argument it runs the offline quickstart (configs/quickstart.yaml: bp vs caps on the
bundled 8x8 digits) and prints a side-by-side table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.cli import VISION_FLAGS, config_parser, guarded, runs_from_args, with_default_config
from capsmm.config import RunConfig
from capsmm.distributed import is_main_process
from capsmm.reporting import comparison_report, record_of
from capsmm.training import train

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def build_parser() -> argparse.ArgumentParser:
    return config_parser("train_vision.py", __doc__, RunConfig, VISION_FLAGS)


@guarded
def main(argv: list[str] | None = None) -> int:
    # nothing chosen: the quickstart (rerun: its results; --resume, --force)
    args = build_parser().parse_args(with_default_config(sys.argv[1:] if argv is None else argv, QUICKSTART))
    runs = runs_from_args(args, VISION_FLAGS, RunConfig)
    results = [train(run, resume=args.resume, force=args.force) for run in runs]
    if len(results) > 1 and is_main_process():
        print(comparison_report([record_of(r) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
