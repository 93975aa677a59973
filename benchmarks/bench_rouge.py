"""Benchmark: Alpaca's ROUGE-L novelty filter vs `selfinstruct.similarity.RougeLIndex`.

    .venv/bin/python benchmarks/bench_rouge.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_rouge.py --quick    # small sizes, a smoke test

What it measures, in one run, on a deterministic synthetic corpus of instruction-like
text (`selfinstruct.similarity.synthetic`: templates, a free-form grammar, a Zipfian long
tail of pseudo-words, 10% near-duplicates; nothing is downloaded):

(a) Alpaca's method (stanford_alpaca/generate_instruction.py): the pool pre-tokenised with
    rouge-score's tokenizer, and for each candidate
    ``multiprocessing.Pool(2).map(partial(rouge_scorer._score_lcs, cand_tokens), pool_tokens)``,
    then the max and the 10 most similar. Time-boxed: a few candidates per pool size.
(b) The index screening the same candidates (``screen(k=10)``, what the bootstrapping loop
    calls, and ``exceeds``), then many more for a stable per-candidate time; its
    decisions, top-1 scores and top-10 scores are checked against (a)'s.
(c) Building a pool of 100,000 one candidate at a time into an empty index: each
    candidate's keep/reject decision (``exceeds``), then ``add`` (every candidate is added,
    so the pool reaches the full size). This is ``build_100k_s``. The same build with
    ``screen(k=10)`` instead, which also finds the 10 most similar (what the loop records
    for each kept candidate), is timed after it and printed beside it.
(d) Peak memory of an index of 1,000,000 instructions: RSS growth of a child process from
    before the corpus is generated to after the index is built (texts included).

The last line is ``RESULT speedup_100k=<x> mismatches=<n> build_100k_s=<s> index_1m_mb=<m>``.
Times are wall-clock on whatever else the machine is running; the speedup compares two
timings taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rouge_score import rouge_scorer  # noqa: E402

from selfinstruct.similarity import RougeLIndex  # noqa: E402
from selfinstruct.similarity.synthetic import InstructionGenerator  # noqa: E402

THRESHOLD = 0.7


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- (a) Alpaca


def alpaca_screen(pool: Pool, scorer: rouge_scorer.RougeScorer, pool_tokens: list[list[str]],
                  candidate: str) -> tuple[float, list[float]]:
    """Alpaca's filter for one candidate: the max score and the 10 best scores."""
    tokens = scorer._tokenizer.tokenize(candidate)
    scores = pool.map(partial(rouge_scorer._score_lcs, tokens), pool_tokens)
    f = np.array([s.fmeasure for s in scores], dtype=np.float64)
    top10 = f[np.argsort(f)[-10:][::-1]]
    return float(f.max()), [float(x) for x in top10 if x > 0]


# --------------------------------------------------------------------------- (d) memory child


def memory_child(n: int, seed: int) -> None:
    """Runs in a fresh interpreter: build an index of ``n`` instructions, print JSON."""
    base = rss_mb()
    t0 = time.perf_counter()
    texts = InstructionGenerator(seed).corpus(n, near_duplicate_rate=0.1)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = RougeLIndex()
    index.extend(texts)
    build_s = time.perf_counter() - t0
    del texts  # the index keeps its own references to the texts
    print(json.dumps({"n": len(index), "base_mb": base, "rss_mb": rss_mb(), "peak_mb": peak_rss_mb(),
                      "gen_s": gen_s, "extend_s": build_s, "numpy_mb": index.nbytes() / 2**20,
                      "vocab": index.vocabulary_size}))


def measure_memory(n: int, seed: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--seed", str(seed)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (pools 2K/10K, build 10K, memory 100K)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pools", type=int, nargs="+", help="pool sizes (default 10000 100000)")
    ap.add_argument("--alpaca", type=int, nargs="+", help="Alpaca candidates per pool size (default 20 5)")
    ap.add_argument("--alpaca-budget-s", type=float, default=180.0, help="time box for (a) per pool size")
    ap.add_argument("--index-candidates", type=int, default=2000, help="candidates timed per pool size in (b)")
    ap.add_argument("--build", type=int, help="pool size built one by one in (c) (default 100000)")
    ap.add_argument("--memory-items", type=int, help="index size for (d) (default 1000000)")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.seed)
        return

    pools = args.pools or ([2_000, 10_000] if args.quick else [10_000, 100_000])
    alpaca_n = args.alpaca or ([5, 3] if args.quick else [20, 5])
    build_n = args.build or (10_000 if args.quick else 100_000)
    memory_n = args.memory_items or (100_000 if args.quick else 1_000_000)
    index_n = min(args.index_candidates, 300) if args.quick else args.index_candidates
    t_start = time.perf_counter()

    gen = InstructionGenerator(args.seed)
    corpus = gen.corpus(max(pools), near_duplicate_rate=0.1)
    candidates = gen.candidates(corpus, index_n, near_duplicate_rate=0.1)
    print(f"corpus: {len(corpus):,} instructions, e.g. {corpus[1]!r}", flush=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    rows = []
    mismatches = top1_mismatches = top10_mismatches = 0
    speedups = {}
    for size, n_alpaca in zip(pools, alpaca_n):
        pool_texts = corpus[:size]
        # (a) Alpaca's filter on the first few candidates, time-boxed. A fresh worker pool
        # per size, so that its CPU time can be read once its workers have exited.
        pool_tokens = [scorer._tokenizer.tokenize(t) for t in pool_texts]
        alpaca = []
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        workers = Pool(2)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for cand in candidates[:n_alpaca]:
            alpaca.append(alpaca_screen(workers, scorer, pool_tokens, cand))
            if time.perf_counter() - t0 > args.alpaca_budget_s:
                break
        alpaca_s = (time.perf_counter() - t0) / len(alpaca)
        parent_cpu = time.process_time() - cpu0
        workers.close()
        workers.join()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        children_cpu = (children.ru_utime - children_before.ru_utime) + (children.ru_stime - children_before.ru_stime)
        alpaca_cpu = (parent_cpu + children_cpu) / len(alpaca)
        del pool_tokens

        # (b) The index: same candidates (checked), then many more (timed).
        index = RougeLIndex(threshold=THRESHOLD)
        t0 = time.perf_counter()
        index.extend(pool_texts)
        extend_s = time.perf_counter() - t0
        for cand, (best, top10) in zip(candidates, alpaca):
            s = index.screen(cand, k=10)
            mismatches += s.exceeded != (best > THRESHOLD)
            mismatches += index.exceeds(cand) != (best > THRESHOLD)
            top1_mismatches += (s.top[0][1] if s.top else 0.0) != best
            top10_mismatches += [f for _, f in s.top] != top10
        timed = candidates[:index_n]
        cpu0, t0 = time.process_time(), time.perf_counter()
        screens = [index.screen(c, k=10) for c in timed]
        screen_s = (time.perf_counter() - t0) / len(timed)
        screen_cpu = (time.process_time() - cpu0) / len(timed)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for c in timed:
            index.exceeds(c)
        exceeds_s = (time.perf_counter() - t0) / len(timed)
        exceeds_cpu = (time.process_time() - cpu0) / len(timed)
        rejected = sum(s.exceeded for s in screens) / len(screens)
        speedups[size] = alpaca_s / screen_s
        rows.append((size, len(alpaca), alpaca_s, alpaca_cpu, extend_s, screen_s, screen_cpu, exceeds_s,
                     exceeds_cpu, rejected))
        del index

    # (c) Grow a pool one candidate at a time: the decision, then the insertion.
    stream = InstructionGenerator(args.seed + 1).corpus(build_n, near_duplicate_rate=0.1)
    builds = {}
    for label, k in (("exceeds", 0), ("screen k=10", 10)):
        index = RougeLIndex(threshold=THRESHOLD)
        kept = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i, cand in enumerate(stream, 1):
            kept += not index.screen(cand, k=k).exceeded
            index.add(cand)
            if i % 20_000 == 0:
                print(f"  build ({label}): {i:,} in {time.perf_counter() - t0:.1f} s", flush=True)
        builds[label] = (time.perf_counter() - t0, time.process_time() - cpu0, kept)
        del index
    del stream
    build_s = builds["exceeds"][0]

    # (d) Memory of a 1M index, in a fresh process.
    mem = measure_memory(memory_n, args.seed)
    index_mb = mem["peak_mb"] - mem["base_mb"]

    print()
    print("per candidate: wall-clock time, and CPU time (Alpaca: parent + both workers)")
    header = (f"{'pool':>8} | {'n':>3} | {'alpaca wall s':>13} | {'alpaca cpu s':>12} | {'extend s':>8} "
              f"| {'screen k=10 ms':>14} | {'cpu ms':>6} | {'exceeds ms':>10} | {'cpu ms':>6} "
              f"| {'speedup k=10':>12} | {'cpu':>7} | {'speedup exceeds':>15} | {'rejected':>8}")
    print(header)
    print("-" * len(header))
    for size, n, a_s, a_cpu, ext_s, scr_s, scr_cpu, exc_s, exc_cpu, rej in rows:
        print(f"{size:>8,} | {n:>3} | {a_s:>13.3f} | {a_cpu:>12.3f} | {ext_s:>8.2f} | {scr_s * 1e3:>14.3f} "
              f"| {scr_cpu * 1e3:>6.3f} | {exc_s * 1e3:>10.3f} | {exc_cpu * 1e3:>6.3f} | {a_s / scr_s:>11,.0f}x "
              f"| {a_cpu / scr_cpu:>6,.0f}x | {a_s / exc_s:>14,.0f}x | {rej:>8.1%}")
    print()
    print(f"decisions checked against Alpaca's: {sum(r[1] for r in rows)} candidates, screen + exceeds "
          f"-> {mismatches} decision mismatches, {top1_mismatches} top-1 score mismatches, "
          f"{top10_mismatches} top-10 score-list mismatches")
    for label, (wall, cpu, kept) in builds.items():
        print(f"build: {build_n:,} candidates decided ({label}) and added one by one in {wall:.1f} s "
              f"(CPU {cpu:.1f} s; {wall / build_n * 1e3:.3f} ms each; {kept:,} would have been kept)")
    print(f"memory: {mem['n']:,} instructions (vocabulary {mem['vocab']:,}): peak RSS +{index_mb:.0f} MB "
          f"over the interpreter (texts included; numpy arrays {mem['numpy_mb']:.0f} MB); "
          f"generated in {mem['gen_s']:.1f} s, indexed with extend() in {mem['extend_s']:.1f} s")
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s; machine load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    big = max(pools)
    label = "100k" if big == 100_000 else f"{big // 1000}k"
    print(f"RESULT speedup_{label}={speedups[big]:.0f} mismatches={mismatches} build_{build_n // 1000}k_s={build_s:.1f} "
          f"index_{memory_n // 1_000_000 if memory_n >= 1_000_000 else memory_n // 1000}{'m' if memory_n >= 1_000_000 else 'k'}_mb={index_mb:.0f}")


if __name__ == "__main__":
    main()
