"""LoraFinetuner: LoRA (or prompt / prefix tuning) on transformers.Trainer + peft.

Trainer runs the loop (optimiser, schedule, checkpoints, resume, distributed); this stage
brings its own tokenisation (data.py: offset-based label masks, padding-free batches) and
loss (loss.py: logits only at target positions, token-weighted normalisation).

A run reads examples, loads the base, splits off a validation set, wraps the base with
peft, trains, and writes (main process only):

    <out>/adapter/       adapter_config.json + adapter_model.safetensors (peft, vLLM),
                         prompt_format.json, tokenizer, selfinstruct_adapter.json (base
                         file and sha256, data, settings, results), README.md, loss_curve.png
    <out>/checkpoints/   Trainer checkpoints, for --resume
    <out>/merged/        with merge: true, the base with W0 + BA folded in

The same code runs on one CPU and under `accelerate launch` on several GPUs:

    accelerate launch --multi_gpu --num_processes 4 $(which selfinstruct) finetune outputs/default \
        --set finetune.dtype=bfloat16

Each process loads the base and trains on its shard of every batch (the per-device batch is
finetune.batch_size); only the main process writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import models
from ..config import ConfigError
from ..models import ModelError
from ..sft_format import PromptFormat
from . import adapters
from .config import VLLM_DEFAULT_MAX_LORA_RANK, FinetuneConfig, finetune_config
from .data import (EncodedSet, Example, PaddedCollator, PaddingFreeCollator, TokenizedDataset, as_examples,
                   encode_examples, load_examples, split_examples)
from .loss import NEFTuneNoise, accepts_logits_to_keep, make_trainer_class, packing_isolates_examples
from .progress import loss_history, make_callbacks

log = logging.getLogger(__name__)

# Settings a resumed run may change; any other change would make the checkpoint's state wrong.
RESUME_SAFE = {"resume", "max_steps", "epochs", "logging_steps", "eval_steps", "save_steps", "save_total_limit",
               "threads", "merge", "output_dir"}
RUN_SETTINGS_FILE = "finetune_config.json"


@dataclass
class FinetuneResult:
    adapter_dir: Path
    merged_dir: Path | None
    global_step: int
    train_loss: float | None  # mean training loss of the steps this run took (None if it took none)
    eval_loss: float | None  # validation loss at the end (None without a validation split)
    train_tokens: int  # real (non-pad) tokens this process trained on in this run
    train_runtime_s: float
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    is_main_process: bool = True  # False on the other ranks of a distributed run
    initial_eval_loss: float | None = None  # validation loss before the first step (fresh runs only)

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_runtime_s if self.train_runtime_s > 0 else 0.0


# --------------------------------------------------------------------------- model preparation

def clear_dequantized_flags(model: Any) -> None:
    """Make a GGUF-loaded model an ordinary trainable one.

    transformers de-quantises GGUF tensors to float on load but leaves the model marked as
    quantized (hf_quantizer, is_quantized, config.quantization_config), and Trainer refuses
    to train "purely quantized" models. The weights are plain floats, so the marks are
    dropped; a model that really holds quantized weights is refused instead.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    qconf = getattr(model.config, "quantization_config", None)
    if quantizer is None and qconf is None and not getattr(model, "is_quantized", False):
        return
    if qconf is None and quantizer is not None:
        qconf = getattr(quantizer, "quantization_config", None)
    method = qconf.get("quant_method") if isinstance(qconf, dict) else getattr(qconf, "quant_method", None)
    method = str(getattr(method, "value", method) or "unknown")
    not_float = [n for n, p in model.named_parameters() if not p.is_floating_point()]
    if method != "gguf" or not_float:
        raise ModelError(f"the base model is quantized ({method}); LoRA training here needs float weights: use an "
                         "unquantized checkpoint or a .gguf file (de-quantised on load)")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    log.info("cleared the quantized flag of the GGUF-loaded base (its weights are de-quantised %s)",
             next(model.parameters()).dtype)


def portable_spec(source: models.ModelSource) -> str:
    """The spec to record: 'smollm2' and hub ids as given, paths made absolute."""
    if source.kind == "hub" or source.spec.lower() in models.BUNDLED:
        return source.spec
    return source.path


# --------------------------------------------------------------------------- the finetuner

@dataclass
class _Data:
    source: str
    fmt: PromptFormat
    train: EncodedSet
    val: EncodedSet


class LoraFinetuner:
    """Finetune a base model on instruction examples and save a PEFT adapter.

    `model`/`tokenizer` may be given (e.g. a tiny test model); peft wraps `model` in place,
    so pass a copy if you still need the plain base. `base_info` then says where the base
    lives on disk ({"spec": directory}) so `load_adapter` can find it again. `callbacks` are
    extra transformers TrainerCallbacks.
    """

    def __init__(self, config: FinetuneConfig | dict[str, Any] | None = None, *, model: Any = None,
                 tokenizer: Any = None, base_info: dict[str, Any] | None = None, progress: bool = True,
                 callbacks: Sequence[Any] = ()):
        self.config = config if isinstance(config, FinetuneConfig) else finetune_config(config)
        if (model is None) != (tokenizer is None):
            raise ValueError("give both model and tokenizer, or neither (the config's base_model is loaded)")
        self.model = model
        self.tokenizer = tokenizer
        self.base_info = base_info
        self.progress = progress
        self.extra_callbacks = list(callbacks)
        self.trainer: Any = None  # the transformers Trainer of the last run
        self.padding_free = False  # the batching the last run used (after the packing self-check)

    def train(self, data: str | Path | Iterable[Any], out_dir: str | Path) -> FinetuneResult:
        """Train on `data` (a run directory, a task JSONL file, or records: Examples, Tasks,
        (instruction, input, output) tuples, Alpaca dicts) and write under `out_dir`."""
        import transformers

        cfg = self.config
        out_dir = Path(out_dir)
        adapter_dir = Path(cfg.output_dir) if cfg.output_dir else out_dir / "adapter"
        ckpt_dir = out_dir / "checkpoints"
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        transformers.set_seed(cfg.seed)

        examples, source = self._read(data)
        model, tok, base_info, tok_dir = self._load_base()
        prepared = self._encode(examples, source, tok)
        peft_model = self._wrap(model, base_info, tok_dir)
        trainer = self._trainer(peft_model, tok, prepared, ckpt_dir)
        resume_from = self._checkpoint_to_resume(ckpt_dir, trainer.is_world_process_zero())

        # The validation loss before any step: the baseline the curve and the card compare with.
        initial_eval = trainer.evaluate()["eval_loss"] if prepared.val.rows and resume_from is None else None
        t0 = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume_from)
        runtime = time.perf_counter() - t0
        if trainer.neftune is not None:
            trainer.neftune.handle.remove()  # the model we hand back adds no noise
        eval_loss = self._final_eval_loss(trainer) if prepared.val.rows else None

        result = FinetuneResult(adapter_dir, None, trainer.state.global_step,
                                output.training_loss if trainer.tokens_seen else None, eval_loss,
                                trainer.tokens_seen, runtime, loss_history(trainer.state.log_history),
                                trainer.is_world_process_zero(), initial_eval)
        if initial_eval is not None:
            result.history["validation"].insert(0, (0, initial_eval))
        if result.is_main_process:
            self._save(peft_model, tok, base_info, prepared, result)
            if cfg.merge:
                from .merge import merge_trained

                result.merged_dir = merge_trained(peft_model, tok, prepared.fmt, out_dir / "merged", adapter_dir)
        trainer.accelerator.wait_for_everyone()
        return result

    # ---- steps of a run

    def _read(self, data: Any) -> tuple[list[Example], str]:
        if isinstance(data, (str, Path)):
            path = Path(data)
            examples, source = load_examples(path), str(path / "pool.jsonl" if path.is_dir() else path)
        else:
            examples, source = as_examples(data), "in-memory records"
        if not examples:
            raise ConfigError(f"no training examples in {source}")
        return examples, source

    def _load_base(self) -> tuple[Any, Any, dict[str, Any], str | None]:
        """(model, tokenizer, what to record about the base, a directory holding its tokenizer)."""
        if self.model is not None:
            model, tok = self.model, self.tokenizer
            info = dict(self.base_info or {"spec": "<in-memory model>", "kind": "object"})
            tok_dir = info.get("path") or (info["spec"] if Path(str(info["spec"])).is_dir() else None)
        else:
            source = models.resolve(self.config.base_model)
            t0 = time.perf_counter()
            model, tok = models.load_model(source, dtype=self.config.dtype, device="cpu")  # Trainer places it
            info = models.source_info(source)  # for a GGUF file: its path and sha256
            info["spec"] = portable_spec(source)
            tok_dir = models.local_dir(source)
            if source.kind == "gguf":
                info["file"] = Path(source.path).name
                info["loaded_from"] = tok_dir
            log.info("loaded base %s in %.1fs", source.display, time.perf_counter() - t0)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        clear_dequantized_flags(model)
        model.config.use_cache = False  # a cache is useless in training and wrong for flattened batches
        return model, tok, info, tok_dir

    def _encode(self, examples: list[Example], source: str, tok: Any) -> _Data:
        cfg = self.config
        fmt = PromptFormat.for_tokenizer(tok, prefer=cfg.prompt_format)
        train_ex, val_ex = split_examples(examples, cfg.val_fraction, cfg.seed)
        train = encode_examples(tok, fmt, train_ex, cfg.loss, cfg.max_length)
        val = encode_examples(tok, fmt, val_ex, cfg.loss, cfg.max_length)
        if not train.rows:
            raise ConfigError(f"every training example was dropped: raise finetune.max_length above {cfg.max_length}")
        log.info("%d training examples (%d tokens, %d with loss), %d validation; prompt format %s; loss %s",
                 len(train.rows), train.tokens, train.target_tokens, len(val.rows), fmt.kind, cfg.loss)
        return _Data(source, fmt, train, val)

    def _wrap(self, model: Any, base_info: dict[str, Any], tok_dir: str | None) -> Any:
        import transformers
        from peft import get_peft_model

        cfg = self.config
        transformers.set_seed(cfg.seed)  # the adapter's initialisation depends on the seed alone
        with warnings.catch_warnings():
            # peft asks the model through a name transformers has deprecated; nothing for a user to change.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, adapters.peft_config(cfg, model, tok_dir))
        peft_cfg = peft_model.peft_config["default"]
        if not peft_cfg.base_model_name_or_path:
            peft_cfg.base_model_name_or_path = str(base_info.get("spec"))
        trainable, total = peft_model.get_nb_trainable_parameters()
        log.info("%s: %d trainable parameters (%.3f%% of %d)", cfg.method, trainable, 100 * trainable / total, total)
        if cfg.gradient_checkpointing:
            peft_model.enable_input_require_grads()
        return peft_model

    def _trainer(self, peft_model: Any, tok: Any, data: _Data, ckpt_dir: Path) -> Any:
        cfg = self.config
        padding_free = cfg.padding_free
        if padding_free and not packing_isolates_examples(peft_model):
            log.warning("%s lets flattened examples attend to each other; using length-grouped padded batches",
                        type(peft_model.get_base_model()).__name__)
            padding_free = False
        self.padding_free = padding_free
        neftune = None
        if cfg.neftune_alpha > 0:
            neftune = NEFTuneNoise(cfg.neftune_alpha)
            neftune.handle = peft_model.get_input_embeddings().register_forward_hook(neftune)
        trainer = make_trainer_class()(
            model=peft_model, args=self._training_args(ckpt_dir, bool(data.val.rows), padding_free),
            data_collator=PaddingFreeCollator() if padding_free else PaddedCollator(tok.pad_token_id),
            train_dataset=TokenizedDataset(data.train.rows),
            eval_dataset=TokenizedDataset(data.val.rows) if data.val.rows else None,
            selective_logits=cfg.method == "lora" and accepts_logits_to_keep(peft_model), neftune=neftune)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts to stdout
        trainer.remove_callback(ProgressCallback)  # ours shows loss and tokens/s
        for cb in make_callbacks(lambda: trainer.tokens_seen, bar=self.progress) + self.extra_callbacks:
            trainer.add_callback(cb)
        self.trainer = trainer
        return trainer

    def _training_args(self, ckpt_dir: Path, has_val: bool, padding_free: bool) -> Any:
        import torch
        from transformers import TrainingArguments

        cfg = self.config
        kwargs: dict[str, Any] = dict(
            output_dir=str(ckpt_dir),
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            learning_rate=cfg.lr,
            lr_scheduler_type=cfg.lr_scheduler,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            logging_steps=cfg.logging_steps,
            eval_strategy=("steps" if cfg.eval_steps else "epoch") if has_val else "no",
            eval_steps=cfg.eval_steps or None,
            save_strategy="steps" if cfg.save_steps else "epoch",
            save_steps=cfg.save_steps or 500,
            save_total_limit=cfg.save_total_limit,
            seed=cfg.seed,
            data_seed=cfg.seed,
            remove_unused_columns=False,  # the collator needs every field; no column is a model argument
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            disable_tqdm=True,
        )
        # Names that changed across transformers releases: use the ones this version has.
        fields = TrainingArguments.__dataclass_fields__
        if "warmup_ratio" in fields:
            kwargs["warmup_ratio"] = cfg.warmup_ratio
        else:
            kwargs["warmup_steps"] = cfg.warmup_ratio  # a float below 1 is a share of the steps
        if "train_sampling_strategy" in fields:
            kwargs["train_sampling_strategy"] = "random" if padding_free else "group_by_length"
        else:
            kwargs["group_by_length"] = not padding_free
        ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
        kwargs[ckpt] = cfg.gradient_checkpointing
        if cfg.gradient_checkpointing:
            kwargs[ckpt + "_kwargs"] = {"use_reentrant": False}
        return TrainingArguments(**kwargs)

    def _checkpoint_to_resume(self, ckpt_dir: Path, main: bool) -> str | None:
        """The checkpoint to continue from, after checking it was made with these settings."""
        from transformers.trainer_utils import get_last_checkpoint

        settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in RESUME_SAFE}
        recorded = ckpt_dir / RUN_SETTINGS_FILE
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if self.config.resume and last is not None:
            old = json.loads(recorded.read_text(encoding="utf-8")) if recorded.exists() else settings
            changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
            if changed:
                raise ConfigError(f"cannot resume from {last}: it was trained with other settings:\n  "
                                  + "\n  ".join(changed) + "\nRestore them, or start afresh without --resume.")
            log.info("resuming from %s", last)
            return last
        if self.config.resume:
            log.warning("resume asked for, but %s holds no checkpoint; training from the start", ckpt_dir)
        if main:
            if last is not None:
                old_ckpts = sorted(ckpt_dir.glob("checkpoint-*"))
                log.warning("starting afresh: removing %d checkpoint(s) of an earlier run in %s (use --resume to "
                            "continue from them)", len(old_ckpts), ckpt_dir)
                for d in old_ckpts:
                    shutil.rmtree(d, ignore_errors=True)
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            recorded.write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
        return None

    @staticmethod
    def _final_eval_loss(trainer: Any) -> float:
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        # The schedule often evaluates at the very last step; do not run it twice.
        if evals and evals[-1].get("step") == trainer.state.global_step:
            return float(evals[-1]["eval_loss"])
        return float(trainer.evaluate()["eval_loss"])

    # ---- outputs

    def _save(self, peft_model: Any, tok: Any, base_info: dict[str, Any], data: _Data,
              result: FinetuneResult) -> None:
        import peft
        import torch
        import transformers

        from .card import write_card

        cfg = self.config
        adapter_dir = result.adapter_dir
        adapter_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(adapter_dir))
        tok.save_pretrained(str(adapter_dir))
        data.fmt.save(adapter_dir)
        adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        problems = adapters.vllm_problems(adapter_cfg, max(cfg.max_lora_rank, VLLM_DEFAULT_MAX_LORA_RANK))
        for p in problems:
            log.warning("vLLM will not load this adapter as it is: %s", p)
        meta = {
            "base_model": base_info,
            "method": cfg.method,
            "learning_rate": cfg.lr,
            "config": dataclasses.asdict(cfg),
            "prompt_format": data.fmt.kind,
            "batching": "padding_free" if self.padding_free else "length_grouped",
            "data": {"source": data.source, "train_examples": len(data.train.rows),
                     "validation_examples": len(data.val.rows), "train_tokens": data.train.tokens,
                     "train_target_tokens": data.train.target_tokens,
                     "dropped_too_long": data.train.dropped + data.val.dropped},
            "results": {"global_step": result.global_step, "train_loss": result.train_loss,
                        "eval_loss": result.eval_loss, "initial_eval_loss": result.initial_eval_loss,
                        "train_runtime_s": round(result.train_runtime_s, 2),
                        "tokens_per_s": round(result.tokens_per_s, 1)},
            "history": result.history,
            "vllm": {"loads": not problems, "problems": problems,
                     "max_lora_rank": cfg.vllm_rank() if cfg.method == "lora" else None},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__},
        }
        adapters.write_meta(adapter_dir, meta)
        write_card(adapter_dir, meta)
        log.info("adapter saved to %s", adapter_dir)


def train_adapter(data: str | Path | Iterable[Any], out_dir: str | Path,
                  config: FinetuneConfig | dict[str, Any] | None = None, **kwargs: Any) -> FinetuneResult:
    """Train from a run directory, a JSONL file or (instruction, input, output) records; see LoraFinetuner."""
    return LoraFinetuner(config, **kwargs).train(data, out_dir)
