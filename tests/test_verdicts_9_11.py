"""The judges of experiments 9–11 on constructed results: each applies its criterion's reading and names the
deciding figures (the recipes' runs are in tests/test_experiments.py)."""

from __future__ import annotations

from recipe_modules import recipe

# ---------------------------------------------------------------------- experiment 9: entropy budget
EXP09 = recipe("exp09_entropy")


def entropy_results(a_states=("crystallised", "crystallised"), c_ratio=(1.0, 1.0), d_spread=(0.02, 0.02), b_state="balanced"):
    """Per scenario, k (1, 4) and seed (0, 1): what the judge reads. A's k=4 run ends in ``a_states[seed]``."""

    def one(name: str, k: str, s: int) -> dict:
        state = (a_states[s] if k == "4" else "balanced") if name.startswith("A") else b_state if name.startswith("B") else "balanced"
        return {
            "state": state,
            "entropy_final": c_ratio[s] if name.startswith("C") else 1.0,
            "band_centre_spread": d_spread[s] if name.startswith("D") else None,
        }

    return {"scenarios": {n: {k: {str(s): one(n, k, s) for s in (0, 1)} for k in ("1", "4")} for n in EXP09.SCENARIOS}, "band": [0.8, 1.2]}


def test_experiment_9_is_supported_when_every_part_holds_in_every_seed():
    verdict, why = EXP09.judge(entropy_results())
    assert verdict == "supported"
    assert "A ends crystallised or amnesic at some k in 2/2 seeds" in why and "in [0.8, 1.2]" in why and "0.020–0.020" in why


def test_experiment_9_is_not_supported_when_a_part_fails_in_every_seed():
    verdict, why = EXP09.judge(entropy_results(a_states=("balanced", "balanced")))
    assert verdict == "not supported" and "at some k in 0/2 seeds" in why
    verdict, why = EXP09.judge(entropy_results(c_ratio=(1.5, 0.5)))  # C outside the band in both seeds
    assert verdict == "not supported" and "0/2 seeds (range 0.500–1.500)" in why
    verdict, why = EXP09.judge(entropy_results(b_state="amnesic"))  # the fixed budget drifts too
    assert verdict == "not supported" and "B k=1 amnesic" in why


def test_experiment_9_is_inconclusive_when_the_seeds_disagree_or_a_figure_is_undefined():
    verdict, why = EXP09.judge(entropy_results(d_spread=(0.02, 0.3)))
    assert verdict == "inconclusive" and "spread < 0.1 at every k in 1/2 seeds (range 0.020–0.300)" in why
    verdict, why = EXP09.judge(entropy_results(c_ratio=(1.0, None)))
    assert verdict == "inconclusive" and "undefined in 2 runs" in why


# ---------------------------------------------------------------------- experiment 10: bandwidth
EXP10 = recipe("exp10_bandwidth")


def bandwidth_results(shares=(1.0, 0.1, 0.1, 0.1), latency=(5.0, 3.0, 0.0), d_latency_seed1=None):
    """Per scenario A–D and seed (0, 1): the largest one-tick share, and B's, C's and D's critical latency."""
    latencies = dict(zip(EXP10.SCENARIOS[1:], latency, strict=True))

    def one(name: str, s: int) -> dict:
        lat = latencies.get(name)
        if name.startswith("D") and s == 1 and d_latency_seed1 is not None:
            lat = d_latency_seed1
        return {"max_tick_share": shares[EXP10.SCENARIOS.index(name)], "critical_latency": lat}

    return {"scenarios": {n: {str(s): one(n, s) for s in (0, 1)} for n in EXP10.SCENARIOS}}


def test_experiment_10_is_supported_when_a_collapses_and_d_s_critical_patterns_do_not_wait():
    verdict, why = EXP10.judge(bandwidth_results())
    assert verdict == "supported"
    assert "A 1.000/1.000" in why and "B 0.100/0.100" in why and "D 0.0/0.0, B 5.0/5.0, C 3.0/3.0" in why
    verdict, why = EXP10.judge(bandwidth_results(latency=(None, None, 0.0)))  # B's and C's critical patterns never migrated
    assert verdict == "supported" and "B never/never" in why


def test_experiment_10_is_not_supported_when_a_part_fails_in_every_seed():
    verdict, why = EXP10.judge(bandwidth_results(shares=(1.0, 0.9, 0.1, 0.1)))  # B not well below 1
    assert verdict == "not supported" and "B 0.900/0.900" in why and "≤ 0.5 in 0/2 seeds" in why
    verdict, why = EXP10.judge(bandwidth_results(latency=(5.0, 3.0, 2.0)))  # D's critical patterns wait
    assert verdict == "not supported" and "D 2.0/2.0" in why


def test_experiment_10_is_inconclusive_when_the_seeds_disagree_or_d_s_latency_is_undefined():
    verdict, why = EXP10.judge(bandwidth_results(d_latency_seed1=1.0))
    assert verdict == "inconclusive" and "D 0.0/1.0" in why and "in 1/2 seeds" in why
    verdict, why = EXP10.judge(bandwidth_results(latency=(5.0, 3.0, None)))
    assert verdict == "inconclusive" and "D never/never" in why and "undefined" in why


# ---------------------------------------------------------------------- experiment 11: vertical resonance
EXP11 = recipe("exp11_vertical")


def vertical_results(r_b=0.9, fp_b=0.01, r_d=0.8, fp_d=0.0, swarm=((3, 7), (4, None)), swarm_d=((5, 9), (5, 9))):
    """The spec's figures for B and D, and type 3's first tick at the swarm per seed: (with resonance, without)."""
    scenarios = {n: {"type 3: universal": {}} for n in EXP11.SCENARIOS}
    for (b, a), (d, cc), s in zip(swarm, swarm_d, ("0", "1"), strict=True):
        for name, tick in zip(EXP11.SCENARIOS, (a, b, cc, d), strict=True):
            scenarios[name]["type 3: universal"][s] = {"first_to_swarm": tick}
    return {
        "scenarios": scenarios, "correlation_alignment_utility": r_b, "false_positive_rate": fp_b,
        "several_agents": {"correlation_alignment_utility": r_d, "false_positive_rate": fp_d},
    }  # fmt: skip


def test_experiment_11_is_supported_when_both_spec_figures_and_the_speed_hold_for_b_and_d():
    verdict, why = EXP11.judge(vertical_results())
    assert verdict == "supported"
    assert "B: r 0.900 (needs > 0.7), false positives 0.010 (needs < 0.05)" in why and "tick 3 vs 7, 4 vs never" in why and "D: r 0.800" in why


def test_experiment_11_is_not_supported_when_a_spec_figure_fails_over_the_runs():
    verdict, why = EXP11.judge(vertical_results(r_b=0.5))
    assert verdict == "not supported" and "B: r 0.500" in why
    verdict, why = EXP11.judge(vertical_results(fp_d=0.2))
    assert verdict == "not supported" and "false positives 0.200" in why
    verdict, why = EXP11.judge(vertical_results(swarm=((None, 7), (8, 8))))  # never earlier with resonance
    assert verdict == "not supported" and "tick never vs 7, 8 vs 8" in why and "earlier in 0/2 seeds" in why


def test_experiment_11_is_inconclusive_when_the_seeds_disagree_or_a_figure_is_undefined():
    verdict, why = EXP11.judge(vertical_results(swarm_d=((5, 9), (9, 5))))
    assert verdict == "inconclusive" and "tick 5 vs 9, 9 vs 5" in why and "earlier in 1/2 seeds" in why
    verdict, why = EXP11.judge(vertical_results(r_d=None))
    assert verdict == "inconclusive" and "D: r undefined" in why
