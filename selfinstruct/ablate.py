"""LoRA rank x target-module ablation over a run's data (the LoRA paper's table 6, in miniature).

Every cell trains a fresh adapter on the same examples with the same seed and budget, then
reports two held-out measures: the completion-only loss on the held-out tasks' reference
answers, and ROUGE-L of greedy answers (selfinstruct.evaluate). Nothing about the grid is
chosen by looking at those numbers; they are only reported.

`train_lora` is a deliberately small, dependency-light trainer (plain AdamW over padded
batches, loss on the answer and its EOS only) so a cell costs no more than its steps. It
uses the same `PromptFormat` as finetuning and evaluation, and saves the adapter with its
prompt_format.json so `selfinstruct eval` asks it the way it was taught.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .records import Task
from .sft_format import PromptFormat

log = logging.getLogger(__name__)

# Short names for attention projections, as Llama, Gemma, Qwen and Mistral name them.
SHORT_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                 "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
DEFAULT_RANKS = (1, 2, 4, 8, 64)
DEFAULT_TARGET_SETS = ("q", "q,v", "q,k,v,o")


class AblationError(ValueError):
    """The grid or its data is unusable; the message says what to change."""


def module_names(targets: str | Sequence[str]) -> list[str]:
    """'q,v' or ['q', 'v'] -> ['q_proj', 'v_proj']; full module names pass through."""
    parts = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    if not parts:
        raise AblationError("empty target set; use e.g. 'q,v'")
    return [SHORT_TARGETS.get(p, p) for p in parts]


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str


def examples_from_tasks(tasks: Sequence[Task]) -> list[Example]:
    return [Example(t.instruction, i.input, i.output) for t in tasks for i in t.instances if i.output.strip()]


def encode(tokenizer: Any, fmt: PromptFormat, ex: Example, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with the prompt masked out; None when no answer token fits."""
    prompt = tokenizer(fmt.prompt(tokenizer, ex.instruction, ex.input),
                       add_special_tokens=fmt.add_special_tokens)["input_ids"]
    answer = tokenizer(fmt.completion(tokenizer, ex.output), add_special_tokens=False)["input_ids"]
    ids = (prompt + answer)[:max_length]
    labels = ([-100] * len(prompt) + answer)[:max_length]
    return (ids, labels) if any(x != -100 for x in labels) else None


def _batches(rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, torch: Any):
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (a, b) in enumerate(chunk):
            ids[j, :len(a)] = torch.tensor(a)
            labels[j, :len(b)] = torch.tensor(b)
            mask[j, :len(a)] = 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def completion_loss(model: Any, batch: dict[str, Any], torch: Any) -> tuple[Any, int]:
    """Mean cross-entropy over the answer tokens, and their count.

    Equal to the model's own `labels=` loss, but the output layer is applied only where a
    next token is a target (`logits_to_keep`). Answers are a small share of each sequence,
    and for a large vocabulary (Gemma's 262k) the output layer is most of the compute."""
    targets = batch["labels"][:, 1:]
    positions = (targets != -100).any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=positions).logits
    picked = targets[:, positions]
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), picked.flatten(), ignore_index=-100)
    return loss, int((picked != -100).sum())


def mean_loss(model: Any, rows: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean completion loss over `rows`."""
    from .models import require

    torch = require("torch")
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for batch in _batches(rows, batch_size, pad_id, torch):
            batch = {k: v.to(model.device) for k, v in batch.items()}
            loss, n = completion_loss(model, batch, torch)
            total += float(loss) * n
            count += n
    return total / max(count, 1)


@dataclass
class TrainSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: str = "q,v"
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 4
    max_length: int = 256
    seed: int = 0
    max_steps: int = 0  # 0: epochs decide
    prompt_format: str = "auto"


@dataclass
class TrainResult:
    adapter_dir: str
    steps: int
    first_loss: float
    last_loss: float  # mean of the last epoch's batches
    train_s: float
    losses: list[float] = field(default_factory=list)


def train_lora(base: Any, tokenizer: Any, examples: Sequence[Example], out_dir: str | Path,
               settings: TrainSettings, base_info: dict[str, Any] | None = None) -> tuple[Any, TrainResult]:
    """Wrap `base` with a fresh LoRA adapter, train it on `examples`, save it to `out_dir`.

    Returns the peft model (still wrapping `base`; call `.unload()` to get the base back
    unchanged) and what happened during training."""
    from .models import require

    torch = require("torch")
    peft = require("peft", "pip install peft")
    fmt = PromptFormat.for_tokenizer(tokenizer, prefer=settings.prompt_format)
    rows = [row for ex in examples if (row := encode(tokenizer, fmt, ex, settings.max_length)) is not None]
    if not rows:
        raise AblationError("no trainable examples: every example is empty or longer than max_length")
    torch.manual_seed(settings.seed)
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=module_names(settings.targets), task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    rng = random.Random(settings.seed)
    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    total = settings.max_steps or steps_per_epoch * settings.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))  # linear decay
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    while step < total:
        order = rows[:]
        rng.shuffle(order)
        for batch in _batches(order, settings.batch_size, pad, torch):
            batch = {k: v.to(model.device) for k, v in batch.items()}
            loss, _ = completion_loss(model, batch, torch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if step % 10 == 0:
                log.info("step %d/%d loss %.3f", step, total, losses[-1])
            if step >= total:
                break
    took = time.perf_counter() - t0
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fmt.save(out)
    tail = losses[-min(len(losses), steps_per_epoch):]
    result = TrainResult(str(out), step, losses[0], sum(tail) / len(tail), took, losses)
    (out / "training.json").write_text(json.dumps({"settings": asdict(settings), "base": base_info or {},
                                                   "examples": len(rows), **asdict(result)}, indent=2))
    return model, result


# --------------------------------------------------------------------------- the grid

@dataclass
class Cell:
    r: int
    targets: str
    trainable_params: int
    train_loss: float
    heldout_loss: float
    rouge_l: float  # 0..1, mean over held-out tasks
    train_s: float
    adapter_dir: str


def parse_grid(ranks: str | Sequence[int], target_sets: Sequence[str]) -> list[tuple[int, str]]:
    rs = [int(x) for x in (ranks.split(",") if isinstance(ranks, str) else ranks)]
    if not rs or any(r < 1 for r in rs):
        raise AblationError(f"ranks must be positive integers, got {ranks!r}")
    for t in target_sets:
        module_names(t)
    return [(r, t) for t in target_sets for r in rs]


def run_ablation(model_spec: str, train_examples: Sequence[Example], heldout: Sequence[Task], out_dir: str | Path,
                 ranks: Sequence[int] = DEFAULT_RANKS, target_sets: Sequence[str] = DEFAULT_TARGET_SETS,
                 base_settings: TrainSettings | None = None, max_new_tokens: int = 32, eval_batch_size: int = 8,
                 device: str = "cpu", alpha_ratio: float = 2.0) -> list[Cell]:
    """Train one adapter per (r, targets) cell and score each on the held-out tasks.

    The base model is loaded once; each cell wraps it, trains, is evaluated, and is
    unloaded again so the next cell starts from the same base weights. alpha = alpha_ratio x r
    keeps the update's scale alpha/r the same in every cell, so rank alone varies."""
    from . import models
    from .evaluate import Candidate, LoadedCandidate, eval_items, generate_answers, score_candidate

    base_settings = base_settings or TrainSettings()
    grid = parse_grid(ranks, target_sets)
    if not train_examples:
        raise AblationError("no training examples: is the run's pool empty?")
    model, tok = models.load_model(model_spec, device=device)
    info = models.source_info(models.resolve(model_spec))
    heldout_examples = examples_from_tasks(heldout)
    items = eval_items(heldout)
    out = Path(out_dir)
    cells: list[Cell] = []
    for r, targets in grid:
        settings = TrainSettings(**{**asdict(base_settings), "r": r, "alpha": alpha_ratio * r, "targets": targets})
        name = f"r{r}-{targets.replace(',', '')}"
        log.info("cell %s: training on %d examples", name, len(train_examples))
        peft_model, res = train_lora(model, tok, train_examples, out / name, settings, info)
        fmt = PromptFormat.load(out / name)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = [row for ex in heldout_examples if (row := encode(tok, fmt, ex, settings.max_length)) is not None]
        heldout_loss = mean_loss(peft_model, rows, pad)
        loaded = LoadedCandidate(peft_model, tok, fmt, ())  # a trained adapter ends at EOS, as in eval
        answers = generate_answers(loaded, items, max_new_tokens=max_new_tokens, batch_size=eval_batch_size)
        scored = score_candidate(Candidate(name, model_spec, res.adapter_dir), items, answers, fmt.kind)
        cell = Cell(r, targets, trainable, res.last_loss, heldout_loss, scored.mean_rouge_l, res.train_s,
                    res.adapter_dir)
        (out / name / "eval.json").write_text(json.dumps(scored.to_dict(), indent=2, ensure_ascii=False))
        log.info("cell %s: held-out loss %.3f, ROUGE-L %.1f", name, heldout_loss, 100 * scored.mean_rouge_l)
        cells.append(cell)
        model = peft_model.unload()  # drop the LoRA layers: the base weights were never changed
        del peft_model
        gc.collect()
    write_ablation(cells, out, {"model": model_spec, "train_examples": len(train_examples),
                                "heldout_tasks": len(heldout), "settings": asdict(base_settings)})
    return cells


def ablation_table(cells: Sequence[Cell]) -> str:
    """Rows: target sets; columns: ranks; each cell 'held-out loss / ROUGE-L x100'."""
    ranks = sorted({c.r for c in cells})
    targets = list(dict.fromkeys(c.targets for c in cells))
    by = {(c.r, c.targets): c for c in cells}
    lines = ["| targets \\ r | " + " | ".join(str(r) for r in ranks) + " |", "|---|" + "---:|" * len(ranks)]
    for t in targets:
        row = [f"{by[r, t].heldout_loss:.3f} / {100 * by[r, t].rouge_l:.1f}" if (r, t) in by else "-" for r in ranks]
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_ablation(cells: Sequence[Cell], out_dir: str | Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "ablation.json", out / "ablation.md"
    json_path.write_text(json.dumps({**meta, "cells": [asdict(c) for c in cells]}, indent=2))
    md_path.write_text("## LoRA rank x targets: held-out loss / ROUGE-L\n\n"
                       f"model {meta.get('model')}, {meta.get('train_examples')} training examples, "
                       f"{meta.get('heldout_tasks')} held-out tasks. Each cell: completion loss on the held-out "
                       "references / ROUGE-L x100 of greedy answers.\n\n" + ablation_table(cells))
    return json_path, md_path
