"""`selfinstruct finetune RUN_DIR_OR_JSONL`: LoRA-finetune on a run's pool or any task file.

Settings come from the run's config.yaml (its `finetune:` section), or from --config
PIPELINE.yaml, then --set overrides (`--set r=16` or `--set finetune.r=16`). Outputs go to
the run directory (adapter/, checkpoints/, merged/), or to --output-dir for a JSONL input.

Several GPUs: `accelerate launch --multi_gpu --num_processes N $(which selfinstruct) finetune ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="LoRA-finetune a model on a run's pool or a JSONL file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="a run directory (its pool.jsonl) or a Self-Instruct / Alpaca / chat "
                   "messages JSONL file")
    p.add_argument("--config", type=Path, help="pipeline YAML whose finetune: section to use "
                   "(default: the run's config.yaml, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a finetune field, e.g. --set r=16 --set target_modules=[q,k,v,o] (repeatable)")
    p.add_argument("-o", "--output-dir", type=Path,
                   help="where adapter/ and checkpoints/ go (default: the run directory, or outputs/finetune-<name> "
                        "for a JSONL file)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--merge", action="store_true", help="also write merged/ with the adapter folded in")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(func=run)


def _section(args: argparse.Namespace, run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    """The finetune section to start from, and the pipeline config it came from (if any)."""
    from ..config import load_config

    source = args.config or (run_dir / "config.yaml" if run_dir is not None else None)
    if source is None:
        return {}, None
    if not source.exists():
        raise CliError(f"{source} not found")
    cfg = load_config(source)
    return dict(cfg.finetune or {}), cfg


def _overrides(items: list[str]) -> dict[str, Any]:
    from ..config import apply_overrides

    data: dict[str, Any] = {}
    prefixed = [i if i.startswith("finetune.") else "finetune." + i for i in items]
    return apply_overrides(data, prefixed).get("finetune", {})


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def run(args: argparse.Namespace) -> int:
    from ..finetune import finetune_config, pipeline_data
    from ..finetune.trainer import LoraFinetuner

    data: Path = args.data
    if not data.exists():
        raise CliError(f"{data} not found: give a run directory (e.g. outputs/default) or a JSONL file")
    run_dir = data if data.is_dir() else None
    section, pipeline = _section(args, run_dir)
    section.update(_overrides(args.overrides))
    if args.resume:
        section["resume"] = True
    if args.merge:
        section["merge"] = True
    ft = finetune_config(section)
    out_dir = args.output_dir or run_dir or Path("outputs") / f"finetune-{data.stem}"
    if run_dir is not None and pipeline is not None:
        source: Any = pipeline_data(pipeline, ft, run_dir)
    else:
        source = Path(ft.data) if ft.data else data
    result = LoraFinetuner(ft, progress=not args.no_progress).train(source, out_dir)
    if not result.is_main_process:
        return 0
    print(f"steps {result.global_step}, training loss {_num(result.train_loss)}, validation loss "
          f"{_num(result.eval_loss)}, {result.tokens_per_s:.0f} tokens/s")
    print(f"adapter: {result.adapter_dir}")
    if result.merged_dir:
        print(f"merged: {result.merged_dir}")
    return 0
