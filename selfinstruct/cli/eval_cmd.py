"""`selfinstruct eval`: answer held-out tasks with one or more models and score them with ROUGE-L."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CliError

EPILOG = """\
candidates:
  one model:    --model smollm2 [--adapter outputs/run/adapter] [--name tuned]
  several:      --candidate base=PATH/base.gguf --candidate tuned=PATH/base.gguf:outputs/run/adapter
  Each candidate is NAME=MODEL[:ADAPTER_DIR]; all are scored on the same tasks and land in one table.
  A Windows drive letter is not a separator: w=C:\\models\\m:D:\\adapters\\a is model C:\\models\\m with
  adapter D:\\adapters\\a. A path with any other ':' in it goes in --model/--adapter instead.
  --include OLD/eval.json puts earlier results (same task file) into the table without re-running them.

prompting:
  with an adapter: the adapter's prompt_format.json (the prompt it was trained on).
  without one: the chat template if the tokenizer has one, else plain completion with the
  Alpaca template (base models); a base model's answer is cut at the first blank line or
  "###", as well as at EOS. --format forces chat or alpaca for adapter-less candidates.

outputs (in --out):
  eval.json  mean and per-task ROUGE-L (0..1) and every prediction, per candidate
  eval.md    the comparison table (ROUGE-L x100) and per-task scores
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score models (and adapters) on held-out tasks with ROUGE-L",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="held-out tasks: Self-Instruct, Alpaca or chat JSONL/JSON")
    p.add_argument("--model", help="model spec: 'smollm2', a .gguf file, a HF directory or id")
    p.add_argument("--adapter", help="LoRA adapter directory for --model (written by finetune)")
    p.add_argument("--name", help="name of the --model candidate in the table (default: base / adapted)")
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=MODEL[:ADAPTER_DIR]",
                   help="a candidate to compare (repeatable): NAME=MODEL, or NAME=MODEL:ADAPTER_DIR with a LoRA "
                   "adapter (e.g. tuned=smollm2:outputs/default/adapter); a drive letter (C:\\ or C:/) is not "
                   "a separator, a path with any other ':' goes in --model/--adapter instead")
    p.add_argument("--include", action="append", default=[], metavar="EVAL_JSON",
                   help="add the results in an earlier eval.json to the table (same task file; repeatable)")
    p.add_argument("--out", default="outputs/eval", help="directory for eval.json and eval.md "
                   "(default: outputs/eval)")
    p.add_argument("--format", choices=["auto", "chat", "alpaca"], default="auto",
                   help="prompt format for candidates without an adapter (default: auto)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N tasks (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default: 64)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default: 8)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    p.set_defaults(func=run)


def candidates_from_args(args: argparse.Namespace, allow_none: bool = False):
    from ..evaluate import Candidate, EvalError

    cands = []
    if args.model:
        name = args.name or ("adapted" if args.adapter else "base")
        cands.append(Candidate(name, args.model, args.adapter))
    elif args.adapter or args.name:
        raise CliError("--adapter and --name go with --model")
    try:
        cands += [Candidate.parse(c) for c in args.candidate]
    except EvalError as e:
        raise CliError(str(e)) from e
    if not cands and not allow_none:
        raise CliError("nothing to evaluate: give --model M [--adapter DIR], or --candidate NAME=MODEL[:ADAPTER]")
    return [Candidate(c.name, c.model, c.adapter, args.format) for c in cands]


def run(args: argparse.Namespace) -> int:
    from ..evaluate import EvalError, evaluate, load_results, markdown_table, write_report
    from ..records import load_tasks

    try:
        earlier = [r for path in args.include for r in load_results(path, args.tasks)]
    except EvalError as e:
        raise CliError(str(e)) from e
    cands = candidates_from_args(args, allow_none=bool(earlier))
    clash = {r.name for r in earlier} & {c.name for c in cands}
    if clash:
        raise CliError(f"candidate name(s) {sorted(clash)} already in an --include file; pick other names")
    tasks = load_tasks(args.tasks)
    if args.limit > 0:
        tasks = tasks[: args.limit]
    device = args.device
    if device == "auto":
        from ..models import require

        device = "cuda" if require("torch").cuda.is_available() else "cpu"
    try:
        results = earlier + evaluate(cands, tasks, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           temperature=args.temperature, top_p=args.top_p, dtype=args.dtype, device=device)
    except EvalError as e:
        raise CliError(str(e)) from e
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "batch_size": args.batch_size, "dtype": args.dtype, "limit": args.limit}
    json_path, md_path = write_report(results, Path(args.out), args.tasks, settings)
    print(markdown_table(results, args.tasks).split("\n### Per task")[0].rstrip())
    print(f"\nwritten: {json_path}\nwritten: {md_path}")
    return 0
