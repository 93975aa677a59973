"""The finetune stage against TRL's SFTTrainer defaults, on the same data and settings.

Both arms train the bundled SmolLM2-135M-Instruct with LoRA r=8, alpha=16 on q_proj and
v_proj (dropout 0.05), fp32, batch 8, max length 256, one epoch, lr 2e-4 cosine with 3%
warm-up, seed 42, on the same 64 examples: the first seed-task instances whose chat-formatted
length is 30-200 tokens. Both start from the same LoRA initialisation (seeded get_peft_model)
and see the same batches (Trainer's seeded sampler).

  * this stage: LoraFinetuner, i.e. padding-free batches and logits only at target positions;
  * TRL: SFTTrainer with SFTConfig's defaults except the settings above (bf16 off for fp32):
    a prompt/completion dataset (TRL tokenises and appends EOS), padded batches, gradient
    checkpointing on, its fused LM-head loss with entropy / accuracy metrics.

TRL is not a dependency of selfinstruct: `.venv/bin/pip install trl` first.
Each arm runs in its own process (peak RSS is per process, model load included), alternating
arms --repeats times; the median time is reported. Non-pad tokens/s = tokens in the epoch's
sequences (no padding) / wall time of trainer.train().

Last line: RESULT tok_s_ratio_vs_trl=<x> rss_ratio_vs_trl=<y> loss_abs_diff=<z>
Targets (issue 4): tok_s_ratio_vs_trl >= 1.5, rss_ratio_vs_trl <= 1.0, loss_abs_diff <= 0.01.

    .venv/bin/python benchmarks/bench_finetune.py [--examples 64] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q", "v"], "batch_size": 8, "max_length": 256,
            "epochs": 1.0, "learning_rate": 2e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.03, "seed": 42,
            "dtype": "float32", "val_fraction": 0.0, "save_steps": 0, "logging_steps": 1}


def fixed_examples(tok, n: int):
    """The first n seed-task instances of 30-200 tokens in the chat format, in file order."""
    from selfinstruct.finetune.data import encode_example, examples_from_tasks
    from selfinstruct.records import load_tasks
    from selfinstruct.sft_format import PromptFormat

    fmt = PromptFormat.for_tokenizer(tok)
    chosen = []
    for ex in examples_from_tasks(load_tasks(REPO / "seed_tasks" / "seed_tasks.jsonl")):
        row = encode_example(tok, fmt, ex, max_length=10_000)
        if row is not None and 30 <= len(row["input_ids"]) <= 200:
            chosen.append(ex)
        if len(chosen) == n:
            return fmt, chosen
    raise SystemExit(f"only {len(chosen)} seed instances of 30-200 tokens; lower --examples")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arm_ours(n: int, workdir: Path) -> dict:
    from selfinstruct.finetune import LoraFinetuner
    from selfinstruct.models import load_tokenizer

    _, examples = fixed_examples(load_tokenizer("smollm2"), n)
    result = LoraFinetuner(dict(SETTINGS), progress=False).train(examples, workdir)
    return {"tokens": result.train_tokens, "train_s": result.train_runtime_s, "loss": result.train_loss,
            "steps": result.global_step}


def arm_trl(n: int, workdir: Path) -> dict:
    import datasets
    import transformers
    import trl
    from peft import get_peft_model

    from selfinstruct import models
    from selfinstruct.finetune.adapters import peft_config
    from selfinstruct.finetune.config import finetune_config

    model, tok = models.load_model("smollm2", dtype="float32")
    fmt, examples = fixed_examples(tok, n)
    rows = [{"prompt": fmt.prompt(tok, e.instruction, e.input), "completion": e.output.strip()} for e in examples]
    transformers.set_seed(SETTINGS["seed"])  # the same adapter initialisation as LoraFinetuner
    model = get_peft_model(model, peft_config(finetune_config(dict(SETTINGS)), model))
    args = trl.SFTConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=8, num_train_epochs=1,
                         learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, max_length=256,
                         seed=42, data_seed=42, bf16=False, report_to=[], disable_tqdm=True)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tok)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    t0 = time.perf_counter()
    out = trainer.train()
    return {"tokens": tokens, "train_s": time.perf_counter() - t0, "loss": out.training_loss,
            "steps": out.global_step, "trl": trl.__version__,
            "gradient_checkpointing": bool(args.gradient_checkpointing)}


def child(arm: str, n: int, threads: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    import torch

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        res = (arm_ours if arm == "ours" else arm_trl)(n, Path(tmp))
    res.update(peak_rss_mib=peak_rss_mib(), threads=torch.get_num_threads())
    print("CHILD " + json.dumps(res), flush=True)


def run_child(arm: str, n: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", arm, "--examples", str(n), "--threads", str(threads)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {arm} arm failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("CHILD "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="runs per arm, alternating; the median time counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each arm (0: torch's default)")
    p.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.examples, args.threads)
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is needed for the comparison arm: .venv/bin/pip install trl") from None

    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for i in range(args.repeats):
        for arm in ("ours", "trl") if i % 2 == 0 else ("trl", "ours"):
            r = run_child(arm, args.examples, args.threads)
            runs[arm].append(r)
            print(f"  run {i + 1} {arm:4s}: {r['tokens']} tokens in {r['train_s']:.2f} s = "
                  f"{r['tokens'] / r['train_s']:.0f} tok/s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"loss {r['loss']:.5f}", flush=True)

    summary = {}
    for arm, rs in runs.items():
        train_s = statistics.median(r["train_s"] for r in rs)
        summary[arm] = {"tokens": rs[0]["tokens"], "train_s": train_s, "tok_s": rs[0]["tokens"] / train_s,
                        "rss": statistics.median(r["peak_rss_mib"] for r in rs), "loss": rs[0]["loss"],
                        "steps": rs[0]["steps"]}
    trl_info = runs["trl"][0]
    print(f"\n{args.examples} examples, batch 8, max length 256, LoRA r=8 alpha=16 on q,v, fp32, 1 epoch, seed 42, "
          f"{runs['ours'][0]['threads']} torch threads; TRL {trl_info['trl']} (gradient checkpointing "
          f"{'on' if trl_info['gradient_checkpointing'] else 'off'} by default)")
    print(f"{'':6s} {'steps':>5s} {'tokens':>7s} {'train s':>8s} {'tok/s':>7s} {'peak RSS MiB':>13s} {'loss':>9s}")
    for arm, s in summary.items():
        name = "stage" if arm == "ours" else "TRL"
        print(f"{name:6s} {s['steps']:5d} {s['tokens']:7d} {s['train_s']:8.2f} {s['tok_s']:7.0f} {s['rss']:13.0f} "
              f"{s['loss']:9.5f}")
    if summary["ours"]["tokens"] != summary["trl"]["tokens"]:
        print(f"note: the arms tokenised the data differently ({summary['ours']['tokens']} vs "
              f"{summary['trl']['tokens']} tokens)")
    ratio = summary["ours"]["tok_s"] / summary["trl"]["tok_s"]
    rss_ratio = summary["ours"]["rss"] / summary["trl"]["rss"]
    diff = abs(summary["ours"]["loss"] - summary["trl"]["loss"])
    print(f"RESULT tok_s_ratio_vs_trl={ratio:.2f} rss_ratio_vs_trl={rss_ratio:.2f} loss_abs_diff={diff:.4f}")


if __name__ == "__main__":
    main()
