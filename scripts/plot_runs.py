#!/usr/bin/env python
"""PNG figures overlaying runs: errors (Fig. 2), orthogonality and sparsity (Fig. 3), gradient
cosine per block, ||m|| per epoch, per-block accuracy. Diagnostics figures need runs trained with
``--set train.diagnostics_every=N``.

Example:
  python scripts/plot_runs.py runs/fig/bp runs/fig/caps runs/fig/caps-nobn --out docs/figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.plotting import plot_all
from capsmm.runs import read_run


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="plot_runs.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with metrics.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for path in plot_all([read_run(p) for p in args.runs], args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
