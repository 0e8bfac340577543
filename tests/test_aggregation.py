"""Aggregation strategies, clipping, validation, resonance and the config builder."""

from __future__ import annotations

import pytest
import torch

from lorahive.config import AggregationConfig
from lorahive.mechanisms import (
    Clipped,
    Mean,
    Median,
    Proposal,
    Resonance,
    TrimmedMean,
    Validated,
    Weighted,
    build_aggregator,
)
from lorahive.mechanisms.aggregation import global_norm
from lorahive.mechanisms.resonance import resonance_factor


def prop(agent: str, a: float | list[float], b: float = 0.0, quality: float = 1.0, reputation: float = 1.0, level: str = "swarm") -> Proposal:
    """A proposal with two parameters: ``x.A`` (filled with ``a``) and ``x.B`` (filled with ``b``)."""
    av = torch.tensor(a, dtype=torch.float32) if isinstance(a, list) else torch.full((3,), float(a))
    return Proposal(agent, level, tick=1, delta={"x.A": av, "x.B": torch.full((2, 2), float(b))}, quality=quality, reputation=reputation)


def records(res):
    """The decisions of an aggregation result, by agent."""
    return {d.agent: d for d in res.decisions}


# --- strategies --------------------------------------------------------------------------


def test_mean_averages_proposals():
    res = Mean().aggregate(1, [prop("a", 1.0), prop("b", 3.0)])
    update, metrics = res.update, res.metrics
    assert torch.allclose(update["x.A"], torch.full((3,), 2.0))
    assert metrics["n_accepted"] == 2 and records(res)["a"].weight == 0.5


def test_weighted_uses_quality_times_reputation():
    ps = [prop("a", 0.0, quality=1.0, reputation=1.0), prop("b", 4.0, quality=1.0, reputation=3.0)]
    res = Weighted().aggregate(1, ps)
    update = res.update
    assert torch.allclose(update["x.A"], torch.full((3,), 3.0))
    assert records(res)["b"].weight == pytest.approx(0.75)


def test_weighted_gives_no_update_when_all_weights_are_zero():
    res = Weighted().aggregate(1, [prop("a", 1.0, quality=0.0)])
    update = res.update
    assert update is None and records(res)["a"].accepted is False


def test_median_resists_one_outlier():
    ps = [prop("a", 1.0), prop("b", 1.1), prop("c", 0.9), prop("evil", 1e6)]
    update = Median().aggregate(1, ps).update
    assert float(update["x.A"].max()) < 1.2


def test_median_of_even_count_is_mean_of_middle_values():
    update = Median().aggregate(1, [prop("a", 1.0), prop("b", 2.0), prop("c", 4.0), prop("d", 10.0)]).update
    assert torch.allclose(update["x.A"], torch.full((3,), 3.0))


def test_trimmed_mean_drops_extremes():
    ps = [prop("a", -100.0), prop("b", 1.0), prop("c", 2.0), prop("d", 3.0), prop("e", 100.0)]
    update = TrimmedMean(beta=0.2).aggregate(1, ps).update
    assert torch.allclose(update["x.A"], torch.full((3,), 2.0))


def test_trimmed_mean_trims_per_coordinate():
    ps = [prop("a", [0.0, 9.0, 1.0]), prop("b", [1.0, 1.0, 9.0]), prop("c", [9.0, 0.0, 0.0])]
    update = TrimmedMean(beta=0.34).aggregate(1, ps).update
    assert torch.allclose(update["x.A"], torch.tensor([1.0, 1.0, 1.0]))


def test_empty_proposals_give_no_update():
    res = Mean().aggregate(3, [], failures=["agent x crashed"])
    update, metrics = res.update, res.metrics
    assert update is None and metrics["n_failures"] == 1 and metrics["reason"] == "no proposals"


# --- clipping ----------------------------------------------------------------------------


def test_clipping_bounds_each_proposal_norm():
    big = prop("big", 100.0, b=100.0)
    res = Clipped(Mean(), max_norm=1.0).aggregate(1, [big])
    update = res.update
    assert global_norm(update) == pytest.approx(1.0, rel=1e-5)
    assert records(res)["big"].norm == pytest.approx(global_norm(big.delta))


def test_clipping_leaves_small_proposals_alone():
    small = prop("s", 0.1)
    res = Clipped(Mean(), max_norm=10.0).aggregate(1, [small])
    update = res.update
    assert torch.equal(update["x.A"], small.delta["x.A"]) and records(res)["s"].clip_scale == 1.0


# --- validation --------------------------------------------------------------------------


def test_nan_proposal_is_rejected_with_reason():
    bad = prop("bad", float("nan"))
    res = Validated(Mean()).aggregate(1, [prop("a", 1.0), bad])
    update = res.update
    rec = records(res)["bad"]
    assert rec.accepted is False and "non-finite" in rec.reason and "x.A" in rec.reason
    assert torch.allclose(update["x.A"], torch.full((3,), 1.0))


def test_inf_proposal_is_rejected():
    res = Validated(Mean()).aggregate(1, [prop("a", 1.0), prop("inf", float("inf"))])
    assert records(res)["inf"].accepted is False


def test_norm_above_bound_is_rejected():
    res = Validated(Mean(), reject_norm=5.0).aggregate(1, [prop("a", 1.0), prop("huge", 50.0)])
    assert "exceeds reject_norm" in records(res)["huge"].reason


def test_shape_mismatch_is_rejected():
    odd = Proposal("odd", "swarm", 1, {"x.A": torch.ones(4), "x.B": torch.ones(2, 2)})
    res = Validated(Mean()).aggregate(1, [prop("a", 1.0), prop("b", 1.0), odd])
    assert "shape mismatch in x.A" in records(res)["odd"].reason


def test_missing_key_is_rejected():
    odd = Proposal("odd", "swarm", 1, {"x.A": torch.ones(3)})
    res = Validated(Mean()).aggregate(1, [prop("a", 1.0), prop("b", 1.0), odd])
    assert records(res)["odd"].reason == "missing keys: x.B"


def test_proposal_for_another_level_is_rejected():
    res = Validated(Mean()).aggregate(1, [prop("a", 1.0), prop("b", 1.0), prop("c", 1.0, level="domain")])
    assert "not the level being aggregated" in records(res)["c"].reason


def test_nothing_valid_gives_no_update():
    res = Validated(Mean()).aggregate(1, [prop("bad", float("nan"))])
    update, metrics = res.update, res.metrics
    assert update is None and metrics["n_rejected"] == 1 and metrics["reason"] == "no proposal passed validation"


def test_validation_keeps_records_in_submission_order():
    ps = [prop("a", 1.0), prop("bad", float("nan")), prop("c", 2.0)]
    res = Validated(Mean()).aggregate(1, ps)
    assert [d.agent for d in res.decisions] == ["a", "bad", "c"]


# --- resonance ---------------------------------------------------------------------------


def test_resonance_factor_boosts_aligned_damps_opposed_and_caps():
    assert resonance_factor(1.0, alpha=0.5, beta=0.5, cap=2.0) == 1.5
    assert resonance_factor(-1.0, alpha=0.5, beta=0.5, cap=2.0) == 0.5
    assert resonance_factor(1.0, alpha=5.0, beta=0.5, cap=2.0) == 2.0


def test_resonance_boosts_aligned_proposal():
    agg = Resonance(Weighted(), alpha=1.0, beta=1.0, cap=2.0)
    agg.aggregate(1, [prop("a", 1.0, b=0.0)])  # sets the direction along x.A
    res = agg.aggregate(2, [prop("along", 1.0), prop("across", 0.0, b=1.0)])
    rec = records(res)
    assert rec["along"].cosine == pytest.approx(1.0) and rec["across"].cosine == pytest.approx(0.0)
    assert rec["along"].weight > rec["across"].weight


def test_resonance_damps_opposed_proposal():
    agg = Resonance(Mean(), alpha=0.5, beta=0.5, cap=2.0)
    agg.aggregate(1, [prop("a", 1.0)])
    res = agg.aggregate(2, [prop("against", -1.0)])
    assert records(res)["against"].resonance == pytest.approx(0.5)


def test_resonance_direction_survives_state_dict_round_trip():
    agg = Resonance(Mean())
    agg.aggregate(1, [prop("a", 1.0, b=2.0)])
    fresh = Resonance(Mean())
    fresh.load_state_dict(agg.state_dict())
    assert torch.equal(fresh.direction.vectors["swarm"], agg.direction.vectors["swarm"])


# --- config ------------------------------------------------------------------------------


def test_build_aggregator_composes_validation_resonance_clipping():
    agg = build_aggregator({"strategy": "median", "max_norm": 1.0, "reject_norm": 10.0})
    assert agg.name.startswith("validated(resonance(clipped(median")


def test_build_aggregator_end_to_end_rejects_nan_and_clips():
    agg = build_aggregator(AggregationConfig(strategy="mean", max_norm=1.0))
    res = agg.aggregate(1, [prop("a", 5.0), prop("bad", float("nan"))])
    update, metrics = res.update, res.metrics
    assert global_norm(update) <= 1.0 + 1e-6 and metrics["n_rejected"] == 1


def test_build_aggregator_without_resonance_still_reports_cosine():
    agg = build_aggregator({"strategy": "mean", "resonance": False})
    agg.aggregate(1, [prop("a", 1.0)])
    res = agg.aggregate(2, [prop("b", 2.0)])
    assert records(res)["b"].cosine == pytest.approx(1.0) and records(res)["b"].resonance == 1.0


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match=r"aggregation\.trim"):
        build_aggregator({"strategy": "trimmed_mean", "trim": 0.7})


def test_unknown_strategy_lists_allowed_values():
    with pytest.raises(ValueError, match=r"aggregation\.strategy.*'median'"):
        build_aggregator({"strategy": "krum"})
