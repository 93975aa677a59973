"""How well does the bundled model answer Self-Instruct's step 2 ("is this a classification
task?") with each choice of few-shot examples and each prompt style?

Held-out tasks (seed_tasks/heldout_tasks.jsonl, never used as seeds) carry is_classification
labels; we take the first 12 classification and 12 other tasks (a balanced set, so answering
"No" to everything scores 0.5), build the step's prompt exactly as the loop does, decode
greedily (3 tokens) and compare. Prints one line per variant and a final RESULT line.

    .venv/bin/python benchmarks/bench_si_classify.py [--tasks 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from selfinstruct.backends.base import GenerationParams
from selfinstruct.backends.transformers_local import TransformersBackend
from selfinstruct.records import load_tasks
from selfinstruct.si_parsing import parse_yes_no
from selfinstruct.si_prompts import ClassificationExamples, ClassificationPromptBuilder

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=12, help="held-out tasks of each label")
    ap.add_argument("--examples", type=int, default=12, help="few-shot examples per prompt")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    seeds = load_tasks(REPO / "seed_tasks" / "seed_tasks.jsonl")
    held = load_tasks(REPO / "seed_tasks" / "heldout_tasks.jsonl")
    tasks = ([t for t in held if t.is_classification][:args.tasks]
             + [t for t in held if not t.is_classification][:args.tasks])
    backend = TransformersBackend("smollm2", batch_size=args.batch_size, threads=args.threads)
    params = GenerationParams(temperature=0.0, max_new_tokens=3, stop=["\n"])
    results = {}
    for by in ("fixed", "similarity"):
        chooser = ClassificationExamples(seeds, args.examples, by, random.Random("42:classify"))
        for style in ("plain", "chat"):
            builder = ClassificationPromptBuilder(style)
            prompts = [builder.build(t.instruction, chooser.for_instruction(t.instruction)) for t in tasks]
            t0 = time.perf_counter()
            replies = []
            for i in range(0, len(prompts), args.batch_size):
                replies += backend.generate(prompts[i:i + args.batch_size], params, seed=0)
            verdicts = [parse_yes_no(r.text) for r in replies]
            truth = [bool(t.is_classification) for t in tasks]
            acc = sum(bool(v) == y for v, y in zip(verdicts, truth)) / len(tasks)
            tp = sum(v is True and y for v, y in zip(verdicts, truth))
            fp = sum(v is True and not y for v, y in zip(verdicts, truth))
            none = sum(v is None for v in verdicts)
            results[(by, style)] = acc
            print(f"{by:10s} {style:5s} accuracy {acc:.3f}  yes on classification {tp}/{args.tasks}  "
                  f"yes on others {fp}/{args.tasks}  unparseable {none}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    print("RESULT " + " ".join(f"{by}/{style}={acc:.3f}" for (by, style), acc in results.items())
          + f" (n={len(tasks)}, half classification)")


if __name__ == "__main__":
    main()
