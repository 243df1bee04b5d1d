"""The dead-letter breaker: one statistical rule for 3 records and for 15 million."""

from __future__ import annotations

import pytest

from etl_assets.breaker import reject_share_exceeded, reject_tail_probability


@pytest.mark.parametrize(
    ("dead", "handled", "trips"),
    [
        (3, 3, True),  # everything dead-lettered: never a success
        (1, 1, True),
        (2, 3, True),  # P(>=2 of 3 | 5%) = 0.0073
        (1, 3, False),  # P(>=1 of 3 | 5%) = 0.14: one bad record in three is no outage
        (459, 900, True),  # 51% of a 900-record day (succeeded under the old 1,000 floor)
        (68, 1_000, True),  # 6.8% of 1,000
        (50, 1_000, False),  # exactly the limit
        (5_300, 100_000, True),  # 5.3%: 4.4 standard deviations above 5%
        (5_100, 100_000, False),  # 5.1%: within noise of a 5% source
        (0, 15_193_596, False),
    ],
)
def test_the_breaker_trips_only_when_the_limit_is_implausible(
    dead: int, handled: int, trips: bool
) -> None:
    """At 5% and 99% confidence, the sizes the black-box report named give these verdicts."""
    assert reject_share_exceeded(dead, handled, 0.05) is trips


def test_tail_probability_matches_the_exact_binomial_on_small_numbers() -> None:
    """P(X >= 2 | n=3, p=0.05) = 3 * 0.05**2 * 0.95 + 0.05**3."""
    assert reject_tail_probability(2, 3, 0.05) == pytest.approx(3 * 0.05**2 * 0.95 + 0.05**3)


def test_a_zero_limit_trips_on_the_first_dead_letter_and_a_full_limit_never() -> None:
    """max_dead_letter_ratio=0 tolerates none; 1 tolerates any share short of all."""
    assert reject_share_exceeded(1, 1_000, 0.0) is True
    assert reject_share_exceeded(999, 1_000, 1.0) is False
    assert reject_share_exceeded(1_000, 1_000, 1.0) is True


def test_fifteen_million_records_are_judged_fast() -> None:
    """The tail sums a few standard deviations, not millions of terms."""
    assert reject_share_exceeded(765_000, 15_193_596, 0.05) is True
    assert reject_share_exceeded(759_000, 15_193_596, 0.05) is False
