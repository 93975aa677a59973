"""Folding a LoRA adapter into its base: W = W0 + (alpha/r) * B A, saved as a plain model.

The merged model needs no peft at inference and has no added latency; it is written in
Hugging Face layout (safetensors) with the tokenizer and the prompt format, so any loader
(transformers, vLLM, llama.cpp's converter) takes it as an ordinary model.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..sft_format import PromptFormat

log = logging.getLogger(__name__)


def _write(model: Any, tok: Any, fmt: PromptFormat, out_dir: Path, adapter_dir: Path | None) -> Path:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    fmt.save(tmp)
    if adapter_dir is not None:
        (tmp / "merged_from.json").write_text(json.dumps({"adapter": str(adapter_dir)}, indent=2), encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("merged model saved to %s", out_dir)
    return out_dir


def merge_trained(peft_model: Any, tok: Any, fmt: PromptFormat, out_dir: str | Path,
                  adapter_dir: Path | None = None) -> Path:
    """Merge a trained in-memory LoRA model (consumed: its layers are replaced) and save it."""
    if getattr(peft_model, "peft_type", None) is not None and str(peft_model.peft_type) not in ("LORA", "PeftType.LORA"):
        raise ValueError(f"only LoRA adapters can be merged, not {peft_model.peft_type}")
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True  # training switched it off; inference wants it back
    return _write(merged, tok, fmt, Path(out_dir), adapter_dir)


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    """Load base + adapter from disk (see load_adapter), merge, and save to `out_dir`."""
    from .adapters import load_adapter

    model, tok, fmt = load_adapter(adapter_dir, base_model=base_model)
    return merge_trained(model, tok, fmt, out_dir, Path(adapter_dir))
