"""The `finetune:` section of a pipeline file, as a typed dataclass.

PipelineConfig keeps the section as a plain dict so the generation loop never imports
training code; this module validates it with the same rules as the rest of the config
(`from_dict`: unknown keys are errors that name the key and list the valid ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from ..config import ConfigError, from_dict, opt

log = logging.getLogger(__name__)

# vLLM refuses an adapter whose rank exceeds its --max-lora-rank (16 unless raised).
VLLM_DEFAULT_MAX_LORA_RANK = 16
# vLLM's --max-lora-rank accepts only these values; an adapter of rank r needs the first one >= r.
VLLM_RANK_STEPS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
METHOD_LEARNING_RATES = {"lora": 2e-4, "prompt_tuning": 3e-2, "prefix_tuning": 1e-2}


@dataclass
class FinetuneConfig:
    method: Literal["lora", "prompt_tuning", "prefix_tuning"] = opt(
        "lora", "lora: low-rank updates W0 + BA on the target modules. prompt_tuning: learned soft prompt "
        "embeddings before the input. prefix_tuning: learned key/value prefixes in every layer.")
    base_model: str = opt("smollm2", "Model to adapt: 'smollm2' (the bundled SmolLM2-135M-Instruct), a HF id, "
                          "a local directory or a .gguf file (de-quantised to fp32 for training).")
    data: str = opt("", "Training data: a Self-Instruct, Alpaca or chat messages JSONL file. Empty: the run's "
                    "export (decontaminated and deduplicated; seeds included if export.include_seeds), or its "
                    "pool.jsonl when there is no export.")
    # LoRA
    r: int = opt(8, "LoRA rank.")
    alpha: float = opt(16, "LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rslora).")
    dropout: float = opt(0.05, "Dropout on the LoRA input.")
    target_modules: list[str] = opt(
        None, "Modules that get LoRA: short names q, k, v, o, gate, up, down (mapped per model family, e.g. "
        "q_proj for Llama/Gemma), full module names, or all-linear. Common choices: [q, v], [q, k, v, o], all-linear.",
        factory=lambda: ["q", "v"])
    rslora: bool = opt(False, "Rank-stabilised LoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    max_lora_rank: int = opt(VLLM_DEFAULT_MAX_LORA_RANK, "vLLM's --max-lora-rank the adapter should load under; a "
                             "larger r is trained but warned about (serve it with a raised --max-lora-rank).")
    # Prompt / prefix tuning
    num_virtual_tokens: int = opt(20, "prompt_tuning / prefix_tuning: number of virtual tokens.")
    prompt_tuning_init_text: str = opt(
        "", "prompt_tuning: initialise the soft prompt from this text's token embeddings (empty: random).")
    # Data and loss
    loss: Literal["completion_only", "instruction_modelling"] = opt(
        "completion_only", "completion_only: loss on the answer and its EOS only. instruction_modelling: loss "
        "on the instruction and prompt too (Shi et al. 2024).")
    prompt_format: Literal["auto", "chat", "alpaca"] = opt(
        "auto", "auto: the tokenizer's chat template where it has one, else the Alpaca template.")
    max_length: int = opt(512, "Tokens per example; longer ones are cut at the end (dropped if no answer is left).")
    batching: Literal["auto", "padding_free", "length_grouped"] = opt(
        "auto", "padding_free: a batch is one flat sequence with position_ids (no pad compute; LoRA only). "
        "length_grouped: padded batches of similar lengths. auto: padding_free for LoRA, else length_grouped.")
    val_fraction: float = opt(0.1, "Share of examples held out for the validation loss (0: none).")
    # Optimisation
    batch_size: int = opt(8, "Examples per device per step.")
    grad_accum: int = opt(1, "Gradient accumulation steps.")
    epochs: float = opt(3.0, "Passes over the training examples.")
    max_steps: int = opt(0, "Stop after this many optimiser steps (0: epochs decide).")
    learning_rate: float = opt(0.0, "Peak learning rate (0: the method's usual rate: LoRA 2e-4, prompt tuning "
                               "3e-2, prefix tuning 1e-2).")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = opt(
        "cosine", "Learning-rate schedule after warm-up.")
    warmup_ratio: float = opt(0.03, "Share of steps for linear warm-up.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0: off).")
    neftune_alpha: float = opt(0.0, "NEFTune noise on the input embeddings (Jain et al. 2023; 5 is typical; 0: off).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: less memory, ~30% slower.")
    seed: int = opt(42, "Seed for the split, the adapter's initialisation, data order and dropout.")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "Base weight dtype. float32 on CPU; bfloat16 on recent GPUs (adapters stay float32).")
    threads: int = opt(0, "torch CPU threads (0: torch's default).")
    # Bookkeeping
    logging_steps: int = opt(5, "Log loss, learning rate and tokens/s every this many steps.")
    eval_steps: int = opt(0, "Validation loss every this many steps (0: at the end of each epoch).")
    save_steps: int = opt(50, "Checkpoint every this many steps, for resume (0: only at the end of each epoch).")
    save_total_limit: int = opt(2, "Checkpoints kept (older ones are deleted).")
    resume: bool = opt(False, "Continue from the newest checkpoint in the run's checkpoints/ directory.")
    merge: bool = opt(False, "Also write RUN_DIR/merged/: the base with W0 + BA folded in (LoRA only).")
    output_dir: str = opt("", "Adapter directory (empty: RUN_DIR/adapter).")

    @property
    def lr(self) -> float:
        return self.learning_rate or METHOD_LEARNING_RATES[self.method]

    @property
    def padding_free(self) -> bool:
        return self.batching == "padding_free" or (self.batching == "auto" and self.method == "lora")

    def vllm_rank(self) -> int:
        """The smallest --max-lora-rank vLLM accepts for this adapter."""
        return next((s for s in VLLM_RANK_STEPS if s >= self.r), self.r)


def finetune_config(data: dict[str, Any] | None) -> FinetuneConfig:
    """Validate a `finetune:` section (a plain dict from the pipeline file)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"finetune: expected a mapping of settings, got {data!r}")
    cfg = from_dict(FinetuneConfig, data, prefix="finetune.")
    validate(cfg)
    return cfg


def split_targets(names: list[str]) -> list[str]:
    """`[q,v]`, `q,v` and `[q, v]` all mean the same two modules."""
    return [n.strip() for item in names for n in item.split(",") if n.strip()]


def validate(cfg: FinetuneConfig) -> None:
    if cfg.r < 1:
        raise ConfigError("finetune.r must be at least 1")
    if cfg.alpha <= 0:
        raise ConfigError("finetune.alpha must be positive")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError("finetune.dropout must be in [0, 1)")
    cfg.target_modules = split_targets(cfg.target_modules)
    if not cfg.target_modules:
        raise ConfigError("finetune.target_modules is empty; e.g. [q, v], [q, k, v, o] or all-linear")
    if "all-linear" in cfg.target_modules and len(cfg.target_modules) > 1:
        raise ConfigError("finetune.target_modules: all-linear already means every linear layer; give it alone")
    if cfg.method != "lora" and cfg.merge:
        raise ConfigError(f"finetune.merge: only LoRA folds into the weights; {cfg.method} has nothing to merge")
    if cfg.method != "lora" and cfg.batching == "padding_free":
        raise ConfigError(f"finetune.batching: padding_free needs method lora ({cfg.method} prepends virtual "
                          "tokens per sequence); use length_grouped or auto")
    if cfg.num_virtual_tokens < 1:
        raise ConfigError("finetune.num_virtual_tokens must be at least 1")
    if not 0 <= cfg.val_fraction < 1:
        raise ConfigError("finetune.val_fraction must be in [0, 1)")
    if cfg.max_length < 8:
        raise ConfigError("finetune.max_length must be at least 8 tokens")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ConfigError("finetune.batch_size and finetune.grad_accum must be at least 1")
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise ConfigError("finetune: set epochs > 0 or max_steps > 0")
    if cfg.max_steps < 0 or cfg.logging_steps < 1 or cfg.eval_steps < 0 or cfg.save_steps < 0:
        raise ConfigError("finetune: max_steps, eval_steps and save_steps must be >= 0, logging_steps >= 1")
    if cfg.learning_rate < 0 or not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError("finetune: learning_rate must be >= 0 and warmup_ratio in [0, 1)")
    if cfg.neftune_alpha < 0:
        raise ConfigError("finetune.neftune_alpha must be >= 0")
    if cfg.method == "lora" and cfg.r > cfg.max_lora_rank:
        log.warning("finetune.r=%d is above max_lora_rank=%d: vLLM loads this adapter only when started with "
                    "--max-lora-rank %d (or more)", cfg.r, cfg.max_lora_rank, cfg.vllm_rank())
