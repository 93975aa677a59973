"""The bootstrapping loop end to end on a scripted backend: the exact pool, rejects and
counters a known script must produce, prompt sampling, and resuming (after Ctrl-C, after a
torn write, to grow a finished run) with nothing lost or duplicated."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from selfinstruct.backends import ScriptedBackend
from selfinstruct.backends.base import GenerationParams, Prompt, Reply, Request
from selfinstruct.bootstrap import Bootstrapper
from selfinstruct.config import ConfigError, load_config
from selfinstruct.jsonl import JsonlAppender, JsonlFormatError, iter_records, read_jsonl, repair_tail
from selfinstruct.pool import TaskPool
from selfinstruct.records import Instance, Task, load_tasks
from selfinstruct.rundir import RunDir, RunLockedError
from selfinstruct.stats import RunStats

REPO = Path(__file__).resolve().parents[1]
SEEDS = str(REPO / "seed_tasks" / "seed_tasks.jsonl")
TARGET = 18  # the 18th task comes from a two-task reply: its second task is over the target

# --------------------------------------------------------------------------- a script with known outcomes
#
# Request r gets a reply made from random.Random(r) alone, so it is the same whenever and in
# whatever process r is asked. Kinds: "good" (one new task), "pair" (two new tasks),
# "blocked" (a keyword the filters drop), "dup" (request r-1's task with one word changed:
# ROUGE-L 10/11 > 0.7), "truncated" (cut off by the token limit: the parser drops it).

SYLLABLES = ["ba", "ko", "mi", "nu", "re", "sa", "to", "vi", "ze", "lu", "da", "fe", "go", "hi", "pu", "ro"]


def word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3))


def new_instruction(rng: random.Random) -> str:
    w = [word(rng) for _ in range(5)]
    return f"Explain how {w[0]} {w[1]} {w[2]} differs from {w[3]} {w[4]} in practice."


def kind(rid: int) -> str:
    if rid % 5 == 3:
        return "blocked"
    if rid % 7 == 4 and kind(rid - 1) in ("good", "pair"):
        return "dup"
    if rid % 11 == 6:
        return "truncated"
    return "pair" if rid % 4 == 1 else "good"


def script(rid: int) -> tuple[list[tuple[str, str, str]], str]:
    """The tasks in request `rid`'s reply, and its finish_reason."""
    rng = random.Random(rid)
    k = kind(rid)
    inp = "" if rid % 2 else f"{word(rng)} {word(rng)}"
    out = f"The answer is {word(rng)}."
    if k == "blocked":
        return [(f"Draw a {word(rng)} for the {word(rng)} team.", inp, out)], "stop"
    if k == "dup":
        prev = script(rid - 1)[0][0][0].split()
        prev[-3] = word(rng)
        return [(" ".join(prev), inp, out)], "stop"
    tasks = [(new_instruction(rng), inp, out)]
    if k == "pair":
        tasks.append((new_instruction(rng), "", f"Another answer, {word(rng)}."))
    return tasks, "length" if k == "truncated" else "stop"


def reply_text(rid: int) -> str:
    tasks, _ = script(rid)
    blocks = [f"Task {9 + i}\nInstruction: {ins}\nInput: {inp or '<noinput>'}\nOutput: {out}"
              for i, (ins, inp, out) in enumerate(tasks)]
    return "\n\n".join(blocks) + "\n"


def scripted_reply(req: Request) -> Reply:
    return Reply(reply_text(req.id), script(req.id)[1])


@dataclass
class Expected:
    pool: list[tuple[int, str, str, str]] = field(default_factory=list)  # (request id, instruction, input, output)
    rejects: list[tuple[int, str]] = field(default_factory=list)  # (request id, reason)
    requests: int = 0
    candidates: int = 0
    over_target: int = 0


def expected_run(target: int) -> Expected:
    """What the loop must produce, worked out from the script's design, not by running it."""
    e = Expected()
    rid = 0
    while len(e.pool) < target:
        tasks, finish = script(rid)
        e.requests += 1
        k = kind(rid)
        if k == "truncated":
            e.rejects.append((rid, "truncated"))
        else:
            for ins, inp, out in tasks:
                e.candidates += 1
                if len(e.pool) >= target:
                    e.over_target += 1
                elif k == "blocked":
                    e.rejects.append((rid, "blocked_keyword"))
                elif k == "dup":
                    e.rejects.append((rid, "rouge_similar"))
                else:
                    e.pool.append((rid, ins, inp, out))
        rid += 1
    return e


def make_cfg(tmp: Path, name: str, *overrides: str):
    return load_config(None, [f"output_dir={tmp}", f"name={name}", f"seed_tasks={SEEDS}",
                              "generation.num_prompt_tasks=5", "generation.requests_per_round=4",
                              f"generation.target={TARGET}", *overrides])


def run_loop(cfg, backend=None, on_progress=None) -> Bootstrapper:
    rd = RunDir(cfg.run_dir)
    rd.prepare(cfg)
    boot = Bootstrapper(cfg, backend or ScriptedBackend(scripted_reply), load_tasks(cfg.seed_tasks), rd,
                        on_progress=on_progress)
    boot.run()
    return boot


def pool_rows(run: Path) -> list[dict]:
    return list(read_jsonl(run / "pool.jsonl"))


# --------------------------------------------------------------------------- a full run

def test_script_design_has_every_outcome() -> None:
    e = expected_run(TARGET)
    reasons = {r for _, r in e.rejects}
    assert reasons == {"blocked_keyword", "rouge_similar", "truncated"}
    assert e.over_target == 1 and len(e.pool) == TARGET


def test_full_scripted_run_produces_the_exact_pool(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "full")
    progress: list[tuple[int, int]] = []
    boot = run_loop(cfg, on_progress=lambda s, target: progress.append((s.kept, target)))
    e = expected_run(TARGET)
    rows = pool_rows(cfg.run_dir)
    assert [(r["meta"]["request_id"], r["instruction"], r["instances"][0]["input"], r["instances"][0]["output"])
            for r in rows] == e.pool
    assert [r["id"] for r in rows] == [f"machine_task_{i}" for i in range(TARGET)]
    assert all(r["origin"] == "machine" and r["meta"]["generator"] == "scripted" for r in rows)
    # Every accepted task records the prompt it came from and its nearest pool neighbours.
    assert all(len(r["meta"]["in_context"]) == 5 for r in rows)
    assert all(0 < len(r["meta"]["most_similar"]) <= 10 for r in rows)

    rejects = list(read_jsonl(cfg.run_dir / "rejected.jsonl"))
    assert [(r["request_id"], r["reason"]) for r in rejects] == e.rejects
    assert all(r["raw"] for r in rejects)
    dup = next(r for r in rejects if r["reason"] == "rouge_similar")
    assert dup["detail"]["score"] == pytest.approx(10 / 11)
    assert dup["detail"]["most_similar"] == script(dup["request_id"] - 1)[0][0][0]

    stats = json.loads((cfg.run_dir / "stats.json").read_text(encoding="utf-8"))
    assert stats["requests"] == e.requests == stats["next_request_id"]
    assert stats["kept"] == TARGET and stats["candidates"] == e.candidates
    assert stats["extra"] == {"over_target": 1}
    assert stats["truncated_replies"] == sum(r == "truncated" for _, r in e.rejects)
    assert stats["dropped"] == {reason: sum(r == reason for _, r in e.rejects) for _, reason in e.rejects}
    assert stats["rounds"] == -(-e.requests // 4)  # one flush per 4 requests, the last one partial
    assert stats["completion_tokens"] > 0 and stats["prompt_tokens"] > 0
    assert boot.stats.kept == TARGET and boot.stop.reason is None
    assert progress[0] == (0, TARGET) and progress[-1] == (TARGET, TARGET)
    assert [k for k, _ in progress] == sorted(k for k, _ in progress)


def test_prompts_sample_seeds_then_machine_tasks(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "prompts", "generation.num_machine_tasks=2")
    backend = ScriptedBackend(scripted_reply)
    run_loop(cfg, backend)
    seeds = {t.id: t for t in load_tasks(SEEDS)}
    machine_ids_so_far: set[str] = set()
    for req in backend.prompts:
        examples = req.meta["examples"]
        assert len(examples) == len(set(examples)) == 5
        n_machine = sum(x.startswith("machine_task_") for x in examples)
        assert n_machine == min(2, len(machine_ids_so_far))
        assert {x for x in examples if x.startswith("machine_")} <= machine_ids_so_far
        text = req.prompt.as_text()
        for x in examples:
            if x in seeds:
                assert seeds[x].instruction in text
        machine_ids_so_far |= {r["id"] for r in pool_rows(cfg.run_dir) if r["meta"]["request_id"] == req.id}
    assert backend.prompts[0].prompt.messages is not None  # scripted backends take chat prompts


def test_same_seed_same_prompts_and_other_seed_other_prompts(tmp_path: Path) -> None:
    prompts = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        backend = ScriptedBackend(scripted_reply)
        run_loop(make_cfg(tmp_path, name, f"generation.seed={seed}", "generation.target=6"), backend)
        prompts[name] = [r.meta["examples"] for r in backend.prompts]
    assert prompts["a"] == prompts["b"]
    assert prompts["a"] != prompts["c"]


def test_failed_requests_are_counted_and_saved(tmp_path: Path) -> None:
    def flaky(req: Request) -> Reply:
        if req.id % 3 == 0:
            return Reply("", "error", error="HTTP 500 after 6 attempts")
        return scripted_reply(req)

    cfg = make_cfg(tmp_path, "flaky", "generation.target=5")
    boot = run_loop(cfg, ScriptedBackend(flaky))
    assert boot.pool.machine_count == 5
    failed = [r for r in read_jsonl(cfg.run_dir / "rejected.jsonl") if r["reason"] == "request_failed"]
    assert [r["request_id"] for r in failed] == list(range(0, boot.stats.requests, 3))
    assert failed[0]["detail"] == {"error": "HTTP 500 after 6 attempts"} and failed[0]["stage"] == "generate"
    assert boot.stats.failed_requests == len(failed)


def test_max_requests_stops_cleanly_and_the_run_continues_later(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "capped", "generation.max_requests=6")
    boot = run_loop(cfg)
    assert boot.stop.reason == "max_requests" and boot.stats.requests == 6
    assert [r["meta"]["request_id"] for r in pool_rows(cfg.run_dir)] == [
        rid for rid, *_ in expected_run(TARGET).pool if rid < 6]
    boot = run_loop(make_cfg(tmp_path, "capped"))  # max_requests is resume-safe
    assert [(r["meta"]["request_id"], r["instruction"]) for r in pool_rows(cfg.run_dir)] == [
        (rid, ins) for rid, ins, *_ in expected_run(TARGET).pool]
    assert boot.stats.requests == expected_run(TARGET).requests


# --------------------------------------------------------------------------- resuming

class Interrupt(ScriptedBackend):
    """Raises KeyboardInterrupt (what Ctrl-C does) when request `at` is reached."""

    def __init__(self, at: int):
        super().__init__(scripted_reply)
        self.at = at

    def imap(self, requests, params: GenerationParams):
        for req, reply in super().imap(requests, params):
            if req.id == self.at:
                raise KeyboardInterrupt
            yield req, reply


def comparable(run: Path) -> tuple[str, str, dict]:
    stats = json.loads((run / "stats.json").read_text(encoding="utf-8"))
    counters = {k: stats[k] for k in ("requests", "candidates", "kept", "dropped", "next_request_id",
                                      "truncated_replies", "extra", "prompt_tokens", "completion_tokens")}
    return ((run / "pool.jsonl").read_text(encoding="utf-8"), (run / "rejected.jsonl").read_text(encoding="utf-8"),
            counters)


@pytest.mark.parametrize("at", [1, 6, 9, 17])
def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path: Path, at: int) -> None:
    whole = make_cfg(tmp_path, "whole")
    run_loop(whole)
    cut = make_cfg(tmp_path, "cut")
    with pytest.raises(KeyboardInterrupt):
        run_loop(cut, Interrupt(at))
    # Everything handled before the interrupt was flushed on the way out.
    assert [r["meta"]["request_id"] for r in pool_rows(cut.run_dir)] == [
        rid for rid, *_ in expected_run(TARGET).pool if rid < at]
    assert json.loads((cut.run_dir / "stats.json").read_text(encoding="utf-8"))["next_request_id"] == at
    run_loop(cut)
    assert comparable(cut.run_dir) == comparable(whole.run_dir)


def test_raising_the_target_grows_a_finished_run(tmp_path: Path) -> None:
    # 12 ends on a reply boundary (no over-target candidate), so growing it to TARGET must
    # reproduce the uninterrupted run to TARGET exactly.
    assert expected_run(12).over_target == 0
    grown = make_cfg(tmp_path, "grown", "generation.target=12")
    run_loop(grown)
    assert len(pool_rows(grown.run_dir)) == 12
    boot = run_loop(make_cfg(tmp_path, "grown", f"generation.target={TARGET}"))
    assert boot.pool.machine_count == TARGET
    whole = make_cfg(tmp_path, "whole")
    run_loop(whole)
    assert comparable(grown.run_dir) == comparable(whole.run_dir)


def test_rerunning_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "done")
    run_loop(cfg)
    before = comparable(cfg.run_dir)
    backend = ScriptedBackend(scripted_reply)
    run_loop(cfg, backend)
    assert backend.calls == 0
    assert comparable(cfg.run_dir)[:2] == before[:2]


def test_torn_last_line_is_repaired_and_its_task_made_again(tmp_path: Path) -> None:
    # A kill during a round's write leaves whole lines of that round and a torn one after
    # the last flushed round, with stats.json still at the end of that round. Build that
    # state from a real run capped at 8 requests plus the next lines of the full run.
    whole = make_cfg(tmp_path, "whole")
    run_loop(whole)
    full_lines = (whole.run_dir / "pool.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    torn = make_cfg(tmp_path, "torn", "generation.max_requests=8")
    run_loop(torn)
    have = len(pool_rows(torn.run_dir))
    with (torn.run_dir / "pool.jsonl").open("a", encoding="utf-8") as f:
        f.write(full_lines[have])
        f.write(full_lines[have + 1][: len(full_lines[have + 1]) // 2])
    run_loop(make_cfg(tmp_path, "torn"))
    assert (torn.run_dir / "pool.jsonl").read_text(encoding="utf-8") == "".join(full_lines)


def test_changed_config_is_refused_unless_forced(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "strict", "generation.target=3")
    run_loop(cfg)
    changed = make_cfg(tmp_path, "strict", "generation.target=3", "sampling.temperature=1.0", "generation.seed=7")
    with pytest.raises(ConfigError) as e:
        RunDir(changed.run_dir).prepare(changed)
    msg = str(e.value)
    assert "generation.seed: 42 -> 7" in msg and "sampling.temperature: 0.7 -> 1.0" in msg and "--force" in msg
    assert RunDir(changed.run_dir).prepare(changed, force=True) is True
    # Forced once, the new settings are the run's settings from then on.
    assert RunDir(changed.run_dir).prepare(changed) is True
    # Resume-safe fields never block.
    assert RunDir(cfg.run_dir).prepare(make_cfg(tmp_path, "strict", "generation.target=9", "generation.seed=7",
                                               "sampling.temperature=1.0", "backend.batch_size=2")) is True


def test_a_run_directory_takes_one_writer(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "locked")
    held = rd.lock()
    try:
        with pytest.raises(RunLockedError, match="in use by another selfinstruct process"):
            RunDir(tmp_path / "locked").lock()
    finally:
        held.close()
    RunDir(tmp_path / "locked").lock().close()


# --------------------------------------------------------------------------- the files under it

def test_appended_records_reach_disk_only_at_flush(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    out = JsonlAppender(path)
    for i in range(50):  # ~50 KB: more than a file object's own buffer
        out.write({"i": i, "pad": "x" * 1000})
    assert path.read_bytes() == b""
    out.flush()
    assert [r["i"] for r in read_jsonl(path)] == list(range(50))
    out.write({"i": 50})
    out.close()
    assert [r["i"] for r in read_jsonl(path)] == list(range(51))


@pytest.mark.parametrize("content, kept", [
    (b'{"a": 1}\n{"a": 2}\n', b'{"a": 1}\n{"a": 2}\n'),
    (b'{"a": 1}\n{"a": 2', b'{"a": 1}\n'),
    (b'{"a": 1}\n{"a": 2}\n{"a"', b'{"a": 1}\n{"a": 2}\n'),
    (b'{"a": 1}\n{"a": 2\n', b'{"a": 1}\n'),  # newline written, record cut
    (b'{"a": 1', b""),
    (b"", b""),
])
def test_repair_tail(tmp_path: Path, content: bytes, kept: bytes) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    assert repair_tail(path) == len(content) - len(kept)
    assert path.read_bytes() == kept


def test_corrupt_line_inside_the_pool_is_named(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(JsonlFormatError) as e:
        list(read_jsonl(path))
    assert str(e.value) == (f"{path} line 2: not valid JSON (Expecting value at column 1); each line must be one "
                            "JSON object; fix or delete the line, or move the file aside, then resume")


def test_iter_records_skips_a_torn_last_line_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a"', encoding="utf-8")  # a writer is part way into line 4
    assert list(iter_records(path, torn_tail="skip")) == [(1, {"a": 1}), (3, {"a": 2})]
    with pytest.raises(JsonlFormatError) as e:
        list(iter_records(path))
    assert str(e.value) == (f"{path} line 4: not valid JSON (Expecting ':' delimiter at column 5); "
                            "each line must be one JSON object")
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n', encoding="utf-8")  # cut, then written past: corrupt
    with pytest.raises(RuntimeError, match=r" line 2: not valid JSON \(Expecting ',' delimiter at column 8\); "
                                           r"each line must be one JSON object; see the log$"):
        list(iter_records(path, torn_tail="skip", hint="; see the log", error=RuntimeError))


def test_pool_reloads_machine_tasks_into_the_index(tmp_path: Path) -> None:
    seeds = [Task("s0", "Name a fruit that is red.", [Instance("", "Apple")])]
    path = tmp_path / "pool.jsonl"
    pool = TaskPool(seeds, path)
    pool.add(Task(pool.next_id(), "Explain how tides work on Earth.", [Instance("", "The moon.")], origin="machine"))
    pool.close()
    again = TaskPool(seeds, path)
    assert [t.id for t in again.machine] == ["machine_task_0"] and again.next_id() == "machine_task_1"
    assert len(again) == 2 and again.index.exceeds("Explain how tides work on Mars.")
    again.close()
    with pytest.raises(ValueError, match="seed task pool is empty"):
        TaskPool([])


def test_torn_line_takes_its_requests_other_tasks_with_it(tmp_path: Path) -> None:
    def line(tid: int, rid: int) -> str:
        return json.dumps(Task(f"machine_task_{tid}", f"Instruction {tid} is here.", [Instance("", "o")],
                               origin="machine", meta={"request_id": rid}).to_dict()) + "\n"

    seeds = [Task("s0", "Name a fruit that is red.", [Instance("", "Apple")])]
    path = tmp_path / "pool.jsonl"
    whole = line(0, 0) + line(1, 3) + line(2, 3)
    path.write_text(whole + line(3, 3)[:40], encoding="utf-8")
    pool = TaskPool(seeds, path)
    pool.close()
    # Request 3's second task was torn: its first goes too, and request 3 is made again.
    assert [t.id for t in pool.machine] == ["machine_task_0"]
    assert path.read_text(encoding="utf-8") == line(0, 0)
    # Without a torn line nothing is cut, even when the last request looks incomplete.
    path.write_text(whole, encoding="utf-8")
    pool = TaskPool(seeds, path)
    pool.close()
    assert len(pool.machine) == 3 and path.read_text(encoding="utf-8") == whole


def test_stats_round_trip(tmp_path: Path) -> None:
    s = RunStats(requests=3, candidates=4, kept=2, elapsed_s=2.0, completion_tokens=10)
    s.dropped["too_short"] += 2
    s.save(tmp_path / "stats.json")
    d = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))
    assert d["keep_rate"] == 0.5 and d["total_dropped"] == 2 and d["tokens_per_s"] == 5.0
    assert RunStats.load(tmp_path / "stats.json").dropped == {"too_short": 2}
    assert RunStats.load(tmp_path / "missing.json") == RunStats()


# --------------------------------------------------------------------------- the scripted backend itself

def test_scripted_backend_replays_a_file_keyed_on_request_id(tmp_path: Path) -> None:
    path = tmp_path / "replies.jsonl"
    path.write_text("\n".join(json.dumps({"request_id": i, "text": f"reply {i}"}) for i in (0, 1, 2)) + "\n",
                    encoding="utf-8")
    backend = ScriptedBackend(path)
    reqs = [Request(i, Prompt(text="p")) for i in (2, 0, 5)]
    got = [(req.id, r.text, r.finish_reason) for req, r in backend.imap(reqs, GenerationParams())]
    assert got == [(2, "reply 2", "stop"), (0, "reply 0", "stop"), (5, "", "error")]
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "a"}\n{"text": "b", "finish_reason": "length"}\n', encoding="utf-8")
    got = [(r.text, r.finish_reason) for _, r in ScriptedBackend(plain).imap(
        [Request(i, Prompt(text="p")) for i in (7, 7, 7)], GenerationParams())]
    assert got == [("a", "stop"), ("b", "length"), ("a", "stop")]  # no ids: cycled in call order
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a"}\n{"text": "b", "request_id": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="either every record names its request_id or none does"):
        ScriptedBackend(mixed)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"txt": "b"}\n', encoding="utf-8")
    with pytest.raises(JsonlFormatError, match=rf"^{bad} line 2: not a reply record \{{text, finish_reason"):
        ScriptedBackend(bad)
    one_object = "; each line must be one JSON object"
    for line, error in [('{"text": "b"', "not valid JSON (Expecting ',' delimiter at column 13)" + one_object),
                        ('["b"]', "expected a JSON object, got list" + one_object),
                        ('{"text": "b", "request_id": "two"}', "not a reply record {text, finish_reason, request_id?} "
                                                               "(invalid literal for int() with base 10: 'two')")]:
        bad.write_text('{"text": "a"}\n\n' + line + "\n", encoding="utf-8")  # the blank line still counts
        with pytest.raises(JsonlFormatError) as e:
            ScriptedBackend(bad)
        assert str(e.value) == f"{bad} line 3: {error}"


class Killed(BaseException):
    """Stands in for kill -9 at one point of a round's flush (not an Exception: nothing
    may catch it)."""


def kill_at(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, call: int) -> None:
    """Die at the `call`-th call of cls.name; from then on nothing reaches the disk (the
    `finally` blocks still run, but their writes do nothing, as after a real kill)."""
    state = {"dead": False, "calls": 0}

    def guard(c: type, n: str, trigger: bool) -> None:
        real = getattr(c, n)

        def wrapper(self, *args, **kwargs):
            if state["dead"]:
                return None
            if trigger:
                state["calls"] += 1
                if state["calls"] == call:
                    state["dead"] = True
                    raise Killed
            return real(self, *args, **kwargs)

        monkeypatch.setattr(c, n, wrapper)

    for c, n in ((TaskPool, "flush"), (TaskPool, "close"), (JsonlAppender, "flush"), (JsonlAppender, "close"),
                 (RunStats, "save")):
        guard(c, n, trigger=(c, n) == (cls, name))


@pytest.mark.parametrize("cls, name", [(TaskPool, "flush"), (RunStats, "save")],
                         ids=["after-the-rejects", "after-the-pool"])
def test_kill_inside_a_round_flush_then_resume_keeps_each_reject_once(tmp_path: Path, monkeypatch, cls, name) -> None:
    # Rejects are flushed before the pool and the stats. A kill after them leaves reject
    # lines of requests the resumed run issues again; they must not end up twice, and the
    # drop counters must match the file.
    whole = make_cfg(tmp_path, "whole")
    run_loop(whole)
    cut = make_cfg(tmp_path, "cut")
    kill_at(monkeypatch, cls, name, call=3)
    with pytest.raises(Killed):
        run_loop(cut)
    monkeypatch.undo()
    killed_rejects = (cut.run_dir / "rejected.jsonl").read_text(encoding="utf-8")
    assert killed_rejects  # the third round's rejects did reach the disk
    run_loop(cut)
    pool, rejects, counters = comparable(cut.run_dir)
    want_pool, want_rejects, want_counters = comparable(whole.run_dir)
    assert (pool, rejects, counters["dropped"]) == (want_pool, want_rejects, want_counters["dropped"])
    if name == "flush":  # the stats of the killed round never got out: it is replayed whole
        assert counters == want_counters


def test_invalid_utf8_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(JsonlFormatError, match=r"tasks.jsonl line 2: not valid UTF-8 \(byte 11 of the line\); "
                                                r"save the file as UTF-8"):
        list(iter_records(path))
