"""The reference: rouge-score itself, pairwise, as Self-Instruct and Alpaca run it.

Quadratic and slow (tens of microseconds per pair in pure Python); it exists so tests and
the benchmark can check `RougeLIndex` against the real thing. Same interface as the index.
"""

from __future__ import annotations

from typing import Iterable

from rouge_score import rouge_scorer

from .index import Screening
from .tokenize import Tokenizer

__all__ = ["BruteForceRougeL"]


class BruteForceRougeL:
    """Scores every pool item with ``RougeScorer(["rougeL"]).score(pool_item, candidate)``.

    Args:
        tokenizer: passed to RougeScorer (rouge-score's default tokenizer when None).
        threshold: default threshold.
        use_stemmer: RougeScorer's ``use_stemmer`` (ignored when a tokenizer is given).
    """

    def __init__(self, tokenizer: Tokenizer | None = None, threshold: float = 0.7,
                 use_stemmer: bool = False) -> None:
        self.threshold = threshold
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer, tokenizer=tokenizer)
        self.texts: list[str] = []

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> int:
        self.texts.append(text)
        return len(self.texts) - 1

    def extend(self, texts: Iterable[str]) -> None:
        self.texts.extend(texts)

    def text(self, item_id: int) -> str:
        return self.texts[item_id]

    def scores(self, text: str) -> list[float]:
        """rouge-score's F for every pool item, target = pool item, prediction = text."""
        return [float(self.scorer.score(t, text)["rougeL"].fmeasure) for t in self.texts]

    def max_score(self, text: str) -> tuple[int | None, float]:
        top = self.top_k(text, 1)
        return top[0] if top else (None, 0.0)

    def exceeds(self, text: str, threshold: float | None = None) -> bool:
        t = self.threshold if threshold is None else threshold
        return any(f > t for f in self.scores(text))

    def top_k(self, text: str, k: int = 10) -> list[tuple[int, float]]:
        ranked = sorted(((i, f) for i, f in enumerate(self.scores(text)) if f > 0), key=lambda p: (-p[1], p[0]))
        return ranked[:k]

    def screen(self, text: str, k: int = 10, threshold: float | None = None) -> Screening:
        t = self.threshold if threshold is None else threshold
        scores = self.scores(text)
        ranked = sorted(((i, f) for i, f in enumerate(scores) if f > 0), key=lambda p: (-p[1], p[0]))
        return Screening(exceeded=any(f > t for f in scores), top=ranked[:k])
