"""Held-out evaluation: answer unseen tasks with one or more models, score them with ROUGE-L.

This reproduces the measurement behind the Self-Instruct paper's headline table (a base
model against the same model finetuned on its own data): every instance of every held-out
task is put to the model, the answer is decoded greedily, and its ROUGE-L F-measure
against the reference is computed with rouge-score (`RougeScorer(['rougeL'],
use_stemmer=False)`), exactly as the reference implementation scores it.

How a model is asked depends on what it is:
  * with an adapter: the adapter's saved `PromptFormat` (prompt_format.json), i.e. exactly
    the prompt it was trained on; the answer ends at EOS.
  * without an adapter, a model with a chat template (an instruct model): its chat template.
  * without an adapter, a base model (no chat template): plain completion with the Alpaca
    template. A base model has not learned to stop, so its answer is cut at the first blank
    line or "###" (where it starts a new section), as well as at EOS.

A task's score is the mean over its instances; a model's score is the mean over tasks,
so a task with many instances does not outweigh one with a single instance.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .records import Task
from .sft_format import PromptFormat

log = logging.getLogger(__name__)

BASE_MODEL_STOPS = ("\n\n", "###")


class EvalError(ValueError):
    """An evaluation request cannot be carried out; the message says what to change."""


# --------------------------------------------------------------------------- what is evaluated

@dataclass(frozen=True)
class Candidate:
    """One model to evaluate: a base model spec (see selfinstruct.models), optionally a LoRA adapter."""

    name: str
    model: str
    adapter: str | None = None
    prompt_format: str = "auto"  # auto | chat | alpaca; used only without an adapter

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """`NAME=MODEL[:ADAPTER_DIR]`, the command line's way to name a candidate.

        MODEL and ADAPTER_DIR are split at the ':' that is not a drive letter's: a field that
        starts with a letter, ':' and a slash or backslash is a Windows path, so
        `w=C:\\models\\m:D:\\adapters\\a` is model `C:\\models\\m` with adapter `D:\\adapters\\a`.
        Two such ':' are refused rather than guessed at.
        """
        name, eq, rest = text.partition("=")
        if not eq:
            raise EvalError(f"candidate {text!r}: {_CANDIDATE_SHAPE}")
        if not name.strip():
            raise EvalError(f"candidate {text!r}: the name before '=' is empty; {_CANDIDATE_SHAPE}")
        seps = _adapter_separators(rest)
        if len(seps) > 1:
            raise EvalError(f"candidate {text!r}: more than one ':' could end the model path; for a path with "
                            "':' in it give that candidate with --model, --adapter and --name instead")
        model, adapter = (rest[:seps[0]], rest[seps[0] + 1:]) if seps else (rest, None)
        if not model.strip():
            raise EvalError(f"candidate {text!r}: the model after '=' is empty; {_CANDIDATE_SHAPE}")
        if adapter is not None and not adapter.strip():
            raise EvalError(f"candidate {text!r}: nothing after ':' where the adapter directory goes; "
                            f"{_CANDIDATE_SHAPE}")
        return cls(name.strip(), model.strip(), adapter.strip() if adapter is not None else None)


_CANDIDATE_SHAPE = ("expected NAME=MODEL or NAME=MODEL:ADAPTER_DIR, "
                    "e.g. base=smollm2 or tuned=smollm2:outputs/run/adapter")


def _adapter_separators(spec: str) -> list[int]:
    """Where the ':' of MODEL:ADAPTER_DIR may be: every ':' but a drive letter's ("C:\\", "C:/")."""
    found: list[int] = []
    start = 0  # where the current field begins
    for i, ch in enumerate(spec):
        if ch != ":":
            continue
        before = spec[start:i].strip()
        if len(before) == 1 and before.isascii() and before.isalpha() and spec[i + 1:i + 2] in ("\\", "/"):
            continue  # a drive letter
        found.append(i)
        start = i + 1
    return found


@dataclass(frozen=True)
class EvalItem:
    task_id: str
    instruction: str
    input: str
    reference: str


def eval_items(tasks: Sequence[Task]) -> list[EvalItem]:
    """One item per instance, each keeping its task's instruction."""
    if not tasks:
        raise EvalError("no tasks to evaluate: the task file is empty")
    return [EvalItem(t.id, t.instruction, inst.input, inst.output) for t in tasks for inst in t.instances]


# --------------------------------------------------------------------------- scoring

def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """rouge-score's ROUGE-L F-measure (0..1) of each prediction against its reference."""
    if len(predictions) != len(references):
        raise EvalError(f"{len(predictions)} predictions for {len(references)} references")
    from .models import require

    rouge_scorer = require("rouge_score.rouge_scorer", "pip install rouge-score")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def per_task_means(items: Sequence[EvalItem], scores: Sequence[float]) -> dict[str, float]:
    """Mean score of each task's instances, in the tasks' order."""
    sums: dict[str, list[float]] = {}
    for item, s in zip(items, scores):
        sums.setdefault(item.task_id, []).append(s)
    return {tid: sum(v) / len(v) for tid, v in sums.items()}


@dataclass
class CandidateResult:
    name: str
    model: str
    adapter: str | None
    prompt_format: str
    mean_rouge_l: float  # 0..1, mean over tasks
    per_task: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    generate_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_candidate(candidate: Candidate, items: Sequence[EvalItem], predictions: Sequence[str],
                    prompt_format: str = "", generate_s: float = 0.0) -> CandidateResult:
    scores = rouge_l_scores(predictions, [i.reference for i in items])
    per_task = per_task_means(items, scores)
    preds = [{"task_id": i.task_id, "instruction": i.instruction, "input": i.input, "reference": i.reference,
              "prediction": p, "rouge_l": s} for i, p, s in zip(items, predictions, scores)]
    return CandidateResult(candidate.name, candidate.model, candidate.adapter, prompt_format,
                           sum(per_task.values()) / len(per_task), per_task, preds, generate_s)


# --------------------------------------------------------------------------- loading and generating

@dataclass
class LoadedCandidate:
    model: Any
    tokenizer: Any
    prompt_format: PromptFormat
    stops: tuple[str, ...]  # strings that end an answer besides EOS

    @property
    def format_name(self) -> str:
        return self.prompt_format.kind


def load_candidate(candidate: Candidate, dtype: str = "float32", device: str = "cpu") -> LoadedCandidate:
    """The model ready for generation, the prompt format to ask it with, and where answers end."""
    from . import models

    if candidate.adapter:
        adapter = Path(candidate.adapter)
        if not (adapter / "adapter_config.json").exists():
            raise EvalError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json); give the "
                            "directory finetune wrote, e.g. outputs/<run>/adapter")
        peft = models.require("peft", "pip install peft")
        from .finetune.adapters import META_FILE, load_adapter

        if (adapter / META_FILE).exists():  # written by `selfinstruct finetune`: its loader checks the base
            model, tok, fmt = load_adapter(adapter, base_model=candidate.model, dtype=dtype, device=device)
        else:  # a bare peft adapter with its prompt_format.json (e.g. from `selfinstruct ablate`)
            model, tok = models.load_model(candidate.model, dtype=dtype, device=device)
            model, fmt = peft.PeftModel.from_pretrained(model, str(adapter)).eval(), PromptFormat.load(adapter)
        if isinstance(model, peft.PeftModel) and model.peft_config["default"].peft_type == "LORA":
            # Merging folds the low-rank update into the weights: same outputs, plain-model speed.
            model = model.merge_and_unload().eval()
        return LoadedCandidate(model, tok, fmt, ())
    model, tok = models.load_model(candidate.model, dtype=dtype, device=device)
    fmt = PromptFormat.for_tokenizer(tok, prefer=candidate.prompt_format)
    return LoadedCandidate(model, tok, fmt, BASE_MODEL_STOPS if fmt.kind == "alpaca" else ())


def cut_answer(text: str, stops: Iterable[str]) -> str:
    """The answer up to the first stop string, without surrounding whitespace.

    Leading blank lines are dropped first: a base model often starts its completion
    with a newline, which must not count as the end of an empty answer."""
    text = text.lstrip()
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut] if cut >= 0 else text).strip()


def generate_answers(loaded: LoadedCandidate, items: Sequence[EvalItem], max_new_tokens: int = 64,
                     batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int = 0) -> list[str]:
    """Answers in the items' order. Greedy unless temperature > 0."""
    from .models import require

    torch = require("torch")
    tok, model = loaded.tokenizer, loaded.model
    tok.padding_side = "left"
    prompts = [loaded.prompt_format.prompt(tok, it.instruction, it.input) for it in items]
    # Similar lengths batched together waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    eos = model.generation_config.eos_token_id
    eos_ids = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        # Chat templates already start with BOS where the model wants it; the Alpaca prompt does not.
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=loaded.prompt_format.add_special_tokens).to(model.device)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=sorted(eos_ids))
        if temperature > 0:
            torch.manual_seed(seed + start)
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        for row, i in zip(out[:, enc["input_ids"].shape[1]:].tolist(), idx):
            n = next((j for j, t in enumerate(row) if t in eos_ids), len(row))
            answers[i] = cut_answer(tok.decode(row[:n], skip_special_tokens=True), loaded.stops)
        log.debug("generated %d/%d answers", min(start + batch_size, len(order)), len(order))
    return answers


def evaluate(candidates: Sequence[Candidate], tasks: Sequence[Task], max_new_tokens: int = 64,
             batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0, dtype: str = "float32",
             device: str = "cpu") -> list[CandidateResult]:
    """Evaluate each candidate in turn (one model in memory at a time)."""
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise EvalError(f"candidate names must be unique, got {names}")
    items = eval_items(tasks)
    results = []
    for cand in candidates:
        loaded = load_candidate(cand, dtype=dtype, device=device)
        t0 = time.perf_counter()
        answers = generate_answers(loaded, items, max_new_tokens, batch_size, temperature, top_p)
        took = time.perf_counter() - t0
        res = score_candidate(cand, items, answers, loaded.format_name, took)
        log.info("%s: ROUGE-L %.1f on %d tasks (%d instances) in %.0fs", cand.name, 100 * res.mean_rouge_l,
                 len(res.per_task), len(items), took)
        results.append(res)
        del loaded
        gc.collect()
    return results


# --------------------------------------------------------------------------- reports

def _cell(text: str, width: int = 60) -> str:
    text = re.sub(r"\s+", " ", text).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(results: Sequence[CandidateResult], tasks_file: str = "") -> str:
    """The comparison table (ROUGE-L x100, as the paper reports it), then per-task scores."""
    if not results:
        raise EvalError("no results to tabulate")
    n_tasks = len(results[0].per_task)
    n_inst = len(results[0].predictions)
    lines = [f"## Held-out ROUGE-L{f' ({tasks_file})' if tasks_file else ''}", "",
             f"{n_tasks} tasks, {n_inst} instances; ROUGE-L F (rouge-score, no stemming) x100, mean over tasks.", "",
             "| candidate | model | adapter | prompt | ROUGE-L | generation time |",
             "|---|---|---|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {_cell(r.model, 40)} | {_cell(r.adapter or '-', 40)} | {r.prompt_format} | "
                     f"{100 * r.mean_rouge_l:.1f} | {r.generate_s:.0f} s |")
    lines += ["", "### Per task", "", "| task | " + " | ".join(r.name for r in results) + " |",
              "|---|" + "---:|" * len(results)]
    for tid in results[0].per_task:
        lines.append(f"| {tid} | " + " | ".join(f"{100 * r.per_task.get(tid, 0.0):.1f}" for r in results) + " |")
    return "\n".join(lines) + "\n"


def load_results(path: str | Path, tasks_file: str = "") -> list[CandidateResult]:
    """Results of an earlier `write_report`, to put beside new ones in one table.

    Refused when they were measured on a different task file, since their rows would not compare."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if tasks_file and doc.get("tasks_file") and Path(doc["tasks_file"]) != Path(tasks_file):
        raise EvalError(f"{path} was measured on {doc['tasks_file']}, not {tasks_file}; evaluate both on one file")
    return [CandidateResult(**r) for r in doc["results"]]


def write_report(results: Sequence[CandidateResult], out_dir: str | Path, tasks_file: str = "",
                 settings: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write eval.json (everything, predictions included) and eval.md (the tables)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"tasks_file": tasks_file, "settings": settings or {}, "metric": "rougeL fmeasure, use_stemmer=False",
           "results": [r.to_dict() for r in results]}
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    md_path.write_text(markdown_table(results, tasks_file), encoding="utf-8")
    return json_path, md_path
