"""Writing a run's tasks in the formats trainers read, cleaned and documented.

An export reads the run directory (pool.jsonl, and the seeds when asked), applies the
hygiene steps of `decontaminate` (evaluation-set overlap, duplicate instances), splits by
task with a fixed seed (so no task has instances on both sides), and writes any of:

  JSONL or JSON   one record per instance (alpaca, messages, prompt_completion) or per
                  task (self_instruct)
  HF dataset      `DatasetDict.save_to_disk`, for `datasets.load_from_disk`
  Parquet         `<split>-00000-of-00001.parquet` per split, the Hub's layout
  README.md       the dataset card (see `card`)

`selfinstruct run` chains `export_run` after generation with the pipeline's `export:`
section (`ExportSettings`); `selfinstruct export` calls `export` with paths of its own.
A run still in progress can be exported: a torn last line in pool.jsonl is skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import yaml

from .card import CardFacts, write_card
from .config import ConfigError, from_dict, opt
from .decontaminate import Decontaminator, HygieneReport, clean
from .jsonl import iter_records
from .records import Task, TaskFormatError, load_tasks, write_jsonl
from .rundir import RunDir
from .sft_format import PromptFormat
from .stats import RunStats

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "messages", "prompt_completion", "self_instruct")
Format = Literal["alpaca", "messages", "prompt_completion", "self_instruct"]

# The user turn is built exactly as the finetuning and eval stages build it.
_USER_TEXT = PromptFormat("chat").user_text


class ExportError(ConfigError):
    """An export cannot be written as asked; the message says what to change."""


@dataclass
class ExportSettings:
    """The `export:` section of a pipeline file; `selfinstruct export` flags override it."""

    format: Format = opt("alpaca", "Record format: alpaca, messages (chat, for TRL), prompt_completion "
                         "(OpenAI finetune files) or self_instruct (one record per task, all instances).")
    directory: str = opt("export", "Where `selfinstruct run` writes the export, relative to the run directory.")
    jsonl: bool = opt(True, "Write <directory>/<format>.jsonl.")
    hf: bool = opt(True, "Write a Hugging Face dataset with save_to_disk to <directory>/hf.")
    parquet: bool = opt(True, "Write Parquet files to <directory>/data (the Hub's layout).")
    card: bool = opt(True, "Write the dataset card <directory>/README.md.")
    include_seeds: bool = opt(False, "Export the seed tasks too, before the machine tasks.")
    validation_fraction: float = opt(0.0, "Share of tasks put in a validation split (0: train only).")
    split_seed: int = opt(42, "Seed of the train/validation split.")
    dedup: bool = opt(True, "Drop exact and near-duplicate instances (instruction + input).")
    near_duplicate_threshold: float = opt(0.9, "Drop an instance whose instruction + input has ROUGE-L F above "
                                          "this with another task's instance (1.0: exact duplicates only).")
    decontaminate: list[str] = opt(None, "Evaluation task files (Self-Instruct, Alpaca or chat); tasks "
                                   "overlapping them are dropped.", factory=list)
    contamination_ngram: int = opt(13, "A task sharing a run of this many words with an evaluation "
                                   "instruction is contaminated.")
    contamination_rouge_threshold: float = opt(0.7, "A task whose instruction has ROUGE-L F above this with an "
                                               "evaluation instruction is contaminated.")
    license: str = opt("other", "Licence identifier written to the card (e.g. apache-2.0, cc-by-nc-4.0).")
    language: list[str] = opt(None, "Language codes written to the card.", factory=lambda: ["en"])
    push_to_hub: str = opt("", "Hugging Face dataset repo to push to (needs a token: HF_TOKEN or `hf auth "
                           "login`). Empty: no push.")


def parse_settings(data: dict[str, Any] | ExportSettings | None) -> ExportSettings:
    s = data if isinstance(data, ExportSettings) else from_dict(ExportSettings, data or {}, prefix="export.")
    if not 0 <= s.validation_fraction < 1:
        raise ConfigError("export.validation_fraction must be in [0, 1)")
    if not 0 < s.near_duplicate_threshold <= 1:
        raise ConfigError("export.near_duplicate_threshold must be in (0, 1]")
    if not 0 < s.contamination_rouge_threshold <= 1:
        raise ConfigError("export.contamination_rouge_threshold must be in (0, 1]")
    if s.contamination_ngram < 1:
        raise ConfigError("export.contamination_ngram must be >= 1")
    return s


@dataclass
class Outputs:
    """Where one export writes; None skips that output."""

    jsonl: Path | None = None  # .jsonl or .json; with a validation split, <stem>.validation<suffix> beside it
    hf: Path | None = None
    parquet: Path | None = None
    card: Path | None = None
    dropped: Path | None = None  # one JSONL record per hygiene drop, for inspection


@dataclass
class ExportResult:
    format: str
    splits: dict[str, dict[str, int]]  # split -> {"tasks": n, "records": n}
    hygiene: HygieneReport
    paths: dict[str, Path] = field(default_factory=dict)  # "jsonl", "jsonl:validation", "hf", "parquet", ...


# --------------------------------------------------------------------------- reading a run

def read_records(path: Path) -> list[dict[str, Any]]:
    """A JSONL file's records. A torn last line (a run is writing right now) is skipped,
    not repaired: the file belongs to the running process."""
    if not path.exists():
        return []
    fix = "; fix or delete the line, or move the file aside"
    return [rec for _, rec in iter_records(path, torn_tail="skip", hint=fix)]


def machine_tasks(run_dir: str | Path) -> list[Task]:
    rd = RunDir(Path(run_dir))
    if not rd.pool.exists():
        raise FileNotFoundError(f"no pool.jsonl in {run_dir}: is it a run directory? (selfinstruct run makes one)")
    return [Task.from_dict(d) for d in read_records(rd.pool)]


def run_config(run_dir: str | Path) -> dict[str, Any]:
    path = RunDir(Path(run_dir)).config
    if not path.exists():
        raise FileNotFoundError(f"no config.yaml in {run_dir}: is it a run directory? (selfinstruct run makes one)")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def run_stats(run_dir: str | Path) -> dict[str, Any]:
    """stats.json as written (all zeros before the first round ends)."""
    path = RunDir(Path(run_dir)).stats
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return RunStats().to_dict()


def seed_tasks(config: dict[str, Any]) -> list[Task]:
    paths = config.get("seed_tasks") or []
    missing = [p for p in paths if not Path(p).exists()]
    if missing or not paths:
        raise FileNotFoundError(f"seed task files {missing or paths} not found (paths in config.yaml are relative "
                                "to where `selfinstruct run` ran); run the export from there")
    return load_tasks(paths)


def _tokenizer(config: dict[str, Any]):
    if (config.get("filters") or {}).get("tokenizer") == "unicode":
        from .similarity import UnicodeTokenizer

        return UnicodeTokenizer()
    return None


# --------------------------------------------------------------------------- records

def alpaca_records(tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
    """One record per instance: {instruction, input, output}."""
    for t in tasks:
        for inst in t.instances:
            yield {"instruction": t.instruction, "input": inst.input, "output": inst.output}


def messages_records(tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
    """One chat per instance: the user asks (instruction, blank line, input), the assistant answers."""
    for t in tasks:
        for inst in t.instances:
            yield {"messages": [{"role": "user", "content": _USER_TEXT(t.instruction, inst.input)},
                                {"role": "assistant", "content": inst.output}]}


def prompt_completion_records(tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
    for t in tasks:
        for inst in t.instances:
            yield {"prompt": _USER_TEXT(t.instruction, inst.input), "completion": inst.output}


def self_instruct_records(tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
    """One record per task with all its instances: the seed-task schema, so the file can
    seed another run. Generation metadata stays in pool.jsonl (its keys vary per task)."""
    for t in tasks:
        yield {"id": t.id, "name": t.name, "instruction": t.instruction,
               "instances": [i.to_dict() for i in t.instances], "is_classification": t.is_classification}


RECORDS = {"alpaca": alpaca_records, "messages": messages_records,
           "prompt_completion": prompt_completion_records, "self_instruct": self_instruct_records}


def records(tasks: Iterable[Task], fmt: str) -> list[dict[str, Any]]:
    if fmt not in RECORDS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return list(RECORDS[fmt](tasks))


def features(fmt: str):
    """The column types, fixed so that empty or all-null columns keep their type."""
    from .models import require

    datasets = require("datasets", "pip install datasets")
    V = datasets.Value
    return datasets.Features({
        "alpaca": {"instruction": V("string"), "input": V("string"), "output": V("string")},
        "messages": {"messages": [{"role": V("string"), "content": V("string")}]},
        "prompt_completion": {"prompt": V("string"), "completion": V("string")},
        "self_instruct": {"id": V("string"), "name": V("string"), "instruction": V("string"),
                          "instances": [{"input": V("string"), "output": V("string")}],
                          "is_classification": V("bool")},
    }[fmt])


def split_tasks(tasks: list[Task], validation_fraction: float = 0.0, seed: int = 42) -> dict[str, list[Task]]:
    """Split by task, never by instance, so no task is on both sides. Each split keeps the
    pool's order; which tasks go to validation depends only on (seed, number of tasks)."""
    n_val = round(len(tasks) * validation_fraction)
    if validation_fraction > 0 and len(tasks) >= 2:
        n_val = min(max(n_val, 1), len(tasks) - 1)
    elif validation_fraction > 0:
        log.warning("%d task(s): too few for a validation split; exporting train only", len(tasks))
        n_val = 0
    if n_val == 0:
        return {"train": list(tasks)}
    order = list(range(len(tasks)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return {"train": [t for i, t in enumerate(tasks) if i not in val],
            "validation": [t for i, t in enumerate(tasks) if i in val]}


# --------------------------------------------------------------------------- writers

def write_records(path: str | Path, recs: list[dict[str, Any]]) -> Path:
    """.jsonl: one JSON object per line. .json: one JSON list (Alpaca's alpaca_data.json form)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        write_jsonl(path, recs)
    elif path.suffix == ".json":
        path.write_text(json.dumps(recs, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    else:
        raise ExportError(f"{path}: name the output file .jsonl (one record per line) or .json (a list)")
    return path


def split_path(path: Path, split: str) -> Path:
    """Where a split other than train goes when one file was asked for: beside it."""
    return path if split == "train" else path.with_name(f"{path.stem}.{split}{path.suffix}")


def dataset_dict(split_records: dict[str, list[dict[str, Any]]], fmt: str):
    from .models import require

    datasets = require("datasets", "pip install datasets")
    feats = features(fmt)
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({k: [r[k] for r in recs] for k in feats}, features=feats)
        for split, recs in split_records.items()})


def _clear_previous(directory: Path, looks_ours: bool) -> None:
    if directory.exists() and any(directory.iterdir()):
        if not looks_ours:
            raise ExportError(f"{directory} exists and is not a dataset selfinstruct wrote; choose an empty or "
                              "new folder")
        shutil.rmtree(directory)


def write_hf(dsd, directory: str | Path) -> Path:
    """save_to_disk; a previous save in the same folder is replaced (its stale splits too)."""
    directory = Path(directory)
    _clear_previous(directory, (directory / "dataset_dict.json").exists())
    dsd.save_to_disk(str(directory))
    return directory


PARQUET_NAME = "{split}-00000-of-00001.parquet"


def write_parquet(dsd, directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(PARQUET_NAME.format(split="*")):
        old.unlink()  # a previous export's splits; ours are rewritten below
    paths = {}
    for split, ds in dsd.items():
        paths[split] = directory / PARQUET_NAME.format(split=split)
        ds.to_parquet(str(paths[split]))
    return paths


def push_to_hub(dsd, repo: str, card: Path | None) -> None:
    """Upload the splits (as Parquet) and the card. Needs a token; never used by the tests."""
    from .models import require

    hub = require("huggingface_hub", "pip install huggingface_hub")
    token = hub.get_token()
    if not token:
        raise ExportError(f"pushing to {repo} needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    dsd.push_to_hub(repo, token=token)
    if card is not None:
        hub.HfApi(token=token).upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo,
                                           repo_type="dataset")
    log.info("pushed %s to the Hugging Face Hub", repo)


# --------------------------------------------------------------------------- the export

@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets draws a progress bar per split and file; the export logs one line instead."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _relative(path: Path, base: Path) -> str:
    rel = os.path.relpath(path.resolve(), base.resolve())
    return str(path.resolve()) if rel.startswith("..") else rel


def export(run_dir: str | Path, settings: ExportSettings | dict[str, Any] | None, outputs: Outputs,
           hub_repo: str = "") -> ExportResult:
    """Read, clean, split and write one export; returns what was written and the counts."""
    s = parse_settings(settings)
    if outputs.jsonl is not None and Path(outputs.jsonl).suffix not in (".jsonl", ".json"):
        raise ExportError(f"{outputs.jsonl}: name the output file .jsonl (one record per line) or .json (a list)")
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    pool = machine_tasks(run_dir)
    try:
        seeds: list[Task] | None = seed_tasks(config)
    except (FileNotFoundError, TaskFormatError):
        if s.include_seeds:
            raise
        seeds = None  # only counted, for the card
    tasks = seeds + pool if s.include_seeds else pool

    tokenizer = _tokenizer(config)
    decon = (Decontaminator.from_files(s.decontaminate, ngram=s.contamination_ngram,
                                       rouge_threshold=s.contamination_rouge_threshold, tokenizer=tokenizer)
             if s.decontaminate else None)
    kept, hygiene = clean(tasks, decon, dedup=s.dedup, near_duplicate_threshold=s.near_duplicate_threshold,
                          tokenizer=tokenizer)
    split = split_tasks(kept, s.validation_fraction, s.split_seed)
    split_records = {name: records(ts, s.format) for name, ts in split.items()}
    result = ExportResult(s.format, {name: {"tasks": len(split[name]), "records": len(recs)}
                                     for name, recs in split_records.items()}, hygiene)

    dsd = None
    if outputs.hf is not None or outputs.parquet is not None or hub_repo:
        dsd = dataset_dict(split_records, s.format)
    if outputs.hf is not None:  # first: it replaces its folder, which may hold the other outputs
        with _quiet_datasets():
            result.paths["hf"] = write_hf(dsd, outputs.hf)
    if outputs.jsonl is not None:
        for name, recs in split_records.items():
            key = "jsonl" if name == "train" else f"jsonl:{name}"
            result.paths[key] = write_records(split_path(Path(outputs.jsonl), name), recs)
    if outputs.parquet is not None:
        with _quiet_datasets():
            written = write_parquet(dsd, outputs.parquet)
        for name, p in written.items():
            result.paths[f"parquet:{name}"] = p
    if outputs.dropped is not None:
        Path(outputs.dropped).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(outputs.dropped, hygiene.dropped)
        result.paths["dropped"] = Path(outputs.dropped)
    if outputs.card is not None:
        card_dir = Path(outputs.card).parent
        card_dir.mkdir(parents=True, exist_ok=True)
        facts = CardFacts(
            name=str(config.get("name") or run_dir.name), format=s.format, config=config,
            stats=run_stats(run_dir), hygiene=hygiene.to_dict(),
            hygiene_settings={"decontaminate": s.decontaminate, "ngram": s.contamination_ngram,
                              "rouge_threshold": s.contamination_rouge_threshold, "dedup": s.dedup,
                              "near_duplicate_threshold": s.near_duplicate_threshold},
            splits=result.splits, machine_tasks=len(pool), seed_tasks=len(seeds) if seeds is not None else None,
            include_seeds=s.include_seeds,
            generators=sorted({str(t.meta["generator"]) for t in pool if t.meta.get("generator")}),
            license=s.license, language=s.language, hub_repo=hub_repo,
            files={k: _relative(p, card_dir) for k, p in result.paths.items()
                   if k.startswith(("jsonl", "hf", "parquet:"))})
        result.paths["card"] = write_card(outputs.card, facts)
    if hub_repo:
        push_to_hub(dsd, hub_repo, result.paths.get("card"))
    log.info("exported %s: %s; hygiene dropped %s", s.format,
             ", ".join(f"{k} {v['records']} records / {v['tasks']} tasks" for k, v in result.splits.items()),
             dict(hygiene.counts) or "nothing")
    return result


def export_file(run_dir: str | Path, out: str | Path, fmt: str = "alpaca", include_seeds: bool = False) -> int:
    """One file in one format, with the default hygiene; returns the number of records written."""
    res = export(run_dir, {"format": fmt, "include_seeds": include_seeds}, Outputs(jsonl=Path(out)))
    return sum(v["records"] for v in res.splits.values())


def export_run(run_dir: str | Path, settings: dict[str, Any] | ExportSettings | None) -> list[Path]:
    """The export stage chained after generation: by default the JSONL, the HF dataset, the
    Parquet files and the card in RUN_DIR/export/. Returns the paths worth printing."""
    s = parse_settings(settings)
    out = Path(run_dir) / s.directory
    res = export(run_dir, s, Outputs(
        jsonl=out / f"{s.format}.jsonl" if s.jsonl else None,
        hf=out / "hf" if s.hf else None,
        parquet=out / "data" if s.parquet else None,
        card=out / "README.md" if s.card else None,
        dropped=out / "dropped.jsonl"), hub_repo=s.push_to_hub)
    paths = [p for k, p in res.paths.items() if k.startswith("jsonl")]
    paths += [res.paths["hf"]] if "hf" in res.paths else []
    paths += [out / "data"] if s.parquet else []
    return paths + [res.paths[k] for k in ("card", "dropped") if k in res.paths]
