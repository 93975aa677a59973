"""Sampling in-context tasks from the pool and rendering generation prompts from templates.

The paper's sampling (Wang et al. 2022, section 2.2): each prompt shows 8 tasks, 6 human
seeds and 2 machine-generated ones (fewer machine ones while the pool has fewer), shuffled.
Templates live in `selfinstruct/templates/` so prompt wording is edited in one place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal, Sequence

from .backends.base import Prompt
from .records import Task

NO_INPUT = "<noinput>"


@cache
def template(name: str) -> str:
    """Read a template shipped in selfinstruct/templates (cached)."""
    return resources.files("selfinstruct").joinpath("templates", name).read_text(encoding="utf-8")


def sample_tasks(seeds: Sequence[Task], machine: Sequence[Task], rng: random.Random,
                 num_tasks: int = 8, num_machine: int = 2) -> list[Task]:
    """Sample `num_tasks` in-context tasks: up to `num_machine` machine-made, the rest seeds, shuffled."""
    m = min(num_machine, len(machine))
    picked = rng.sample(list(machine), m) if m else []
    s = min(num_tasks - m, len(seeds))
    picked += rng.sample(list(seeds), s)
    rng.shuffle(picked)
    return picked


def format_task(task: Task, index: int, rng: random.Random | None = None) -> str:
    inst = rng.choice(task.instances) if rng is not None and len(task.instances) > 1 else task.instances[0]
    return template("task_block.txt").format(
        index=index, instruction=task.instruction.strip(),
        input=inst.input.strip() or NO_INPUT, output=inst.output.strip(),
    ).strip()


@dataclass(slots=True)
class AlpacaPromptBuilder:
    """One-pass prompts (Stanford Alpaca): the LM writes instruction, input and output together."""

    style: Literal["chat", "plain"] = "chat"
    num_new: int = 1
    prefill: bool = False  # start the assistant's reply with the next task's header (local backends)

    def build(self, examples: Sequence[Task], rng: random.Random | None = None) -> Prompt:
        blocks = "\n\n".join(format_task(t, i, rng) for i, t in enumerate(examples, 1))
        next_index = len(examples) + 1
        # Plain prompts end inside the next task block; so does a chat prefill. Small models
        # keep the format far better when the reply starts in it.
        head = f"Task {next_index}\nInstruction:"
        if self.style == "plain":
            text = template("alpaca_plain.txt").format(examples=blocks, next_index=next_index).rstrip("\n")
            return Prompt(text=text, reply_prefix=head)
        user = template("alpaca_chat_user.txt").format(
            examples=blocks, num_examples=len(examples), num_new=self.num_new,
            plural="" if self.num_new == 1 else "s", next_index=next_index)
        return Prompt(messages=[
            {"role": "system", "content": template("alpaca_chat_system.txt").strip()},
            {"role": "user", "content": user.strip()},
        ], prefill=head if self.prefill else "", reply_prefix=head if self.prefill else "")

    def stop(self, num_examples: int) -> list[str]:
        """Stop after the requested tasks: the header of the one after them."""
        return [f"Task {num_examples + 1 + self.num_new}"]
