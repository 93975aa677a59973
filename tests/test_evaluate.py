"""Held-out evaluation: scores must be rouge-score's, the table must reach disk, adapters must load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfinstruct.evaluate import (BASE_MODEL_STOPS, Candidate, EvalError, eval_items, load_candidate,
                                   markdown_table, per_task_means, rouge_l_scores, score_candidate, cut_answer)
from selfinstruct.records import Instance, Task, write_jsonl


def test_scores_equal_rouge_score_on_hand_made_predictions():
    from rouge_score import rouge_scorer

    refs = ["the cat sat on the mat", "team sport", "below", "A quick brown fox", "herbivore"]
    preds = ["the cat sat", "It is a team sport.", "above", "a quick brown fox!", ""]
    got = rouge_l_scores(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert got == [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    # and by hand: LCS 3 of 3 predicted / 6 reference tokens -> F = 2*1*0.5/1.5
    assert got[0] == pytest.approx(2 / 3)
    assert got[1] == pytest.approx(2 * (2 / 5) * 1 / (2 / 5 + 1))
    assert got[2] == 0.0
    assert got[3] == 1.0  # rouge-score lowercases and drops punctuation
    assert got[4] == 0.0


def test_task_score_is_the_mean_of_its_instances_and_the_model_score_the_mean_over_tasks():
    tasks = [Task("t1", "Name the colour.", [Instance("sky", "blue"), Instance("grass", "green")]),
             Task("t2", "Say yes.", [Instance("", "yes")])]
    items = eval_items(tasks)
    assert [(i.task_id, i.input, i.reference) for i in items] == [("t1", "sky", "blue"), ("t1", "grass", "green"),
                                                                   ("t2", "", "yes")]
    assert per_task_means(items, [1.0, 0.0, 0.5]) == {"t1": 0.5, "t2": 0.5}
    res = score_candidate(Candidate("x", "m"), items, ["blue", "red", "yes"], "alpaca")
    assert res.per_task == {"t1": 0.5, "t2": 1.0}
    assert res.mean_rouge_l == 0.75
    assert [p["rouge_l"] for p in res.predictions] == [1.0, 0.0, 1.0]
    with pytest.raises(EvalError, match="2 predictions for 3 references"):
        rouge_l_scores(["a", "b"], ["a", "b", "c"])


def test_base_model_answers_end_at_a_blank_line_or_a_new_section():
    assert cut_answer("\n\n team sport\n\nInstruction: next", BASE_MODEL_STOPS) == "team sport"
    assert cut_answer("below ### Instruction:", BASE_MODEL_STOPS) == "below"
    assert cut_answer("line one\nline two", BASE_MODEL_STOPS) == "line one\nline two"
    assert cut_answer("  answer\n\nmore  ", ()) == "answer\n\nmore"


@pytest.mark.parametrize("spec, expected", [
    ("base=smollm2", Candidate("base", "smollm2", None)),
    ("tuned=smollm2:outputs/default/adapter", Candidate("tuned", "smollm2", "outputs/default/adapter")),
    ("tuned = m.gguf:out/adapter", Candidate("tuned", "m.gguf", "out/adapter")),
    (r"w=C:\models\m:D:\adapters\a", Candidate("w", r"C:\models\m", r"D:\adapters\a")),
    ("w=C:/models/m:d:/adapters/a", Candidate("w", "C:/models/m", "d:/adapters/a")),
    (r"w=C:\models\m", Candidate("w", r"C:\models\m", None)),
    (r"w=HuggingFaceTB/SmolLM2-135M: C:\adapters\a", Candidate("w", "HuggingFaceTB/SmolLM2-135M", r"C:\adapters\a")),
    ("w=./m:/abs/adapter", Candidate("w", "./m", "/abs/adapter")),
    ("w=m:/abs/adapter", Candidate("w", "m:/abs/adapter", None)),  # a lone letter before ":/" is a drive
    ("lr=1e-4=m.gguf:out/a", Candidate("lr", "1e-4=m.gguf", "out/a")),  # the name ends at the first '='
])
def test_candidate_spec_splits_at_the_colon_that_is_not_a_drive_letter(spec: str, expected: Candidate):
    assert Candidate.parse(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("smollm2", "candidate 'smollm2': expected NAME=MODEL or NAME=MODEL:ADAPTER_DIR, "
                "e.g. base=smollm2 or tuned=smollm2:outputs/run/adapter"),
    ("=smollm2", "candidate '=smollm2': the name before '=' is empty; expected NAME=MODEL"),
    ("  =smollm2:out/a", "candidate '  =smollm2:out/a': the name before '=' is empty; expected NAME=MODEL"),
    ("base=", "candidate 'base=': the model after '=' is empty; expected NAME=MODEL"),
    ("tuned=:out/adapter", "candidate 'tuned=:out/adapter': the model after '=' is empty; expected NAME=MODEL"),
    ("tuned=smollm2: ", "candidate 'tuned=smollm2: ': nothing after ':' where the adapter directory goes; "
                        "expected NAME=MODEL"),
    ("t=/runs/12:00/m:out/a", "candidate 't=/runs/12:00/m:out/a': more than one ':' could end the model path; "
                              "for a path with ':' in it give that candidate with --model, --adapter and --name"),
])
def test_candidate_spec_errors_say_what_is_wrong(spec: str, message: str):
    with pytest.raises(EvalError) as e:
        Candidate.parse(spec)
    assert str(e.value).startswith(message)


def test_eval_command_reports_a_bad_candidate_spec_in_one_line(tmp_path, capsys):
    from selfinstruct.cli import main

    assert main(["eval", "--tasks", str(tmp_path / "unread.jsonl"), "--candidate", "=smollm2"]) == 2
    assert capsys.readouterr().err == ("selfinstruct: error: candidate '=smollm2': the name before '=' is empty; "
                                       "expected NAME=MODEL or NAME=MODEL:ADAPTER_DIR, e.g. base=smollm2 or "
                                       "tuned=smollm2:outputs/run/adapter\n")


# --------------------------------------------------------------------------- tiny real models

@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny random Llama with the bundled SmolLM2 tokenizer: one copy with its chat
    template (an 'instruct' model), one without (a 'base' model), and a fresh LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfinstruct.models import load_tokenizer
    from selfinstruct.sft_format import PromptFormat

    root = tmp_path_factory.mktemp("tiny")
    tok = load_tokenizer("smollm2")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    chat = root / "chat"
    model.save_pretrained(chat)
    tok.save_pretrained(chat)
    base = root / "base"
    model.save_pretrained(base)
    tok.chat_template = None
    tok.save_pretrained(base)
    cfg_path = base / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc.pop("chat_template", None)
    cfg_path.write_text(json.dumps(tc))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    # A freshly initialised LoRA adapter is the identity (its B matrices are zero).
    adapter = root / "adapter"
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(chat),
                                LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(adapter)
    PromptFormat.for_tokenizer(load_tokenizer(str(chat))).save(adapter)
    return {"chat": chat, "base": base, "adapter": adapter}


def test_a_model_without_chat_template_is_prompted_as_a_plain_completion(tiny_model_dirs):
    loaded = load_candidate(Candidate("b", str(tiny_model_dirs["base"])))
    assert loaded.prompt_format.kind == "alpaca"
    assert loaded.stops == BASE_MODEL_STOPS
    loaded = load_candidate(Candidate("c", str(tiny_model_dirs["chat"])))
    assert loaded.prompt_format.kind == "chat"
    assert loaded.stops == ()


def test_eval_command_compares_candidates_in_one_table(tiny_model_dirs, tmp_path, capsys):
    from selfinstruct.cli import main

    tasks_file = tmp_path / "heldout.jsonl"
    write_jsonl(tasks_file, [
        {"id": "h0", "instruction": "Classify the sport.", "instances": [{"input": "volleyball",
                                                                          "output": "team sport"}]},
        {"id": "h1", "instruction": "Give a synonym for happy.", "instances": [{"input": "", "output": "glad"}]},
        {"instruction": "Is it below freezing?", "input": "28 F", "output": "below"},  # Alpaca record
    ])
    out = tmp_path / "eval"
    chat, base, adapter = (str(tiny_model_dirs[k]) for k in ("chat", "base", "adapter"))
    rc = main(["eval", "--tasks", str(tasks_file), "--out", str(out), "--max-new-tokens", "8",
               "--candidate", f"base={base}", "--candidate", f"chat={chat}", "--candidate", f"tuned={chat}:{adapter}"])
    assert rc == 0
    doc = json.loads((out / "eval.json").read_text())
    results = {r["name"]: r for r in doc["results"]}
    assert list(results) == ["base", "chat", "tuned"]
    assert [results[n]["prompt_format"] for n in results] == ["alpaca", "chat", "chat"]
    for r in results.values():
        assert list(r["per_task"]) == ["h0", "h1", "task_2"]
        preds = [p["prediction"] for p in r["predictions"]]
        # the stored scores are rouge-score's on the stored predictions
        assert [p["rouge_l"] for p in r["predictions"]] == rouge_l_scores(preds, ["team sport", "glad", "below"])
        assert r["mean_rouge_l"] == pytest.approx(sum(r["per_task"].values()) / 3)
    # an identity adapter with the same prompt format answers exactly as its base
    assert [p["prediction"] for p in results["tuned"]["predictions"]] == \
        [p["prediction"] for p in results["chat"]["predictions"]]
    md = (out / "eval.md").read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| base |") or line.startswith("| tuned |")]
    assert len(table_rows) == 2
    assert f"{100 * results['base']['mean_rouge_l']:.1f}" in table_rows[0]
    assert "| task | base | chat | tuned |" in md
    assert "written:" in capsys.readouterr().out


def test_eval_command_explains_a_missing_candidate_and_a_bad_adapter(tiny_model_dirs, tmp_path, capsys):
    from selfinstruct.cli import main

    tasks_file = tmp_path / "t.jsonl"
    write_jsonl(tasks_file, [{"instruction": "Say hi.", "input": "", "output": "hi"}])
    assert main(["eval", "--tasks", str(tasks_file)]) == 2
    assert "--model M" in capsys.readouterr().err
    rc = main(["eval", "--tasks", str(tasks_file), "--model", str(tiny_model_dirs["chat"]),
               "--adapter", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "not a LoRA adapter directory" in capsys.readouterr().err


def test_markdown_table_needs_results():
    with pytest.raises(EvalError):
        markdown_table([])


def test_earlier_results_join_the_table_without_being_rerun(tiny_model_dirs, tmp_path, capsys):
    from selfinstruct.cli import main

    tasks_file = tmp_path / "t.jsonl"
    write_jsonl(tasks_file, [{"instruction": "Say hi.", "input": "", "output": "hi"},
                             {"instruction": "Say no.", "input": "", "output": "no"}])
    chat = str(tiny_model_dirs["chat"])
    common = ["eval", "--tasks", str(tasks_file), "--max-new-tokens", "4"]
    assert main(common + ["--candidate", f"first={chat}", "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "eval.json").read_text())["results"][0]
    assert main(common + ["--include", str(tmp_path / "a" / "eval.json"), "--candidate", f"second={chat}",
                          "--out", str(tmp_path / "b")]) == 0
    results = json.loads((tmp_path / "b" / "eval.json").read_text())["results"]
    assert [r["name"] for r in results] == ["first", "second"]
    assert results[0] == first
    # the same model, greedy, on the same tasks: the same answers
    assert [p["prediction"] for p in results[1]["predictions"]] == [p["prediction"] for p in first["predictions"]]
    assert main(common + ["--include", str(tmp_path / "a" / "eval.json"), "--candidate", f"first={chat}"]) == 2
    assert "already in an --include file" in capsys.readouterr().err
    assert main(["eval", "--tasks", str(tmp_path / "other.jsonl"), "--include",
                 str(tmp_path / "a" / "eval.json")]) == 2
    assert "not " in capsys.readouterr().err
