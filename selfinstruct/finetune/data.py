"""Training examples: reading them, tokenising them with label masks, and batching them.

Label masks are set from character offsets, never from token ids: SmolLM2's pad token is
its EOS, and the EOS that ends every answer must be trained (the model learns to stop), so
"mask every pad id" would silently unlearn stopping. A token is a prompt token when it lies
wholly inside the prompt text; the first token of a sequence is never a target (nothing
precedes it), which also keeps flattened batches from predicting one example's first token
from the previous example's last.

Two collators give the same loss on the same examples:
  * PaddingFreeCollator flattens a batch into one row with position_ids restarting at 0 per
    example and no attention mask; transformers then masks attention per example, so no pad
    token is ever computed. The model must run with use_cache=False.
  * PaddedCollator right-pads with an attention mask (for prompt / prefix tuning, whose
    virtual tokens belong to every row), used with length-grouped batches.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from ..records import Task, load_tasks
from ..sft_format import PromptFormat

log = logging.getLogger(__name__)

IGNORE = -100
LossMode = Literal["completion_only", "instruction_modelling"]


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str


def examples_from_tasks(tasks: Iterable[Task]) -> list[Example]:
    """One example per instance: a task with five instances teaches five answers."""
    return [Example(t.instruction, i.input, i.output) for t in tasks for i in t.instances if i.output.strip()]


def as_examples(records: Iterable[Any]) -> list[Example]:
    """Accept Examples, Tasks, (instruction, input, output) tuples or Alpaca-style dicts."""
    out: list[Example] = []
    for rec in records:
        if isinstance(rec, Example):
            out.append(rec)
        elif isinstance(rec, Task):
            out.extend(examples_from_tasks([rec]))
        elif isinstance(rec, dict):
            out.append(Example(str(rec["instruction"]), str(rec.get("input") or ""), str(rec["output"])))
        else:
            instruction, inp, output = rec
            out.append(Example(str(instruction), str(inp or ""), str(output)))
    return [e for e in out if e.instruction.strip() and e.output.strip()]


def load_examples(source: str | Path) -> list[Example]:
    """A run directory (its pool.jsonl) or any task file `load_tasks` reads."""
    path = Path(source)
    if path.is_dir():
        pool = path / "pool.jsonl"
        if not pool.exists():
            raise FileNotFoundError(f"{path} has no pool.jsonl: give a run directory (selfinstruct run makes one) "
                                    "or a JSONL file of Self-Instruct, Alpaca or chat messages records")
        path = pool
    return examples_from_tasks(load_tasks(path))


def split_examples(examples: Sequence[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded train / validation split. Tiny sets (fewer than 10 examples) keep everything for training."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(examples) * val_fraction)) if len(examples) >= 10 else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]


# --------------------------------------------------------------------------- tokenising

def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before any text itself (usually BOS, or nothing)."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start:start + len(without)] == without:
            return list(with_special[:start])
    return []


def encode_example(tokenizer: Any, fmt: PromptFormat, ex: Example, loss: LossMode = "completion_only",
                   max_length: int = 512) -> dict[str, list[int]] | None:
    """input_ids and labels for one example, or None when truncation leaves nothing to learn.

    The prompt is exactly what inference sends (`PromptFormat.prompt`); the completion is the
    answer followed by EOS. Chat templates carry their own special tokens; the Alpaca format
    gets the tokenizer's leading specials (BOS), as `tokenizer(prompt)` would add at inference.
    """
    prompt = fmt.prompt(tokenizer, ex.instruction, ex.input)
    completion = fmt.completion(tokenizer, ex.output)
    enc = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    # A token is the answer's as soon as it holds one character of it.
    is_answer = [end > len(prompt) for _, end in enc["offset_mapping"]]
    prefix = leading_special_ids(tokenizer) if fmt.add_special_tokens else []
    ids = prefix + ids
    is_answer = [False] * len(prefix) + is_answer
    if loss == "completion_only":
        labels = [t if a else IGNORE for t, a in zip(ids, is_answer)]
    else:
        labels = list(ids)
    labels[0] = IGNORE  # nothing predicts the first token
    ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE for lab in labels):
        return None
    return {"input_ids": ids, "labels": labels}


@dataclass
class EncodedSet:
    rows: list[dict[str, list[int]]]
    dropped: int  # examples with no answer token left within max_length

    @property
    def tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)

    @property
    def target_tokens(self) -> int:
        return sum(sum(1 for lab in r["labels"] if lab != IGNORE) for r in self.rows)


def encode_examples(tokenizer: Any, fmt: PromptFormat, examples: Sequence[Example], loss: LossMode,
                    max_length: int) -> EncodedSet:
    rows, dropped = [], 0
    for ex in examples:
        row = encode_example(tokenizer, fmt, ex, loss, max_length)
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    if dropped:
        log.warning("dropped %d of %d examples whose prompt alone fills max_length=%d tokens",
                    dropped, len(examples), max_length)
    return EncodedSet(rows, dropped)


class TokenizedDataset:
    """A list of encoded rows with the `length` column Trainer's length-grouped sampler reads."""

    def __init__(self, rows: list[dict[str, list[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self.rows]


# --------------------------------------------------------------------------- batching

class PaddingFreeCollator:
    """A batch as one row: concatenated ids and labels, position_ids restarting per example."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        lengths: list[int] = []
        for f in features:
            n = len(f["input_ids"])
            ids.extend(f["input_ids"])
            lab = list(f["labels"])
            lab[0] = IGNORE  # never predict an example's first token from the previous example
            labels.extend(lab)
            positions.extend(range(n))
            lengths.append(n)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "seq_lengths": torch.tensor(lengths, dtype=torch.long),
        }


class PaddedCollator:
    """Right-padded rows with an attention mask; padding never carries a label."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            labels[row, 0] = IGNORE
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "seq_lengths": mask.sum(dim=1)}
