"""The training loss, and the Trainer subclass that uses it.

  * Logits only where a label is: `logits_to_keep` gets the boolean target mask, so the
    vocabulary projection and its softmax run on target tokens only (on SmolLM2 the
    49k-wide head is a fifth of the forward FLOPs and most of the activation memory).
  * The loss is summed per token and divided by the target tokens of the whole accumulated
    batch, across processes, so gradient accumulation, padding and sharding change nothing.
  * NEFTune noise is scaled by each example's own length, which a flattened batch hides from
    Trainer's built-in hook (it would use the whole row's length).
  * The validation loss is per target token over the whole split, not a mean of batch means.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from .data import IGNORE

log = logging.getLogger(__name__)


class NEFTuneNoise:
    """Uniform noise on input embeddings, alpha / sqrt(L * d) with L each example's own length."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.lengths = None  # set before every forward
        self.handle: Any = None  # the forward hook's handle, to remove it after training

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


def accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_loss_sum(model: Any, inputs: dict[str, Any], selective_logits: bool = True,
                   neftune: NEFTuneNoise | None = None, per_example: bool = False) -> tuple[Any, Any]:
    """(sum of next-token losses, number of target tokens) for one collated batch; with
    `per_example`, two vectors with one entry per example instead.

    With `selective_logits`, the model projects only the hidden states whose next token is a
    target; otherwise all logits are computed and the same positions picked afterwards,
    which prompt tuning needs (its virtual tokens come first).
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


def packing_isolates_examples(model: Any) -> bool:
    """Whether this model keeps flattened examples apart when given restarting position_ids.

    transformers builds per-example attention from position_ids for its own models; a model
    whose attention ignores them would let examples attend to each other, silently. Two short
    sequences are run flattened and alone, and the second one's logits must agree.
    """
    import torch

    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    first = torch.arange(3, 9, device=device) % vocab
    second = torch.arange(11, 16, device=device) % vocab
    flat = torch.cat([first, second]).unsqueeze(0)
    positions = torch.cat([torch.arange(6, device=device), torch.arange(5, device=device)]).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=flat, position_ids=positions, use_cache=False).logits[0, 6:].float()
            alone = model(input_ids=second.unsqueeze(0), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    scale = alone.abs().max().clamp(min=1e-6)
    return bool(((packed - alone).abs().max() / scale) < 5e-2)  # leaks are O(1); bf16 noise is ~1e-2


def make_trainer_class() -> type:
    """transformers.Trainer with the loss above (built on first use: no torch at import)."""
    import torch
    from transformers import Trainer

    class SelectiveLossTrainer(Trainer):
        loss_is_scaled_for_ga = True  # divided by the accumulated batch's target tokens already

        def __init__(self, *args: Any, selective_logits: bool = True, neftune: NEFTuneNoise | None = None,
                     **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.selective_logits = selective_logits
            self.neftune = neftune
            self.tokens_seen = 0  # real tokens trained on by this process
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
