# SPDX-License-Identifier: GPL-2.0-only
"""Render a kvmpv results file as text tables and, with --plot, PNG plots.

The file is validated against the results schema first; plots need the
optional extra (pip install 'kvmpv[plot]').  --plot PREFIX writes
PREFIXteardown.png and PREFIXreboot.png for the data the file has.
"""

from __future__ import annotations

import argparse

from ..report import results, tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.json", help="results file (kvmpv exercise/bench)")
    parser.add_argument(
        "--plot",
        metavar="PREFIX",
        help="write PNG plots named PREFIXteardown.png and PREFIXreboot.png "
        "(e.g. --plot out/ or --plot run1-)",
    )


def run(args: argparse.Namespace) -> int:
    doc = results.read(args.file)
    print(tables.render(doc))
    if args.plot:
        from ..report import plots

        print("\n".join(plots.plot_and_list(doc, args.plot)))
    return 0
