"""Vertical resonance (mechanisms/vertical_resonance.py): the ΔW sketch compares levels of any rank;
levels learning the same pattern are boosted (and fast-tracked), levels at odds damped, unrelated
ones left alone."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.config import (
    BandwidthConfig,
    ConfigError,
    ConsolidationConfig,
    VerticalResonanceConfig,
    parse_config,
)
from lorahive.mechanisms.bandwidth import Bandwidth
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.consolidation import Consolidation, Ready
from lorahive.mechanisms.registry import build_mechanisms
from lorahive.mechanisms.vertical_resonance import VerticalResonance, level_sketch
from tiny_runs import config_tree, tiny_config

CFG = VerticalResonanceConfig(enabled=True, ema=0.0, threshold=0.3, boost=2.0, damp=0.5)


def _hive(tokenizer) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    return hive


def _pattern(hive: Hive, level: str, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A rank-1 ΔW per module of ``level`` (the same for every level with the same seed)."""
    gen = torch.Generator().manual_seed(seed)
    return {p: (torch.randn(b.out_features, 1, generator=gen) * 0.1, torch.randn(1, b.in_features, generator=gen) * 0.1) for p, b in hive.core.named_banks(level)}


def _paths(hive: Hive, level: str) -> list[str]:
    return [p.replace(f".{level}", ".LEVEL") for p, _ in hive.core.named_banks(level)]


def _view(hive: Hive, phase: str, tick: int = 1, shared: dict | None = None) -> TickView:
    return TickView(tick, phase, [], (), {}, hive.core.states, hive.core, shared={} if shared is None else shared)


def _inputs(hive: Hive, rows: int = 8, seed: int = 11) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {p: torch.randn(rows, b.in_features, generator=gen) for p, b in hive.core.named_banks("swarm")}


def _mechanism(hive: Hive) -> VerticalResonance:
    stack = hive.core.stack
    vr = VerticalResonance(CFG, ["swarm", "agent"], {lv.name: lv.lr for lv in stack.levels}, {lv.name: lv.inertia for lv in stack.levels})
    vr.use_inputs(_inputs(hive))
    return vr


def _tick(hive: Hive, vr: VerticalResonance, swarm_sign: float, agent_sign: float, swarm_seed: int = 1, agent_seed: int = 1) -> tuple[dict, dict]:
    """One tick: draw, then the swarm and ann's agent slot learn the given patterns, then apply."""
    vr.run(_view(hive, "draw"))
    sp = _pattern(hive, "swarm", swarm_seed)
    ap = _pattern(hive, "agent", agent_seed)
    hive.core.add_delta("swarm", 0, {p: (swarm_sign * u, v) for p, (u, v) in sp.items()})
    hive.core.add_delta("agent", hive.core.slot_of("agent", "ann"), {p: (agent_sign * u, v) for p, (u, v) in ap.items()})
    shared: dict = {}
    action = vr.run(_view(hive, "apply", shared=shared))
    assert action is not None and action.kind == "vertical"
    return action.detail, shared


def test_the_sketch_of_one_delta_is_the_same_in_levels_of_different_rank(tokenizer):
    hive = _hive(tokenizer)
    assert hive.core.stack.get("swarm").rank != hive.core.stack.get("agent").rank
    inputs = _inputs(hive, rows=3)
    cache: dict = {}
    before_s, before_a = level_sketch(hive.core, "swarm", inputs, 8, 0, {}), level_sketch(hive.core, "agent", inputs, 8, 0, {})
    gen = torch.Generator().manual_seed(3)
    delta = {p: (torch.randn(b.out_features, 1, generator=gen), torch.randn(1, b.in_features, generator=gen)) for p, b in hive.core.named_banks("swarm")}
    hive.core.add_delta("swarm", 0, delta)
    hive.core.add_delta("agent", 1, delta)
    s = level_sketch(hive.core, "swarm", inputs, 8, 0, cache)[0] - before_s[0]
    a = level_sketch(hive.core, "agent", inputs, 8, 0, {})[1] - before_a[1]
    torch.testing.assert_close(s, a, rtol=1e-4, atol=1e-6)
    # and it is g_jᵀ·ΔW·x_n on the unit inputs, module by module
    path = next(iter(delta))
    g, (u, v), x = cache[path], delta[path], inputs[path]
    x = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(s[:24], torch.einsum("do,or,ri,ni->dn", g, u, v, x).flatten(), rtol=1e-4, atol=1e-6)
    assert level_sketch(hive.core, "swarm", {}, 8).shape == (1, 0)  # no inputs: nothing to probe with


def test_before_any_inputs_nothing_is_compared_and_a_ticks_inputs_probe_the_next(tokenizer):
    hive = _hive(tokenizer)
    stack = hive.core.stack
    vr = VerticalResonance(CFG, ["swarm", "agent"], {lv.name: lv.lr for lv in stack.levels}, {lv.name: lv.inertia for lv in stack.levels})
    vr.run(_view(hive, "draw"))
    seen = _inputs(hive)
    assert vr.run(_view(hive, "apply", shared={"module_inputs": seen})) is None
    assert set(vr.inputs) == set(seen)
    detail, _ = _tick(hive, vr, +1.0, +1.0)
    assert detail["mode"] == "resonant"


def test_levels_learning_the_same_pattern_are_boosted_and_fast_tracked(tokenizer):
    hive = _hive(tokenizer)
    vr = _mechanism(hive)
    detail, shared = _tick(hive, vr, +1.0, +1.0)
    assert detail["mode"] == "resonant" and detail["cosine"] > 0.99 and shared.get("resonant") is True
    for lv in ("swarm", "agent"):
        assert hive.core.states[lv].lr == pytest.approx(hive.core.stack.get(lv).lr * detail["lr_factor"][lv])
        assert detail["lr_factor"][lv] == pytest.approx(2.0, abs=0.02)


def test_a_fast_level_at_odds_with_a_slow_one_is_damped_the_slow_one_kept(tokenizer):
    hive = _hive(tokenizer)
    vr = _mechanism(hive)
    detail, shared = _tick(hive, vr, +1.0, -1.0)
    assert detail["mode"] == "dissonant" and detail["cosine"] < -0.99 and "resonant" not in shared
    assert hive.core.states["agent"].lr == pytest.approx(hive.core.stack.get("agent").lr * 0.5)
    assert hive.core.states["swarm"].lr == pytest.approx(hive.core.stack.get("swarm").lr)


def test_unrelated_updates_change_nothing_and_the_rates_return_to_their_base(tokenizer):
    hive = _hive(tokenizer)
    vr = _mechanism(hive)
    _tick(hive, vr, +1.0, +1.0)  # boosted first
    detail, shared = _tick(hive, vr, +1.0, +1.0, swarm_seed=7, agent_seed=8)
    assert detail["mode"] == "neutral" and abs(detail["cosine"]) < 0.3 and "resonant" not in shared
    for lv in ("swarm", "agent"):
        assert hive.core.states[lv].lr == hive.core.stack.get(lv).lr


def test_a_level_that_did_not_learn_is_left_out_of_the_comparison(tokenizer):
    hive = _hive(tokenizer)
    vr = _mechanism(hive)
    vr.run(_view(hive, "draw"))
    hive.core.add_delta("swarm", 0, _pattern(hive, "swarm", 1))
    action = vr.run(_view(hive, "apply"))
    assert action is not None and action.detail["cosine"] is None and action.detail["mode"] == "neutral"


def test_a_resonant_tick_sends_its_ready_patterns_past_the_queue(tokenizer):
    hive = _hive(tokenizer)
    hive.core.add_delta("agent", 0, _pattern(hive, "agent", 2))
    cons = Consolidation(ConsolidationConfig(), [("agent", "swarm")])
    ready = [Ready("agent", "swarm", 0, 0.5, 1)]  # far below the critical autocorrelation
    quiet = Bandwidth(BandwidthConfig(fraction=1e-9), cons, rank=1)
    quiet.run(TickView(1, "migrate", [], (), {}, hive.core.states, hive.core, shared={"ready": list(ready)}))
    assert sum(len(q) for q in quiet.queues.values()) == 1  # queued
    loud = Bandwidth(BandwidthConfig(fraction=1e-9), cons, rank=1)
    action = loud.run(TickView(1, "migrate", [], (), {}, hive.core.states, hive.core, shared={"ready": list(ready), "resonant": True}))
    assert action is not None and [m["bypass"] for m in action.detail["migrations"]] == [True]


def test_config_off_by_default_validated_and_built_for_lasting_levels(base_dir):
    [vr] = [m for m in build_mechanisms(tiny_config(base_dir), ["a"]) if isinstance(m, VerticalResonance)]
    assert not vr.enabled and vr.levels == ["swarm", "agent"] and vr.phases == ("draw", "apply")
    with pytest.raises(ConfigError, match="boost"):
        parse_config(config_tree(base_dir), ["mechanisms.vertical_resonance.boost=3.0"])
    with pytest.raises(ConfigError, match="vertical_resonance.levels"):
        parse_config(config_tree(base_dir), ["mechanisms.vertical_resonance.levels=[nope]"])


def test_directions_survive_state_dict_and_load(tokenizer):
    hive = _hive(tokenizer)
    vr = _mechanism(hive)
    _tick(hive, vr, +1.0, +1.0)
    twin = VerticalResonance(CFG, ["swarm", "agent"], {}, {})
    twin.load_state_dict(vr.state_dict())
    assert set(twin.direction) == {"swarm", "agent"} and set(twin.inputs) == set(vr.inputs)
    for lv, d in vr.direction.items():
        assert torch.equal(twin.direction[lv], d)
    for path, x in vr.inputs.items():
        assert torch.equal(twin.inputs[path], x)


def test_in_a_run_it_is_in_the_ledger_and_the_report(base_dir, tmp_path):
    from lorahive.observe.ledger import Ledger
    from lorahive.observe.report_mechanisms import inertia_figure, mechanism_events
    from lorahive.runtime import run as runs

    runs.start(tiny_config(base_dir, ["mechanisms.vertical_resonance.enabled=true", "ticks=3"]), tmp_path / "run")
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        events = mechanism_events(ledger)
    mine = [e for e in events if e["kind"] == "mechanism:vertical_resonance"]
    assert [e["tick"] for e in mine] == [2, 3]  # tick 1 keeps the inputs the next ticks probe with
    assert all(e["detail"]["mode"] in ("resonant", "dissonant", "neutral") for e in mine)
    fig = inertia_figure(events)
    assert len(fig.axes) == 3 and "vertical resonance" in fig.axes[2].get_title()
