"""Training progress: a bar with loss and tokens/s, log lines, and the loss history.

Trainer's own progress and printer callbacks are replaced by these (the printer writes raw
dicts to stdout). Tokens/s counts real tokens only (no padding), as the trainer reports them
through `tokens_seen`; under `accelerate launch` it is the main process's share.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


def make_callbacks(tokens_seen: Callable[[], int], bar: bool = True) -> list[Any]:
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        def __init__(self) -> None:
            self.bar = None
            self.t0 = 0.0
            self.tokens0 = 0
            self.last_loss: float | None = None
            self.last_eval: float | None = None

        def tok_s(self) -> float:
            elapsed = time.perf_counter() - self.t0
            return (tokens_seen() - self.tokens0) / elapsed if elapsed > 0 else 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.tokens0 = tokens_seen()
            if bar and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="finetune", unit="step",
                                dynamic_ncols=True)

        def show(self, state) -> None:
            if self.bar is None:
                return
            self.bar.update(state.global_step - self.bar.n)
            post = {"tok/s": f"{self.tok_s():.0f}"}
            if self.last_loss is not None:
                post["loss"] = f"{self.last_loss:.4f}"
            if self.last_eval is not None:
                post["val"] = f"{self.last_eval:.4f}"
            self.bar.set_postfix(post)

        def on_step_end(self, args, state, control, **kw):
            self.show(state)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" in logs:
                self.last_loss = float(logs["loss"])
                if state.is_world_process_zero:
                    log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", state.global_step, state.max_steps,
                             self.last_loss, logs.get("learning_rate", 0.0), self.tok_s())
            if "eval_loss" in logs:
                self.last_eval = float(logs["eval_loss"])
                if state.is_world_process_zero:
                    log.info("step %d  validation loss %.4f", state.global_step, self.last_eval)
            self.show(state)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return [ProgressLog()]


def loss_history(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, loss) pairs for training and validation from Trainer's log history."""
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    val = [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    return {"train": train, "validation": val}
