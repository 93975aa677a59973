"""`selfinstruct stats RUN_DIR`: what a run grew, as report.md with plots; works mid-run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="report a run's counts, novelty, lengths and leading verbs (report.md + PNGs)")
    p.add_argument("run_dir", type=Path, help="a run directory, e.g. outputs/default (finished or in progress)")
    p.add_argument("--no-plots", action="store_true", help="write report.md without the PNG plots")
    p.add_argument("--top-verbs", type=int, default=20, help="leading verbs listed (default 20)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report, summary_lines, write_report

    report = build_report(args.run_dir, top_verbs=args.top_verbs)
    path = write_report(report, plots=not args.no_plots)
    for line in summary_lines(report):
        print(line)
    for png in report.plots.values():
        print(f"plot: {png}")
    print(f"report: {path}")
    return 0
