"""The adapter's model card (README.md) and its loss curve (loss_curve.png).

Everything in the card comes from the metadata dict written beside the adapter, so the
card cannot say something the run did not do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CURVE_FILE = "loss_curve.png"


def plot_loss(history: dict[str, list[tuple[int, float]]], path: Path) -> Path | None:
    """Training and validation loss against the step; None when nothing was logged."""
    if not history.get("train") and not history.get("validation"):
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, marker in (("train", None), ("validation", "o")):
        points = history.get(name) or []
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name, marker=marker)
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# The bundled GGUF is a quantisation of this Hub model, which is what vLLM and the Hub know.
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def hub_id_of(base: dict[str, Any]) -> str | None:
    from ..models import BUNDLED

    if str(base.get("spec", "")).lower() in BUNDLED:
        return BUNDLED_HUB_ID
    return base.get("spec") if base.get("kind") == "hub" else None


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "—" if x is None or x == "" else str(x)


def render_card(meta: dict[str, Any], has_curve: bool) -> str:
    cfg = meta["config"]
    base = meta["base_model"]
    hub_id = hub_id_of(base)
    data = meta["data"]
    res = meta["results"]
    vllm = meta["vllm"]
    base_line = f"`{base.get('spec')}`"
    if base.get("kind") == "gguf":
        base_line += f" (GGUF file `{base.get('file')}`, sha256 `{base.get('sha256')}`, de-quantised to float)"
    if cfg["method"] == "lora":
        scale = "alpha/sqrt(r)" if cfg["rslora"] else "alpha/r"
        method = (f"LoRA, r={cfg['r']}, alpha={_fmt(cfg['alpha'])} (update scaled by {scale}), dropout "
                  f"{_fmt(cfg['dropout'])}, target modules {', '.join(cfg['target_modules'])}")
    else:
        method = f"{cfg['method'].replace('_', ' ')}, {cfg['num_virtual_tokens']} virtual tokens"
    rows = [
        ("method", method),
        ("loss", cfg["loss"].replace("_", " ")),
        ("prompt format", f"{meta['prompt_format']} (saved in prompt_format.json; use it at inference)"),
        ("batching", "padding-free" if meta["batching"] == "padding_free" else "length-grouped, padded"),
        ("batch size x accumulation", f"{cfg['batch_size']} x {cfg['grad_accum']}"),
        ("epochs / max steps", f"{_fmt(cfg['epochs'])} / {cfg['max_steps'] or '—'}"),
        ("learning rate", f"{_fmt(meta['learning_rate'])}, {cfg['lr_scheduler']} schedule, "
                          f"warm-up {_fmt(cfg['warmup_ratio'])} of the steps"),
        ("max length", cfg["max_length"]),
        ("NEFTune alpha", _fmt(cfg["neftune_alpha"] or None)),
        ("seed", cfg["seed"]),
        ("dtype", cfg["dtype"]),
    ]
    lines = [
        "---",
        "library_name: peft",
        *([f"base_model: {hub_id}"] if hub_id else []),
        "tags: [selfinstruct, self-instruct, " + ("lora" if cfg["method"] == "lora" else cfg["method"]) + "]",
        "---",
        "",
        f"# {cfg['method'].replace('_', ' ')} adapter trained by selfinstruct",
        "",
        f"Base model: {base_line}.",
        "",
        "## Data",
        "",
        f"- source: `{data['source']}`",
        f"- {data['train_examples']} training examples ({data['train_tokens']} tokens, "
        f"{data['train_target_tokens']} with loss), {data['validation_examples']} held out for validation",
        f"- dropped for exceeding max_length: {data['dropped_too_long']}",
        "",
        "## Hyper-parameters",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in rows],
        "",
        "## Results",
        "",
        f"- steps: {res['global_step']}",
        f"- mean training loss: {_fmt(res['train_loss'])}",
        f"- validation loss: {_fmt(res['eval_loss'])}" + (
            f" (before training: {_fmt(res['initial_eval_loss'])})" if res.get("initial_eval_loss") is not None
            else ""),
        f"- training time: {_fmt(res['train_runtime_s'])} s, {_fmt(res['tokens_per_s'])} tokens/s (no padding counted)",
        "",
    ]
    if has_curve:
        lines += [f"![loss curve]({CURVE_FILE})", ""]
    lines += ["## Use", "", "```python", "from selfinstruct.finetune import load_adapter",
              "model, tokenizer, prompt_format = load_adapter('.')",
              "prompt = prompt_format.prompt(tokenizer, 'Give three uses of a brick.')", "```", ""]
    if cfg["method"] == "lora":
        lines += ["With peft alone: `PeftModel.from_pretrained(base, '<this directory>')`.", ""]
        if vllm["loads"]:
            lines += ["vLLM (from the HF copy of the base model):", "",
                      f"    vllm serve {hub_id or 'BASE_MODEL'} --enable-lora --max-lora-rank {vllm['max_lora_rank']} "
                      "--lora-modules selfinstruct=<this directory>", ""]
    if not vllm["loads"]:
        lines += ["vLLM will not load this adapter as it is: " + "; ".join(vllm["problems"]) + ".", ""]
    v = meta["versions"]
    lines += [f"Trained with torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}.", ""]
    return "\n".join(lines)


def write_card(adapter_dir: Path, meta: dict[str, Any]) -> Path:
    curve = plot_loss(meta.get("history") or {}, adapter_dir / CURVE_FILE)
    path = adapter_dir / "README.md"
    path.write_text(render_card(meta, curve is not None), encoding="utf-8")
    return path
