#!/usr/bin/env python
"""Linear probes of finished multimodal runs' encoders (the OGM-GE analysis): a linear classifier
fitted on each frozen encoder's features of the training set (its CAP patterns concatenated, or its
last block's activation averaged over space or time), tested on the modality's test set. Run it on a
joint run and on a late-fusion run (whose models are the same encoders trained alone, on the same
pairs, for the same epochs) to see how far joint training left an encoder behind.

Writes RUN_DIR/evaluation/probe-<features>.json (report.py reads it:
--columns evaluation.probe-patterns.audio.test_error) and prints a table beside each modality's
own-slice test error in the run (test_error_by_modality).

Examples:
  python scripts/probe.py runs/modality_balance/joint_caps_0.0_none_0.0/seed-0 runs/modality_balance/late_caps_0.0_none_0.0/seed-0
  python scripts/probe.py RUN --features last --max-train 5000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.checkpoint import atomic_write_json
from capsmm.cli import OneLineArgumentParser, guarded, positive
from capsmm.inference import load_run
from capsmm.metrics import tidy
from capsmm.probe import FEATURES, probe_run
from capsmm.run_records import read_run

FOLDER = "evaluation"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="probe.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders of finished multimodal runs")
    parser.add_argument("--features", choices=FEATURES, default="patterns",
                        help="patterns: the modality's CAP patterns concatenated (default); last: its last block's activation, averaged over space or time")
    parser.add_argument("--max-train", type=positive, default=10_000, help="fit on at most N training samples per modality, stratified by class (default 10000)")
    parser.add_argument("--data-root", help="where the runs' data lie (default: as each run's config says, else $CAPSMM_DATA)")
    parser.add_argument("--batch-size", type=positive, default=500)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    return parser


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    rows = ["| run | modality | probe test error (%) | probe train error (%) | own-slice test error in the run (%) |", "|---|---|---|---|---|"]
    for run in args.runs:
        trained = load_run(run, args.device, data_root=args.data_root)
        if args.data_root:
            for modality in trained.config.multimodal.modalities:
                getattr(trained.config, modality).root = args.data_root
        result = tidy(probe_run(trained, features=args.features, max_train=args.max_train, batch_size=args.batch_size))
        atomic_write_json(run / FOLDER / f"probe-{args.features}.json", result | {"run": str(run)})
        own = read_run(run).value("test_error_by_modality") or {}
        for modality in trained.modalities:
            figures = result[modality]
            in_run = f"{100 * own[modality]:.2f}" if modality in own else "-"
            rows.append(f"| {run} | {modality} | {100 * figures['test_error']:.2f} | {100 * figures['train_error']:.2f} | {in_run} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
