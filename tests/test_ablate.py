"""The LoRA ablation grid on a tiny random Llama: cells train, losses fall, tables reach disk."""

from __future__ import annotations

import json

import pytest

from selfinstruct.ablate import (AblationError, Example, TrainSettings, _batches, completion_loss, module_names,
                                 parse_grid, train_lora)
from selfinstruct.records import write_jsonl


def tiny_llama(tok, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


@pytest.fixture(scope="module")
def tok():
    from selfinstruct.models import load_tokenizer

    return load_tokenizer("smollm2")


def test_grid_and_target_names():
    assert module_names("q,k,v,o") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert module_names(["q", "c_attn"]) == ["q_proj", "c_attn"]
    assert parse_grid("1,8", ["q", "q,v"]) == [(1, "q"), (8, "q"), (1, "q,v"), (8, "q,v")]
    with pytest.raises(AblationError, match="positive"):
        parse_grid("0,2", ["q"])
    with pytest.raises(AblationError, match="empty target set"):
        parse_grid("2", [" , "])


def test_completion_loss_equals_the_models_own_loss_on_answer_tokens(tok):
    import torch

    model = tiny_llama(tok)
    rows = [([1, 5, 6, 7, 8, 9], [-100, -100, -100, 7, 8, 9]), ([1, 5, 6, 7], [-100, -100, 6, 7])]
    batch = next(_batches(rows, 2, tok.pad_token_id, torch))
    loss, n = completion_loss(model, batch, torch)
    assert n == 5
    assert float(loss) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_train_lora_lowers_the_loss_and_saves_an_adapter_eval_can_load(tok, tmp_path):
    from selfinstruct.sft_format import PromptFormat

    model = tiny_llama(tok)
    examples = [Example("Say the colour of the sky.", "", "blue"), Example("Name a fruit.", "", "apple")] * 4
    peft_model, res = train_lora(model, tok, examples, tmp_path / "adapter",
                                 TrainSettings(r=4, alpha=8, targets="q,k,v,o", epochs=6, lr=1e-2, batch_size=4,
                                               prompt_format="alpaca"))
    assert res.steps == 12
    assert res.last_loss < res.first_loss - 0.3  # measured: 10.84 -> 10.40
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert PromptFormat.load(tmp_path / "adapter").kind == "alpaca"
    meta = json.loads((tmp_path / "adapter" / "training.json").read_text())
    assert meta["examples"] == 8 and meta["settings"]["r"] == 4
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "_proj" in n and "mlp" not in n for n in trainable)


def test_ablate_command_runs_a_two_by_one_grid(tok, tmp_path, capsys):
    from selfinstruct.cli import main

    model_dir = tmp_path / "tiny"
    tiny_llama(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_jsonl(run_dir / "pool.jsonl", [
        {"id": f"m{i}", "instruction": f"Repeat the word number {i}.", "instances": [{"input": "", "output": w}],
         "origin": "machine"} for i, w in enumerate(["alpha", "beta", "gamma", "delta"])])
    heldout = tmp_path / "heldout.jsonl"
    write_jsonl(heldout, [{"instruction": "Repeat the word.", "input": "omega", "output": "omega"},
                          {"instruction": "Say yes.", "input": "", "output": "yes"}])
    rc = main(["ablate", str(run_dir), "--model", str(model_dir), "--tasks", str(heldout), "--ranks", "1,4",
               "--targets", "q,v", "--max-steps", "3", "--max-new-tokens", "4", "--format", "alpaca"])
    assert rc == 0
    doc = json.loads((run_dir / "ablation" / "ablation.json").read_text())
    cells = doc["cells"]
    assert [(c["r"], c["targets"]) for c in cells] == [(1, "q,v"), (4, "q,v")]
    # rank 4 has four times rank 1's LoRA parameters on the same modules
    assert cells[1]["trainable_params"] == 4 * cells[0]["trainable_params"]
    for c in cells:
        assert c["heldout_loss"] > 0 and 0.0 <= c["rouge_l"] <= 1.0
        assert (tmp_path / "run" / "ablation" / f"r{c['r']}-qv" / "adapter_config.json").exists()
    md = (run_dir / "ablation" / "ablation.md").read_text()
    assert "| q,v |" in md and f"{cells[0]['heldout_loss']:.3f}" in md
    assert "| q,v |" in capsys.readouterr().out


def test_ablate_command_rejects_a_bad_grid(tmp_path, capsys):
    from selfinstruct.cli import main

    assert main(["ablate", str(tmp_path), "--model", "x", "--ranks", "0"]) == 2
    assert "bad grid" in capsys.readouterr().err
