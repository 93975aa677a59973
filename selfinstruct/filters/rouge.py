"""Self-Instruct's novelty filter: drop a candidate whose ROUGE-L F-measure with any
instruction already in the pool (seeds, accepted machine tasks, and candidates accepted
earlier in the same batch) is above the threshold (paper: 0.7).

The filter only reads the index; the pool adds each accepted instruction to it, so the
index can be swapped without touching the loop. Kept candidates carry their most similar
pool instructions and scores, as the paper's released data did.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..records import Candidate
from ..similarity import RougeLIndex
from .base import Verdict, drop


@dataclass(slots=True)
class RougeLFilter:
    index: RougeLIndex
    threshold: float = 0.7
    top_k: int = 10
    name: str = "rouge"

    def check(self, c: Candidate) -> Verdict:
        s = self.index.screen(c.instruction, k=self.top_k, threshold=self.threshold)
        similar = {self.index.text(i): round(score, 6) for i, score in s.top}
        if s.exceeded:
            best_id, best = s.top[0] if s.top else self.index.max_score(c.instruction)
            return drop("rouge_similar", score=best, most_similar=self.index.text(best_id))
        avg = sum(similar.values()) / len(similar) if similar else 0.0
        return Verdict(True, None, {"most_similar": similar, "avg_similarity_score": avg})
