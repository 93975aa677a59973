"""The finetune stage's data path: label masks, collators, config validation, adapter checks.

Uses the bundled SmolLM2 tokenizer (local; its pad token IS its EOS, which is the point of
several tests) and tiny random Llama models; nothing is downloaded.
"""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from selfinstruct.config import ConfigError  # noqa: E402
from selfinstruct.finetune.adapters import resolve_targets, vllm_problems  # noqa: E402
from selfinstruct.finetune.config import FinetuneConfig, finetune_config  # noqa: E402
from selfinstruct.finetune.data import (IGNORE, Example, PaddedCollator, PaddingFreeCollator,  # noqa: E402
                                        as_examples, encode_example, encode_examples, load_examples,
                                        split_examples)
from selfinstruct.finetune.loss import NEFTuneNoise, packing_isolates_examples, token_loss_sum  # noqa: E402
from selfinstruct.sft_format import PromptFormat  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    from selfinstruct.models import load_tokenizer

    return load_tokenizer("smollm2")


def tiny_llama(vocab_size: int, seed: int = 0):
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   pad_token_id=2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
                                   initializer_range=0.3)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def trained_tokens(tok, row) -> list[str]:
    return [tok.decode([t]) for t in row["labels"] if t != IGNORE]


# --------------------------------------------------------------------------- label masks

def test_completion_only_trains_answer_and_eos_and_masks_the_prompt(tok):
    fmt = PromptFormat.for_tokenizer(tok)
    assert fmt.kind == "chat"
    row = encode_example(tok, fmt, Example("Say hi.", "to Bob", "Hi Bob!"))
    # Hand-checked against the tokenizer's offsets: the answer is 'Hi', ' Bob', '!' and the EOS.
    assert trained_tokens(tok, row) == ["Hi", " Bob", "!", "<|im_end|>"]
    assert row["labels"][-1] == tok.eos_token_id == tok.pad_token_id  # EOS trained although it is the pad id
    n_prompt = len(row["input_ids"]) - 4
    assert row["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    prompt_ids = tok(fmt.prompt(tok, "Say hi.", "to Bob"), add_special_tokens=False)["input_ids"]
    assert row["input_ids"][:n_prompt] == prompt_ids  # training sees exactly the inference prompt


def test_instruction_modelling_trains_every_token_but_the_first(tok):
    fmt = PromptFormat.for_tokenizer(tok)
    row = encode_example(tok, fmt, Example("Say hi.", "to Bob", "Hi Bob!"), loss="instruction_modelling")
    assert row["labels"][0] == IGNORE
    assert row["labels"][1:] == row["input_ids"][1:]
    assert row["labels"][-1] == tok.eos_token_id
    assert "Say" in trained_tokens(tok, row)


def test_alpaca_format_masks_the_template(tok):
    fmt = PromptFormat.for_tokenizer(tok, prefer="alpaca")
    row = encode_example(tok, fmt, Example("Add the numbers.", "2 and 3", "5"))
    assert trained_tokens(tok, row) == ["5", "<|im_end|>"]
    assert tok.decode(row["input_ids"]).startswith("Below is an instruction")


def test_bos_tokenizer_gets_bos_in_alpaca_format_and_it_is_never_trained():
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    words = ["<unk>", "<s>", "</s>", "Below", "is", "an", "instruction", "Response", "Add", "5", "numbers", "###"]
    core = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(["<s>", "</s>"])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>")
    fmt = PromptFormat.for_tokenizer(tok)
    assert fmt.kind == "alpaca" and fmt.add_special_tokens
    row = encode_example(tok, fmt, Example("Add numbers", "", "5"))
    assert row["input_ids"][0] == 1 and row["labels"][0] == IGNORE
    assert [t for t in row["labels"] if t != IGNORE] == [words.index("5"), 2]  # the answer and EOS
    assert row["input_ids"].count(1) == 1  # one BOS, as tokenizer(prompt) gives at inference


def test_truncation_never_leaves_an_example_without_targets(tok):
    fmt = PromptFormat.for_tokenizer(tok)
    long_prompt = Example("Summarise: " + "word " * 300, "", "Short.")
    short = Example("Say hi.", "", "Hi!")
    enc = encode_examples(tok, fmt, [long_prompt, short], "completion_only", max_length=64)
    assert enc.dropped == 1 and len(enc.rows) == 1
    assert all(any(lab != IGNORE for lab in r["labels"]) for r in enc.rows)
    # An answer cut by max_length keeps its first tokens and loses its EOS.
    cut = encode_example(tok, fmt, Example("Say hi.", "", "one two three four five six seven eight"), max_length=40)
    assert len(cut["input_ids"]) == 40 and cut["labels"][-1] != tok.eos_token_id
    assert trained_tokens(tok, cut)[0] == "one"


def test_loaders_and_split(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pool.jsonl").write_text(
        '{"id": "m1", "instruction": "Give a synonym.", "instances": [{"input": "big", "output": "large"}, '
        '{"input": "small", "output": "tiny"}]}\n', encoding="utf-8")
    assert load_examples(run) == [Example("Give a synonym.", "big", "large"), Example("Give a synonym.", "small", "tiny")]
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi!"}\n'
                      '{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}\n')
    assert load_examples(alpaca) == [Example("Say hi.", "", "Hi!"), Example("Q?", "", "A.")]
    with pytest.raises(FileNotFoundError, match="pool.jsonl"):
        load_examples(tmp_path)
    assert as_examples([("I", None, "O"), {"instruction": "J", "output": "P"}]) == [Example("I", "", "O"),
                                                                                 Example("J", "", "P")]
    exs = [Example(f"task {i}", "", "x") for i in range(20)]
    train, val = split_examples(exs, 0.1, seed=3)
    assert len(val) == 2 and len(train) == 18 and set(train).isdisjoint(val)
    assert split_examples(exs, 0.1, seed=3) == (train, val)  # seeded
    assert split_examples(exs[:5], 0.5, seed=3) == (exs[:5], [])  # tiny sets keep everything


# --------------------------------------------------------------------------- batches and loss

def _rows(tok):
    fmt = PromptFormat.for_tokenizer(tok)
    exs = [Example("Say hi.", "", "Hi!"), Example("Add the numbers.", "2 and 3", "The sum is 5."),
           Example("Translate to French.", "The cat sleeps on the mat.", "Le chat dort sur le tapis.")]
    return encode_examples(tok, fmt, exs, "completion_only", 256).rows


def test_collators_shape_the_same_tokens(tok):
    rows = _rows(tok)
    flat = PaddingFreeCollator()(rows)
    padded = PaddedCollator(tok.pad_token_id)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert flat["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in flat
    assert flat["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert padded["input_ids"].shape == (3, max(lengths))
    assert padded["attention_mask"].sum(1).tolist() == lengths == flat["seq_lengths"].tolist()
    assert (padded["labels"][padded["attention_mask"] == 0] == IGNORE).all()  # padding never has a label
    assert (flat["labels"] != IGNORE).sum() == (padded["labels"] != IGNORE).sum()


def test_padding_free_and_padded_batches_give_the_same_loss_and_gradients(tok):
    model = tiny_llama(len(tok))
    rows = _rows(tok)
    results = {}
    for name, batch in (("flat", PaddingFreeCollator()(rows)), ("padded", PaddedCollator(tok.pad_token_id)(rows))):
        model.zero_grad()
        loss_sum, n = token_loss_sum(model, batch)
        (loss_sum / n).backward()
        results[name] = (float(loss_sum.detach()), int(n), model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    (flat_sum, flat_n, flat_grad), (pad_sum, pad_n, pad_grad) = results["flat"], results["padded"]
    assert flat_n == pad_n == sum(sum(1 for t in r["labels"] if t != IGNORE) for r in rows)
    assert flat_sum == pytest.approx(pad_sum, rel=1e-5)
    assert torch.allclose(flat_grad, pad_grad, atol=1e-5)
    # Without position_ids the flattened examples attend to each other, and the loss moves:
    # the equality above is a real check of per-example attention.
    leaky = dict(PaddingFreeCollator()(rows))
    leaky.pop("position_ids")
    with torch.no_grad():
        assert float(token_loss_sum(model, leaky)[0]) != pytest.approx(pad_sum, rel=1e-4)


class IgnoresPositions(torch.nn.Module):
    """A model whose forward drops position_ids: flattened examples would see each other."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.model(input_ids=input_ids, **kwargs)


def test_packing_self_check_tells_isolating_models_from_leaking_ones(tok):
    model = tiny_llama(len(tok))
    assert packing_isolates_examples(model)
    assert not packing_isolates_examples(IgnoresPositions(model))
    model.train()
    packing_isolates_examples(model)
    assert model.training


def test_selective_logits_equal_full_logits(tok):
    model = tiny_llama(len(tok))
    batch = PaddingFreeCollator()(_rows(tok))
    with torch.no_grad():
        selective = token_loss_sum(model, batch, selective_logits=True)
        full = token_loss_sum(model, batch, selective_logits=False)
        per_sums, per_counts = token_loss_sum(model, batch, per_example=True)
    assert float(selective[0]) == pytest.approx(float(full[0]), rel=1e-6) and int(selective[1]) == int(full[1])
    assert per_counts.tolist() == [sum(1 for t in r["labels"] if t != IGNORE) for r in _rows(tok)]
    assert float(per_sums.sum()) == pytest.approx(float(full[0]), rel=1e-6)


def test_neftune_noise_scales_with_each_examples_own_length():
    emb = torch.nn.Embedding(10, 16).train()
    noise = NEFTuneNoise(alpha=5.0)
    noise.lengths = torch.tensor([4, 16])
    out = torch.zeros(1, 20, 16)
    torch.manual_seed(0)
    noisy = noise(emb, None, out)
    bound_short, bound_long = 5.0 / (4 * 16) ** 0.5, 5.0 / (16 * 16) ** 0.5
    assert noisy[0, :4].abs().max() <= bound_short and noisy[0, :4].abs().max() > bound_long
    assert noisy[0, 4:].abs().max() <= bound_long
    emb.eval()
    assert noise(emb, None, out) is out  # no noise outside training


# --------------------------------------------------------------------------- config and adapter checks

def test_config_rejects_unknown_keys_by_name():
    with pytest.raises(ConfigError, match=r"finetune\.rank.*valid keys.*\br\b"):
        finetune_config({"rank": 8})
    with pytest.raises(ConfigError, match="padding_free needs method lora"):
        finetune_config({"method": "prefix_tuning", "batching": "padding_free"})
    with pytest.raises(ConfigError, match="only LoRA folds"):
        finetune_config({"method": "prompt_tuning", "merge": True})
    cfg = finetune_config({"target_modules": "q,k,v,o"})
    assert cfg.target_modules == ["q", "k", "v", "o"] and cfg.padding_free and cfg.lr == 2e-4
    assert finetune_config({"method": "prompt_tuning"}).lr == 3e-2


def test_rank_above_vllm_limit_is_allowed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = finetune_config({"r": 64})
    assert cfg.r == 64 and "--max-lora-rank 64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        finetune_config({"r": 64, "max_lora_rank": 64})
    assert "max-lora-rank" not in caplog.text


def test_target_modules_map_short_names_and_name_what_exists(tok):
    model = tiny_llama(len(tok))
    assert resolve_targets(model, ["q", "v"]) == ["q_proj", "v_proj"]
    assert resolve_targets(model, ["q", "k", "v", "o"]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_targets(model, ["down_proj"]) == ["down_proj"]
    assert resolve_targets(model, ["all-linear"]) == "all-linear"
    with pytest.raises(ConfigError, match="c_attn not found.*q_proj"):
        resolve_targets(model, ["c_attn"])


def test_vllm_checks():
    ok = {"peft_type": "LORA", "r": 8, "bias": "none", "use_dora": False, "modules_to_save": None,
          "target_modules": ["q_proj", "v_proj"]}
    assert vllm_problems(ok) == []
    assert vllm_problems({**ok, "r": 32}) == ["r=32 exceeds --max-lora-rank 16"]
    assert vllm_problems({**ok, "r": 32}, max_lora_rank=32) == []
    assert len(vllm_problems({**ok, "use_dora": True, "bias": "all", "modules_to_save": ["lm_head"]})) == 3
    assert vllm_problems({"peft_type": "PREFIX_TUNING"}) == ["vLLM serves LoRA adapters only, not PREFIX_TUNING"]
    assert FinetuneConfig(r=12).vllm_rank() == 16
