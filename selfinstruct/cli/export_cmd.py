"""`selfinstruct export RUN_DIR`: write the grown dataset in the formats trainers read."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's tasks (Alpaca JSONL, ...)")
    p.add_argument("run_dir", type=Path, help="a run directory, e.g. outputs/default")
    p.add_argument("--format", default="alpaca", choices=["alpaca"], help="record format")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .jsonl file")
    p.add_argument("--include-seeds", action="store_true", help="also export the seed tasks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_file

    n = export_file(args.run_dir, args.output, fmt=args.format, include_seeds=args.include_seeds)
    print(f"wrote {n} records to {args.output}")
    return 0
