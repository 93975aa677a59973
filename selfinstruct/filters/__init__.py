"""Candidate filters: each returns keep, or drop with a reason the loop counts and saves."""

from .base import KEEP, Filter, Verdict, drop, run_filters
from .heuristics import EmptyOutputFilter, KeywordFilter, LeadingCharFilter, PrefixFilter, WordCountFilter

__all__ = ["KEEP", "Filter", "Verdict", "drop", "run_filters", "EmptyOutputFilter", "KeywordFilter",
           "LeadingCharFilter", "PrefixFilter", "WordCountFilter", "build_filters"]


def build_filters(cfg, index) -> list[Filter]:
    """The paper's filter chain from a FilterConfig, cheap checks first, ROUGE-L last."""
    from .rouge import RougeLFilter

    return [
        LeadingCharFilter(),
        WordCountFilter(cfg.min_words, cfg.max_words),
        KeywordFilter(list(cfg.blocklist)),
        PrefixFilter(list(cfg.blocked_prefixes)),
        EmptyOutputFilter(),
        RougeLFilter(index, cfg.rouge_threshold, cfg.similar_top_k),
    ]
