"""The prompt format shared by finetuning and evaluation.

A model must be asked at inference exactly as it was taught, so the format is chosen once
(the tokenizer's chat template where it has one, else the Alpaca template for base
models), saved beside the adapter as `prompt_format.json`, and loaded back by `eval`.
The completion always ends with the EOS token, which is trained, so the model learns to stop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
FILE_NAME = "prompt_format.json"


@dataclass(frozen=True)
class PromptFormat:
    kind: Literal["chat", "alpaca"]
    chat_template: str | None = None  # the exact template used, saved so later tokenizer changes cannot drift

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, prefer: str = "auto") -> PromptFormat:
        template = getattr(tokenizer, "chat_template", None)
        if prefer == "chat" and not template:
            raise ValueError("prompt format 'chat' asked for, but the tokenizer has no chat template; use 'alpaca'")
        if prefer == "alpaca" or not template:
            return cls("alpaca")
        return cls("chat", template)

    @property
    def add_special_tokens(self) -> bool:
        """What to pass as `tokenizer(prompt, add_special_tokens=...)`, at training and at inference alike:
        a chat template writes its own special tokens; the Alpaca text gets the tokenizer's BOS."""
        return self.kind == "alpaca"

    def user_text(self, instruction: str, input: str = "") -> str:
        return f"{instruction.strip()}\n\n{input.strip()}" if input.strip() else instruction.strip()

    def prompt(self, tokenizer: Any, instruction: str, input: str = "") -> str:
        """The text the model sees before its answer."""
        if self.kind == "alpaca":
            tpl = ALPACA_WITH_INPUT if input.strip() else ALPACA_NO_INPUT
            return tpl.format(instruction=instruction.strip(), input=input.strip())
        return tokenizer.apply_chat_template([{"role": "user", "content": self.user_text(instruction, input)}],
                                             chat_template=self.chat_template, tokenize=False,
                                             add_generation_prompt=True)

    def completion(self, tokenizer: Any, output: str) -> str:
        """The text the model is trained to produce: the answer, then EOS."""
        return output.strip() + (tokenizer.eos_token or "")

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PromptFormat:
        path = Path(directory) / FILE_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: was this adapter trained by selfinstruct?")
        return cls(**json.loads(path.read_text(encoding="utf-8")))
