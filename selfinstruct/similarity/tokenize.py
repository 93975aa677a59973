"""Tokenizers for the ROUGE-L index.

`RougeTokenizer` reproduces rouge-score's `DefaultTokenizer` token for token, which is what
makes the index's keep/reject decisions identical to the original Self-Instruct / Alpaca
filter. rouge-score (rouge_score/tokenize.py) does::

    text = text.lower()
    text = re.sub(r"[^a-z0-9]+", " ", text)
    tokens = re.split(r"\\s+", text)
    if stemmer: tokens = [stemmer.stem(x) if len(x) > 3 else x for x in tokens]
    tokens = [x for x in tokens if re.match(r"^[a-z0-9]+$", x)]

Without a stemmer the substitution leaves only ``[a-z0-9]`` runs separated by spaces, the
split can only produce those runs plus empty strings at the ends, and the final filter
drops the empty strings, so the result is exactly ``re.findall("[a-z0-9]+", text.lower())``
(a single C-level pass, several times faster). With a stemmer we follow rouge-score's steps
literally (stem only tokens longer than 3 characters, then the validity filter) with the
same NLTK Porter stemmer, memoised because stemming dominates the cost.

`UnicodeTokenizer` is a deliberate departure for non-English pools: rouge-score's tokenizer
deletes every character outside ``[a-z0-9]``, so two Chinese instructions both tokenise to
``[]`` and score 0, and the novelty filter never fires on Chinese data. It is off by
default and NOT rouge-score compatible.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache
from typing import Callable, Protocol, runtime_checkable

__all__ = ["Tokenizer", "RougeTokenizer", "UnicodeTokenizer", "as_tokenize_fn"]

_ROUGE_TOKEN_RE = re.compile(r"[a-z0-9]+")
# rouge-score's own patterns, used verbatim on the stemming path.
_NON_ALPHANUM_RE = re.compile(r"[^a-z0-9]+")
_SPACES_RE = re.compile(r"\s+")
_VALID_TOKEN_RE = re.compile(r"^[a-z0-9]+$")


@runtime_checkable
class Tokenizer(Protocol):
    """Anything with rouge-score's tokenizer interface: ``tokenize(text) -> list[str]``."""

    def tokenize(self, text: str) -> list[str]: ...


class RougeTokenizer:
    """rouge-score's default tokenizer (``RougeScorer(["rougeL"], use_stemmer=...)``).

    Args:
        use_stemmer: apply NLTK's Porter stemmer to tokens longer than 3 characters, as
            ``RougeScorer(use_stemmer=True)`` does. Self-Instruct and Alpaca use ``False``.
    """

    def __init__(self, use_stemmer: bool = False) -> None:
        self.use_stemmer = use_stemmer
        self._stem: Callable[[str], str] | None = None
        if use_stemmer:
            # Imported lazily: NLTK is a rouge-score dependency but slow to import, and the
            # default (non-stemming) path never needs it.
            from nltk.stem import porter

            stemmer = porter.PorterStemmer()
            # PorterStemmer.stem is a pure function of the word, so caching is safe.
            self._stem = lru_cache(maxsize=1 << 18)(stemmer.stem)

    def tokenize(self, text: str) -> list[str]:
        if self._stem is None:
            return _ROUGE_TOKEN_RE.findall(text.lower())
        stem = self._stem
        tokens = _SPACES_RE.split(_NON_ALPHANUM_RE.sub(" ", text.lower()))
        tokens = [stem(x) if len(x) > 3 else x for x in tokens]
        return [x for x in tokens if _VALID_TOKEN_RE.match(x)]

    __call__ = tokenize

    def __repr__(self) -> str:
        return f"RougeTokenizer(use_stemmer={self.use_stemmer})"


# Scripts written without spaces between words: each character is a token, the usual
# character-level treatment for ROUGE on Chinese/Japanese text.
_CJK_RANGES = (
    "\u2e80-\u2fdf"  # CJK radicals, Kangxi radicals
    "\u3005-\u3007"  # iteration mark, closing mark, ideographic zero
    "\u3021-\u3029\u3038-\u303b"  # Hangzhou numerals
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0003134f"  # CJK extensions B-G
)


def _mark_class() -> str:
    """A character class of every combining mark (categories Mn, Mc, Me).

    Python's ``re`` has no ``\\p{M}``, and ``\\w`` excludes most marks, so without this the
    Devanagari word "हिन्दी" would fall apart at its vowel signs.
    """
    ranges: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)).startswith("M"):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_UNICODE_TOKEN_RE: re.Pattern[str] | None = None


def _unicode_token_re() -> re.Pattern[str]:
    # Built on first use: scanning the Unicode table takes ~0.3 s, which importing the
    # package (used mostly with the default tokenizer) should not pay.
    global _UNICODE_TOKEN_RE
    if _UNICODE_TOKEN_RE is None:
        cjk = f"[{_CJK_RANGES}]"
        # A word: letters/digits of any script (not "_", not CJK) plus combining marks.
        word = f"(?:[^\\W_{_CJK_RANGES}]|[{_mark_class()}])+"
        _UNICODE_TOKEN_RE = re.compile(f"{cjk}|{word}")
    return _UNICODE_TOKEN_RE


class UnicodeTokenizer:
    """Words of any script, lower-cased; each CJK/kana character is its own token.

    NOT rouge-score compatible: on English text it mostly agrees with rouge-score, but it
    keeps accented letters ("café" is one token, rouge-score gives "caf"), so scores and
    decisions can differ. Use it for pools in languages rouge-score cannot see (rouge-score
    scores every pair of Chinese instructions 0, so its filter never rejects anything).
    Underscores separate words, as in rouge-score.
    """

    def tokenize(self, text: str) -> list[str]:
        return _unicode_token_re().findall(text.lower())

    __call__ = tokenize

    def __repr__(self) -> str:
        return "UnicodeTokenizer()"


def as_tokenize_fn(tokenizer: Tokenizer | Callable[[str], list[str]] | None) -> Callable[[str], list[str]]:
    """Normalise a tokenizer argument to a plain ``str -> list[str]`` function.

    Accepts None (rouge-score's default, no stemming), an object with ``tokenize`` (our
    tokenizers and rouge-score's), or a bare callable.
    """
    if tokenizer is None:
        return RougeTokenizer().tokenize
    tokenize = getattr(tokenizer, "tokenize", None)
    if callable(tokenize):
        return tokenize
    if callable(tokenizer):
        return tokenizer
    raise TypeError(f"tokenizer must have a tokenize(text) method or be callable, got {tokenizer!r}")
