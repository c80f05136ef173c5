#!/usr/bin/env python
"""Tables from finished runs: one row per cell (runs that differ only in their seed), labelled by the
config keys that vary among them, errors as mean ± std over seeds (n runs); paired comparisons of two
values of a key on the same seeds (mean difference and its 95% interval); the paper's table shape.

Examples:
  python scripts/report.py runs/quickstart                              # every run under the folder
  python scripts/report.py runs/quickstart --compare train.mode=caps,bp # caps - bp, paired by seed
  python scripts/report.py runs/table1 --paper --markdown runs/table1.md
  python scripts/report.py runs/fsdd_loso --pool audio.test_speakers --compare multimodal.fusion=joint  # over folds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.reporting import comparison_report, paper_table
from capsmm.run_records import find_runs


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders holding run folders at any depth")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=A,B",
                        help="paired difference A - B of the test error on the same seeds (KEY=A: A against every other value); "
                             "keys set together with KEY in every run (a zipped sweep axis) go with it, and the table names them")
    parser.add_argument("--pool", action="append", default=[], metavar="KEY",
                        help="treat KEY like the seed: one row over its values, pairs matched on them (e.g. audio.test_speakers "
                             "for leave-one-speaker-out folds)")
    parser.add_argument("--metric", default="test_error", help="what --compare compares, from results.json (dots reach inside: "
                                                                 "test_error_by_modality.audio)")
    parser.add_argument("--columns", type=lambda text: [c.strip() for c in text.split(",") if c.strip()], metavar="A,B",
                        help="figures of results.json to show (dotted keys, shown in percent), instead of the errors")
    parser.add_argument("--paper", action="store_true", help="the paper's table shape: one error column per data set")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    return parser


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    runs = find_runs(args.runs, finished=True)
    text = paper_table(runs) if args.paper else comparison_report(runs, args.compare, args.pool, args.metric, args.columns)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
