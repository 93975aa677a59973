"""The finetuning stage: LoRA (or prompt / prefix tuning) on the grown dataset.

    from selfinstruct.finetune import LoraFinetuner, train_adapter, load_adapter
    result = train_adapter("outputs/default", "outputs/default", {"r": 8, "max_steps": 30})
    model, tokenizer, prompt_format = load_adapter(result.adapter_dir)

`selfinstruct run` calls `finetune_from_pipeline` after export when the pipeline file has a
`finetune:` section; `selfinstruct finetune RUN_DIR_OR_JSONL` runs the stage alone.

Several GPUs: the same command under accelerate, e.g.

    accelerate launch --multi_gpu --num_processes 4 $(which selfinstruct) finetune outputs/default \
        --set finetune.dtype=bfloat16

Importing this package loads no torch; the heavy modules load on first use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import FinetuneConfig, finetune_config

if TYPE_CHECKING:
    from ..config import PipelineConfig

__all__ = ["FinetuneConfig", "finetune_config", "finetune_from_pipeline", "LoraFinetuner", "FinetuneResult",
           "train_adapter", "load_adapter", "merge_adapter"]

log = logging.getLogger(__name__)

_LAZY = {"LoraFinetuner": "trainer", "FinetuneResult": "trainer", "train_adapter": "trainer",
         "load_adapter": "adapters", "merge_adapter": "merge"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


def pipeline_data(cfg: PipelineConfig, ft: FinetuneConfig, run_dir: Path) -> Path:
    """What a pipeline's finetune stage trains on: `ft.data` if set, else the export the
    pipeline wrote (the pool cleaned of held-out-set overlap and duplicates), else the pool."""
    if ft.data:
        return Path(ft.data)
    from ..export import parse_settings

    s = parse_settings(cfg.export)
    if s.jsonl and s.format in ("alpaca", "messages", "self_instruct"):
        exported = Path(run_dir) / s.directory / f"{s.format}.jsonl"
        if exported.exists():
            return exported
    log.warning("training on %s: no export of this run found (the export is what removes overlap with "
                "evaluation sets and duplicates)", Path(run_dir) / "pool.jsonl")
    return Path(run_dir)


def finetune_from_pipeline(cfg: PipelineConfig, run_dir: Path, *, progress: bool = True,
                           overrides: dict[str, Any] | None = None) -> Path:
    """Run the pipeline's `finetune:` section on the run's data; return the adapter directory."""
    from .trainer import LoraFinetuner

    ft = finetune_config({**(cfg.finetune or {}), **(overrides or {})})
    result = LoraFinetuner(ft, progress=progress).train(pipeline_data(cfg, ft, Path(run_dir)), run_dir)
    return result.adapter_dir
