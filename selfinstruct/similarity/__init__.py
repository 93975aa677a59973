"""Exact ROUGE-L similarity search for Self-Instruct's novelty filter.

`RougeLIndex` makes the same keep/reject decisions as rouge-score's ROUGE-L F-measure
(``RougeScorer(["rougeL"]).score(pool_item, candidate).fmeasure > threshold``), float
rounding at the threshold included, without scoring the whole pool: an inverted index
probed rarest token first, integer LCS bounds, and a bit-parallel LCS on the survivors,
compiled with numba (`kernels`). `BruteForceRougeL` is rouge-score itself, pairwise,
kept as the reference for tests and benchmarks.

Tokenizers: `RougeTokenizer` (rouge-score's, optionally with its Porter stemming; the
default) and `UnicodeTokenizer` (any script, CJK per character; NOT rouge-score
compatible, for pools rouge-score cannot see).
"""

from typing import TYPE_CHECKING

from .index import RougeLIndex, Screening
from .scoring import rouge_l_f
from .tokenize import RougeTokenizer, Tokenizer, UnicodeTokenizer

__all__ = [
    "BruteForceRougeL",
    "RougeLIndex",
    "RougeTokenizer",
    "Screening",
    "Tokenizer",
    "UnicodeTokenizer",
    "rouge_l_f",
]

if TYPE_CHECKING:
    from .brute import BruteForceRougeL


def __getattr__(name: str):
    # The reference imports rouge-score (and through it NLTK and absl); load it only when
    # asked for, so that importing the index stays light.
    if name == "BruteForceRougeL":
        from .brute import BruteForceRougeL

        return BruteForceRougeL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
