"""LoraFinetuner: LoRA (or prompt / prefix tuning) on transformers.Trainer + peft.

Trainer runs the loop (optimiser, schedule, checkpoints, resume, distributed); this module
supplies what makes it fast and exact on small data:
  * padding-free batches (see data.py) or length-grouped padded ones;
  * logits only where a label is: `logits_to_keep` gets the boolean target mask, so the
    vocabulary projection and its softmax run on answer tokens only (on SmolLM2 the
    49k-wide head is a fifth of the forward FLOPs and most of the activation memory);
  * the loss summed per token and divided by the number of target tokens in the whole
    accumulated batch (and across processes), so gradient accumulation and padding change
    nothing;
  * NEFTune noise scaled by each example's own length, which a flattened batch hides from
    Trainer's built-in hook;
  * a token-weighted validation loss.

The same code runs on one CPU and under `accelerate launch` on several GPUs:

    accelerate launch --multi_gpu --num_processes 4 $(which selfinstruct) finetune outputs/default \
        --set finetune.dtype=bfloat16

Each process loads the base, takes its shard of every batch, and only the main process
writes the adapter, the card and the merged model.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import models
from ..config import ConfigError
from ..models import ModelError
from ..sft_format import PromptFormat
from . import adapters
from .config import FinetuneConfig, finetune_config
from .data import (IGNORE, EncodedSet, Example, PaddedCollator, PaddingFreeCollator, TokenizedDataset,
                   as_examples, encode_examples, load_examples, split_examples)
from .progress import loss_history, make_callbacks

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    adapter_dir: Path
    merged_dir: Path | None
    global_step: int
    train_loss: float | None  # mean training loss of this run's steps
    eval_loss: float | None  # validation loss at the end (None without a validation split)
    train_tokens: int  # real (non-pad) tokens processed by this process in this run
    train_runtime_s: float
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    is_main_process: bool = True  # False on the other ranks of a distributed run

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


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class NEFTuneNoise:
    """Uniform noise on input embeddings, alpha / sqrt(L * d) with L each example's own length."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.lengths = None  # set by the trainer before every forward

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        if not module.training or self.lengths is None or self.alpha <= 0:
            return output
        lengths = self.lengths.to(output.device)
        dim = output.shape[-1]
        if output.shape[0] == 1 and int(lengths.sum()) == output.shape[1]:  # one flattened row
            per = lengths.repeat_interleave(lengths).to(output.dtype).view(1, -1, 1)
        else:  # padded rows
            per = lengths.to(output.dtype).view(-1, 1, 1)
        scale = self.alpha / (per * dim).sqrt()
        return output + (output.new_empty(output.shape).uniform_(-1, 1) * scale)


def token_loss_sum(model: Any, inputs: dict[str, Any], selective_logits: bool = True,
                   neftune: NEFTuneNoise | None = None, per_example: bool = False) -> tuple[Any, Any]:
    """(sum of next-token losses, number of target tokens) for one collated batch; with
    `per_example`, two vectors with one entry per example instead.

    With `selective_logits`, the model projects only the hidden states whose next token is a
    target (`logits_to_keep` takes the boolean mask); otherwise all logits are computed and the
    same positions picked afterwards, which prompt tuning needs (its virtual tokens come first).
    """
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    lengths = inputs.pop("seq_lengths", None)
    if neftune is not None:
        neftune.lengths = lengths
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    keep = targets != IGNORE
    if selective_logits:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        logits = logits.reshape(-1, logits.shape[-1])
    else:
        logits = model(**inputs, use_cache=False).logits
        logits = logits[:, -labels.shape[1]:, :][keep]
    if not per_example:
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), keep.sum()
    token_loss = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    if labels.shape[0] == 1 and lengths is not None and len(lengths) > 1:  # one flattened row
        example_of = torch.repeat_interleave(torch.arange(len(lengths), device=labels.device),
                                             lengths.to(labels.device))[keep[0]]
        n = len(lengths)
    else:
        example_of = keep.nonzero()[:, 0]
        n = labels.shape[0]
    sums = torch.zeros(n, device=token_loss.device, dtype=token_loss.dtype).index_add_(0, example_of, token_loss)
    counts = torch.zeros(n, device=labels.device, dtype=torch.long).index_add_(0, example_of,
                                                                              torch.ones_like(example_of))
    return sums, counts


def _make_trainer_class():
    import torch
    from transformers import Trainer

    class SelectiveLossTrainer(Trainer):
        """Trainer whose loss projects only the positions that have a target token."""

        loss_is_scaled_for_ga = True

        def __init__(self, *args: Any, selective_logits: bool = True, neftune: NEFTuneNoise | None = None,
                     **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.selective_logits = selective_logits
            self.neftune = neftune
            self.tokens_seen = 0
            # Have Trainer count target tokens over the accumulated batch and all processes.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "seq_lengths" in inputs:
                self.tokens_seen += int(inputs["seq_lengths"].sum())
            loss_sum, count = token_loss_sum(model, inputs, self.selective_logits, self.neftune)
            denom = num_items_in_batch if num_items_in_batch is not None else count
            loss = loss_sum / torch.as_tensor(denom, device=loss_sum.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every process's tokens, and DDP averages gradients.
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            """Validation loss per target token over the whole split (not a mean of batch means)."""
            loader = self.get_eval_dataloader(eval_dataset)
            model = self.model
            was_training = model.training
            model.eval()
            total = torch.zeros((), device=self.args.device, dtype=torch.float64)
            count = torch.zeros((), device=self.args.device, dtype=torch.long)
            with torch.no_grad():
                for batch in loader:
                    batch = self._prepare_inputs(batch)
                    sums, counts = token_loss_sum(model, batch, self.selective_logits, per_example=True)
                    # Per example, so that the samples accelerate repeats to even out shards are dropped.
                    sums, counts = self.accelerator.gather_for_metrics((sums, counts))
                    total += sums.sum().double()
                    count += counts.sum()
            model.train(was_training)
            metrics = {f"{metric_key_prefix}_loss": float(total / count.clamp(min=1))}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return SelectiveLossTrainer


# --------------------------------------------------------------------------- the finetuner

class LoraFinetuner:
    """Finetune a base model on instruction examples and save a PEFT adapter.

    `model`/`tokenizer` may be given (e.g. a tiny test model); peft wraps `model` in place,
    so pass a copy if you still need the plain base. `base_info` then says where the base
    lives on disk ({"spec": directory}) so `load_adapter` can find it again.
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
        self.trainer: Any = None

    # ---- inputs

    def _load_base(self) -> tuple[Any, Any, dict[str, Any], str | None]:
        cfg = self.config
        if self.model is not None:
            info = dict(self.base_info or {"spec": "<in-memory model>", "kind": "object"})
            tok_dir = info.get("path") or (info["spec"] if Path(str(info["spec"])).is_dir() else None)
            return self.model, self.tokenizer, info, tok_dir
        source = models.resolve(cfg.base_model)
        t0 = time.perf_counter()
        model, tok = models.load_model(source, dtype=cfg.dtype, device="cpu")  # Trainer places it
        info = models.source_info(source)
        info["spec"] = portable_spec(source)
        if source.kind == "gguf":
            info["file"] = Path(source.path).name
            info["loaded_from"] = models.local_dir(source)
        log.info("loaded base %s in %.1fs", source.display, time.perf_counter() - t0)
        return model, tok, info, models.local_dir(source)

    def _examples(self, data: Any, run_dir: Path | None) -> tuple[list[Example], str]:
        if isinstance(data, (str, Path)):
            return load_examples(data), str(data)
        if data is None:
            if run_dir is None:
                raise ConfigError("no training data: give a run directory or a JSONL file")
            return load_examples(run_dir), str(run_dir / "pool.jsonl")
        return as_examples(data), "in-memory records"

    # ---- the run

    def train(self, data: str | Path | Iterable[Any] | None, out_dir: str | Path) -> FinetuneResult:
        """Train on `data` (a run dir, a JSONL file, or records) and write under `out_dir`:
        adapter/ (or config.output_dir), checkpoints/, and merged/ when asked."""
        import torch
        import transformers
        from peft import get_peft_model

        cfg = self.config
        out_dir = Path(out_dir)
        adapter_dir = Path(cfg.output_dir) if cfg.output_dir else out_dir / "adapter"
        ckpt_dir = out_dir / "checkpoints"
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        transformers.set_seed(cfg.seed)

        examples, data_source = self._examples(data, out_dir if data is None else None)
        if not examples:
            raise ConfigError(f"no training examples in {data_source}")
        model, tok, base_info, tok_dir = self._load_base()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        clear_dequantized_flags(model)
        fmt = PromptFormat.for_tokenizer(tok, prefer=cfg.prompt_format)

        train_ex, val_ex = split_examples(examples, cfg.val_fraction, cfg.seed)
        train_set = encode_examples(tok, fmt, train_ex, cfg.loss, cfg.max_length)
        val_set = encode_examples(tok, fmt, val_ex, cfg.loss, cfg.max_length)
        if not train_set.rows:
            raise ConfigError(f"every training example was dropped: raise finetune.max_length above {cfg.max_length}")
        log.info("%d training examples (%d tokens, %d trained), %d validation; prompt format %s; loss %s",
                 len(train_set.rows), train_set.tokens, train_set.target_tokens, len(val_set.rows), fmt.kind, cfg.loss)

        model.config.use_cache = False  # a cache is useless in training and wrong for flattened batches
        transformers.set_seed(cfg.seed)  # the adapter's initialisation depends on the seed alone
        peft_model = get_peft_model(model, adapters.peft_config(cfg, model, tok_dir))
        peft_cfg = peft_model.peft_config["default"]
        if not peft_cfg.base_model_name_or_path:
            peft_cfg.base_model_name_or_path = str(base_info.get("spec"))
        trainable, total = peft_model.get_nb_trainable_parameters()
        log.info("%s: %d trainable parameters (%.3f%% of %d)", cfg.method, trainable, 100 * trainable / total, total)
        if cfg.gradient_checkpointing:
            peft_model.enable_input_require_grads()

        selective = cfg.method == "lora" and _accepts_logits_to_keep(peft_model)
        neftune = NEFTuneNoise(cfg.neftune_alpha) if cfg.neftune_alpha > 0 else None
        if neftune is not None:
            hook = peft_model.get_input_embeddings().register_forward_hook(neftune)
        args = self._training_args(cfg, ckpt_dir, has_val=bool(val_set.rows))
        trainer_cls = _make_trainer_class()
        collator = PaddingFreeCollator() if cfg.padding_free else PaddedCollator(tok.pad_token_id)
        trainer = trainer_cls(model=peft_model, args=args, data_collator=collator,
                              train_dataset=TokenizedDataset(train_set.rows),
                              eval_dataset=TokenizedDataset(val_set.rows) if val_set.rows else None,
                              selective_logits=selective, neftune=neftune)
        self.trainer = trainer
        self._swap_callbacks(trainer)

        resume_from = self._checkpoint_to_resume(ckpt_dir, trainer.is_world_process_zero())
        t0 = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume_from)
        runtime = time.perf_counter() - t0
        if neftune is not None:
            hook.remove()
        eval_loss = None
        if val_set.rows:
            evals = [e for e in trainer.state.log_history if "eval_loss" in e]
            # The schedule may have just evaluated at this very step; do not run it twice.
            done = bool(evals) and evals[-1].get("step") == trainer.state.global_step
            eval_loss = evals[-1]["eval_loss"] if done else trainer.evaluate()["eval_loss"]

        history = loss_history(trainer.state.log_history)
        result = FinetuneResult(adapter_dir, None, trainer.state.global_step,
                                output.training_loss if output.global_step else None, eval_loss,
                                trainer.tokens_seen, runtime, history, trainer.is_world_process_zero())
        if trainer.is_world_process_zero():
            self._save(peft_model, tok, fmt, cfg, base_info, data_source, train_set, val_set, result)
            if cfg.merge:
                from .merge import merge_trained

                result.merged_dir = merge_trained(peft_model, tok, fmt, out_dir / "merged", adapter_dir)
        trainer.accelerator.wait_for_everyone()
        return result

    def _training_args(self, cfg: FinetuneConfig, ckpt_dir: Path, has_val: bool) -> Any:
        import torch
        from transformers import TrainingArguments

        eval_strategy = ("steps" if cfg.eval_steps else "epoch") if has_val else "no"
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
            eval_strategy=eval_strategy,
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
            disable_tqdm=True,  # our own bar shows loss and tokens/s
        )
        # Names that changed across transformers releases: use the ones this version has.
        fields = TrainingArguments.__dataclass_fields__
        if "warmup_ratio" in fields:
            kwargs["warmup_ratio"] = cfg.warmup_ratio
        else:
            kwargs["warmup_steps"] = cfg.warmup_ratio  # a float below 1 is a share of the steps
        if "train_sampling_strategy" in fields:
            kwargs["train_sampling_strategy"] = "random" if cfg.padding_free else "group_by_length"
        else:
            kwargs["group_by_length"] = not cfg.padding_free
        ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
        kwargs[ckpt] = cfg.gradient_checkpointing
        if cfg.gradient_checkpointing:
            kwargs[ckpt + "_kwargs"] = {"use_reentrant": False}
        return TrainingArguments(**kwargs)

    def _swap_callbacks(self, trainer: Any) -> None:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        for cb in make_callbacks(lambda: trainer.tokens_seen, bar=self.progress) + self.extra_callbacks:
            trainer.add_callback(cb)

    def _checkpoint_to_resume(self, ckpt_dir: Path, main: bool) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if self.config.resume:
            if last is None:
                log.warning("resume asked for, but %s holds no checkpoint; training from the start", ckpt_dir)
            else:
                log.info("resuming from %s", last)
            return last
        if last is not None and main:
            old = sorted(ckpt_dir.glob("checkpoint-*"))
            log.warning("starting afresh: removing %d checkpoint(s) of an earlier run in %s (use --resume to "
                        "continue from them)", len(old), ckpt_dir)
            for d in old:
                shutil.rmtree(d, ignore_errors=True)
        return None

    # ---- outputs

    def _save(self, peft_model: Any, tok: Any, fmt: PromptFormat, cfg: FinetuneConfig, base_info: dict[str, Any],
              data_source: str, train_set: EncodedSet, val_set: EncodedSet, result: FinetuneResult) -> None:
        import json

        import peft
        import torch
        import transformers

        from .card import write_card

        adapter_dir = result.adapter_dir
        adapter_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(adapter_dir))
        tok.save_pretrained(str(adapter_dir))
        fmt.save(adapter_dir)
        adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        problems = adapters.vllm_problems(adapter_cfg, max(cfg.max_lora_rank, 16))
        for p in problems:
            log.warning("vLLM will not load this adapter as it is: %s", p)
        meta = {
            "base_model": base_info,
            "method": cfg.method,
            "learning_rate": cfg.lr,
            "config": dataclasses.asdict(cfg),
            "prompt_format": fmt.kind,
            "data": {"source": data_source, "train_examples": len(train_set.rows),
                     "validation_examples": len(val_set.rows), "train_tokens": train_set.tokens,
                     "train_target_tokens": train_set.target_tokens,
                     "dropped_too_long": train_set.dropped + val_set.dropped},
            "results": {"global_step": result.global_step, "train_loss": result.train_loss,
                        "eval_loss": result.eval_loss, "train_runtime_s": round(result.train_runtime_s, 2),
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
