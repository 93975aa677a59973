"""`selfinstruct ablate RUN_DIR`: LoRA rank x target-module grid over a run's data."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CliError

EPILOG = """\
Each cell trains a fresh LoRA adapter on the run's machine-generated tasks (same seed, same
steps), then reports on the held-out tasks: the completion loss of their reference answers
and ROUGE-L of greedy answers. Defaults are the LoRA paper's grid: r in 1,2,4,8,64 and
targets q / q,v / q,k,v,o (15 cells; on a CPU, start with a smaller grid).

outputs (in --out, default RUN_DIR/ablation): ablation.json, ablation.md, one adapter per cell.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="LoRA rank x target modules grid: held-out loss and ROUGE-L per cell",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory (its pool.jsonl is the training data)")
    p.add_argument("--model", required=True, help="base model to adapt: 'smollm2', a .gguf, a HF directory or id")
    p.add_argument("--tasks", default="seed_tasks/heldout_tasks.jsonl", help="held-out tasks")
    p.add_argument("--ranks", default="1,2,4,8,64", help="comma-separated LoRA ranks (default: 1,2,4,8,64)")
    p.add_argument("--targets", action="append", default=[], metavar="SET",
                   help="a target set such as q,v (repeatable; default: q, q,v and q,k,v,o)")
    p.add_argument("--include-seeds", action="store_true", help="also train on the run's seed tasks")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0, help="steps per cell (0: --epochs decide)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alpha-ratio", type=float, default=2.0, help="alpha = ratio x r (default: 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--format", choices=["auto", "chat", "alpaca"], default="auto", help="prompt format to train with")
    p.add_argument("--limit", type=int, default=0, help="use only the first N held-out tasks (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default: RUN_DIR/ablation)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ablate import (DEFAULT_TARGET_SETS, AblationError, TrainSettings, ablation_table, examples_from_tasks,
                          parse_grid, run_ablation)
    from ..export import machine_tasks
    from ..records import load_tasks

    run_dir = Path(args.run_dir)
    targets = args.targets or list(DEFAULT_TARGET_SETS)
    try:
        parse_grid(args.ranks, targets)
    except (AblationError, ValueError) as e:
        raise CliError(f"bad grid: {e}") from e
    tasks = machine_tasks(run_dir)
    if args.include_seeds:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        tasks = load_tasks(cfg["seed_tasks"]) + tasks
    heldout = load_tasks(args.tasks)
    if args.limit > 0:
        heldout = heldout[: args.limit]
    settings = TrainSettings(epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
                             seed=args.seed, prompt_format=args.format)
    try:
        cells = run_ablation(args.model, examples_from_tasks(tasks), heldout, args.out or run_dir / "ablation",
                             ranks=[int(r) for r in args.ranks.split(",")], target_sets=targets,
                             base_settings=settings, max_new_tokens=args.max_new_tokens,
                             alpha_ratio=args.alpha_ratio)
    except AblationError as e:
        raise CliError(str(e)) from e
    print(ablation_table(cells))
    print(f"written: {Path(args.out or run_dir / 'ablation') / 'ablation.md'}")
    return 0
