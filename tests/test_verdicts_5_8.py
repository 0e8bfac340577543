"""The judges of experiments 5–8 (recipes/experiments/): each applies its criterion's reading to constructed
results (just the structure its recipe's ``run`` produces) and names the figures that decide it.
"""

from __future__ import annotations

import pytest

from recipe_modules import recipe


# ---------------------------------------------------------------------- 5: screening hysteresis
def screening(widths, control_widths, sharpness):
    def variant(ws, sh):
        return {"per_seed": {str(s): {"f_up": 0.4 + w, "f_down": 0.4, "width": w, "sharpness": x} for s, (w, x) in enumerate(zip(ws, sh, strict=True))}}

    return {"variants": {"hysteresis": variant(widths, sharpness), "control: narrow band": variant(control_widths, [1.0] * len(widths))}, "control": "control: narrow band"}


@pytest.mark.parametrize(
    ("widths", "control", "sharp", "verdict", "figure"),
    [
        ([0.3, 0.3], [0.0, 0.0], [0.6, 0.8], "supported", "width 0.30 ± 0.00 > 0 in 2/2 seeds"),
        ([0.0, 0.0], [0.0, 0.0], [0.6, 0.8], "not supported", "width 0.00 ± 0.00 > 0 in 0/2 seeds"),
        ([0.3, 0.3], [0.3, 0.4], [0.6, 0.8], "not supported", "> the control's 0.35 ± 0.07 in 0/2"),
        ([0.3, 0.3], [0.0, 0.0], [0.4, 0.8], "inconclusive", "sharpness 0.60 ± 0.28 ≥ 0.5 in 1/2"),
        ([0.3, -0.1], [0.0, 0.0], [0.6, 0.8], "inconclusive", "in 1/2 seeds"),
    ],
)
def test_experiment_5_judge(widths, control, sharp, verdict, figure):
    v, why = recipe("exp05_screening").judge(screening(widths, control, sharp))
    assert v == verdict and figure in why


# ---------------------------------------------------------------------- 6: autocorrelation vs timer
def consolidation(precision, timer_precision, norm, timer_norm):
    def system(ps, ns):
        return {str(s): {"precision": p, "noise_norm_consolidated": n} for s, (p, n) in enumerate(zip(ps, ns, strict=True))}

    return {"systems": {"autocorrelation": system(precision, norm), "timer": system(timer_precision, timer_norm)}, "control": "timer"}


@pytest.mark.parametrize(
    ("precision", "timer", "norm", "timer_norm", "verdict", "figure"),
    [
        ([1.0, 0.95], [0.5, 0.5], [0.0, 0.01], [0.3, 0.3], "supported", "precision 0.975 ± 0.035 ≥ 0.9 in 2/2 seeds"),
        ([0.8, 0.85], [0.5, 0.5], [0.0, 0.01], [0.3, 0.3], "not supported", "≥ 0.9 in 0/2 seeds"),
        ([1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.3, 0.3], "not supported", "above the timer's 1.000 ± 0.000 in 0/2"),
        ([1.0, 1.0], [0.5, 0.5], [0.4, 0.0], [0.3, 0.3], "inconclusive", "< the timer's 0.3000 ± 0.0000 in 1/2"),
        ([1.0, None], [0.5, 0.5], [0.0, 0.0], [0.3, 0.3], "inconclusive", "undefined in 1 seeds"),
        ([0.5, None], [0.5, 0.5], [0.0, 0.5], [0.3, 0.3], "not supported", "all parts in 0/2 seeds"),  # seed 1 fails on its norm
    ],
)
def test_experiment_6_judge(precision, timer, norm, timer_norm, verdict, figure):
    v, why = recipe("exp06_consolidation").judge(consolidation(precision, timer, norm, timer_norm))
    assert v == verdict and figure in why


# ---------------------------------------------------------------------- 7: resonant vs linear composition
def resonance(a, b, cn, k=2):
    """``a``, ``b``, ``cn``: per seed, dicts of the keys the judge reads (A, B and the norm-matched C with ``k`` outliers)."""
    case = lambda rows: {str(s): {"outlier_factor": None} | r for s, r in enumerate(rows)}  # noqa: E731
    names = (f"A: linear, {k} outliers", f"B: resonant, {k} outliers", f"C: linear, norm-matched, {k} outliers")
    cases = dict(zip(names, map(case, (a, b, cn)), strict=True))
    cases |= {n.replace(f"{k} outliers", "0 outliers"): case([{"final_cosine": -1.0}] * len(a)) for n in names}  # not read
    return {"cases": cases, "control": names[0], "norm_matched": names[2]}


A = {"ticks_to_consensus": 12, "final_cosine": 0.8, "gain_min": 0.01, "gain_mean": 0.02, "loss": 3.0}
B = {"ticks_to_consensus": 6, "final_cosine": 0.95, "outlier_factor": 0.6, "gain_min": 0.02, "gain_mean": 0.04, "loss": 2.8}
C = {"ticks_to_consensus": 8, "final_cosine": 0.9, "gain_min": 0.015, "gain_mean": 0.03, "loss": 2.9}


@pytest.mark.parametrize(
    ("b1", "a1", "c1", "verdict", "figure"),
    [
        ({}, {}, {}, "supported", "all parts in 2/2 seeds"),
        ({}, {"ticks_to_consensus": None}, {}, "supported", "vs A 12.0 ± 0.0 (never in 1 seeds) (fewer in 2/2 seeds)"),
        ({"ticks_to_consensus": None}, {}, {}, "inconclusive", "(never in 1 seeds) vs A 12.0 ± 0.0 (fewer in 1/2 seeds)"),
        ({"outlier_factor": 1.2}, {}, {}, "inconclusive", "B's outlier factor 0.900 ± 0.424 < 1 in 1/2"),
        ({"outlier_factor": None}, {}, {}, "inconclusive", "B's outlier factor 0.600 ± 0.000 (undefined in 1 seeds) < 1 in 1/2; "),
        ({"gain_min": 0.0}, {}, {}, "inconclusive", "≥ A 0.0100 ± 0.0000 in 1/2"),
        ({}, {}, {"loss": 2.7}, "inconclusive", "better in 1/2"),
    ],
)
def test_experiment_7_judge(b1, a1, c1, verdict, figure):
    v, why = recipe("exp07_resonance").judge(resonance([A, A | a1], [B, B | b1], [C, C | c1]))
    assert v == verdict and figure in why


def test_experiment_7_judge_fails_where_resonance_is_only_a_larger_step():
    v, why = recipe("exp07_resonance").judge(resonance([A, A], [B, B], [B, B]))  # C as good as B in both seeds
    assert v == "not supported" and "better in 0/2" in why
    v, why = recipe("exp07_resonance").judge(resonance([B, B], [A | {"outlier_factor": 0.6}] * 2, [C, C]))
    assert v == "not supported" and "(fewer in 0/2 seeds)" in why


# ---------------------------------------------------------------------- 8: growth of the hierarchy's depth
def growth(depths, control_depth=None):
    """``depths``: per k (1, 2, 4), the topology's final depth per seed; ``control_depth``: per seed, the control's max depth."""
    seeds = len(depths[0])
    control_depth = control_depth or [1] * seeds
    topo = {k: {str(s): {"final_depth": d, "max_depth": d} for s, d in enumerate(ds)} for k, ds in zip(("1", "2", "4"), depths, strict=True)}
    control = {k: {str(s): {"final_depth": 1, "max_depth": control_depth[s]} for s in range(seeds)} for k in ("1", "2", "4")}
    return {"systems": {"topology": topo, "control: topology off": control}, "control": "control: topology off"}


@pytest.mark.parametrize(
    ("depths", "control", "verdict", "figure"),
    [
        ([[1, 1], [1, 2], [2, 3]], None, "supported", "k = 1: 1.00, k = 2: 1.50, k = 4: 2.50 (does not fall as k grows; k = 4 > k = 1)"),
        ([[1, 1], [1, 1], [1, 1]], None, "not supported", "k = 4 ≤ k = 1"),
        ([[1, 1], [3, 3], [2, 2]], None, "not supported", "(falls as k grows"),
        ([[1, 1], [1, 2], [2, 3]], [2, 2], "not supported", "the control at depth 1 in 0/2 seeds"),
        ([[1, 1], [1, 2], [2, 3]], [1, 2], "inconclusive", "the control at depth 1 in 1/2 seeds"),
    ],
)
def test_experiment_8_judge(depths, control, verdict, figure):
    v, why = recipe("exp08_growth").judge(growth(depths, control))
    assert v == verdict and figure in why
