"""The health bands: the spec's table, half-open boundaries, n/a, and the worst of statuses."""

from __future__ import annotations

import math

import pytest

from lorahive.observe.health_bands import BANDS, metric_status, status, worst

# (metric, value, expected): the spec's table, a value inside each band and on each boundary.
CASES = [
    ("entropy_ratio", 0.2, "critical"),
    ("entropy_ratio", 0.5, "warning"),
    ("entropy_ratio", 0.79, "warning"),
    ("entropy_ratio", 0.8, "healthy"),
    ("entropy_ratio", 1.0, "healthy"),
    ("entropy_ratio", 1.2, "warning"),
    ("entropy_ratio", 1.99, "warning"),
    ("entropy_ratio", 2.0, "critical"),
    ("entropy_ratio", 7.0, "critical"),
    ("queue_depth", 0, "healthy"),
    ("queue_depth", 9, "healthy"),
    ("queue_depth", 10, "warning"),
    ("queue_depth", 49, "warning"),
    ("queue_depth", 50, "critical"),
    ("wait_time", 4.9, "healthy"),
    ("wait_time", 5.0, "warning"),
    ("wait_time", 19.9, "warning"),
    ("wait_time", 20.0, "critical"),
    ("rejection_rate", 0.0, "healthy"),
    ("rejection_rate", 0.009, "healthy"),
    ("rejection_rate", 0.01, "warning"),
    ("rejection_rate", 0.05, "critical"),
    ("rejection_rate", 1.0, "critical"),
    ("fast_track_rate", 0.0, "critical"),
    ("fast_track_rate", 0.01, "warning"),
    ("fast_track_rate", 0.05, "healthy"),
    ("fast_track_rate", 0.1, "healthy"),
    ("fast_track_rate", 0.2, "warning"),
    ("fast_track_rate", 0.39, "warning"),
    ("fast_track_rate", 0.4, "critical"),
    ("conflict_rate", 0.005, "healthy"),
    ("conflict_rate", 0.03, "warning"),
    ("conflict_rate", 0.06, "critical"),
]


@pytest.mark.parametrize(("metric", "value", "expected"), CASES)
def test_status_follows_the_spec_table(metric, value, expected):
    assert status(metric, value) == expected


def test_every_metric_has_bands_that_tile_the_real_line():
    assert set(BANDS) == {
        "entropy_ratio",
        "queue_depth",
        "wait_time",
        "rejection_rate",
        "fast_track_rate",
        "conflict_rate",
    }
    for metric, bands in BANDS.items():
        assert bands[0][0] == -math.inf and bands[-1][1] == math.inf, metric
        for (_, hi, _), (lo, _, _) in zip(bands[:-1], bands[1:], strict=True):
            assert hi == lo, metric  # contiguous, no gap and no overlap
        assert all(lo < hi and s in ("healthy", "warning", "critical") for lo, hi, s in bands), (
            metric
        )


def test_infinities_fall_in_the_outer_bands_and_missing_values_are_na():
    assert status("entropy_ratio", math.inf) == "critical"
    assert status("entropy_ratio", -math.inf) == "critical"
    assert status("queue_depth", math.inf) == "critical"
    assert status("fast_track_rate", None) == "n/a"
    assert status("wait_time", math.nan) == "n/a"


def test_an_unknown_metric_is_named_in_the_error():
    with pytest.raises(KeyError, match="entropy_ration.*entropy_ratio"):
        status("entropy_ration", 1.0)


def test_worst_ranks_critical_over_warning_over_healthy_and_ignores_na():
    assert worst(["healthy", "warning", "healthy"]) == "warning"
    assert worst(["warning", "critical", "n/a"]) == "critical"
    assert worst(["n/a", "healthy"]) == "healthy"
    assert worst(["n/a", "n/a"]) == "n/a"
    assert worst([]) == "n/a"
    assert worst(iter(["healthy"])) == "healthy"  # any iterable
    with pytest.raises(ValueError, match="sick"):
        worst(["healthy", "sick"])


def test_metric_status_of_a_dict_is_its_worst_entry():
    assert (
        metric_status("entropy_ratio", {"agent": 1.0, "swarm": 0.6, "context": None}) == "warning"
    )
    assert metric_status("queue_depth", {"context→agent": 3, "agent→swarm": 70}) == "critical"
    assert metric_status("entropy_ratio", {"agent": None}) == "n/a"
    assert metric_status("rejection_rate", 0.02) == "warning"
