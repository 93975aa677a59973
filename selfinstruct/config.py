"""Typed pipeline configuration: dataclasses with help text, YAML first, then `--set` overrides.

Defaults are the Self-Instruct paper's numbers (Wang et al. 2022, section 2 and appendix):
8 in-context tasks per prompt of which 2 machine-made, ROUGE-L 0.7, 4-150 words,
temperature 0.7 / top_p 0.5 for instruction generation.

Unknown keys are errors that name the key and the keys that do exist. Fields marked
`resume_safe` may change between a run and its resumption (the target size, batch
sizes, server addresses); any other change is refused unless forced, because the pool
on disk would no longer be what this config produces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """The pipeline file or an override is invalid; the message says what to change."""


def opt(default: Any, help: str, *, resume_safe: bool = False, factory: Any = None) -> Any:
    meta = {"help": help, "resume_safe": resume_safe}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


BLOCKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]


@dataclass
class GenerationConfig:
    method: Literal["alpaca", "self_instruct"] = opt(
        "alpaca", "alpaca: instruction, input and output in one reply (Stanford Alpaca). "
        "self_instruct: the paper's three steps (instructions, classification identification, instances).")
    target: int = opt(100, "Stop once the pool holds this many accepted machine-generated tasks.", resume_safe=True)
    num_prompt_tasks: int = opt(8, "In-context tasks shown per prompt (paper: 8).")
    num_machine_tasks: int = opt(2, "Of those, at most this many machine-generated (paper: 2); the rest are seeds.")
    num_tasks_to_generate: int = opt(
        1, "New tasks asked for per prompt (Alpaca asks for 20 at once; small models do better with few).")
    prompt_style: Literal["auto", "chat", "plain"] = opt(
        "auto", "chat: the tokenizer's chat template / chat endpoint (instruct models). plain: completion "
        "style (base models). auto: chat when the model has a chat template.")
    requests_per_round: int = opt(8, "Requests per round; the pool, rejects and stats are flushed every round.",
                                  resume_safe=True)
    max_requests: int = opt(
        0, "Stop issuing LM requests after this many (0: no limit). The self_instruct method counts its "
        "instruction requests; instructions already made still get their classification and instance requests.",
        resume_safe=True)
    seed: int = opt(42, "Seed: each request samples its prompt with a generator seeded from (seed, request id), "
                    "so a resumed run samples as an uninterrupted one; local decoding is seeded too.")
    instances_per_task: int = opt(5, "self_instruct method: the most instances kept per task (paper: 5).")
    classification_prompt_share: float = opt(
        0.0, "self_instruct method: share of instruction requests that use the classification-only prompt "
        "(classification seeds as examples, asks for classification tasks).")
    classify_examples: int = opt(12, "self_instruct method: labelled seed tasks in the classification prompt.")
    classify_examples_by: Literal["similarity", "fixed"] = opt(
        "similarity", "self_instruct method: similarity: the seeds most similar to the instruction (ROUGE-L), "
        "most similar last (small models copy their neighbours' labels); fixed: one balanced set for all.")
    instance_examples: int = opt(3, "self_instruct method: seed tasks with their instances shown per instance prompt.")
    instance_prompt_style: Literal["same", "chat", "plain"] = opt(
        "same", "self_instruct method: prompt style of the instance step; same: generation.prompt_style.")
    instance_temperature: float = opt(
        0.0, "self_instruct method: sampling temperature for instances (paper: 0, greedy); top_p is sampling.top_p.")
    instance_max_new_tokens: int = opt(300, "self_instruct method: token limit per instance reply (paper: 300).")


@dataclass
class SamplingConfig:
    temperature: float = opt(0.7, "Sampling temperature (paper: 0.7 for instruction generation).")
    top_p: float = opt(0.5, "Nucleus sampling mass (paper: 0.5).")
    max_new_tokens: int = opt(1024, "Token limit per reply (paper: 1024). A reply cut off here loses its last task.")
    stop: list[str] = opt(None, "Extra stop strings.", factory=list)


@dataclass
class FilterConfig:
    min_words: int = opt(4, "Drop instructions shorter than this many words (paper: more than 3).")
    max_words: int = opt(150, "Drop instructions longer than this many words (paper: 150).")
    blocklist: list[str] = opt(None, "Whole-word, case-insensitive keywords a text-only model cannot handle.",
                               factory=lambda: list(BLOCKLIST))
    blocked_prefixes: list[str] = opt(None, "Instructions starting with these (case-insensitive) are dropped.",
                                      factory=lambda: ["write a program"])
    rouge_threshold: float = opt(0.7, "Drop a candidate whose ROUGE-L F with any pool instruction is above this.")
    similar_top_k: int = opt(
        10, "Most similar pool instructions kept with each accepted task (as the paper did); 0 skips finding "
        "them, which makes the filter ~6x cheaper at a 100K pool.")
    tokenizer: Literal["rouge", "unicode"] = opt(
        "rouge", "rouge: exactly rouge-score's tokens (English). unicode: words of any script, CJK per "
        "character (not rouge-score-compatible).")


@dataclass
class RemoteConfig:
    base_urls: list[str] = opt(None, "OpenAI-compatible endpoints; several are spread round-robin over replicas.",
                               factory=lambda: ["https://api.openai.com/v1"], resume_safe=True)
    endpoint: Literal["chat", "completions"] = opt("chat", "chat: /chat/completions; completions: /completions.")
    api_key_env: str = opt("OPENAI_API_KEY", "Environment variable holding the key (never written anywhere).",
                           resume_safe=True)
    require_key: bool = opt(True, "Fail at start when the key variable is unset (false for local servers).",
                            resume_safe=True)
    max_concurrency: int = opt(16, "Requests in flight at once.", resume_safe=True)
    requests_per_minute: float = opt(0, "Client-side request rate limit (0: none).", resume_safe=True)
    tokens_per_minute: float = opt(0, "Client-side token rate limit (0: none).", resume_safe=True)
    timeout_s: float = opt(120, "Per-request timeout in seconds.", resume_safe=True)
    max_attempts: int = opt(6, "Attempts per request on 429, 5xx, timeouts and dropped connections.",
                            resume_safe=True)
    token_budget: int = opt(0, "Stop cleanly (resumable) once this many tokens were used (0: none).",
                            resume_safe=True)
    cost_budget: float = opt(0, "Stop cleanly once the cost from the prices below reaches this (0: none).",
                             resume_safe=True)
    price_per_1m_prompt_tokens: float = opt(0, "Price of 1M prompt tokens, for the cost budget.", resume_safe=True)
    price_per_1m_completion_tokens: float = opt(0, "Price of 1M completion tokens.", resume_safe=True)
    backoff_s: float = opt(1.0, "First retry's back-off in seconds; doubles per attempt, plus up to as much "
                           "random jitter. A server's Retry-After overrides it.", resume_safe=True)
    backoff_max_s: float = opt(60.0, "Longest back-off (and longest Retry-After honoured), in seconds.",
                               resume_safe=True)


@dataclass
class BackendConfig:
    kind: Literal["transformers", "openai", "scripted"] = opt(
        "transformers", "transformers: in-process; openai: any OpenAI-compatible server; scripted: replay a file.")
    model: str = opt("smollm2", "Model: 'smollm2' (the bundled SmolLM2-135M-Instruct), a HF id, a local "
                     "directory or a .gguf file; for openai, the served model's name.")
    batch_size: int = opt(8, "transformers: prompts generated together.", resume_safe=True)
    threads: int = opt(0, "transformers: torch CPU threads (0: torch's default).", resume_safe=True)
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "transformers: weight dtype.")
    device: str = opt("auto", "transformers: 'auto', 'cpu', 'cuda', 'cuda:1', ...", resume_safe=True)
    replies: str = opt("", "scripted: JSONL file of {text, finish_reason} replies to replay (a record with "
                       "request_id answers that request, so a resumed run continues the script).")
    delay_s: float = opt(0.0, "scripted: seconds each reply takes (tests use it to interrupt a run part way).",
                         resume_safe=True)
    openai: RemoteConfig = opt(None, "Remote backend settings.", factory=RemoteConfig)


@dataclass
class PipelineConfig:
    name: str = opt("default", "Run name: the run directory is <output_dir>/<name>.", resume_safe=True)
    output_dir: str = opt("outputs", "Where run directories live.", resume_safe=True)
    seed_tasks: list[str] = opt(None, "Seed task files or directories (Self-Instruct, Alpaca or chat JSONL).",
                                factory=lambda: ["seed_tasks/seed_tasks.jsonl"])
    generation: GenerationConfig = opt(None, "The bootstrapping loop.", factory=GenerationConfig)
    sampling: SamplingConfig = opt(None, "Decoding for instruction generation.", factory=SamplingConfig)
    filters: FilterConfig = opt(None, "Candidate filters.", factory=FilterConfig)
    backend: BackendConfig = opt(None, "The LM that generates.", factory=BackendConfig)
    # Stage sections after generation are free-form here and validated by their stage,
    # so the loop's config does not import training code. Changing them never blocks a resume.
    export: dict[str, Any] = opt(None, "Export stage settings (see `selfinstruct export --help`).",
                                 factory=dict, resume_safe=True)
    finetune: dict[str, Any] | None = opt(None, "LoRA finetuning stage; runs after generation when present.",
                                          resume_safe=True)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# --------------------------------------------------------------------------- building from dicts

def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + u for u in unknown)}; "
            f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set generation.target=50")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({e})") from e
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"pipeline file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the pipeline file must be a mapping of sections")
        data.setdefault("name", path.stem)
    apply_overrides(data, overrides or [])
    cfg = from_dict(PipelineConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: PipelineConfig) -> None:
    g = cfg.generation
    if g.target < 1:
        raise ConfigError("generation.target must be at least 1")
    if not 0 <= g.num_machine_tasks <= g.num_prompt_tasks:
        raise ConfigError("generation.num_machine_tasks must be between 0 and generation.num_prompt_tasks")
    if g.num_prompt_tasks < 1 or g.num_tasks_to_generate < 1 or g.requests_per_round < 1:
        raise ConfigError("generation.num_prompt_tasks, num_tasks_to_generate and requests_per_round must be >= 1")
    if not 0 < cfg.filters.rouge_threshold <= 1:
        raise ConfigError("filters.rouge_threshold must be in (0, 1]")
    if cfg.filters.min_words > cfg.filters.max_words:
        raise ConfigError("filters.min_words must not exceed filters.max_words")
    if cfg.backend.kind == "scripted" and not cfg.backend.replies:
        raise ConfigError("backend.kind=scripted needs backend.replies: a JSONL file of {text, finish_reason}")
    if cfg.sampling.max_new_tokens < 1:
        raise ConfigError("sampling.max_new_tokens must be >= 1")


# --------------------------------------------------------------------------- resume fingerprint

def _fingerprint_items(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("resume_safe"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_fingerprint_items(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings that decide what the pool holds; a resumed run must match them."""
    return _fingerprint_items(cfg)


def config_hash(cfg: PipelineConfig) -> str:
    blob = json.dumps(fingerprint(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff_fingerprints(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings that differ. A field the old run did not know (added by an upgrade of
    selfinstruct) counts as unchanged while it keeps its default; a removed field is ignored."""
    defaults = fingerprint(PipelineConfig())
    changes = []
    for k in sorted(new):
        before = old[k] if k in old else defaults.get(k)
        if before != new[k]:
            changes.append(f"{k}: {before!r} -> {new[k]!r}")
    return changes


def describe(cls: type = PipelineConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field: the README's and `--help`'s field table."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            rows.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((prefix + f.name, json.dumps(default), f.metadata.get("help", "")))
    return rows
