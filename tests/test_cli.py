"""`selfinstruct run` through the CLI on a scripted backend: the run directory it writes,
the same command resuming, and user errors as one line with exit status 2."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import selfinstruct.backends
from selfinstruct.backends import ScriptedBackend
from selfinstruct.backends.base import Reply, Request
from selfinstruct.cli import main
from selfinstruct.rundir import RunDir
from test_loop import expected_run, reply_text, script  # the scripted replies and their designed outcomes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    # In a test process logging is already configured; let INFO through to run.log too.
    caplog.set_level(logging.INFO)


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    replies = tmp_path / "replies.jsonl"
    with replies.open("w", encoding="utf-8") as f:
        for rid in range(100):
            f.write(json.dumps({"request_id": rid, "text": reply_text(rid), "finish_reason": script(rid)[1]}) + "\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "outputs"),
        "seed_tasks": [str(REPO / "seed_tasks" / "seed_tasks.jsonl")],
        "generation": {"target": 7, "num_prompt_tasks": 4, "requests_per_round": 2},
        "backend": {"kind": "scripted", "replies": str(replies)},
    }), encoding="utf-8")
    return path


def pool_instructions(run: Path) -> list[str]:
    return [json.loads(line)["instruction"] for line in (run / "pool.jsonl").read_text(encoding="utf-8").splitlines()]


def expected_instructions(target: int) -> list[str]:
    return [ins for _, ins, _, _ in expected_run(target).pool]


def test_run_writes_the_run_directory(pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(pipeline)]) == 0
    run = pipeline.parent / "outputs" / "tiny"  # the name defaults to the file's stem
    out = capsys.readouterr().out
    assert "machine tasks in pool       7 / 7" in out
    assert f"run directory: {run}" in out and "exported:" in out
    assert pool_instructions(run) == expected_instructions(7)
    config = (run / "config.yaml").read_text(encoding="utf-8")
    assert config.startswith("# resolved config; fingerprint ")
    assert yaml.safe_load(config)["generation"]["target"] == 7
    stats = json.loads((run / "stats.json").read_text(encoding="utf-8"))
    assert stats["kept"] == 7 and stats["requests"] == expected_run(7).requests
    assert [json.loads(x)["reason"] for x in (run / "rejected.jsonl").read_text(encoding="utf-8").splitlines()] == [
        reason for _, reason in expected_run(7).rejects]
    assert f"starting {run} with 210 seed tasks" in (run / "run.log").read_text(encoding="utf-8")
    exported = [json.loads(x) for x in (run / "export" / "alpaca.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["instruction"] for r in exported) == sorted(expected_instructions(7))


def test_same_command_resumes_and_a_higher_target_grows_the_run(pipeline: Path, capsys) -> None:
    # 7 ends on a reply boundary, so growing to 12 equals a run made for 12 at once.
    assert expected_run(7).over_target == 0
    run = pipeline.parent / "outputs" / "tiny"
    assert main(["run", str(pipeline)]) == 0
    assert main(["run", str(pipeline)]) == 0
    assert pool_instructions(run) == expected_instructions(7)
    log = (run / "run.log").read_text(encoding="utf-8")
    assert "resuming" in log and "resumed 7 machine tasks" in log
    assert main(["run", str(pipeline), "--set", "generation.target=12"]) == 0
    assert pool_instructions(run) == expected_instructions(12)
    assert "machine tasks in pool       12 / 12" in capsys.readouterr().out


def test_changed_config_is_refused_then_forced(pipeline: Path, capsys) -> None:
    assert main(["run", str(pipeline)]) == 0
    capsys.readouterr()
    assert main(["run", str(pipeline), "--set", "sampling.temperature=1.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfinstruct: error: ") and "was started with a different config" in err
    assert "sampling.temperature: 0.7 -> 1.0" in err and "--force" in err and "Traceback" not in err
    assert main(["run", str(pipeline), "--set", "sampling.temperature=1.0", "--force"]) == 0


def test_unknown_key_is_one_line_naming_it(pipeline: Path, capsys) -> None:
    data = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
    data["generation"]["targte"] = 5
    pipeline.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["run", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfinstruct: error: unknown key generation.targte; valid keys under generation:")
    assert err.count("\n") == 1
    assert not (pipeline.parent / "outputs").exists()  # refused before anything was written


@pytest.mark.parametrize("args, message", [
    (["--set", "generation.target=zero"], "generation.target: expected an integer, got 'zero'"),
    (["--set", "backend.kind=gpt"], "backend.kind: 'gpt' is not one of"),
    (["--set", "seed_tasks=/nonexistent/seeds.jsonl"], "task file not found: /nonexistent/seeds.jsonl"),
    (["--set", "backend.replies=/nonexistent/replies.jsonl"], "/nonexistent/replies.jsonl"),
])
def test_user_errors_exit_2_with_one_line(pipeline: Path, capsys, args: list[str], message: str) -> None:
    assert main(["run", str(pipeline), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfinstruct: error: ") and message in err and "Traceback" not in err


def test_missing_pipeline_file(tmp_path: Path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"selfinstruct: error: pipeline file not found: {tmp_path / 'nope.yaml'}\n"


def test_malformed_seed_file_names_file_and_line(pipeline: Path, tmp_path: Path, capsys) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a fruit.", "output": "Apple"}\n{"instruction": \n', encoding="utf-8")
    assert main(["run", str(pipeline), "--set", f"seed_tasks={seeds}"]) == 2
    assert capsys.readouterr().err.endswith(
        f"selfinstruct: error: {seeds} line 2: not valid JSON (Expecting value at column 17); "
        "each line must be one JSON object\n")


def test_malformed_replies_file_is_one_line_not_a_traceback(pipeline: Path, capsys) -> None:
    replies = pipeline.parent / "replies.jsonl"
    replies.write_text('{"request_id": 0, "text": "a"}\n{"request_id": 1, "text": "b"\n', encoding="utf-8")
    assert main(["run", str(pipeline)]) == 2
    assert capsys.readouterr().err.endswith(
        f"selfinstruct: error: {replies} line 2: not valid JSON (Expecting ',' delimiter at column 30); "
        "each line must be one JSON object\n")


def test_a_second_writer_is_refused(pipeline: Path, capsys) -> None:
    held = RunDir(pipeline.parent / "outputs" / "tiny").lock()
    try:
        assert main(["run", str(pipeline)]) == 2
    finally:
        held.close()
    assert "is in use by another selfinstruct process" in capsys.readouterr().err


def test_max_requests_stops_early_and_skips_the_export(pipeline: Path, capsys) -> None:
    assert main(["run", str(pipeline), "--set", "generation.max_requests=3"]) == 0
    out = capsys.readouterr().out
    assert "stopped early: max_requests; run the same command to continue" in out
    run = pipeline.parent / "outputs" / "tiny"
    assert not (run / "export").exists()
    assert pool_instructions(run) == [ins for rid, ins, _, _ in expected_run(7).pool if rid < 3]
    assert main(["run", str(pipeline)]) == 0
    assert pool_instructions(run) == expected_instructions(7)


def test_ctrl_c_keeps_what_was_accepted(pipeline: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted_at_3(req: Request) -> Reply:
        if req.id == 3:
            raise KeyboardInterrupt
        return Reply(reply_text(req.id), script(req.id)[1])

    real = selfinstruct.backends.make_backend
    monkeypatch.setattr(selfinstruct.backends, "make_backend", lambda cfg: ScriptedBackend(interrupted_at_3))
    assert main(["run", str(pipeline)]) == 130
    assert "interrupted; everything accepted so far is saved" in capsys.readouterr().err
    run = pipeline.parent / "outputs" / "tiny"
    assert pool_instructions(run) == [ins for rid, ins, _, _ in expected_run(7).pool if rid < 3]
    monkeypatch.setattr(selfinstruct.backends, "make_backend", real)
    assert main(["run", str(pipeline)]) == 0
    assert pool_instructions(run) == expected_instructions(7)


def test_runs_in_one_process_keep_their_own_logs(pipeline: Path) -> None:
    assert main(["run", str(pipeline), "--set", "name=first"]) == 0
    assert main(["run", str(pipeline), "--set", "name=second"]) == 0
    first = (pipeline.parent / "outputs" / "first" / "run.log").read_text(encoding="utf-8")
    assert "outputs/first" in first and "outputs/second" not in first


def test_run_log_gets_info_where_logging_was_configured_before(pipeline: Path) -> None:
    # As in a notebook or a host program: the root logger has a handler and level WARNING,
    # so logging.basicConfig in the CLI does nothing.
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    assert root.handlers
    assert main(["run", str(pipeline)]) == 0
    log = (pipeline.parent / "outputs" / "tiny" / "run.log").read_text(encoding="utf-8")
    assert " INFO selfinstruct.cli.run_cmd: starting " in log


def test_export_subcommand_writes_alpaca_records(pipeline: Path, tmp_path: Path, capsys) -> None:
    assert main(["run", str(pipeline)]) == 0
    out = tmp_path / "alpaca.jsonl"
    assert main(["export", str(pipeline.parent / "outputs" / "tiny"), "-o", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["instruction"] for r in rows) == sorted(expected_instructions(7))
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)


def test_console_script_lists_the_subcommands() -> None:
    exe = Path(sys.executable).parent / "selfinstruct"
    if not exe.exists():
        pytest.skip("the selfinstruct console script is not installed next to this python")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "run" in out.stdout and "export" in out.stdout
    out = subprocess.run([str(exe), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert "--set KEY=VALUE" in out.stdout and "--force" in out.stdout
