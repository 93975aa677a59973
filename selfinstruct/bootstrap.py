"""The bootstrapping loop: sample -> prompt -> generate -> parse -> filter -> add, until the
pool holds `generation.target` machine tasks.

Requests are built lazily, one at a time, from the pool as it stands, and the backend
yields replies as they complete; every `requests_per_round` replies the pool, the rejects
and stats.json are flushed. Each request's randomness comes from (seed, request id), so a
resumed run samples exactly as an uninterrupted one would from the same pool.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .backends.base import GenerationParams, LMBackend, Reply, Request
from .config import ConfigError, PipelineConfig
from .filters import build_filters, run_filters
from .jsonl import JsonlAppender, read_jsonl, rewrite_jsonl
from .parsing import parse_reply
from .pool import TaskPool
from .prompts import AlpacaPromptBuilder, sample_tasks
from .records import Instance, Rejection, Task
from .rundir import RunDir
from .similarity import RougeLIndex, UnicodeTokenizer
from .stats import RunStats

log = logging.getLogger(__name__)

ProgressFn = Callable[[RunStats, int], None]


def resolve_prompt_style(cfg: PipelineConfig, backend: LMBackend) -> str:
    style = cfg.generation.prompt_style
    supports_chat = getattr(backend, "supports_chat", True)
    supports_plain = getattr(backend, "supports_plain", True)
    if style == "auto":
        return "chat" if supports_chat else "plain"
    if style == "chat" and not supports_chat:
        raise ConfigError(f"generation.prompt_style=chat, but backend {backend.name} has no chat template or "
                          "chat endpoint; set generation.prompt_style: plain")
    if style == "plain" and not supports_plain:
        raise ConfigError(f"generation.prompt_style=plain, but backend {backend.name} only takes chat messages; "
                          "set generation.prompt_style: chat (or backend.openai.endpoint: completions)")
    return style


@dataclass
class StopFlag:
    """Set by anything that must end the run cleanly at the next round boundary (budgets)."""

    reason: str | None = None
    checks: list[Callable[[RunStats], str | None]] = field(default_factory=list)

    def poll(self, stats: RunStats) -> bool:
        for check in self.checks:
            if self.reason is None:
                self.reason = check(stats)
        return self.reason is not None


class Bootstrapper:
    pool_class: type[TaskPool] = TaskPool  # a method's loop may need a pool with more ways to add

    def __init__(self, cfg: PipelineConfig, backend: LMBackend, seeds: list[Task], run_dir: RunDir | None = None,
                 on_progress: ProgressFn | None = None):
        self.cfg = cfg
        self.backend = backend
        self.run_dir = run_dir
        self.on_progress = on_progress
        self.stop = StopFlag()
        if callable(getattr(backend, "stop_reason", None)):  # e.g. a remote backend's token/cost budget
            self.stop.checks.append(backend.stop_reason)
        tokenizer = UnicodeTokenizer() if cfg.filters.tokenizer == "unicode" else None
        t0 = time.perf_counter()
        self.pool = self.pool_class(seeds, run_dir.pool if run_dir else None, RougeLIndex(tokenizer=tokenizer))
        log.info("pool: %d seeds + %d machine tasks, index built in %.2fs",
                 len(self.pool.seeds), self.pool.machine_count, time.perf_counter() - t0)
        self.filters = build_filters(cfg.filters, self.pool.index)
        self.stats = RunStats.load(run_dir.stats) if run_dir else RunStats()
        self.stats.kept = self.pool.machine_count  # the pool file is the truth
        # Never re-issue a request id whose tasks are already in the pool.
        done_ids = [t.meta.get("request_id", -1) for t in self.pool.machine]
        self.stats.next_request_id = max([self.stats.next_request_id, *(i + 1 for i in done_ids)])
        self.rejects = JsonlAppender(run_dir.rejected) if run_dir else None
        self.style = resolve_prompt_style(cfg, backend)
        self.builder = AlpacaPromptBuilder(style=self.style, num_new=cfg.generation.num_tasks_to_generate,
                                           prefill=getattr(backend, "supports_prefill", False))
        n_examples = min(cfg.generation.num_prompt_tasks, len(seeds) + cfg.generation.num_machine_tasks)
        self.params = GenerationParams(
            temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
            max_new_tokens=cfg.sampling.max_new_tokens,
            stop=[*self.builder.stop(n_examples), *cfg.sampling.stop], seed=cfg.generation.seed)
        self._issued = self.stats.next_request_id
        self._model_name = getattr(backend, "model_name", backend.name)

    # ----------------------------------------------------------------------- requests

    def _done(self) -> bool:
        g = self.cfg.generation
        if self.pool.machine_count >= g.target:
            return True
        if g.max_requests and self._issued >= g.max_requests:
            self.stop.reason = self.stop.reason or "max_requests"
            return True
        return self.stop.reason is not None

    def _make_request(self, rid: int, examples: list[Task], rng_state: object) -> Request:
        rng = random.Random()
        rng.setstate(rng_state)
        prompt = self.builder.build(examples, rng)

        def shrink() -> Request | None:
            # A server said the prompt is too long: show two fewer in-context tasks.
            return self._make_request(rid, examples[:-2], rng_state) if len(examples) > 2 else None

        return Request(rid, prompt, {"examples": [t.id for t in examples]}, shrink)

    def requests(self) -> Iterator[Request]:
        g = self.cfg.generation
        while not self._done():
            rid = self._issued
            self._issued += 1
            rng = random.Random(f"{g.seed}:{rid}")
            examples = sample_tasks(self.pool.seeds, self.pool.machine, rng, g.num_prompt_tasks, g.num_machine_tasks)
            yield self._make_request(rid, examples, rng.getstate())

    # ----------------------------------------------------------------------- replies

    def _reject(self, rej: Rejection, rid: int) -> None:
        self.stats.dropped[rej.reason] += 1
        if self.rejects is not None:
            rec = rej.to_dict()
            rec["request_id"] = rid
            self.rejects.write(rec)

    def handle_reply(self, req: Request, reply: Reply) -> None:
        s = self.stats
        s.requests += 1
        s.retries += reply.retries
        s.prompt_tokens += reply.prompt_tokens
        s.completion_tokens += reply.completion_tokens
        if reply.finish_reason == "error":
            s.failed_requests += 1
            self._reject(Rejection("request_failed", "generate", raw=reply.text, detail={"error": reply.error}),
                         req.id)
            return
        if reply.finish_reason == "length":
            s.truncated_replies += 1
        parsed = parse_reply(reply.text, reply.finish_reason, prefix=req.prompt.reply_prefix)
        for rej in parsed.rejections:
            self._reject(rej, req.id)
        for cand in parsed.candidates:
            s.candidates += 1
            if self.pool.machine_count >= self.cfg.generation.target:
                s.extra["over_target"] = s.extra.get("over_target", 0) + 1
                continue
            verdict = run_filters(self.filters, cand)
            if not verdict.keep:
                self._reject(Rejection(verdict.reason or "filtered", "filter", raw=cand.raw,
                                       candidate=cand.to_dict(), detail=verdict.detail or None), req.id)
                continue
            self.pool.add(Task(
                id=self.pool.next_id(), instruction=cand.instruction, instances=[Instance(cand.input, cand.output)],
                origin="machine",
                meta={"request_id": req.id, "generator": self._model_name, "in_context": req.meta.get("examples"),
                      **verdict.detail},
            ))
            s.kept += 1

    def flush_round(self, started: float) -> None:
        s = self.stats
        s.rounds += 1
        s.elapsed_s += time.perf_counter() - started
        s.next_request_id = max(s.next_request_id, self._processed_max + 1)
        if callable(getattr(self.backend, "annotate_stats", None)):  # e.g. a remote backend's retries, cost
            self.backend.annotate_stats(s)
        # Rejects, then tasks, then stats: a kill between them leaves reject lines of
        # requests that the resumed run issues again (dropped by `settle_rejects`), never
        # a missing one; stats may lag the tasks, never lead them.
        if self.rejects is not None:
            self.rejects.flush()
        self.pool.flush()
        if self.run_dir is not None:
            s.save(self.run_dir.stats)
        if self.on_progress is not None:
            self.on_progress(s, self.cfg.generation.target)

    def settle_rejects(self) -> None:
        """Before a run starts or resumes: drop the reject lines of requests it will issue
        again (left by a kill between the rejects' flush and the stats'), and count the
        drops from the file, which is their record. (The three-step method numbers its
        requests per step and orders its flushes around its step log instead.)"""
        if self.rejects is None:
            return
        path = self.rejects.path
        first_again = self.stats.next_request_id
        records = list(read_jsonl(path))
        kept = [r for r in records if r.get("request_id", -1) < first_again]
        if len(kept) < len(records):
            self.rejects.close()
            rewrite_jsonl(path, kept)
            self.rejects = JsonlAppender(path)
            log.info("dropped %d reject lines of requests from %d on, which this run issues again",
                     len(records) - len(kept), first_again)
        self.stats.dropped = Counter(r.get("reason", "unknown") for r in kept)

    # ----------------------------------------------------------------------- the loop

    def run(self) -> RunStats:
        g = self.cfg.generation
        self.settle_rejects()
        self._processed_max = self.stats.next_request_id - 1
        log.info("bootstrapping with %s (%s prompts) toward %d machine tasks; %d already in the pool",
                 self.backend.name, self.style, g.target, self.pool.machine_count)
        started = time.perf_counter()
        in_round = 0
        replies = self.backend.imap(self.requests(), self.params)
        try:
            if self.on_progress is not None:
                self.on_progress(self.stats, g.target)
            for req, reply in replies:
                self.handle_reply(req, reply)
                self._processed_max = max(self._processed_max, req.id)
                in_round += 1
                if in_round >= g.requests_per_round:
                    self.flush_round(started)
                    started, in_round = time.perf_counter(), 0
                    if self.stop.poll(self.stats):
                        log.info("stopping at a round boundary: %s", self.stop.reason)
                        break
        finally:
            if hasattr(replies, "close"):
                replies.close()  # cancels a remote backend's requests still in flight
            if in_round:
                self.flush_round(started)
            self.pool.close()
            if self.rejects is not None:
                self.rejects.close()
        log.info("done: %d machine tasks (%d kept of %d candidates this run's history)",
                 self.pool.machine_count, self.stats.kept, self.stats.candidates)
        return self.stats


def make_bootstrapper(cfg: PipelineConfig, backend: LMBackend, seeds: list[Task], run_dir: RunDir | None = None,
                      on_progress: ProgressFn | None = None) -> Bootstrapper:
    """The loop for `generation.method`: Alpaca's one pass, or Self-Instruct's three steps."""
    if cfg.generation.method == "self_instruct":
        from .self_instruct_method import SelfInstructBootstrapper

        return SelfInstructBootstrapper(cfg, backend, seeds, run_dir, on_progress)
    return Bootstrapper(cfg, backend, seeds, run_dir, on_progress)
