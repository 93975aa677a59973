"""`selfinstruct run PIPELINE.yaml`: grow the pool, export it, and finetune when configured."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a pipeline: generate, export, and finetune if configured")
    p.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/default.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set generation.target=50 (repeatable)")
    p.add_argument("--force", action="store_true", help="resume even though the config changed")
    p.add_argument("--no-finetune", action="store_true", help="skip the finetune section")
    p.set_defaults(func=run)


class _RunLogHandler(logging.FileHandler):
    """The run directory's run.log; one at a time, so runs in one process (tests, notebooks)
    do not write into each other's logs."""


def attach_run_log(path: Path) -> logging.Handler:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RunLogHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def print_summary(stats, run_dir: Path, target: int, pool_size: int) -> None:
    d = stats.to_dict()
    rows = [
        ("machine tasks in pool", f"{pool_size} / {target}"),
        ("requests (failed)", f"{d['requests']} ({d['failed_requests']})"),
        ("candidates parsed", d["candidates"]),
        ("kept this history", f"{d['kept']} ({100 * d['keep_rate']:.1f}% of candidates)"),
        ("tokens prompt / completion", f"{d['prompt_tokens']} / {d['completion_tokens']}"),
        ("generation time", f"{d['elapsed_s']:.1f} s ({d['tokens_per_s']} completion tok/s)"),
    ]
    rows += [(f"  dropped: {reason}", n) for reason, n in d["dropped"].items()]
    width = max(len(r[0]) for r in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"\nrun directory: {run_dir}")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..backends import make_backend
    from ..bootstrap import make_bootstrapper
    from ..records import load_tasks
    from ..rundir import RunDir

    cfg = load_config(args.pipeline, args.overrides)
    run_dir = RunDir(cfg.run_dir)
    seeds = load_tasks(cfg.seed_tasks)
    with run_dir.lock():
        resuming = run_dir.prepare(cfg, force=args.force)
        attach_run_log(run_dir.log)
        logging.getLogger(__name__).info("%s %s with %d seed tasks", "resuming" if resuming else "starting",
                                         run_dir.path, len(seeds))
        backend = make_backend(cfg.backend)
        bar = tqdm(total=cfg.generation.target, desc="machine tasks", unit="task", dynamic_ncols=True)

        def progress(stats, target):
            bar.n = min(stats.kept, target)
            bar.set_postfix(requests=stats.requests, candidates=stats.candidates, dropped=stats.total_dropped)
            bar.refresh()

        try:
            boot = make_bootstrapper(cfg, backend, seeds, run_dir, on_progress=progress)
            stats = boot.run()
        finally:
            bar.close()
            backend.close()
        print_summary(stats, run_dir.path, cfg.generation.target, boot.pool.machine_count)
        if boot.stop.reason:
            print(f"stopped early: {boot.stop.reason}; run the same command to continue")
            return 0
        from ..export import export_run
        from ..report import build_report, write_report

        for path in export_run(run_dir.path, cfg.export):
            print(f"exported: {path}")
        print(f"report: {write_report(build_report(run_dir.path))}")
        if cfg.finetune is not None and not args.no_finetune:
            from ..finetune import finetune_from_pipeline

            adapter = finetune_from_pipeline(cfg, run_dir.path)
            print(f"adapter: {adapter}")
    return 0
