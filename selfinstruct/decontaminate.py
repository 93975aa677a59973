"""Export-time hygiene: keep out of the dataset what a trainer should never see.

Two steps, applied in this order, each counted:

1. Decontamination against evaluation sets the user names. A task is dropped when its
   instruction shares an n-gram of `ngram` words (13 by default, the usual contamination
   probe) with any evaluation instruction (`eval_ngram`), or else when its ROUGE-L F with
   some evaluation instruction is above `rouge_threshold` (`eval_rouge`). An evaluation
   instruction shorter than `ngram` words has no n-gram to share; the ROUGE-L test covers
   those. Only instructions are compared: what leaks a benchmark is its task, and
   evaluation inputs are often generic text that any dataset may share.

2. De-duplication of instances across the whole export (seeds first, when included, then
   the pool in order; the first occurrence wins). An instance is its instruction plus its
   input. `exact_duplicate`: the same text after lower-casing and collapsing white space
   (within a task too: the same input twice). `near_duplicate`: ROUGE-L F above
   `near_duplicate_threshold` with an instance of an earlier task (the project's exact
   rouge-score-compatible index, so this stays fast on large pools). Instances of one
   task are not compared with each other for near duplicates: they share the instruction,
   so "positive review" and "negative review" inputs would always look alike. A task
   whose instances are all dropped is dropped too (`no_instances_left`).

Words are the tokens of the ROUGE-L tokenizer (rouge-score's by default: lower-case ASCII
letters and digits), so both tests see the same words.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .records import Task, load_tasks
from .similarity import RougeLIndex, Tokenizer
from .similarity.tokenize import as_tokenize_fn

log = logging.getLogger(__name__)

# Reasons, as they appear in counts, the card and the dropped-records file.
EVAL_NGRAM = "eval_ngram"
EVAL_ROUGE = "eval_rouge"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
NO_INSTANCES_LEFT = "no_instances_left"
REASONS = (EVAL_NGRAM, EVAL_ROUGE, EXACT_DUPLICATE, NEAR_DUPLICATE, NO_INSTANCES_LEFT)


@dataclass
class HygieneReport:
    """What hygiene did. Task-level reasons count tasks; duplicate reasons count instances."""

    tasks_in: int = 0
    instances_in: int = 0
    tasks_out: int = 0
    instances_out: int = 0
    counts: Counter = field(default_factory=Counter)  # reason -> n
    dropped: list[dict[str, Any]] = field(default_factory=list)  # one record per drop, for inspection

    def count(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks_in": self.tasks_in, "instances_in": self.instances_in, "tasks_out": self.tasks_out,
                "instances_out": self.instances_out, "dropped": {r: self.count(r) for r in REASONS}}


class Decontaminator:
    """Tests instructions against an evaluation set's instructions."""

    def __init__(self, eval_instructions: Iterable[str], ngram: int = 13, rouge_threshold: float = 0.7,
                 tokenizer: Tokenizer | None = None):
        if ngram < 1:
            raise ValueError(f"the contamination n-gram length must be >= 1, got {ngram}")
        if not 0 < rouge_threshold <= 1:
            raise ValueError(f"the contamination ROUGE-L threshold must be in (0, 1], got {rouge_threshold}")
        self.ngram = ngram
        self.rouge_threshold = rouge_threshold
        self._tokenize = as_tokenize_fn(tokenizer)
        self._index = RougeLIndex(tokenizer=tokenizer, threshold=rouge_threshold)
        # n-gram -> the first evaluation instruction holding it, so a drop can say which one.
        self._ngrams: dict[tuple[str, ...], int] = {}
        for text in eval_instructions:
            item = self._index.add(text)
            for g in self._grams(text):
                self._ngrams.setdefault(g, item)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], **kwargs: Any) -> Decontaminator:
        """Evaluation instructions from task files in any format `load_tasks` reads
        (Self-Instruct, Alpaca JSON/JSONL, chat)."""
        paths = list(paths)
        tasks = load_tasks(paths)
        if not tasks:
            raise ValueError(f"the evaluation files {', '.join(map(str, paths))} hold no tasks")
        return cls((t.instruction for t in tasks), **kwargs)

    def __len__(self) -> int:
        return len(self._index)

    def _grams(self, text: str) -> Iterable[tuple[str, ...]]:
        words = self._tokenize(text)
        n = self.ngram
        return (tuple(words[i:i + n]) for i in range(len(words) - n + 1))

    def check(self, instruction: str) -> dict[str, Any] | None:
        """None when clean; else {reason, eval_instruction, and the n-gram or the score}."""
        for g in self._grams(instruction):
            item = self._ngrams.get(g)
            if item is not None:
                return {"reason": EVAL_NGRAM, "eval_instruction": self._index.text(item), "ngram": " ".join(g)}
        # The yes/no question stops at the first item over the threshold; only a hit pays
        # for finding the best match to report.
        if self._index.exceeds(instruction):
            item, score = self._index.max_score(instruction)
            return {"reason": EVAL_ROUGE, "eval_instruction": self._index.text(item), "score": round(score, 6)}
        return None


def normalise(text: str) -> str:
    """The key of an exact duplicate: case and white space do not make a new instance."""
    return " ".join(text.lower().split())


def instance_text(instruction: str, input: str) -> str:
    return f"{instruction}\n{input}" if input.strip() else instruction


def clean(tasks: list[Task], decontaminator: Decontaminator | None = None, dedup: bool = True,
          near_duplicate_threshold: float = 0.9, tokenizer: Tokenizer | None = None
          ) -> tuple[list[Task], HygieneReport]:
    """Apply decontamination then de-duplication; return the surviving tasks (copies, in
    the same order, with only their surviving instances) and the report."""
    if not 0 < near_duplicate_threshold <= 1:
        raise ValueError(f"near_duplicate_threshold must be in (0, 1], got {near_duplicate_threshold}")
    rep = HygieneReport(tasks_in=len(tasks), instances_in=sum(len(t.instances) for t in tasks))

    def drop(reason: str, task: Task, **detail: Any) -> None:
        rep.counts[reason] += 1
        rep.dropped.append({"reason": reason, "task_id": task.id, "instruction": task.instruction, **detail})

    survivors: list[Task] = []
    for t in tasks:
        hit = decontaminator.check(t.instruction) if decontaminator is not None else None
        if hit is not None:
            drop(hit.pop("reason"), t, **hit)
        else:
            survivors.append(t)

    if dedup:
        seen: dict[str, str] = {}  # normalised text -> the task id that holds it
        index = RougeLIndex(tokenizer=tokenizer, threshold=near_duplicate_threshold)
        owners: list[str] = []  # index item -> task id
        deduped: list[Task] = []
        for t in survivors:
            kept, texts = [], []
            for inst in t.instances:
                text = instance_text(t.instruction, inst.input)
                key = normalise(text)
                if key in seen:
                    drop(EXACT_DUPLICATE, t, input=inst.input, duplicate_of=seen[key])
                    continue
                if index.exceeds(text):
                    item, score = index.max_score(text)
                    drop(NEAR_DUPLICATE, t, input=inst.input, duplicate_of=owners[item], score=round(score, 6))
                    continue
                seen[key] = t.id
                kept.append(inst)
                texts.append(text)
            # A task's own instances share its instruction, so they always look alike; they
            # join the index only after the task, so near duplicates are sought across tasks.
            for text in texts:
                index.add(text)
                owners.append(t.id)
            if kept:
                deduped.append(Task(t.id, t.instruction, kept, t.name, t.is_classification, t.origin, dict(t.meta)))
            else:
                drop(NO_INSTANCES_LEFT, t)
        survivors = deduped

    rep.tasks_out = len(survivors)
    rep.instances_out = sum(len(t.instances) for t in survivors)
    log.info("hygiene: %d -> %d tasks, %d -> %d instances; dropped %s", rep.tasks_in, rep.tasks_out,
             rep.instances_in, rep.instances_out, dict(rep.counts) or "nothing")
    return survivors, rep
