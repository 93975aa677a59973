"""ROUGE-L F-measure exactly as rouge-score computes it, as a float.

rouge-score (``rouge_scorer._score_lcs`` and ``scoring.fmeasure``) computes::

    precision = lcs / len(prediction)            # 0 when either side has no tokens
    recall    = lcs / len(target)
    f = 2 * precision * recall / (precision + recall)  if precision + recall > 0 else 0.0

The true value is 2*lcs / (len_a + len_b), but the float can land an ulp either side of
it. That matters at the threshold: with 20*lcs == 7*(len_a + len_b) the true score is
exactly 0.7, yet lengths 8 and 12 with lcs 7 give 0.7000000000000001 (> 0.7: rejected)
while 10 and 10 with lcs 7 give 0.7 (kept). So every decision here evaluates rouge-score's
own expression, operation for operation, and compares with ``>``: IEEE-754 division,
multiplication and addition are correctly rounded, so Python floats and the compiled
kernels' float64 (numba, without fast-math) give bit-identical results.

The expression is symmetric: swapping target and prediction swaps precision and recall,
and ``2*p*r`` = ``(2*p)*r`` (2*p is exact) and ``p + r`` are commutative, so
``score(pool_item, candidate)`` and ``score(candidate, pool_item)`` are the same float.

Integers do the pruning: upper bounds on the LCS are integers, and for fixed lengths the
float score is non-decreasing in the LCS (consecutive values are at least
2/(len_a+len_b) apart, far more than the rounding error), so "the float score of the bound
is <= threshold" proves that no LCS up to the bound can exceed the threshold.
"""

from __future__ import annotations


__all__ = ["rouge_l_f"]


def rouge_l_f(lcs: int, len_target: int, len_prediction: int) -> float:
    """rouge-score's ROUGE-L F-measure for an LCS length and the two token counts."""
    if len_target == 0 or len_prediction == 0 or lcs == 0:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    return 2 * precision * recall / (precision + recall)
