"""The malicious-agent benchmark (benchmarks/malicious.py), reduced to fit the test suite.

10 agents, 40 ticks, 0 % and 30 % sign-flip attackers, mean vs robust aggregation. The full
run and its table are in docs/robustness.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import malicious  # noqa: E402


@pytest.mark.benchmark
def test_robust_aggregation_keeps_the_swarm_learning_under_attack_and_mean_does_not():
    rows = malicious.main(["--fractions", "0,0.3", "--ticks", "40", "--agents", "10", "--average-last", "5"])
    cell = {(r["setting"], r["fraction"]): r for r in rows}
    clean_mean, clean_robust = cell[("mean", 0.0)], cell[("robust", 0.0)]
    attacked_mean, attacked_robust = cell[("mean", 0.3)], cell[("robust", 0.3)]

    assert clean_mean["after"] > clean_mean["before"] + 0.3  # the swarm level is what learns the task
    assert clean_robust["after"] > clean_robust["before"] + 0.3
    assert attacked_mean["after"] < clean_mean["after"] - 0.2  # 3 sign-flippers wreck the plain mean
    assert attacked_robust["after"] > clean_robust["after"] - 0.15
    assert attacked_robust["after"] > attacked_mean["after"] + 0.2
    assert attacked_robust["rep_attackers"] < attacked_robust["rep_honest"]
