"""What a run grew, in the spirit of the Self-Instruct paper's data analysis (section 3).

`build_report(run_dir)` reads the run directory into pandas tables:

  * counts per stage (requests, parse failures, candidates, filter drops, kept) and per
    drop reason, from stats.json (its figures, as the card shows them; the stage of each
    reason comes from rejected.jsonl);
  * each machine task's ROUGE-L F with its most similar pool instruction at the time it
    was accepted (the max of `meta.most_similar`; the paper's Figure 3);
  * instruction, input and output lengths in words;
  * the most common leading verbs. The paper parsed instructions with a constituency
    parser; here the "verb" is a heuristic: the instruction's first word, lower-cased,
    skipping "please". Imperatives make that the verb most of the time, but a question
    ("What is ...") yields "what".

`write_report` writes RUN_DIR/report.md with PNG plots in RUN_DIR/report/ (matplotlib,
Agg, imported only here). Both work on a run in progress: stats.json is rewritten every
round and a torn last line of pool.jsonl is skipped.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .export import machine_tasks, run_config, run_stats
from .rundir import RunDir

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOT_DIR = "report"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_FILLERS = {"please", "kindly"}


def leading_verb(instruction: str) -> str:
    """The first word of an instruction, lower-cased ("please" skipped); "" when there is none."""
    words = [w.lower() for w in _WORD.findall(instruction)[:3]]
    words = [w for w in words if w not in _FILLERS] or words
    return words[0] if words else ""


def reject_stages(path: Path) -> dict[str, str]:
    """reason -> the stage (parse, filter, generate, ...) rejected.jsonl records it under.
    Streams the file (it holds raw replies and can be large); a torn last line is skipped."""
    stages: dict[str, Counter] = {}
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written; the counts come from stats.json anyway
            stages.setdefault(str(rec.get("reason")), Counter())[str(rec.get("stage"))] += 1
    return {reason: c.most_common(1)[0][0] for reason, c in stages.items()}


@dataclass
class Report:
    run_dir: Path
    name: str
    target: int | None
    stats: dict[str, Any]
    funnel: Any  # DataFrame: step, count
    drops: Any  # DataFrame: stage, reason, count, share_of_drops
    tasks: Any  # DataFrame per machine task: id, instruction_words, instances, max_rouge, verb, is_classification
    instances: Any  # DataFrame per instance: task_id, input_words, output_words
    verbs: Any  # DataFrame: verb, tasks, share
    rouge_threshold: float | None
    plots: dict[str, Path] = field(default_factory=dict)
    plot_error: str = ""

    @property
    def pool_size(self) -> int:
        return len(self.tasks)

    @property
    def in_progress(self) -> bool:
        return self.target is not None and self.pool_size < self.target

    def lengths(self):
        """count / mean / median / p90 / max words of instructions, non-empty inputs and outputs."""
        import pandas as pd

        cols = {"instruction": self.tasks["instruction_words"],
                "input (non-empty)": self.instances.loc[self.instances["input_words"] > 0, "input_words"],
                "output": self.instances["output_words"]}
        rows = []
        for name, s in cols.items():
            s = s.astype(float)
            rows.append({"text": name, "count": int(s.count()),
                         "mean": round(s.mean(), 1) if len(s) else 0.0,
                         "median": s.median() if len(s) else 0.0,
                         "p90": s.quantile(0.9) if len(s) else 0.0,
                         "max": int(s.max()) if len(s) else 0})
        return pd.DataFrame(rows)


def build_report(run_dir: str | Path, top_verbs: int = 20) -> Report:
    import pandas as pd

    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    config = run_config(run_dir)
    stats = run_stats(run_dir)
    tasks = machine_tasks(run_dir)

    stage_of = reject_stages(rd.rejected)
    dropped: dict[str, int] = dict(stats.get("dropped") or {})
    total_dropped = sum(dropped.values())
    drops = pd.DataFrame(
        [{"stage": stage_of.get(r, "?"), "reason": r, "count": n,
          "share_of_drops": round(n / total_dropped, 4) if total_dropped else 0.0}
         for r, n in dropped.items()],
        columns=["stage", "reason", "count", "share_of_drops"])
    by_stage = drops.groupby("stage")["count"].sum().to_dict() if len(drops) else {}
    funnel = pd.DataFrame([
        ("requests answered", stats.get("requests", 0)),
        ("failed requests", stats.get("failed_requests", 0)),
        ("truncated replies", stats.get("truncated_replies", 0)),
        ("parse failures", by_stage.get("parse", 0)),
        ("candidates parsed", stats.get("candidates", 0)),
        ("dropped by filters", by_stage.get("filter", 0)),
        *((f"dropped at stage {st}" if st != "?" else "dropped (stage not in rejected.jsonl)", n)
          for st, n in by_stage.items() if st not in ("parse", "filter", "generate")),
        ("kept", stats.get("kept", 0)),
        ("machine tasks in pool.jsonl", len(tasks)),
    ], columns=["step", "count"])

    task_rows, inst_rows = [], []
    for t in tasks:
        similar = t.meta.get("most_similar") or {}
        task_rows.append({
            "id": t.id, "instruction_words": len(t.instruction.split()), "instances": len(t.instances),
            "max_rouge": max(similar.values()) if similar else float("nan"),
            "verb": leading_verb(t.instruction), "is_classification": t.is_classification})
        for inst in t.instances:
            inst_rows.append({"task_id": t.id, "input_words": len(inst.input.split()),
                              "output_words": len(inst.output.split())})
    task_df = pd.DataFrame(task_rows, columns=["id", "instruction_words", "instances", "max_rouge", "verb",
                                               "is_classification"])
    inst_df = pd.DataFrame(inst_rows, columns=["task_id", "input_words", "output_words"])
    counts = task_df.loc[task_df["verb"] != "", "verb"].value_counts().head(top_verbs)
    verbs = pd.DataFrame({"verb": counts.index, "tasks": counts.values,
                          "share": (counts.values / max(len(task_df), 1)).round(4)})
    target = (config.get("generation") or {}).get("target")
    return Report(run_dir=run_dir, name=str(config.get("name") or run_dir.name), target=target, stats=stats,
                  funnel=funnel, drops=drops, tasks=task_df, instances=inst_df, verbs=verbs,
                  rouge_threshold=(config.get("filters") or {}).get("rouge_threshold"))


# --------------------------------------------------------------------------- plots

def _figure(width: float = 6.4, height: float = 4.0):
    """A figure on the Agg canvas, without pyplot's global state."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _integer_counts(ax, axis: str = "y") -> None:
    from matplotlib.ticker import MaxNLocator

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)


def plot_rouge(report: Report, path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    scores = report.tasks["max_rouge"].dropna()
    if len(scores):
        ax.hist(scores, bins=[i / 20 for i in range(21)], color="#4c72b0", edgecolor="white")
    else:
        _no_data(ax, "similarity scores")
    if report.rouge_threshold is not None:
        ax.axvline(report.rouge_threshold, color="#c44e52", linestyle="--",
                   label=f"filter threshold {report.rouge_threshold}")
        ax.legend()
    ax.set_xlim(0, 1)
    _integer_counts(ax)
    ax.set_xlabel("ROUGE-L F with the most similar pool instruction")
    ax.set_ylabel("machine tasks")
    ax.set_title("Novelty of generated instructions")
    fig.savefig(path)
    return path


def plot_lengths(report: Report, path: Path) -> Path:
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    series = [("instruction", report.tasks["instruction_words"], "tasks"),
              ("input (non-empty)", report.instances.loc[report.instances["input_words"] > 0, "input_words"],
               "instances"),
              ("output", report.instances["output_words"], "instances")]
    for ax, (name, s, unit) in zip(axes, series):
        if len(s):
            lo, hi = int(s.min()), int(s.max())
            # One bar per word count while that stays readable, else 30 bins.
            bins = [b - 0.5 for b in range(lo, hi + 2)] if hi - lo <= 40 else 30
            ax.hist(s, bins=bins, color="#55a868", edgecolor="white")
        else:
            _no_data(ax, name + "s")
        _integer_counts(ax)
        ax.set_xlabel(f"{name} length (words)")
        ax.set_ylabel(unit)
    fig.suptitle("Lengths")
    fig.savefig(path)
    return path


def plot_verbs(report: Report, path: Path) -> Path:
    v = report.verbs
    fig = _figure(6.4, max(2.5, 0.28 * len(v) + 1))
    ax = fig.subplots()
    if len(v):
        ax.barh(list(v["verb"])[::-1], list(v["tasks"])[::-1], color="#8172b2")
    else:
        _no_data(ax, "instructions")
    _integer_counts(ax, "x")
    ax.set_xlabel("machine tasks")
    ax.set_title("Most common leading verbs (first word)")
    fig.savefig(path)
    return path


PLOTS = {"rouge_similarity": plot_rouge, "lengths": plot_lengths, "leading_verbs": plot_verbs}


# --------------------------------------------------------------------------- markdown

def _md_table(df) -> str:
    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("|", "\\|")


def render_markdown(r: Report) -> str:
    s = r.stats
    scores = r.tasks["max_rouge"].dropna()
    status = (f"in progress: {r.pool_size} of {r.target} machine tasks" if r.in_progress
              else f"{r.pool_size} machine tasks" + (f" (target {r.target})" if r.target is not None else ""))
    out = [
        f"# Run report: {r.name}\n",
        f"`{r.run_dir}`, {status}; {s.get('rounds', 0)} rounds, {s.get('elapsed_s', 0):.1f} s of generation. "
        f"Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; `selfinstruct stats {r.run_dir}` "
        "rewrites it.\n",
        "## Counts per stage\n",
        _md_table(r.funnel) + "\n",
        f"Keep rate: {100 * s.get('keep_rate', 0):.1f}% of parsed candidates.\n",
        "## Drops by reason\n",
        (_md_table(r.drops) if len(r.drops) else "Nothing was dropped.") + "\n",
        "## Similarity to the pool\n",
        "Each accepted task's ROUGE-L F with its most similar instruction in the pool when it was accepted "
        "(the Self-Instruct paper's Figure 3). Mass near the threshold means the generator mostly rephrases "
        "what it was shown.\n",
    ]
    if len(scores):
        out.append(f"Scored tasks: {len(scores)}; median {scores.median():.3f}, mean {scores.mean():.3f}, "
                   f"{100 * (scores > 0.5).mean():.1f}% above 0.5.\n")
    out.append(_image(r, "rouge_similarity"))
    out += ["## Lengths (words)\n", _md_table(r.lengths()) + "\n"]
    if len(r.instances):
        empty = (r.instances["input_words"] == 0).mean()
        out.append(f"{100 * empty:.1f}% of instances have no input. "
                   f"{len(r.instances)} instances in {len(r.tasks)} tasks.\n")
    classification = int((r.tasks["is_classification"] == True).sum())  # noqa: E712 (None is not False)
    if classification:
        out.append(f"{classification} classification tasks.\n")
    out.append(_image(r, "lengths"))
    out += ["## Leading verbs\n",
            "The first word of each instruction, lower-cased (\"please\" skipped): a heuristic stand-in for the "
            "paper's parser, right for imperatives, not for questions.\n",
            (_md_table(r.verbs) if len(r.verbs) else "No instructions yet.") + "\n",
            _image(r, "leading_verbs")]
    return "\n".join(out)


def _image(r: Report, name: str) -> str:
    if name in r.plots:
        return f"![{name}]({PLOT_DIR}/{r.plots[name].name})\n"
    return f"(plot not drawn: {r.plot_error})\n" if r.plot_error else ""


def write_report(report: Report, plots: bool = True) -> Path:
    """RUN_DIR/report.md, and RUN_DIR/report/*.png unless plots=False or matplotlib is missing."""
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            report.plot_error = "matplotlib is not installed; pip install 'selfinstruct[report]'"
            log.warning("report without plots: %s", report.plot_error)
        else:
            plot_dir = report.run_dir / PLOT_DIR
            plot_dir.mkdir(parents=True, exist_ok=True)
            for name, draw in PLOTS.items():
                report.plots[name] = draw(report, plot_dir / f"{name}.png")
    path = report.run_dir / REPORT_FILE
    path.write_text(render_markdown(report), encoding="utf-8")
    log.info("wrote %s", path)
    return path


def summary_lines(r: Report, top: int = 5) -> list[str]:
    """A few lines for the terminal."""
    s = r.stats
    lines = [
        f"run {r.run_dir}: " + (f"in progress, {r.pool_size} / {r.target} machine tasks" if r.in_progress
                                else f"{r.pool_size} machine tasks"),
        f"requests {s.get('requests', 0)} ({s.get('failed_requests', 0)} failed), candidates "
        f"{s.get('candidates', 0)}, kept {s.get('kept', 0)} ({100 * s.get('keep_rate', 0):.1f}%)",
    ]
    if len(r.drops):
        lines.append("dropped: " + ", ".join(f"{row.reason} {row.count}" for row in r.drops.head(top).itertuples()))
    scores = r.tasks["max_rouge"].dropna()
    if len(scores):
        lines.append(f"ROUGE-L to most similar pool instruction: median {scores.median():.2f}, "
                     f"{100 * (scores > 0.5).mean():.0f}% above 0.5")
    if len(r.tasks):
        med = r.lengths().set_index("text")["median"]
        lines.append("median words: " + ", ".join(f"{k} {med[k]:g}" for k in med.index))
    if len(r.verbs):
        lines.append("leading verbs: " + ", ".join(f"{row.verb} {row.tasks}" for row in r.verbs.head(top).itertuples()))
    return lines
