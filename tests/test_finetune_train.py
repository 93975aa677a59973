"""Training with the finetune stage on a tiny random Llama (and once on the bundled SmolLM2):
the loss falls, saved adapters reproduce the trained model, merging is exact, resume
continues, prompt / prefix tuning work, GGUF-loaded bases train, and the CLI chains it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from selfinstruct.cli import main  # noqa: E402
from selfinstruct.config import ConfigError  # noqa: E402
from selfinstruct.finetune import LoraFinetuner, finetune_config, load_adapter  # noqa: E402
from selfinstruct.finetune.adapters import peft_config, vllm_problems  # noqa: E402
from selfinstruct.finetune.trainer import clear_dequantized_flags  # noqa: E402
from selfinstruct.models import ModelError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECORDS = [("Name a primary colour.", "", "Red."), ("Add the numbers.", "2 and 3", "5"),
           ("Translate to French.", "cat", "chat"), ("Give the opposite.", "hot", "cold")]
# Fast, deterministic settings for a few steps on the tiny model.
QUICK = {"batch_size": 4, "logging_steps": 1, "save_steps": 0, "dropout": 0.0, "val_fraction": 0.0,
         "warmup_ratio": 0.0, "lr_scheduler": "constant", "learning_rate": 2e-2}


@pytest.fixture(scope="module")
def tok():
    from selfinstruct.models import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def base_dir(tok, tmp_path_factory) -> Path:
    """A tiny random Llama with the SmolLM2 tokenizer, saved so adapters can find their base."""
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   pad_token_id=tok.pad_token_id, bos_token_id=1, eos_token_id=tok.eos_token_id,
                                   tie_word_embeddings=True, initializer_range=0.3)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-base")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def base_model(base_dir: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()


def finetuner(base_dir: Path, tok, progress: bool = False, callbacks=(), **settings) -> LoraFinetuner:
    return LoraFinetuner({**QUICK, **settings}, model=base_model(base_dir), tokenizer=tok,
                         base_info={"spec": str(base_dir), "kind": "dir", "path": str(base_dir)},
                         progress=progress, callbacks=callbacks)


def probe(tok) -> dict:
    ids = tok("<|im_start|>user\nAdd the numbers.<|im_end|>\n", return_tensors="pt", add_special_tokens=False)
    return {"input_ids": ids["input_ids"]}


def logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(**probe(tok)).logits


# --------------------------------------------------------------------------- training


def test_loss_falls_when_overfitting_a_few_examples(base_dir, tok):
    result = finetuner(base_dir, tok, max_steps=20).train(RECORDS, base_dir.parent / "overfit")
    losses = [loss for _, loss in result.history["train"]]
    assert len(losses) == 20 and result.global_step == 20
    assert losses[-1] < 0.6 * losses[0]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 2


def test_adapter_starts_as_the_base_model(base_dir, tok):
    model = base_model(base_dir)
    before = logits(model, tok)
    cfg = finetune_config({"target_modules": ["q", "k", "v", "o"]})
    wrapped = peft.get_peft_model(model, peft_config(cfg, model))
    b = [p for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert len(b) == 8 and all(float(p.detach().abs().max()) == 0 for p in b)  # B = 0, so BA = 0
    assert torch.equal(logits(wrapped, tok), before)


def test_saved_adapter_reproduces_the_trained_logits(base_dir, tmp_path, tok):
    ft = finetuner(base_dir, tok, max_steps=3, val_fraction=0.25, progress=True)
    result = ft.train(RECORDS * 3, tmp_path)
    trained = ft.trainer.model.eval()
    adapter = tmp_path / "adapter"
    assert result.adapter_dir == adapter
    reloaded = peft.PeftModel.from_pretrained(base_model(base_dir), str(adapter)).eval()
    assert torch.allclose(logits(trained, tok), logits(reloaded, tok), atol=1e-6)
    assert not torch.allclose(logits(reloaded, tok), logits(base_model(base_dir), tok), atol=1e-3)  # it learned
    model, tk, fmt = load_adapter(adapter)
    assert torch.allclose(logits(model, tok), logits(trained, tok), atol=1e-6)
    assert fmt.kind == "chat" and fmt.chat_template == tok.chat_template and len(tk) == len(tok)

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert vllm_problems(config) == []
    meta = json.loads((adapter / "selfinstruct_adapter.json").read_text())
    assert meta["base_model"]["spec"] == str(base_dir)
    assert meta["data"]["train_examples"] == 9 and meta["data"]["validation_examples"] == 3
    assert meta["results"]["global_step"] == 3 and meta["results"]["eval_loss"] == pytest.approx(result.eval_loss)
    assert [s for s, _ in meta["history"]["train"]] == [1, 2, 3]
    assert meta["history"]["validation"][0] == [0, result.initial_eval_loss]  # the baseline before step 1
    assert meta["history"]["validation"][-1] == [3, pytest.approx(result.eval_loss)]
    card = (adapter / "README.md").read_text()
    assert "r=8, alpha=16" in card and "q, v" in card and "9 training examples" in card
    assert "--max-lora-rank 8" in card and "![loss curve](loss_curve.png)" in card
    assert f"(before training: {result.initial_eval_loss:.4g})" in card and "| batching | padding-free |" in card
    assert "base_model:" not in card  # a local directory is no Hub id
    assert (adapter / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merged_model_equals_base_plus_adapter(base_dir, tmp_path, tok):
    result = finetuner(base_dir, tok, max_steps=3, merge=True, target_modules="all-linear").train(RECORDS, tmp_path)
    assert result.merged_dir == tmp_path / "merged"
    merged = transformers.AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with_adapter = peft.PeftModel.from_pretrained(base_model(base_dir), str(result.adapter_dir)).eval()
    expected = logits(with_adapter, tok)
    assert torch.allclose(logits(merged, tok), expected, atol=1e-4)
    assert not torch.allclose(logits(base_model(base_dir), tok), expected, atol=1e-3)
    assert (result.merged_dir / "prompt_format.json").exists()


class StopAt(transformers.TrainerCallback):
    """Stops training after `step`, as a kill after a checkpoint would."""

    def __init__(self, step: int):
        self.step = step
        self.steps_run = 0

    def on_step_end(self, args, state, control, **kw):
        self.steps_run += 1
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_continues_from_the_checkpoint(base_dir, tmp_path, tok):
    settings = dict(max_steps=4, save_steps=2, batch_size=2)
    stop = StopAt(2)
    first = finetuner(base_dir, tok, callbacks=[stop], **settings).train(RECORDS, tmp_path / "run")
    assert first.global_step == 2 and (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()
    counter = StopAt(99)
    second = finetuner(base_dir, tok, callbacks=[counter], resume=True, **settings).train(RECORDS, tmp_path / "run")
    assert second.global_step == 4 and counter.steps_run == 2  # steps 3 and 4 only
    assert [s for s, _ in second.history["train"]] == [1, 2, 3, 4]  # the log carries over
    straight = finetuner(base_dir, tok, **settings).train(RECORDS, tmp_path / "straight")
    assert [round(x, 5) for _, x in second.history["train"]] == [round(x, 5) for _, x in straight.history["train"]]
    resumed = peft.PeftModel.from_pretrained(base_model(base_dir), str(second.adapter_dir))
    uninterrupted = peft.PeftModel.from_pretrained(base_model(base_dir), str(straight.adapter_dir))
    assert torch.allclose(logits(resumed, tok), logits(uninterrupted, tok), atol=1e-5)
    # A checkpoint made with another rank cannot be continued; the error names the change.
    with pytest.raises(ConfigError, match="r: 8 -> 4"):
        finetuner(base_dir, tok, resume=True, **{**settings, "r": 4}).train(RECORDS, tmp_path / "run")


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_and_prefix_tuning_train_and_save(base_dir, tmp_path, tok, method):
    ft = finetuner(base_dir, tok, method=method, max_steps=6, num_virtual_tokens=4, learning_rate=0.0)
    result = ft.train(RECORDS, tmp_path)
    losses = [x for _, x in result.history["train"]]
    assert losses[-1] < losses[0]
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == method.upper() and config["num_virtual_tokens"] == 4
    reloaded = peft.PeftModel.from_pretrained(base_model(base_dir), str(result.adapter_dir)).eval()
    trained = ft.trainer.model.eval()
    probe_in = {**probe(tok), "attention_mask": torch.ones_like(probe(tok)["input_ids"])}
    with torch.no_grad():
        assert torch.allclose(trained(**probe_in).logits, reloaded(**probe_in).logits, atol=1e-6)
    meta = json.loads((result.adapter_dir / "selfinstruct_adapter.json").read_text())
    assert meta["vllm"]["loads"] is False and meta["learning_rate"] == {"prompt_tuning": 3e-2,
                                                                         "prefix_tuning": 1e-2}[method]


# --------------------------------------------------------------------------- GGUF-loaded bases

def mark_as_gguf_loaded(model) -> None:
    """What transformers leaves on a model loaded with gguf_file=...: de-quantised floats, flagged quantized."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig, QuantizationMethod

    model.hf_quantizer = GgufHfQuantizer(GgufConfig(dequantize=True))
    model.is_quantized = True
    model.quantization_method = QuantizationMethod.GGUF
    model.config.quantization_config = GgufConfig(dequantize=True)


def test_gguf_quantized_flag_is_cleared_so_trainer_accepts_the_model(base_dir, tok):
    from transformers.trainer_utils import validate_quantization_for_training

    model = base_model(base_dir)
    mark_as_gguf_loaded(model)
    with pytest.raises(ValueError, match="purely quantized"):
        validate_quantization_for_training(model)  # what Trainer does first
    clear_dequantized_flags(model)
    validate_quantization_for_training(model)
    assert model.hf_quantizer is None and not model.is_quantized
    assert not hasattr(model.config, "quantization_config")
    # A flagged model still trains end to end.
    flagged = base_model(base_dir)
    mark_as_gguf_loaded(flagged)
    ft = LoraFinetuner({**QUICK, "max_steps": 1}, model=flagged, tokenizer=tok, base_info={"spec": str(base_dir)},
                       progress=False)
    assert ft.train(RECORDS, base_dir.parent / "gguf-flagged").global_step == 1


def test_really_quantized_weights_are_refused(base_dir):
    model = base_model(base_dir)
    model.config.quantization_config = {"quant_method": "bitsandbytes"}
    with pytest.raises(ModelError, match="quantized \\(bitsandbytes\\)"):
        clear_dequantized_flags(model)


# --------------------------------------------------------------------------- the CLI and the chain

def test_cli_finetune_on_a_jsonl_file_and_on_a_run_directory(base_dir, tmp_path, capsys):
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps({"instruction": i, "input": x, "output": o}) + "\n" for i, x, o in RECORDS))
    common = ["--set", f"base_model={base_dir}", "--set", "max_steps=2", "--set", "val_fraction=0", "--no-progress"]
    assert main(["finetune", str(data), "-o", str(tmp_path / "out"), "--set", "finetune.r=4", *common]) == 0
    out = capsys.readouterr().out
    assert f"adapter: {tmp_path / 'out' / 'adapter'}" in out and "steps 2" in out
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["r"] == 4

    run = tmp_path / "run"
    run.mkdir()
    (run / "pool.jsonl").write_text("".join(json.dumps(
        {"id": f"m{k}", "instruction": i, "instances": [{"input": x, "output": o}]}) + "\n"
        for k, (i, x, o) in enumerate(RECORDS)))
    (run / "config.yaml").write_text(yaml.safe_dump({"finetune": {"r": 2, "target_modules": ["q", "k", "v", "o"]}}))
    assert main(["finetune", str(run), *common]) == 0
    assert f"adapter: {run / 'adapter'}" in capsys.readouterr().out
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 and sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    meta = json.loads((run / "adapter" / "selfinstruct_adapter.json").read_text())
    assert meta["data"]["source"] == str(run / "pool.jsonl") and meta["data"]["train_examples"] == 4  # no export

    assert main(["finetune", str(data), "--set", "rank=4"]) == 2
    assert "unknown key finetune.rank" in capsys.readouterr().err


def test_run_chains_generation_export_and_finetune(base_dir, tmp_path, capsys):
    from test_loop import reply_text, script  # the scripted replies the loop tests use

    replies = tmp_path / "replies.jsonl"
    replies.write_text("".join(json.dumps({"request_id": rid, "text": reply_text(rid), "finish_reason": script(rid)[1]})
                               + "\n" for rid in range(100)))
    pipeline = tmp_path / "chain.yaml"
    pipeline.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "outputs"),
        "seed_tasks": [str(REPO / "seed_tasks" / "seed_tasks.jsonl")],
        "generation": {"target": 5, "num_prompt_tasks": 4, "requests_per_round": 2},
        "backend": {"kind": "scripted", "replies": str(replies)},
        "finetune": {"base_model": str(base_dir), "max_steps": 2, "batch_size": 4, "save_steps": 0},
    }))
    assert main(["run", str(pipeline)]) == 0
    run = tmp_path / "outputs" / "chain"
    out = capsys.readouterr().out
    assert "exported:" in out and f"adapter: {run / 'adapter'}" in out
    meta = json.loads((run / "adapter" / "selfinstruct_adapter.json").read_text())
    # It trains on the export (the pool cleaned of duplicates and evaluation overlap), not the raw pool.
    exported = run / "export" / "alpaca.jsonl"
    assert meta["data"]["source"] == str(exported) and meta["results"]["global_step"] == 2
    n_records = len(exported.read_text().splitlines())
    assert meta["data"]["train_examples"] + meta["data"]["validation_examples"] == n_records


# --------------------------------------------------------------------------- the bundled model

@pytest.mark.slow
def test_bundled_smollm2_gguf_trains_and_records_its_file(tmp_path):
    from selfinstruct import models

    result = LoraFinetuner({**QUICK, "max_steps": 1, "max_length": 96, "learning_rate": 1e-4},
                           progress=False).train(RECORDS, tmp_path)
    meta = json.loads((result.adapter_dir / "selfinstruct_adapter.json").read_text())
    source = models.resolve("smollm2")
    assert meta["base_model"]["spec"] == "smollm2" and meta["base_model"]["kind"] == "gguf"
    assert meta["base_model"]["file"] == models.BUNDLED_FILE
    assert meta["base_model"]["sha256"] == models.file_sha256(source.path)
    card = (result.adapter_dir / "README.md").read_text()
    assert f"sha256 `{meta['base_model']['sha256']}`" in card
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card  # what the Hub and vLLM know it as
    assert result.train_loss is not None and 0 < result.train_loss < 10
