"""PEFT adapters: building their config for a model, checking what vLLM will load, the
metadata file written beside them, and loading base + adapter back.

Short target names (q, k, v, o, gate, up, down) map to each family's module names; Llama,
Mistral, Qwen and Gemma (SmolLM2 and gemma-3 included) all call them q_proj ... down_proj.
A full module name passes through, so families with other names (GPT-NeoX's
query_key_value) work too; a name the model does not have is an error listing the ones it has.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..sft_format import PromptFormat
from .config import FinetuneConfig

log = logging.getLogger(__name__)

META_FILE = "selfinstruct_adapter.json"
SHORT_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                 "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def linear_module_names(model: Any) -> list[str]:
    """Last name components of the model's linear layers, output head excluded."""
    torch = __import__("torch")
    names = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not full.endswith(("lm_head", "embed_out", "output")):
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(model: Any, targets: list[str]) -> list[str] | str:
    if targets == ["all-linear"]:
        return "all-linear"  # peft's own spelling: every linear layer except the output head
    present = linear_module_names(model)
    resolved = [SHORT_TARGETS.get(t, t) for t in targets]
    missing = [t for t, r in zip(targets, resolved) if r not in present]
    if missing:
        raise ConfigError(f"finetune.target_modules: {', '.join(missing)} not found in this model; its linear "
                          f"layers are: {', '.join(present)} (or use all-linear)")
    return resolved


def peft_config(cfg: FinetuneConfig, model: Any, tokenizer_dir: str | None = None) -> Any:
    """The peft config for `cfg.method` on `model`."""
    from ..models import require

    peft = require("peft", "pip install 'selfinstruct[lora]'")
    if cfg.method == "lora":
        # peft initialises A randomly and B at zero, so W0 + BA equals W0 at step 0.
        alpha = int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha
        return peft.LoraConfig(task_type="CAUSAL_LM", r=cfg.r, lora_alpha=alpha, lora_dropout=cfg.dropout,
                               target_modules=resolve_targets(model, cfg.target_modules), use_rslora=cfg.rslora,
                               bias="none", use_dora=False, modules_to_save=None)
    if cfg.method == "prompt_tuning":
        if cfg.prompt_tuning_init_text:
            if tokenizer_dir is None:
                raise ConfigError("finetune.prompt_tuning_init_text needs the base model's tokenizer on disk")
            return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                           prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                           prompt_tuning_init_text=cfg.prompt_tuning_init_text,
                                           tokenizer_name_or_path=tokenizer_dir)
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                       prompt_tuning_init=peft.PromptTuningInit.RANDOM)
    return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)


def vllm_problems(adapter_config: dict[str, Any], max_lora_rank: int = 16) -> list[str]:
    """Why vLLM (started with this --max-lora-rank) would refuse the adapter; empty when it loads."""
    problems = []
    if adapter_config.get("peft_type") != "LORA":
        problems.append(f"vLLM serves LoRA adapters only, not {adapter_config.get('peft_type')}")
        return problems
    if adapter_config.get("r", 0) > max_lora_rank:
        problems.append(f"r={adapter_config['r']} exceeds --max-lora-rank {max_lora_rank}")
    if adapter_config.get("modules_to_save"):
        problems.append(f"modules_to_save={adapter_config['modules_to_save']} (vLLM loads LoRA weights only)")
    if adapter_config.get("use_dora"):
        problems.append("DoRA adapters are not supported by vLLM")
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"bias={adapter_config['bias']!r}: vLLM supports bias='none' only")
    targets = adapter_config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    if any(t in ("lm_head", "embed_tokens") for t in targets):
        problems.append("LoRA on the embeddings or output head is not loaded by vLLM by default")
    return problems


# --------------------------------------------------------------------------- metadata and loading

def write_meta(adapter_dir: Path, meta: dict[str, Any]) -> Path:
    path = adapter_dir / META_FILE
    path.write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    return path


def read_meta(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: was {adapter_dir} written by `selfinstruct finetune`?")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_base(meta: dict[str, Any], spec: str) -> None:
    """Warn when a GGUF base on this machine is not the file the adapter was trained on."""
    from .. import models

    want = (meta.get("base_model") or {}).get("sha256")
    if not want:
        return
    source = models.resolve(spec)
    if source.kind == "gguf":
        have = models.source_info(source).get("sha256")
        if have != want:
            log.warning("base model %s has sha256 %s but the adapter was trained on %s; outputs will differ",
                        source.path, have, want)


def load_adapter(adapter_dir: str | Path, base_model: str | None = None, dtype: str = "float32",
                 device: str = "cpu") -> tuple[Any, Any, PromptFormat]:
    """(base + adapter in eval mode, tokenizer, PromptFormat) for generation.

    The base is the one recorded at training time unless `base_model` names another spec.
    """
    from .. import models

    peft = models.require("peft", "pip install 'selfinstruct[lora]'")
    transformers = models.require("transformers")
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json; give the directory finetune wrote, "
                                "e.g. outputs/<run>/adapter")
    meta = read_meta(adapter_dir)
    spec = base_model or meta["base_model"]["spec"]
    _check_base(meta, spec)
    model, tok = models.load_model(spec, dtype=dtype, device=device)
    if (adapter_dir / "tokenizer_config.json").exists():
        tok = transformers.AutoTokenizer.from_pretrained(str(adapter_dir))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).to(device).eval()
    return model, tok, PromptFormat.load(adapter_dir)
