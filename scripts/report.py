#!/usr/bin/env python
"""A table of results in the shape of the paper's Tables 1-4 (error per data set, params, memory,
forward/backward ms per method and backbone), built from the runs' results.json files.

Example:
  python scripts/report.py runs/table1 --markdown runs/table1.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.reporting import paper_table
from capsmm.runs import find_results


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders holding run folders (a sweep's --out)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    table = paper_table(find_results(args.runs))
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
