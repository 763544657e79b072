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


@pytest.mark.parametrize("script, args, last", [
    ("bench_staging.py", ["--rows", "3000"], "RATIO staging time ours/bare-scan = "),
    ("bench_concurrency.py", ["--rows", "3000", "--readers", "2", "--think", "0.05"],
     "RATIO staging time with readers/alone = "),
    ("bench_sources.py", ["--queries", "200", "--passages", "1000", "--texts", "1000", "--length-texts", "2000"],
     "RATIO length_check ours/bare = "),
    ("bench_scale.py", ["--part", "c", "--pairs", "5000", "--eval", "500", "--leaks", "100"],
     "RATIO decontamination ours/bare = "),
    ("bench_scale.py", ["--part", "a", "--sources", "2", "--source-pairs", "40"], "RATIO one/full = "),
    ("bench_scale.py", ["--part", "b", "--million", "600", "--filter-pairs", "200"],
     "RATIO filter memory besides the matrices, 200/50 pairs = "),
    ("bench_partitions.py", ["--sources", "3", "--pairs", "10"], "single-run "),
])
def test_the_lake_benchmarks_run_and_print_their_ratio(script, args, last):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / script), *args], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1].startswith(last)
    assert script == "bench_partitions.py" or float(lines[-1].split("= ")[1]) > 0
    if script == "bench_concurrency.py":
        assert "failed reads = 0" in lines
