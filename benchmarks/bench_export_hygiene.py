"""Export hygiene at Alpaca scale: decontamination and near-duplicate removal over a large
synthetic pool, and the same decisions as rouge-score computed pair by pair.

    .venv/bin/python benchmarks/bench_export_hygiene.py [--tasks 52000] [--check 200]

1. Agreement: on `--check` tasks, `decontaminate.clean` drops exactly the instances that a
   brute-force loop over rouge-score (every pair, same order, same rules) drops.
2. Speed: `clean` over `--tasks` tasks (1-3 instances each, ~10% near-duplicates, as the
   synthetic generator makes them) against a 1,000-instruction evaluation set.

Prints the figures and a final `RESULT ...` line.
"""

from __future__ import annotations

import argparse
import random
import time

from selfinstruct.decontaminate import Decontaminator, clean, instance_text, normalise
from selfinstruct.records import Instance, Task
from selfinstruct.similarity.synthetic import InstructionGenerator


def make_tasks(n: int, seed: int) -> tuple[list[Task], list[str]]:
    gen = InstructionGenerator(seed=seed)
    rng = random.Random(seed)
    texts = gen.corpus(n + 1000, near_duplicate_rate=0.1)
    tasks = []
    for i, text in enumerate(texts[:n]):
        k = rng.choice([1, 1, 1, 2, 3])
        inputs = [""] if rng.random() < 0.4 else [gen.fresh() for _ in range(k)]
        tasks.append(Task(f"t{i}", text, [Instance(x, f"answer {i}.{j}") for j, x in enumerate(inputs)]))
    # Evaluation set: fresh instructions plus a few copied from the pool (planted leaks).
    evals = texts[n:] + [texts[i] for i in rng.sample(range(n), 20)]
    return tasks, evals


def brute_force_dedup(tasks: list[Task], threshold: float) -> list[tuple[str, str]]:
    """The de-duplication rules with rouge-score on every pair: (task id, input) kept."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seen: set[str] = set()
    earlier: list[str] = []  # instances of earlier tasks
    kept = []
    for t in tasks:
        mine = []
        for inst in t.instances:
            text = instance_text(t.instruction, inst.input)
            if normalise(text) in seen:
                continue
            if any(scorer.score(e, text)["rougeL"].fmeasure > threshold for e in earlier):
                continue
            seen.add(normalise(text))
            mine.append(text)
            kept.append((t.id, inst.input))
        earlier.extend(mine)
    return kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=52_000, help="pool size for the timing (Alpaca: 52K)")
    ap.add_argument("--check", type=int, default=200, help="pool size for the rouge-score agreement check")
    ap.add_argument("--threshold", type=float, default=0.7, help="near-duplicate threshold for both parts")
    args = ap.parse_args()

    small, _ = make_tasks(args.check, seed=1)
    t0 = time.perf_counter()
    ref = brute_force_dedup(small, args.threshold)
    t_ref = time.perf_counter() - t0
    kept, _ = clean(small, near_duplicate_threshold=args.threshold)
    ours = [(t.id, i.input) for t in kept for i in t.instances]
    agree = ours == ref
    n_inst = sum(len(t.instances) for t in small)
    print(f"agreement on {args.check} tasks / {n_inst} instances: {'identical' if agree else 'DIFFERENT'} "
          f"({len(ref)} kept by rouge-score pairwise in {t_ref:.1f}s, {len(ours)} by clean)")

    tasks, evals = make_tasks(args.tasks, seed=2)
    t0 = time.perf_counter()
    decon = Decontaminator(evals)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept, rep = clean(tasks, decon, near_duplicate_threshold=args.threshold)
    t_clean = time.perf_counter() - t0
    print(f"{rep.tasks_in} tasks / {rep.instances_in} instances -> {rep.tasks_out} / {rep.instances_out}; "
          f"dropped {dict(rep.counts)}")
    print(f"decontaminator over {len(evals)} eval instructions built in {t_build:.2f}s; clean took {t_clean:.1f}s "
          f"({1e3 * t_clean / rep.instances_in:.2f} ms per instance)")
    print(f"RESULT agreement={'identical' if agree else 'different'} tasks={rep.tasks_in} "
          f"instances={rep.instances_in} clean_s={t_clean:.1f}")


if __name__ == "__main__":
    main()
