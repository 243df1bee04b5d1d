"""The dead-letter breaker: when do rejected records stop being "a few bad ones"?

One rule for every partition size. ``max_dead_letter_ratio`` bounds the TRUE reject
share of the source. The breaker trips when the dead letters seen so far are too many
to be explained by a source that rejects at most that share: the one-sided binomial
tail ``P(X >= dead | n=handled, p=limit)`` falls below ``1 - confidence`` (99% by
default). So 3 of 3 records dead-lettered trips (p = 0.05**3), 1 of 3 does not (p =
0.14: one bad record in three is no evidence of an outage), and at millions of records
the rule converges to the plain share. A load in which every record was dead-lettered
always fails: nothing written is never a success, whatever its size.

The earlier rule ignored the first 1,000 records, so a 900-record day with half its
records dead-lettered succeeded while a 1,000-record day with 6.8% failed, and a
DataFrame iterated as its 3 column names "succeeded" with 0 rows written.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_CONFIDENCE", "reject_share_exceeded", "reject_tail_probability"]

DEFAULT_CONFIDENCE = 0.99
_NEGLIGIBLE = 1e-17


def reject_tail_probability(dead: int, handled: int, limit: float) -> float:
    """``P(X >= dead)`` for ``X ~ Binomial(handled, limit)``: how plausible so many rejects are.

    Sums the tail from ``dead`` upwards with the pmf ratio recurrence, stopping once the
    terms are negligible (a few standard deviations: fast at any ``handled``). At or
    below the expected count it answers 1.0: no evidence at all, and no need to sum.
    """
    if dead > handled:
        raise ValueError(f"{dead} dead letters out of {handled} records")
    if dead <= 0 or limit >= 1 or dead <= handled * limit:
        return 1.0
    if limit <= 0:
        return 0.0
    return _tail(dead, handled, limit)


def _tail(k: int, n: int, p: float) -> float:
    log_term = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    term = math.exp(log_term)
    total = term
    ratio_factor = p / (1 - p)
    for i in range(k, n):
        term *= (n - i) / (i + 1) * ratio_factor
        total += term
        if term <= _NEGLIGIBLE * total:
            break
    return min(total, 1.0)


def reject_share_exceeded(
    dead: int, handled: int, limit: float, confidence: float = DEFAULT_CONFIDENCE
) -> bool:
    """True when ``dead`` of ``handled`` records cannot come from a source within ``limit``."""
    if handled <= 0 or dead <= 0:
        return False
    if dead == handled:
        return True
    if limit >= 1:
        return False
    return reject_tail_probability(dead, handled, limit) < 1 - confidence
