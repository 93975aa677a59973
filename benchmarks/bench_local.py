"""The bundled model on the local backend: load times and generation speed.

Prints, in this order:
  * the first load, with an empty model cache (GGUF de-quantised and cached), in a fresh process;
  * the cached load, twice, each in a fresh process, with the import of torch and transformers
    (including the modules transformers imports lazily on first use) timed separately;
  * generated tokens/s of `TransformersBackend.generate` at batch sizes 1 and 8, on one thread
    and on torch's default thread count, for a short fixed prompt repeated (decoding dominates:
    the issue's measure). Every sequence generates exactly --new-tokens tokens (min_new_tokens =
    max_new_tokens), sampling as a run does;
  * the same on one thread for the prompts a run sends (five seed tasks in the plain format,
    ~400-650 tokens, left-padded in a batch), where the prompt's forward pass counts too.

Last line: RESULT cached_load_s=<best cached load> tok_s_b1=<short prompt, one thread> tok_s_b8=<same>
Targets (issue 2): cached load <= 2 s; batch 8 at least 3x batch 1.

    .venv/bin/python benchmarks/bench_local.py [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_load() -> None:
    """Runs in a fresh process: time the imports, then the backend's load."""
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers

    # transformers imports its model code lazily on first use; touch what loading needs so
    # that this cost is counted as import time, not load time.
    transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.LlamaForCausalLM  # noqa: B018
    from selfinstruct.backends.transformers_local import TransformersBackend

    import_s = time.perf_counter() - t0
    cpu0 = time.process_time()
    backend = TransformersBackend("smollm2", batch_size=8)
    print("CHILD " + json.dumps({"import_s": import_s, "load_s": backend.load_s,
                                 "load_cpu_s": time.process_time() - cpu0}), flush=True)


def load_in_fresh_process(cache: Path) -> dict:
    env = {**os.environ, "SELFINSTRUCT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child-load"], env=env, capture_output=True, text=True,
                         timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("CHILD ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"load child failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("CHILD "):])


SHORT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle.\n\n"


def run_prompts(n: int):
    from selfinstruct.prompts import AlpacaPromptBuilder, sample_tasks
    from selfinstruct.records import load_tasks

    seeds = load_tasks(REPO / "seed_tasks" / "seed_tasks.jsonl")
    builder = AlpacaPromptBuilder(style="plain")
    prompts = []
    for i in range(n):
        rng = random.Random(f"bench:{i}")
        prompts.append(builder.build(sample_tasks(seeds, [], rng, num_tasks=5, num_machine=0), rng))
    return prompts


def tokens_per_s(backend, prompts, new_tokens: int, repeats: int) -> tuple[float, list[float]]:
    from selfinstruct.backends.base import GenerationParams

    params = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              seed=0)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        replies = backend.generate(prompts, params, seed=0)
        dt = time.perf_counter() - t0
        n = sum(r.completion_tokens for r in replies)
        assert n == new_tokens * len(prompts), f"expected {new_tokens} tokens per sequence, got {n} in all"
        rates.append(n / dt)
    return max(rates), rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens each sequence generates")
    ap.add_argument("--repeats", type=int, default=2, help="timed generations per setting (the best is kept)")
    ap.add_argument("--skip-first-load", action="store_true",
                    help="skip the de-quantising load (it takes ~20 s or more)")
    ap.add_argument("--child-load", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_load:
        child_load()
        return

    # Other processes on the machine change these figures a lot, and so does OpenMP's wait
    # policy (measured on a loaded 2-core machine: 2 threads ran 5-8x faster with PASSIVE).
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        cache = Path(tmp)
        if args.skip_first_load:
            cache = Path(os.environ.get("SELFINSTRUCT_CACHE", Path.home() / ".cache" / "selfinstruct"))
        else:
            first = load_in_fresh_process(cache)
            print(f"first load (empty cache, de-quantising): {first['load_s']:.2f} s "
                  f"(imports {first['import_s']:.2f} s before it)")
        cached = [load_in_fresh_process(cache) for _ in range(2)]
        for i, c in enumerate(cached, 1):
            print(f"cached load #{i} (fresh process): {c['load_s']:.2f} s wall, {c['load_cpu_s']:.2f} s CPU; "
                  f"imports {c['import_s']:.2f} s")
        cached_load_s = min(c["load_s"] for c in cached)

        os.environ["SELFINSTRUCT_CACHE"] = str(cache)
        import torch

        from selfinstruct.backends.base import Prompt
        from selfinstruct.backends.transformers_local import TransformersBackend

        default_threads = torch.get_num_threads()
        backend = TransformersBackend("smollm2", batch_size=8)
        short = [Prompt(text=SHORT_PROMPT)] * 8
        realistic = run_prompts(8)
        n_short = len(backend.tokenizer(SHORT_PROMPT)["input_ids"])
        lengths = [len(backend.tokenizer(backend.render(p))["input_ids"]) for p in realistic]
        print(f"{args.new_tokens} new tokens per sequence; attention {backend.model.config._attn_implementation}")
        results: dict[tuple[str, int, int], float] = {}

        def measure(label: str, prompts: list, threads: int) -> None:
            torch.set_num_threads(threads)
            tokens_per_s(backend, prompts[:1], 4, 1)  # warm-up
            for bs in (1, 8):
                best, rates = tokens_per_s(backend, prompts[:bs], args.new_tokens, args.repeats)
                results[label, threads, bs] = best
                print(f"  {label} threads={threads} batch={bs}: {best:.1f} tok/s "
                      f"(runs: {', '.join(f'{r:.1f}' for r in rates)})")
            print(f"  {label} threads={threads}: batch 8 / batch 1 = "
                  f"{results[label, threads, 8] / results[label, threads, 1]:.2f}x")

        print(f"short prompt ({n_short} tokens):")
        for threads in sorted({1, default_threads}):
            measure("short", short, threads)
        print(f"run prompts ({min(lengths)}-{max(lengths)} tokens, prompt pass included):")
        measure("run", realistic, 1)
        torch.set_num_threads(default_threads)

    b1, b8 = results["short", 1, 1], results["short", 1, 8]
    print(f"targets: cached load <= 2 s: {'met' if cached_load_s <= 2 else 'NOT met'}; "
          f"batch 8 >= 3x batch 1 (one thread): {'met' if b8 >= 3 * b1 else 'NOT met'}")
    print(f"RESULT cached_load_s={cached_load_s:.2f} tok_s_b1={b1:.1f} tok_s_b8={b8:.1f}")


if __name__ == "__main__":
    main()
