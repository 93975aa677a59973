"""Writing a run's tasks in the formats trainers read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

from .jsonl import read_jsonl
from .records import Task, load_tasks, write_jsonl
from .rundir import RunDir

log = logging.getLogger(__name__)


def machine_tasks(run_dir: str | Path) -> list[Task]:
    rd = RunDir(Path(run_dir))
    if not rd.pool.exists():
        raise FileNotFoundError(f"no pool.jsonl in {run_dir}: is it a run directory? (selfinstruct run makes one)")
    return [Task.from_dict(d) for d in read_jsonl(rd.pool)]


def alpaca_records(tasks: list[Task]) -> Iterator[dict[str, Any]]:
    """One record per instance: {instruction, input, output}."""
    for t in tasks:
        for inst in t.instances:
            yield {"instruction": t.instruction, "input": inst.input, "output": inst.output}


def export_file(run_dir: str | Path, out: str | Path, fmt: str = "alpaca", include_seeds: bool = False) -> int:
    tasks = machine_tasks(run_dir)
    if include_seeds:
        import yaml

        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
        tasks = load_tasks(cfg["seed_tasks"]) + tasks
    if fmt != "alpaca":
        raise ValueError(f"unknown export format {fmt!r}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl(out, alpaca_records(tasks))


def export_run(run_dir: str | Path, settings: dict[str, Any]) -> list[Path]:
    """The export stage chained after generation: alpaca JSONL in RUN_DIR/export/."""
    out = Path(run_dir) / "export" / "alpaca.jsonl"
    n = export_file(run_dir, out)
    log.info("exported %d records to %s", n, out)
    return [out]
