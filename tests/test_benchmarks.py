"""The benchmarks' arithmetic: steady-state deltas from per-step stamps, medians of at least three runs."""

import pytest

from benchmarks.timing import median_rate, steady_rate


def test_steady_rate_skips_the_warm_up_and_uses_deltas():
    # step 1 is slow (warm-up: 10 s), then 4 steps of 1 s, 100 tokens each
    stamps, units = [10.0, 11.0, 12.0, 13.0, 14.0], [100] * 5
    assert steady_rate(stamps, units, warmup=1) == 100.0  # not the cumulative 500 / 14
    assert steady_rate(stamps, units, warmup=0) == pytest.approx(400 / 4)
    with pytest.raises(ValueError, match="at least 3 timed steps"):
        steady_rate([1.0, 2.0], [1, 1], warmup=1)


def test_the_median_needs_three_runs():
    assert median_rate([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError, match="at least 3 runs"):
        median_rate([1.0, 2.0])
