"""Self-Instruct's own method (Wang et al. 2022, section 2.2): three steps per round.

1. Instruction generation: `requests_per_round` prompts that continue a numbered list of
   sampled tasks; replies are parsed into instructions and filtered as in the Alpaca loop
   (without the output check: there is no output yet). An accepted instruction enters the
   ROUGE-L index at once, so later candidates are compared against it.
2. Classification identification: each new instruction gets a few-shot Yes/No prompt over
   the seed tasks' is_classification labels (the most similar seeds by default), decoded
   greedily. An answer that names
   neither counts as "unparseable" and the task is treated as not classification.
3. Instance generation: output-first for classification tasks, input-first for the rest,
   few-shot from the seed tasks' instances; the instance filters (selfinstruct/instances.py)
   decide which instances stay. A task left with none is rejected; its instruction stays
   in the index so that it is not generated again.

Each step is one pass through the backend with its own decoding settings (a local
backend batches it, a remote one keeps it in flight), flushed every `requests_per_round`
replies and at its end. The loop starts every round by finishing the instructions that
lack a classification or instances, so a resumed run completes them first, exactly once
(see selfinstruct/si_steplog.py for what is on disk).

The Alpaca loop's pieces are reused: the pool and its index, the instruction filters,
rejected.jsonl, stats.json, the stop flag (budgets) and per-request seeded sampling.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from typing import Callable, Iterator

from .backends.base import GenerationParams, LMBackend, Reply, Request
from .bootstrap import Bootstrapper, ProgressFn
from .config import ConfigError, PipelineConfig
from .filters import EmptyOutputFilter, run_filters
from .instances import filter_instances, parse_instances
from .pool import TaskPool
from .prompts import sample_tasks
from .records import Rejection, Task
from .rundir import RunDir
from .si_parsing import parse_instruction_list, parse_yes_no
from .si_prompts import (ClassificationExamples, ClassificationPromptBuilder, InstancePromptBuilder,
                         InstructionPromptBuilder, pick_instance_examples)
from .similarity import UnicodeTokenizer
from .si_steplog import MachineInstruction, StepLog
from .stats import RunStats

log = logging.getLogger(__name__)

STEPS = ("instructions", "classification", "instances")
INSTRUCTIONS_FILE = "instructions.jsonl"


class StagedTaskPool(TaskPool):
    """A pool whose instructions enter the index at step 1 and whose tasks join later."""

    def add_finished(self, task: Task) -> None:
        """Add a task whose instruction is already indexed; durable at the next `flush()`."""
        self.machine.append(task)
        if self._out is not None:
            self._out.write(task.to_dict())


def _check_seeds(seeds: list[Task]) -> None:
    labels = Counter(t.is_classification for t in seeds)
    if not labels[True] or not labels[False]:
        raise ConfigError(
            "generation.method=self_instruct needs seed tasks labelled is_classification: at least one true and "
            f"one false (the classification prompt's examples); the seeds have {labels[True]} true, "
            f"{labels[False]} false and {labels[None]} unlabelled. Label them, add seed_tasks/seed_tasks.jsonl, "
            "or use generation.method: alpaca")


def _check_config(cfg: PipelineConfig) -> None:
    g = cfg.generation
    if not 0 <= g.classification_prompt_share <= 1:
        raise ConfigError("generation.classification_prompt_share must be between 0 and 1")
    if g.classify_examples < 2 or g.instance_examples < 1 or g.instances_per_task < 1:
        raise ConfigError("generation.classify_examples must be >= 2, instance_examples and "
                          "instances_per_task >= 1")
    if g.instance_max_new_tokens < 1 or g.instance_temperature < 0:
        raise ConfigError("generation.instance_max_new_tokens must be >= 1 and instance_temperature >= 0")


def _instance_style(wanted: str, style: str, backend: LMBackend) -> str:
    if wanted == "same":
        return style
    if not getattr(backend, f"supports_{wanted}", True):
        raise ConfigError(f"generation.instance_prompt_style={wanted}, but backend {backend.name} does not take "
                          f"{wanted} prompts; set it to same")
    return wanted


class SelfInstructBootstrapper(Bootstrapper):
    pool_class = StagedTaskPool
    pool: StagedTaskPool

    def __init__(self, cfg: PipelineConfig, backend: LMBackend, seeds: list[Task], run_dir: RunDir | None = None,
                 on_progress: ProgressFn | None = None):
        _check_config(cfg)
        _check_seeds(seeds)
        super().__init__(cfg, backend, seeds, run_dir, on_progress)
        g = cfg.generation
        # An instruction has no output yet; the instance step checks outputs.
        self.filters = [f for f in self.filters if not isinstance(f, EmptyOutputFilter)]
        pool_ids = {t.id for t in self.pool.machine}
        self.steps = StepLog(run_dir.path / INSTRUCTIONS_FILE if run_dir else None, pool_ids)
        # Instructions never made it into the pool (pending or rejected) still count as seen.
        self.pool.index.extend(i.instruction for i in self.steps.items.values() if i.id not in pool_ids)
        self.stats.next_request_id = max(self.stats.next_request_id, self.steps.max_request_id + 1)
        self._issued = self.stats.next_request_id

        prefill = bool(getattr(backend, "supports_prefill", False))
        self.instruction_builder = InstructionPromptBuilder(self.style, g.num_tasks_to_generate, prefill)
        self.classify_builder = ClassificationPromptBuilder(self.style)
        self.classify_examples = ClassificationExamples(
            self.pool.seeds, g.classify_examples, g.classify_examples_by, random.Random(f"{g.seed}:classify"),
            UnicodeTokenizer() if cfg.filters.tokenizer == "unicode" else None)
        self.instance_style = _instance_style(g.instance_prompt_style, self.style, backend)
        self.instance_builder = InstancePromptBuilder(self.instance_style, g.instances_per_task, prefill)
        n_examples = min(g.num_prompt_tasks, len(seeds) + g.num_machine_tasks)
        self.params = GenerationParams(
            temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, max_new_tokens=cfg.sampling.max_new_tokens,
            stop=[*self.instruction_builder.stop(n_examples), *cfg.sampling.stop], seed=g.seed)
        # Greedy and short: the answer is one word.
        self.classify_params = GenerationParams(temperature=0.0, top_p=1.0, max_new_tokens=3, stop=["\n"],
                                                seed=g.seed)
        self.instance_params = GenerationParams(
            temperature=g.instance_temperature, top_p=cfg.sampling.top_p if g.instance_temperature > 0 else 1.0,
            max_new_tokens=g.instance_max_new_tokens, stop=[*self.instance_builder.stop(), *cfg.sampling.stop],
            seed=g.seed)
        self._init_extra()

    # ----------------------------------------------------------------------- counters

    def _init_extra(self) -> None:
        x = self.stats.extra
        x["method"] = "self_instruct"
        x.setdefault("requests_by_step", {s: 0 for s in STEPS})
        x.setdefault("classification", {"yes": 0, "no": 0, "unparseable": 0, "unparseable_counted_as": "no"})
        x.setdefault("instances", {"parsed": 0, "kept": 0})
        x.setdefault("instance_filters", {})
        x.setdefault("tasks_rejected", {})
        self._update_extra()

    def _update_extra(self) -> None:
        x = self.stats.extra
        c = x["classification"]
        c["share"] = round(c["yes"] / (c["yes"] + c["no"]), 4) if c["yes"] + c["no"] else 0.0
        pool = self.pool.machine
        c["share_in_pool"] = round(sum(bool(t.is_classification) for t in pool) / len(pool), 4) if pool else 0.0
        x["instances"]["per_pool_task"] = round(sum(len(t.instances) for t in pool) / len(pool), 3) if pool else 0.0
        x["pending"] = len(self.steps.pending())

    def _count(self, bucket: str, key: str, n: int = 1) -> None:
        d = self.stats.extra[bucket]
        d[key] = d.get(key, 0) + n

    def _account(self, step: str, req: Request, reply: Reply) -> bool:
        """Count a reply; False (and the failure recorded) when the request failed."""
        s = self.stats
        s.requests += 1
        s.retries += reply.retries
        s.prompt_tokens += reply.prompt_tokens
        s.completion_tokens += reply.completion_tokens
        self._count("requests_by_step", step)
        if reply.finish_reason == "length" and step != "classification":  # a 3-token answer may run on
            s.truncated_replies += 1
        if reply.finish_reason == "error":
            s.failed_requests += 1
            return False
        return True

    # ----------------------------------------------------------------------- state

    def _committed(self) -> int:
        """Tasks in the pool plus instructions on their way there."""
        return self.pool.machine_count + len(self.steps.pending())

    def _out_of_requests(self) -> bool:
        g = self.cfg.generation
        return bool(g.max_requests) and self._issued >= g.max_requests

    def _item(self, req: Request) -> MachineInstruction:
        return self.steps.items[req.meta["task_id"]]

    # ----------------------------------------------------------------------- step 1: instructions

    def _instruction_request(self, rid: int, examples: list[Task], classification_only: bool) -> Request:
        prompt = self.instruction_builder.build(examples, classification_only)

        def shrink() -> Request | None:
            # A server said the prompt is too long: show two fewer in-context tasks.
            return self._instruction_request(rid, examples[:-2], classification_only) if len(examples) > 2 else None

        return Request(rid, prompt, {"examples": [t.id for t in examples],
                                     "classification_prompt": classification_only}, shrink)

    def instruction_requests(self) -> Iterator[Request]:
        g = self.cfg.generation
        for _ in range(g.requests_per_round):
            if self._committed() >= g.target or self._out_of_requests() or self.stop.reason:
                return
            rid = self._issued
            self._issued += 1
            rng = random.Random(f"{g.seed}:{rid}")
            clf_only = g.classification_prompt_share > 0 and rng.random() < g.classification_prompt_share
            seeds, machine = self.pool.seeds, self.pool.machine
            if clf_only:
                seeds = [t for t in seeds if t.is_classification]
                machine = [t for t in machine if t.is_classification]
            examples = sample_tasks(seeds, machine, rng, g.num_prompt_tasks, g.num_machine_tasks)
            yield self._instruction_request(rid, examples, clf_only)

    def handle_instructions(self, req: Request, reply: Reply) -> None:
        s = self.stats
        self._processed_max = max(self._processed_max, req.id)
        accepted: list[MachineInstruction] = []
        if not self._account("instructions", req, reply):
            self._reject(Rejection("request_failed", "generate", raw=reply.text, detail={"error": reply.error}),
                         req.id)
            self.steps.add_request(req.id, accepted)
            return
        parsed = parse_instruction_list(reply.text, reply.finish_reason, prefix=req.prompt.reply_prefix)
        for rej in parsed.rejections:
            self._reject(rej, req.id)
        for cand in parsed.candidates:
            s.candidates += 1
            if self._committed() + len(accepted) >= self.cfg.generation.target:
                s.extra["over_target"] = s.extra.get("over_target", 0) + 1
                continue
            verdict = run_filters(self.filters, cand)
            if not verdict.keep:
                self._reject(Rejection(verdict.reason or "filtered", "filter", raw=cand.raw,
                                       candidate={"instruction": cand.instruction}, detail=verdict.detail or None),
                             req.id)
                continue
            self.pool.index.add(cand.instruction)
            accepted.append(MachineInstruction(
                self.steps.next_id(), cand.instruction, req.id,
                meta={"request_id": req.id, "generator": self._model_name, "in_context": req.meta["examples"],
                      "classification_prompt": req.meta["classification_prompt"], **verdict.detail}))
        self.steps.add_request(req.id, accepted)

    # ----------------------------------------------------------------------- step 2: classification

    def classification_requests(self) -> Iterator[Request]:
        for item in self.steps.pending():
            if item.is_classification is None:
                examples = self.classify_examples.for_instruction(item.instruction)
                yield Request(item.number, self.classify_builder.build(item.instruction, examples),
                              {"task_id": item.id, "examples": [t.id for t in examples]})

    def handle_classification(self, req: Request, reply: Reply) -> None:
        item = self._item(req)
        if not self._account("classification", req, reply):
            self._reject_task(item, req, "request_failed", reply.text, {"step": "classification",
                                                                        "error": reply.error})
            return
        verdict = parse_yes_no(reply.text)
        if verdict is None:
            self._count("classification", "unparseable")
            log.debug("unparseable classification answer %r for %s: counted as no", reply.text, item.id)
        self._count("classification", "yes" if verdict else "no")
        self.steps.classify(item, bool(verdict), reply.text)

    # ----------------------------------------------------------------------- step 3: instances

    def _instance_request(self, item: MachineInstruction, examples: list[Task]) -> Request:
        prompt = self.instance_builder.build(item.instruction, bool(item.is_classification), examples)

        def shrink() -> Request | None:
            return self._instance_request(item, examples[:-1]) if len(examples) > 1 else None

        return Request(item.number, prompt, {"task_id": item.id, "examples": [t.id for t in examples]}, shrink)

    def instance_requests(self) -> Iterator[Request]:
        g = self.cfg.generation
        for item in self.steps.pending():
            if item.is_classification is None:
                continue
            rng = random.Random(f"{g.seed}:instances:{item.id}")
            examples = pick_instance_examples(self.pool.seeds, item.is_classification, g.instance_examples, rng)
            yield self._instance_request(item, examples)

    def handle_instances(self, req: Request, reply: Reply) -> None:
        item = self._item(req)
        if not self._account("instances", req, reply):
            self._reject_task(item, req, "request_failed", reply.text, {"step": "instances", "error": reply.error})
            return
        parsed = parse_instances(reply.text, prefix=req.prompt.reply_prefix)
        decision = filter_instances(parsed, truncated=reply.finish_reason == "length",
                                    max_instances=self.cfg.generation.instances_per_task)
        self._count("instances", "parsed", len(parsed))
        self._count("instances", "kept", len(decision.kept))
        for reason, inst in decision.dropped:
            self._count("instance_filters", reason)
            self._reject(Rejection(f"instance:{reason}", "instances", raw=inst.raw,
                                   candidate={"task_id": item.id, "instruction": item.instruction, **inst.to_dict()}),
                         req.id)
        if not decision.kept:
            reason = decision.task_reason or ("no_valid_instances" if parsed else "no_instances_parsed")
            self._reject_task(item, req, reason, reply.text, {"parsed": len(parsed), "dropped": decision.counts()})
            return
        self.pool.add_finished(Task(
            id=item.id, instruction=item.instruction, instances=decision.kept,
            is_classification=item.is_classification, origin="machine",
            meta={**item.meta, "classification_answer": item.classification_answer,
                  "instance_examples": req.meta["examples"], "instances_parsed": len(parsed),
                  "instances_dropped": decision.counts()}))
        self.steps.finish(item)
        self.stats.kept += 1

    def _reject_task(self, item: MachineInstruction, req: Request, reason: str, raw: str, detail: dict) -> None:
        self._count("tasks_rejected", reason)
        self._reject(Rejection(f"task:{reason}", "instances", raw=raw,
                               candidate={"id": item.id, "instruction": item.instruction,
                                          "is_classification": item.is_classification}, detail=detail), req.id)
        self.steps.reject(item, reason)

    # ----------------------------------------------------------------------- the loop

    def flush_round(self, started: float) -> None:
        # The pool first: a task's pool line is what marks it finished. Then the step log,
        # then (in the base) rejects and stats, which may lag the records, never lead them.
        self.pool.flush()
        self.steps.flush()
        self._update_extra()
        super().flush_round(started)

    def _pass(self, step: str, requests: Iterator[Request], params: GenerationParams,
              handle: Callable[[Request, Reply], None]) -> None:
        """One step's requests through the backend, flushed every `requests_per_round` replies."""
        per_flush = self.cfg.generation.requests_per_round
        started, n = time.perf_counter(), 0
        replies = self.backend.imap(requests, params)
        try:
            for req, reply in replies:
                handle(req, reply)
                n += 1
                if n % per_flush == 0:
                    self.flush_round(started)
                    started = time.perf_counter()
                    if self.stop.poll(self.stats):
                        break
        finally:
            if hasattr(replies, "close"):
                replies.close()  # cancels a remote backend's requests still in flight
            if n % per_flush:
                self.flush_round(started)
        if n:
            log.debug("%s: %d requests", step, n)

    def run(self) -> RunStats:
        g = self.cfg.generation
        self._processed_max = self.stats.next_request_id - 1
        log.info("self-instruct with %s (%s prompts) toward %d machine tasks; %d in the pool, %d unfinished",
                 self.backend.name, self.style, g.target, self.pool.machine_count, len(self.steps.pending()))
        try:
            if self.on_progress is not None:
                self.on_progress(self.stats, g.target)
            while not self.stop.poll(self.stats):
                # Unfinished instructions first: on resume, these are the ones a kill interrupted.
                self._pass("classification", self.classification_requests(), self.classify_params,
                           self.handle_classification)
                if self.stop.poll(self.stats):
                    break
                self._pass("instances", self.instance_requests(), self.instance_params, self.handle_instances)
                if self.stop.poll(self.stats) or self.pool.machine_count >= g.target:
                    break
                if self._out_of_requests():
                    self.stop.reason = self.stop.reason or "max_requests"
                    break
                self._pass("instructions", self.instruction_requests(), self.params, self.handle_instructions)
        finally:
            self.pool.close()
            self.steps.close()
            if self.rejects is not None:
                self.rejects.close()
        x = self.stats.extra
        log.info("done: %d machine tasks, %s instances kept of %s parsed; classification share %.2f",
                 self.pool.machine_count, x["instances"]["kept"], x["instances"]["parsed"],
                 x["classification"]["share"])
        return self.stats
