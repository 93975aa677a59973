"""Prompts for Self-Instruct's three steps (Wang et al. 2022, section 2.2), in two styles.

1. Instruction generation: a numbered list of sampled tasks ("Task 1: ..."), which the LM
   continues with new instructions only. A classification-only variant shows only
   classification tasks and asks for more of them.
2. Classification identification: few-shot Yes/No over the seed tasks' own
   is_classification labels (by default the seeds most similar to the instruction),
   answered greedily in a word or two.
3. Instance generation: few-shot from the seed tasks' instances. Classification tasks get
   output-first prompts ("Class label:" before "Input:") so that the LM picks a label
   first and writes an input for it, instead of writing inputs that all fall in one class;
   the others get input-first prompts ("Input:" then "Output:").

`plain` prompts are completions that end where the reply must start. `chat` prompts are
messages (few-shot examples as earlier user/assistant turns); when the backend can
prefill the reply, it starts with the same header a plain prompt ends with, which keeps a
small model on the format. `Prompt.reply_prefix` is that header, so the parsers always
read the reply whole.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Sequence

from .backends.base import Prompt
from .prompts import NO_INPUT, template
from .records import Task

Style = Literal["chat", "plain"]

# Field labels the instance parser reads (selfinstruct/instances.py).
EXAMPLE = "Example"
INPUT = "Input:"
OUTPUT = "Output:"
LABEL = "Class label:"


def _plural(n: int) -> str:
    return "" if n == 1 else "s"


# --------------------------------------------------------------------------- step 1

@dataclass(slots=True)
class InstructionPromptBuilder:
    """Step 1: continue a numbered list of instructions with `num_new` more."""

    style: Style = "plain"
    num_new: int = 1
    prefill: bool = False

    def build(self, examples: Sequence[Task], classification_only: bool = False) -> Prompt:
        listing = "\n".join(f"Task {i}: {' '.join(t.instruction.split())}" for i, t in enumerate(examples, 1))
        next_index = len(examples) + 1
        head = f"Task {next_index}:"
        variant = "si_instructions_clf" if classification_only else "si_instructions"
        if self.style == "plain":
            text = template(f"{variant}_plain.txt").format(examples=listing, next_index=next_index).rstrip()
            return Prompt(text=text, reply_prefix=head)
        user = template(f"{variant}_chat_user.txt").format(
            examples=listing, num_examples=len(examples), num_new=self.num_new, plural=_plural(self.num_new),
            next_index=next_index)
        return Prompt(messages=[
            {"role": "system", "content": template("si_instructions_chat_system.txt").strip()},
            {"role": "user", "content": user.strip()},
        ], prefill=head if self.prefill else "", reply_prefix=head if self.prefill else "")

    def stop(self, num_examples: int) -> list[str]:
        """Stop at the header of the task after the requested ones."""
        return [f"Task {num_examples + 1 + self.num_new}:"]


# --------------------------------------------------------------------------- step 2

def pick_classification_examples(seeds: Sequence[Task], n: int, rng: random.Random) -> list[Task]:
    """`n` labelled seed tasks for the Yes/No prompt: half of each label where the seeds
    allow, shuffled (a fixed order would teach a small model the pattern, not the idea)."""
    yes = [t for t in seeds if t.is_classification is True]
    no = [t for t in seeds if t.is_classification is False]
    n_no = min(len(no), n - min(len(yes), n // 2))
    n_yes = min(len(yes), n - n_no)
    picked = rng.sample(yes, n_yes) + rng.sample(no, n_no)
    rng.shuffle(picked)
    return picked


class ClassificationExamples:
    """The labelled seed tasks a Yes/No prompt shows for one instruction.

    `similarity`: the `n` labelled seeds most similar to the instruction (ROUGE-L), the most
    similar last, padded with balanced ones when fewer share a word with it. `fixed`: one
    balanced set for every instruction, as the paper's prompt was. On 24 held-out tasks (12
    classification) SmolLM2-135M-Instruct answers greedily with 0.50 accuracy after fixed
    examples (No to nearly everything) and 0.83 (plain) / 0.88 (chat) after the nearest
    seeds, because a small model copies its neighbours' labels (benchmarks/bench_si_classify.py).
    """

    def __init__(self, seeds: Sequence[Task], n: int, by: Literal["similarity", "fixed"] = "similarity",
                 rng: random.Random | None = None, tokenizer=None):
        from .similarity import RougeLIndex

        self.labelled = [t for t in seeds if t.is_classification is not None]
        self.n = n
        self.by = by
        self.balanced = pick_classification_examples(self.labelled, n, rng or random.Random(0))
        self._index = None
        if by == "similarity":
            self._index = RougeLIndex(tokenizer=tokenizer)
            self._index.extend(t.instruction for t in self.labelled)

    def for_instruction(self, instruction: str) -> list[Task]:
        if self._index is None:
            return list(self.balanced)
        nearest = [self.labelled[i] for i, _ in self._index.top_k(instruction, self.n)]
        taken = {t.id for t in nearest}
        padding = [t for t in self.balanced if t.id not in taken][:self.n - len(nearest)]
        return padding + nearest[::-1]


def _yes_no(flag: bool | None) -> str:
    return "Yes" if flag else "No"


@dataclass(slots=True)
class ClassificationPromptBuilder:
    """Step 2: is this instruction a classification task? Answered after labelled examples."""

    style: Style = "plain"

    def build(self, instruction: str, examples: Sequence[Task]) -> Prompt:
        instruction = " ".join(instruction.split())
        if self.style == "plain":
            shots = "\n\n".join(f"Task: {' '.join(t.instruction.split())}\nClassification: "
                                f"{_yes_no(t.is_classification)}" for t in examples)
            text = template("si_classify_plain.txt").format(examples=shots, instruction=instruction).rstrip()
            return Prompt(text=text)
        messages = [{"role": "system", "content": template("si_classify_chat_system.txt").strip()}]
        for t in examples:
            messages.append({"role": "user", "content": template("si_classify_chat_user.txt").format(
                instruction=" ".join(t.instruction.split())).strip()})
            messages.append({"role": "assistant", "content": _yes_no(t.is_classification)})
        messages.append({"role": "user", "content": template("si_classify_chat_user.txt").format(
            instruction=instruction).strip()})
        return Prompt(messages=messages)


# --------------------------------------------------------------------------- step 3

def format_instances(task: Task, output_first: bool, limit: int) -> str:
    """A task's instances as numbered examples, in the order the LM is asked to write them."""
    blocks = []
    for n, inst in enumerate(task.instances[:limit], 1):
        inp = inst.input.strip() or NO_INPUT
        if output_first:
            blocks.append(f"{EXAMPLE} {n}\n{LABEL} {inst.output.strip()}\n{INPUT} {inp}")
        else:
            blocks.append(f"{EXAMPLE} {n}\n{INPUT} {inp}\n{OUTPUT} {inst.output.strip()}")
    return "\n\n".join(blocks)


def pick_instance_examples(seeds: Sequence[Task], classification: bool, n: int, rng: random.Random) -> list[Task]:
    """`n` seed tasks of the same kind (classification or not) to show with their instances.

    Tasks with several instances teach "several different examples", so they come first;
    one slot goes to a task outside that group (often one without input), so the LM also
    sees the <noinput> form.
    """
    same = [t for t in seeds if bool(t.is_classification) == classification]
    if not same:
        same = list(seeds)
    multi = [t for t in same if len(t.instances) > 1]
    single = [t for t in same if len(t.instances) <= 1]
    n = min(n, len(same))
    k_multi = min(len(multi), n - 1 if single and n > 1 else n)
    picked = rng.sample(multi, k_multi) + rng.sample(single, min(n - k_multi, len(single)))
    rng.shuffle(picked)
    return picked


@dataclass(slots=True)
class InstancePromptBuilder:
    """Step 3: several instances for one task, output-first for classification tasks."""

    style: Style = "plain"
    max_examples: int = 5
    prefill: bool = False

    def head(self, output_first: bool) -> str:
        return f"{EXAMPLE} 1\n{LABEL if output_first else INPUT}"

    def build(self, instruction: str, output_first: bool, examples: Sequence[Task]) -> Prompt:
        instruction = " ".join(instruction.split())
        head = self.head(output_first)
        kind = "output_first" if output_first else "input_first"
        if self.style == "plain":
            shots = "\n\n".join(f"Task: {' '.join(t.instruction.split())}\n"
                                f"{format_instances(t, output_first, self.max_examples)}" for t in examples)
            text = template(f"si_instances_{kind}_plain.txt").format(examples=shots, instruction=instruction)
            return Prompt(text=text.rstrip() + "\n" + head, reply_prefix=head)
        user = template(f"si_instances_{kind}_chat_user.txt")
        messages = [{"role": "system", "content": template("si_instances_chat_system.txt").strip()}]
        for t in examples:
            messages.append({"role": "user", "content": user.format(
                instruction=" ".join(t.instruction.split()), max_examples=self.max_examples).strip()})
            messages.append({"role": "assistant", "content": format_instances(t, output_first, self.max_examples)})
        messages.append({"role": "user", "content": user.format(instruction=instruction,
                                                                max_examples=self.max_examples).strip()})
        return Prompt(messages=messages, prefill=head if self.prefill else "",
                      reply_prefix=head if self.prefill else "")

    def stop(self) -> list[str]:
        """A plain reply that starts the next task is over."""
        return ["\nTask:"]
