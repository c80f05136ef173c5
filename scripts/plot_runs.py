#!/usr/bin/env python
"""PNG figures of runs, one line per cell (runs that differ only in their seed: the mean, with a band
of ± one std over seeds), labelled by the config keys that vary: errors (Fig. 2), orthogonality and
sparsity (Fig. 3), gradient cosine per block, ||m|| per epoch, per-block accuracy; for multimodal
runs each modality's own test error per epoch (modality_errors.png: joint against late fusion, whose
models are the encoders trained alone). Diagnostics figures need runs trained with
``--set train.diagnostics_every=N``.

Example:
  python scripts/plot_runs.py runs/figures_fashion --out docs/figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.plotting import plot_all
from capsmm.run_records import find_runs


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="plot_runs.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders holding run folders at any depth")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for path in plot_all(find_runs(args.runs), args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
