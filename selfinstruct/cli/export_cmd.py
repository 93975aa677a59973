"""`selfinstruct export RUN_DIR`: write the grown dataset in the formats trainers read.

Settings start from the run's own `export:` section (in its config.yaml), so an export by
hand cleans the data as the run's export did; any flag given here overrides them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CliError

FORMATS = ["alpaca", "messages", "prompt_completion", "self_instruct"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a run's tasks: JSONL/JSON, HF dataset, Parquet, dataset card",
        description="Export a run's tasks, cleaned (evaluation-set decontamination, duplicate removal) and "
                    "documented by a dataset card. Settings default to the run's `export:` section.")
    p.add_argument("run_dir", type=Path, help="a run directory, e.g. outputs/default")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="alpaca {instruction,input,output}; messages (chat, as TRL reads); prompt_completion "
                        "(OpenAI finetune files); self_instruct (one record per task, all instances)")
    out = p.add_argument_group("outputs (at least one)")
    out.add_argument("-o", "--output", type=Path, help="a .jsonl or .json file; with a validation split, the "
                     "validation records go to <stem>.validation<suffix> beside it")
    out.add_argument("--hf", type=Path, metavar="DIR", help="a Hugging Face dataset (save_to_disk) in DIR, with "
                     "Parquet copies in DIR/data unless --parquet says otherwise")
    out.add_argument("--parquet", type=Path, metavar="DIR", help="Parquet files, one per split, in DIR")
    out.add_argument("--push-to-hub", metavar="REPO", default=None,
                     help="push to this Hugging Face dataset repo (needs HF_TOKEN or `hf auth login`)")
    out.add_argument("--card", type=Path, metavar="PATH", help="where the dataset card goes (default: README.md "
                     "in the folder of -o, else of --hf, else of --parquet)")
    out.add_argument("--no-card", action="store_true", help="write no dataset card")
    out.add_argument("--dropped", type=Path, metavar="PATH", help="write each hygiene drop (reason, task, "
                     "match) to this JSONL file")
    sel = p.add_argument_group("selection and hygiene")
    sel.add_argument("--include-seeds", action=argparse.BooleanOptionalAction, default=None,
                     help="export the seed tasks too, first")
    sel.add_argument("--validation-fraction", type=float, default=None, metavar="X",
                     help="share of tasks in a validation split (split by task, fixed seed)")
    sel.add_argument("--split-seed", type=int, default=None, help="seed of the split")
    sel.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=None,
                     help="drop exact and near-duplicate instances (default on)")
    sel.add_argument("--near-duplicate-threshold", type=float, default=None, metavar="X",
                     help="ROUGE-L of instruction + input above which instances of two tasks are duplicates")
    sel.add_argument("--decontaminate", type=Path, action="append", default=None, metavar="EVAL_FILE",
                     help="evaluation task file to decontaminate against (repeatable; replaces the run's list)")
    sel.add_argument("--no-decontaminate", action="store_true",
                     help="ignore the run's evaluation files: no decontamination")
    sel.add_argument("--contamination-ngram", type=int, default=None, metavar="N",
                     help="a shared run of N words with an evaluation instruction is contamination (default 13)")
    sel.add_argument("--contamination-rouge-threshold", type=float, default=None, metavar="X",
                     help="ROUGE-L with an evaluation instruction above X is contamination (default 0.7)")
    sel.add_argument("--license", default=None, help="licence identifier for the card, e.g. apache-2.0")
    p.set_defaults(func=run)


OVERRIDES = ["format", "include_seeds", "validation_fraction", "split_seed", "dedup", "near_duplicate_threshold",
             "contamination_ngram", "contamination_rouge_threshold", "license"]


def run(args: argparse.Namespace) -> int:
    from ..card import CardExistsError
    from ..export import ExportError, Outputs, export, parse_settings, run_config

    if not (args.output or args.hf or args.parquet or args.push_to_hub):
        raise CliError("nothing to write: give -o FILE.jsonl, --hf DIR, --parquet DIR or --push-to-hub REPO")
    data = dict(run_config(args.run_dir).get("export") or {})
    for key in OVERRIDES:
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.decontaminate is not None:
        data["decontaminate"] = [str(p) for p in args.decontaminate]
    if args.no_decontaminate:
        data["decontaminate"] = []
    data.pop("push_to_hub", None)  # a push happens only when asked for here
    settings = parse_settings(data)

    parquet = args.parquet or (args.hf / "data" if args.hf else None)
    card = None
    if not args.no_card:
        home = args.output.parent if args.output else (args.hf or args.parquet)
        card = args.card or (home / "README.md" if home is not None else None)
    try:
        res = export(args.run_dir, settings, Outputs(jsonl=args.output, hf=args.hf, parquet=parquet, card=card,
                                                     dropped=args.dropped), hub_repo=args.push_to_hub or "")
    except (ExportError, CardExistsError) as e:
        raise CliError(str(e)) from e

    h = res.hygiene
    print(f"format {res.format}: " + ", ".join(f"{name} {v['records']} records ({v['tasks']} tasks)"
                                               for name, v in res.splits.items()))
    print(f"hygiene: {h.tasks_in} tasks / {h.instances_in} instances in, {h.tasks_out} / {h.instances_out} out"
          + "".join(f"; {reason} {n}" for reason, n in h.to_dict()["dropped"].items() if n))
    for key, path in res.paths.items():
        print(f"{key}: {path}")
    if args.push_to_hub:
        print(f"pushed: https://huggingface.co/datasets/{args.push_to_hub}")
    return 0
