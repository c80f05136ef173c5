#!/usr/bin/env python
"""Linear probes of finished runs' encoders (the OGM-GE analysis): a linear classifier
fitted on each frozen encoder's features of the training set (its CAP patterns concatenated, or its
last block's activation averaged over space or time), tested on the modality's test set. Run it on a
joint run and on a late-fusion run (whose models are the same encoders trained alone, on the same
pairs, for the same epochs) to see how far joint training left an encoder behind. On vision runs too:
``--features blocks`` probes every block on its own and ``--cap-readout`` fits what CAPs would read from
frozen blocks another method trained (docs/peers.md measures both on Forward-Forward).

Writes RUN_DIR/evaluation/probe-<features>.json (report.py reads it:
--columns evaluation.probe-patterns.audio.test_error) and prints a table beside each modality's
own-slice test error in the run (test_error_by_modality).

Examples:
  python scripts/probe.py runs/modality_balance/joint_caps_0.0_none_0.0/seed-0 runs/modality_balance/late_caps_0.0_none_0.0/seed-0
  python scripts/probe.py RUN --features last --max-train 5000
  python scripts/probe.py runs/ff_criticisms/*/seed-0 --features blocks --cap-readout 2,3   # every layer; a CAP readout on layers 2-3
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


def block_list(text: str) -> list[int]:
    """``2,3`` -> the 0-based blocks [1, 2] (blocks are numbered from 1 on the command line)."""
    try:
        blocks = [int(part) - 1 for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of block numbers such as 2,3") from None
    if not blocks or min(blocks) < 0:
        raise argparse.ArgumentTypeError(f"'{text}': blocks are numbered from 1, e.g. 2,3")
    return blocks


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="probe.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders of finished vision or multimodal runs")
    parser.add_argument("--features", choices=FEATURES, default="patterns",
                        help="patterns: the modality's CAP patterns concatenated (default); last: its last block's activation, averaged over "
                             "space or time; blocks: one probe per block (each block's activation, averaged over space or time)")
    parser.add_argument("--cap-readout", type=block_list, default=[], metavar="BLOCKS",
                        help="also fit a CAP readout (pooled, batch-normalised patterns scored by cosine prototypes) on these frozen blocks, "
                             "numbered from 1, e.g. 2,3")
    parser.add_argument("--max-train", type=positive, default=10_000, help="fit on at most N training samples per modality, stratified by class (default 10000)")
    parser.add_argument("--data-root", help="where the runs' data lie (default: as each run's config says, else $CAPSMM_DATA)")
    parser.add_argument("--batch-size", type=positive, default=500)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    return parser


def rows_of(run: Path, modality: str, figures: dict, own: dict) -> list[str]:
    """The table's lines of one modality of one run: one per probe (each block's, the CAP readout)."""
    in_run = f"{100 * own[modality]:.2f}" if modality in own else "-"
    probes = {name: f for name, f in figures.items() if name.startswith("block_")} or {"probe": figures}
    if "cap_readout" in figures:
        probes[f"CAP readout, blocks {','.join(map(str, figures['cap_readout']['blocks']))}"] = figures["cap_readout"]
    return [f"| {run} | {modality} | {name} | {100 * f['test_error']:.2f} | {100 * f['train_error']:.2f} | {in_run} |" for name, f in probes.items()]


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    rows = ["| run | modality | probe | probe test error (%) | probe train error (%) | own-slice test error in the run (%) |",
            "|---|---|---|---|---|---|"]
    for run in args.runs:
        trained = load_run(run, args.device, data_root=args.data_root)
        if args.data_root:
            for modality in trained.config.multimodal.modalities if trained.kind == "multimodal" else ["data"]:
                getattr(trained.config, modality).root = args.data_root
        result = tidy(probe_run(trained, features=args.features, max_train=args.max_train, batch_size=args.batch_size,
                                cap_readout=args.cap_readout))
        atomic_write_json(run / FOLDER / f"probe-{args.features}.json", result | {"run": str(run)})
        own = read_run(run).value("test_error_by_modality") or {}
        for modality in trained.modalities:
            rows += rows_of(run, modality, result[modality], own)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
