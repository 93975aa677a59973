"""Token interning: each distinct token gets a small integer code, and a token sequence is
stored as the string of those code points.

Why strings: ``rapidfuzz.distance.LCSseq`` runs its bit-parallel LCS directly on ``str``
(and batches of them in ``process.cdist``) with no per-element conversion, and a Python
str of n codes below 65536 costs 74 + 2n bytes, about what an int32 array costs. Equal
code points mean equal tokens and nothing else, so no hash collision can merge two tokens
(on lists of str tokens rapidfuzz would compare 64-bit hashes; ints and characters it
compares by value).

Codes are assigned 0, 1, 2, ... skipping the surrogate block U+D800..U+DFFF (so that any
code sequence can be encoded as UTF-32 and back). The str form covers 1,112,064 distinct
tokens; past that, sequences that contain a larger code fall back to tuples of ints with
the same values. rapidfuzz compares a str's characters and a tuple's ints by value, so
str and tuple sequences can be compared with each other.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Union

__all__ = ["Vocabulary", "CodeSeq", "codes_of"]

# A token sequence as stored: str of code points, or (past the str range) tuple of codes.
CodeSeq = Union[str, tuple[int, ...]]

_SURROGATES_START = 0xD800
_SURROGATES_END = 0xE000
_STR_CODE_LIMIT = 0x110000


def codes_of(seq: CodeSeq) -> Iterable[int]:
    """The integer codes of a stored sequence."""
    return map(ord, seq) if isinstance(seq, str) else seq


class Vocabulary:
    """token -> code, with the encoders the index needs on its hot paths."""

    def __init__(self, str_code_limit: int = _STR_CODE_LIMIT) -> None:
        # Tokens whose code fits in a str, mapped straight to their 1-char string so that
        # encoding a sequence is one dict lookup per token and one join.
        self._chars: dict[str, str] = {}
        # Tokens beyond the str range (only with > 1.1M distinct tokens, or in tests that
        # lower `str_code_limit` to exercise this path).
        self._big: dict[str, int] = {}
        self._next = 0
        self.str_code_limit = str_code_limit

    def __len__(self) -> int:
        return len(self._chars) + len(self._big)

    @property
    def code_bound(self) -> int:
        """One more than the largest code handed out (the size of a code-indexed table)."""
        return self._next

    @property
    def all_str(self) -> bool:
        """Whether every code handed out so far fits the str form."""
        return self._next <= self.str_code_limit

    def _new_code(self) -> int:
        code = self._next
        if _SURROGATES_START <= code < _SURROGATES_END:
            code = _SURROGATES_END
        self._next = code + 1
        return code

    def _intern(self, token: str) -> str | int:
        code = self._new_code()
        if code < self.str_code_limit:
            ch = self._chars[token] = chr(code)
            return ch
        self._big[token] = code
        return code

    def encode(self, tokens: Sequence[str]) -> CodeSeq:
        """Encode ``tokens``, interning the new ones (for items being added)."""
        chars = self._chars
        try:
            return "".join([chars[t] for t in tokens])
        except KeyError:
            pass
        out: list[str | int] = []
        for t in tokens:
            c = chars.get(t)
            if c is None:
                c = self._big.get(t)
                if c is None:
                    c = self._intern(t)
            out.append(c)
        return self._pack(out)

    def lookup(self, tokens: Sequence[str]) -> CodeSeq:
        """Encode the known tokens of a query, dropping unknown ones: a token no item has
        cannot be part of any common subsequence, so dropping it leaves every LCS unchanged
        (the caller still counts it in the query's length)."""
        chars = self._chars
        if not self._big:
            return "".join([c for t in tokens if (c := chars.get(t)) is not None])
        out: list[str | int] = []
        for t in tokens:
            c = chars.get(t)
            if c is None:
                c = self._big.get(t)
            if c is not None:
                out.append(c)
        return self._pack(out)

    @staticmethod
    def _pack(parts: list[str | int]) -> CodeSeq:
        if all(isinstance(c, str) for c in parts):
            return "".join(parts)  # type: ignore[arg-type]
        return tuple(ord(c) if isinstance(c, str) else c for c in parts)
