#!/usr/bin/env python
"""Train an image classifier with CAPs (or bp / caps-full / local) and record error and cost.

With no argument it runs the offline quickstart (configs/quickstart.yaml: bp vs caps on the
bundled 8x8 digits) and prints a side-by-side table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.cli import CONTROL_FLAGS, VISION_FLAGS, OneLineArgumentParser, add_config_arguments, config_epilog, guarded, runs_from_args
from capsmm.config import RunConfig
from capsmm.distributed import is_main_process
from capsmm.reporting import comparison_report, record_of
from capsmm.run import train

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="train_vision.py",
        description=__doc__,
        epilog=config_epilog(RunConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, VISION_FLAGS)
    return parser


@guarded
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if all(arg in CONTROL_FLAGS for arg in argv):  # nothing chosen: the quickstart (rerun: its results; --resume, --force)
        argv = ["--config", str(QUICKSTART), *argv]
    args = build_parser().parse_args(argv)
    runs = runs_from_args(args, VISION_FLAGS, RunConfig)
    results = [train(run, resume=args.resume, force=args.force) for run in runs]
    if len(results) > 1 and is_main_process():
        print(comparison_report([record_of(r) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
