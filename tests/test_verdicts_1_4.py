"""The judges of experiments 1–4 (recipes/experiments/exp01…exp04): each applies its criterion's reading to
constructed results (the structure its ``run()`` passes to ``finish``) and names the deciding figures."""

from __future__ import annotations

import pytest

from recipe_modules import recipe


@pytest.fixture(scope="module")
def exp01():
    return recipe("exp01_two_layer")


@pytest.fixture(scope="module")
def exp02():
    return recipe("exp02_swarm")


@pytest.fixture(scope="module")
def exp03():
    return recipe("exp03_stability")


@pytest.fixture(scope="module")
def exp04():
    return recipe("exp04_temporal")


# ---------------------------------------------------------------------- experiment 1
def two_layer(two: list[dict], one: list[dict]) -> dict:
    """exp01's results: per system, per seed, the judged keys (the two-level system first; the control second)."""
    keys = ("improvement", "slow_drift", "fast_plasticity", "retention_mean")
    good = {"improvement": 0.5, "slow_drift": 0.1, "fast_plasticity": 4.0, "retention_mean": -0.2}
    ctrl = {"improvement": 0.3, "slow_drift": 0.4, "fast_plasticity": None, "retention_mean": -0.1}
    systems = {
        "two levels: slow agent + fast context": {str(s): {k: {**good, **o}[k] for k in keys} for s, o in enumerate(two)},
        "control: one level": {str(s): {k: {**ctrl, **o}[k] for k in keys} for s, o in enumerate(one)},
    }
    return {"systems": systems, "summary": {}, "control": "control: one level"}


def test_experiment_1_is_supported_when_every_part_holds_in_every_seed(exp01):
    verdict, why = exp01.judge(two_layer([{}, {}], [{}, {}]))
    assert verdict == "supported"
    assert "improvement 0.500 ± 0.000 > 0 in 2/2" in why and "fast plasticity 4.00" in why and "0.400" in why


def test_experiment_1_is_not_supported_when_one_part_fails_in_every_seed(exp01):
    verdict, why = exp01.judge(two_layer([{}, {}], [{"improvement": 0.9}, {"improvement": 0.8}]))  # the control improves more
    assert verdict == "not supported" and "control's 0.850 ± 0.071 in 0/2" in why
    verdict, why = exp01.judge(two_layer([{"fast_plasticity": 0.5}, {"fast_plasticity": 0.7}], [{}, {}]))
    assert verdict == "not supported" and "fast plasticity 0.60 ± 0.14 > 1 in 0/2" in why
    verdict, _ = exp01.judge(two_layer([{"improvement": -0.1}, {"improvement": -0.2}], [{}, {}]))
    assert verdict == "not supported"


def test_experiment_1_is_inconclusive_when_the_seeds_disagree_or_a_value_is_undefined_and_not_supported_when_no_seed_holds(exp01):
    verdict, why = exp01.judge(two_layer([{}, {"retention_mean": 0.5}], [{}, {}]))  # worse retention in one seed
    assert verdict == "inconclusive" and "in 1/2" in why
    verdict, why = exp01.judge(two_layer([{}, {"fast_plasticity": None}], [{}, {}]))
    assert verdict == "inconclusive" and "undefined" in why
    # a different part fails in each seed: the criterion holds in no seed
    verdict, why = exp01.judge(two_layer([{"slow_drift": 0.9}, {"retention_mean": 0.5}], [{}, {}]))
    assert verdict == "not supported" and "all parts in 0/2 seeds" in why


# ---------------------------------------------------------------------- experiment 2
def swarm(b: list[float | None], a: list[float | None]) -> dict:
    """exp02's results: per system, per seed, its transfer efficiency."""
    systems = {
        "A: isolated": {str(s): {"efficiency": x} for s, x in enumerate(a)},
        "B: swarm": {str(s): {"efficiency": x} for s, x in enumerate(b)},
    }
    return {"systems": systems, "summary": {}, "through_swarm": {"per_seed": {}}, "control": "A: isolated", "target": 0.9}


def test_experiment_2_needs_the_target_and_the_control_beaten_in_every_seed(exp02):
    verdict, why = exp02.judge(swarm([0.95, 0.93], [0.3, 0.4]))
    assert verdict == "supported" and "0.940 ± 0.014 ≥ 0.9 in 2/2" in why and "0.350" in why
    verdict, why = exp02.judge(swarm([0.5, 0.6], [0.3, 0.4]))  # above the control, below the target
    assert verdict == "not supported" and "0.550 ± 0.071 ≥ 0.9 in 0/2" in why
    verdict, _ = exp02.judge(swarm([0.95, 0.93], [0.97, 0.99]))  # at the target, but the control transfers more
    assert verdict == "not supported"
    verdict, why = exp02.judge(swarm([0.95, 0.6], [0.3, 0.4]))
    assert verdict == "inconclusive" and "in 1/2" in why
    verdict, why = exp02.judge(swarm([0.95, None], [0.3, 0.4]))  # one seed's trainers gained nothing
    assert verdict == "inconclusive" and "undefined" in why


# ---------------------------------------------------------------------- experiment 3
A, B, C = "A: flat (agent level)", "B: hierarchy (domain, swarm, agent)", "C: flat, step-matched"


def stability(b: list[dict] | None = None, a: list[dict] | None = None, cc: list[dict] | None = None) -> dict:
    """exp03's results: per system, per seed (two seeds), the judged keys; B better than A and C by default."""
    base = {A: {"forgetting_mean": 0.3, "retention_mean": 0.5, "adaptation": 0.4},
            B: {"forgetting_mean": 0.1, "retention_mean": 0.9, "adaptation": 0.38},
            C: {"forgetting_mean": 0.4, "retention_mean": 0.4, "adaptation": 0.45}}  # fmt: skip
    over = {A: a or [{}, {}], B: b or [{}, {}], C: cc or [{}, {}]}
    systems = {n: {str(s): base[n] | o for s, o in enumerate(over[n])} for n in (A, B, C)}
    return {"systems": systems, "summary": {}, "control": A, "step_matched": C, "agent_lr_factor": 1.4}


def test_experiment_3_needs_b_ahead_of_a_and_of_the_step_matched_c_in_every_seed(exp03):
    verdict, why = exp03.judge(stability())
    assert verdict == "supported" and "B's forgetting 0.100 ± 0.000 < A's 0.300" in why and "≥ 0.8 × C's 0.450" in why
    # B adapts below 0.8 of C's speed in every seed: B's adaptation is just a larger step
    verdict, why = exp03.judge(stability(cc=[{"adaptation": 0.6}, {"adaptation": 0.7}]))
    assert verdict == "not supported" and "≥ 0.8 × C's 0.650 ± 0.071 in 0/2" in why
    verdict, why = exp03.judge(stability(b=[{}, {"forgetting_mean": 0.35}]))  # forgets more than A in one seed
    assert verdict == "inconclusive" and "in 1/2" in why


def test_experiment_3_is_inconclusive_where_retention_or_the_speed_ratio_is_undefined(exp03):
    verdict, why = exp03.judge(stability(b=[{"retention_mean": None}, {}]))
    assert verdict == "inconclusive" and "undefined" in why
    verdict, why = exp03.judge(stability(a=[{"adaptation": -0.1}, {}]))  # A did not adapt: no speed to be a share of
    assert verdict == "inconclusive" and "undefined" in why


# ---------------------------------------------------------------------- experiment 4
def temporal(const: list[float], epis: list[float], both: list[float], off: list[float] | None = None) -> dict:
    """exp04's results: per scenario, per seed, the swarm's second-half mean inertia and (the control) its curve."""
    def run(x: float) -> dict:
        return {"swarm_inertia": x, "curve": {"swarm_inertia": [0.5, x, x]}}

    off = off or [0.5] * len(const)
    scenarios = {
        "constant alone": {str(s): run(x) for s, x in enumerate(const)},
        "episodic alone": {str(s): run(x) for s, x in enumerate(epis)},
        "both": {str(s): run(x) for s, x in enumerate(both)},
        "control: inertia off": {str(s): run(x) for s, x in enumerate(off)},
    }
    return {"scenarios": scenarios, "summary": {}, "control": "control: inertia off", "beta": 0.5}


def test_experiment_4_needs_the_ordering_of_the_swarm_s_inertia_in_every_seed(exp04):
    verdict, why = exp04.judge(temporal([0.72, 0.74], [0.52, 0.51], [0.75, 0.74]))
    assert verdict == "supported" and "constant alone 0.730 ± 0.014 > episodic alone 0.515 ± 0.007 in 2/2" in why
    verdict, why = exp04.judge(temporal([0.52, 0.51], [0.72, 0.74], [0.75, 0.74]))  # heavier with the episodic agent
    assert verdict == "not supported" and "in 0/2" in why
    verdict, why = exp04.judge(temporal([0.72, 0.74], [0.52, 0.51], [0.75, 0.70]))  # 'both' below constant in one seed
    assert verdict == "inconclusive" and "both 0.725 ± 0.035 ≥ constant alone in 1/2" in why
    verdict, why = exp04.judge(temporal([0.72, 0.74], [0.52, 0.51], [0.75, 0.74], off=[0.6, 0.6]))  # the control moved
    assert verdict == "not supported" and "largest departure 0.1" in why


# ---------------------------------------------------------------------- the rule every judge uses
def test_seedwise_reads_the_criterion_seed_by_seed():
    c = recipe("exp01_two_layer").c  # the recipes' own common module (it imports its neighbours)
    assert c.seedwise([[True, True], [True, True]]) == "supported"
    assert c.seedwise([[False, True], [True, False]]) == "not supported"  # each seed fails a part: it holds in none
    assert c.seedwise([[True, True], [True, False]]) == "inconclusive"  # the seeds disagree
    assert c.seedwise([[True, None], [True, True]]) == "inconclusive"  # undefined in a seed
    assert c.seedwise([[False, None], [True, False]]) == "not supported"  # a seed that fails a part fails, undefined or not
    assert c.seedwise([[False], [True, True]]) == "not supported"  # one value over all runs counts in every seed
    assert c.seedwise([]) == "inconclusive"
    assert c.judged([("x > 0", [True, False])]) == ("inconclusive", "x > 0 in 1/2 seeds; all parts in 1/2 seeds")
