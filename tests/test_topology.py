"""Topology (mechanisms/topology.py): the time-scale rule, function-preserving split and merge,
the stack in checkpoints, and a run whose hierarchy deepens from swarm + context."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive
from lorahive.cli.main import app
from lorahive.config import ConfigError, TopologyConfig, parse_config
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.registry import build_mechanisms
from lorahive.mechanisms.topology import (
    Topology,
    autocorrelation,
    co_correlation,
    level_sketch,
    merge_levels,
    split_level,
    two_scale_excess,
)
from lorahive.observe.ledger import Ledger
from lorahive.observe.report_mechanisms import dynamics_lines, mechanism_events
from lorahive.runtime import run as runs
from tiny_runs import assert_same_checkpoints, config_tree, tiny_config

PROMPTS = ["the cat sat on", "a quick brown fox", "hello there world"]
AGENTS = ["ann", "bob", "cyd"]


def _stream(ticks: int, drift: float, rho: float = 0.0, dim: int = 4000, seed: int = 0) -> list[torch.Tensor]:
    """Updates ``drift·d + noise``: ``d`` one fixed direction, the noise AR(1) with coefficient ``rho``."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(dim, generator=gen)
    noise = torch.randn(dim, generator=gen)
    out = []
    for _ in range(ticks):
        noise = rho * noise + (1 - rho**2) ** 0.5 * torch.randn(dim, generator=gen)
        out.append(drift * d + noise)
    return out


def test_one_time_scale_shows_no_excess_and_a_drift_under_noise_does():
    assert abs(two_scale_excess(_stream(40, drift=0.0))) < 0.02  # white noise: C(1) = C(2) = 0
    assert abs(two_scale_excess(_stream(40, drift=0.0, rho=0.7))) < 0.05  # AR(1): C(2) = C(1)²
    assert abs(two_scale_excess(_stream(40, drift=1.0, rho=0.0)[:1] * 40)) < 1e-9  # a constant: C = 1
    mixed = _stream(40, drift=1.0)  # equal energy of drift and noise: C(1) = C(2) = 1/2
    assert autocorrelation(mixed, 1) == pytest.approx(0.5, abs=0.05)
    assert two_scale_excess(mixed) == pytest.approx(0.25, abs=0.04)
    assert autocorrelation(mixed[:2], 2) == 0.0  # too short a window: no signal


@settings(max_examples=25, deadline=None)
@given(share=st.floats(0.05, 0.95), seed=st.integers(0, 10_000))
def test_the_excess_of_a_drift_of_energy_share_b_is_b_times_1_minus_b(share, seed):
    stream = _stream(48, drift=(share / (1 - share)) ** 0.5, seed=seed)
    assert two_scale_excess(stream) == pytest.approx(share * (1 - share), abs=0.06)


def test_co_correlation_is_the_windowed_cosine():
    a = _stream(6, drift=0.0, seed=1)
    assert co_correlation(a, a) == pytest.approx(1.0)
    assert co_correlation(a, [-t for t in a]) == pytest.approx(-1.0)
    assert abs(co_correlation(a, _stream(6, drift=0.0, seed=2))) < 0.05


def _hive(tokenizer) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(AGENTS)
    randomize_b(hive)
    return hive


def _logits(hive: Hive) -> torch.Tensor:
    return hive.logits(PROMPTS, AGENTS)


def test_a_split_moves_the_dominant_part_into_a_new_slower_level_and_keeps_the_function(tokenizer):
    hive = _hive(tokenizer)
    before = _logits(hive)
    done = split_level(hive.core, "context", "context_g1", 1)
    assert hive.stack.names() == ["foundation", "domain", "swarm", "agent", "context_g1", "context"]
    new = hive.stack.get("context_g1")
    assert (new.scope, new.rank, new.scale, new.inertia) == ("agent", 1, hive.stack.get("context").scale, pytest.approx((0.1 + 0.5) / 2))
    assert done["new"] == "context_g1" and hive.core.origin == {"context_g1": "context"}
    torch.testing.assert_close(_logits(hive), before, rtol=1e-5, atol=1e-5)
    assert not hive.core.is_zero("context_g1") and hive.core.with_grown(["context"]) == ["context_g1", "context"]
    # what is left in the source is its weaker part: the grown level holds the larger share of the energy
    energy = {lv: sum(float((b.B @ b.A).detach().square().sum()) for b in hive.core.banks(lv)) for lv in ("context_g1", "context")}
    assert energy["context_g1"] > energy["context"] > 0


def test_merging_a_grown_level_back_keeps_the_function_exactly_in_fp32(tokenizer):
    hive = _hive(tokenizer)
    before = _logits(hive)
    split_level(hive.core, "agent", "agent_g1", 1)
    done = merge_levels(hive.core, "agent_g1", "agent", grow=True, max_rank=64)  # the grown one survives, rank 1 + 2
    assert hive.stack.names() == ["foundation", "domain", "swarm", "agent_g1", "context"] and hive.stack.get("agent_g1").rank == 3
    assert done["truncation"] == pytest.approx(0.0, abs=1e-5)
    torch.testing.assert_close(_logits(hive), before, rtol=1e-5, atol=1e-5)


def test_folding_a_grown_level_into_a_configured_one_keeps_its_rank_and_records_the_truncation(tokenizer):
    hive = _hive(tokenizer)
    split_level(hive.core, "agent", "agent_g1", 1)
    done = merge_levels(hive.core, "agent", "agent_g1", grow=False, max_rank=64)
    assert hive.stack.names() == ["foundation", "domain", "swarm", "agent", "context"] and hive.stack.get("agent").rank == 2
    assert done["truncation"] == pytest.approx(0.0, abs=1e-5)  # the two parts came from one rank-2 level: they fit
    hive.core.insert_level(hive.stack.get("agent").model_copy(update={"name": "extra"}), 4, origin="agent")
    randomize_b(hive, seed=3)
    assert merge_levels(hive.core, "agent", "extra", grow=False, max_rank=64)["truncation"] > 0  # rank 2 + 2 into 2


def test_an_added_level_adds_nothing_and_trains(tokenizer):
    hive = _hive(tokenizer)
    before = _logits(hive)
    hive.core.insert_level(hive.stack.get("agent").model_copy(update={"name": "extra"}), 3, origin="agent")
    # a zero term changes the order of the float sums, not their value: rounding only (4e-6 seen on logits of ~10)
    torch.testing.assert_close(_logits(hive), before, rtol=1e-5, atol=1e-5)
    hive.learn({"ann": [("the cat sat on", " the mat")]}, steps=2, levels=hive.core.with_grown(["agent"]))
    assert hive.core.written["extra"] == {0}
    hive.core.remove_level("extra")
    assert "extra" not in hive.stack.names() and all("extra" not in layer.banks for layer in hive.core.layers.values())


def _view(hive: Hive, tick: int, phase: str) -> TickView:
    return TickView(tick, phase, [], (), {}, hive.core.states, hive.core, shared={})


def _drive(hive: Hive, topo: Topology, ticks: int, drift: float, seed: int = 0) -> list[str]:
    """Each tick the context level holds ``drift × one fixed pattern + a new random one`` (a task's learning)."""
    gen = torch.Generator().manual_seed(seed)
    fixed = {p: torch.randn(b.B.shape, generator=gen) for p, b in hive.core.named_banks("context")}
    kinds = []
    for t in range(1, ticks + 1):
        topo.run(_view(hive, t, "draw"))
        with torch.no_grad():
            for p, bank in hive.core.named_banks("context"):
                bank.B.copy_(0.05 * (drift * fixed[p] + torch.randn(bank.B.shape, generator=gen)))
        hive.core.mark_written("context")
        action = topo.run(_view(hive, t, "apply"))
        assert action is not None
        kinds.append(action.kind)
    return kinds


CFG = TopologyConfig(enabled=True, window=4, checks=2, cooldown=2)


def test_a_level_with_two_time_scales_splits_and_one_with_one_does_not(tokenizer):
    hive = _hive(tokenizer)
    topo = Topology(CFG, ["context"])
    kinds = _drive(hive, topo, 6, drift=1.0)  # half the energy a fixed pattern, half new each task
    assert kinds == ["watch"] * 4 + ["split", "watch"]  # the window is full at tick 4, the signal held at ticks 4 and 5
    assert hive.stack.names()[-2:] == ["context_g1", "context"]
    calm = _hive(tokenizer)
    assert "split" not in _drive(calm, Topology(CFG, ["context"]), 12, drift=0.0)  # only fast changes
    assert "split" not in _drive(calm, Topology(CFG, ["context"]), 12, drift=30.0)  # (almost) only the slow pattern


def test_the_optimizers_momentum_is_not_read_as_a_second_time_scale(tokenizer):
    """Real AdamW steps, one a tick, moments kept between ticks, on gradients ``drift + white noise``
    of equal energy. What is written is their β1 = 0.9 moving average: C(1) ≈ 0.9, C(2) ≈ C(1)², the
    excess at most b(1 − b)(1 − β1)² = 0.0025 — under any threshold. Topology takes out what the
    momentum held at ``draw`` carried into the tick, and sees the gradients' two time scales."""
    hive = _hive(tokenizer)
    core = hive.core
    slots = list(range(core.n_slots("agent")))
    gen = torch.Generator().manual_seed(0)
    drift = {n: torch.randn(p.shape, generator=gen) for n, p in core.level_params("agent").items()}
    topo = Topology(TopologyConfig(enabled=True, window=12, split_excess=1.0), ["agent"])  # watch only
    written, seen = [], []
    for t in range(1, 41):
        topo.run(_view(hive, t, "draw"))
        before = level_sketch(core, "agent", topo.cfg.sketch, topo.seed)
        core.step("agent", {n: d + torch.randn(d.shape, generator=gen) for n, d in drift.items()}, slots)
        written.append(level_sketch(core, "agent", topo.cfg.sketch, topo.seed) - before)
        action = topo.run(_view(hive, t, "apply"))
        assert action is not None and action.kind == "watch"
        seen.append(action.detail["levels"]["agent"])
    last = written[-12:]
    assert autocorrelation(last, 1) > 0.8 and abs(two_scale_excess(last)) < 0.02  # the momentum: one slow AR(1)
    assert seen[-1]["ticks"] == 12 and seen[-1]["c1"] < 0.7 and seen[-1]["c2"] == pytest.approx(seen[-1]["c1"], abs=0.15)
    assert min(s["excess"] for s in seen[20:]) > 0.1  # drift under white noise, as the rule expects
    # what was taken out is the carried part only: the momentum-free series adds back up to what was written
    fresh = Topology(TopologyConfig(enabled=True, window=12), ["agent"])
    core.optimizers["agent"].reset(slots)
    fresh.run(_view(hive, 41, "draw"))
    before = level_sketch(core, "agent", fresh.cfg.sketch, fresh.seed)
    core.step("agent", {n: d + torch.randn(d.shape, generator=gen) for n, d in drift.items()}, slots)
    fresh.run(_view(hive, 41, "apply"))
    torch.testing.assert_close(fresh.history["agent"][0], level_sketch(core, "agent", fresh.cfg.sketch, fresh.seed) - before)  # no momentum held: nothing carried


def test_a_grown_level_and_its_neighbour_that_learn_alike_merge(tokenizer):
    hive = _hive(tokenizer)
    split_level(hive.core, "agent", "agent_g1", 1)
    pairs = list(zip(hive.core.banks("agent"), hive.core.banks("agent_g1"), strict=True))
    with torch.no_grad():
        for a, g in pairs:
            g.A[:, 0].copy_(a.A[:, 0])  # one shared input direction: the same step of B is the same step of ΔW
    topo = Topology(CFG, ["agent"])
    gen = torch.Generator().manual_seed(0)
    kinds = []
    for t in range(1, 7):
        topo.run(_view(hive, t, "draw"))
        with torch.no_grad():
            for a, g in pairs:
                step = torch.randn(a.B.shape[:2], generator=gen) * 0.01  # (S, out)
                a.B[:, :, 0].add_(step)
                g.B[:, :, 0].add_(step)  # same scale (alpha / rank) and mix in both levels
        action = topo.run(_view(hive, t, "apply"))
        assert action is not None
        kinds.append(action.kind)
    assert kinds == ["watch"] * 4 + ["merge", "watch"]
    assert hive.stack.names()[-2:] == ["agent", "context"] and "agent_g1" not in hive.core.states


def test_off_by_default_validated_and_built(base_dir):
    [topo] = [m for m in build_mechanisms(tiny_config(base_dir), ["a", "b"]) if isinstance(m, Topology)]
    assert not topo.enabled and topo.phases == ("draw", "apply")
    with pytest.raises(ConfigError, match="window"):
        parse_config(config_tree(base_dir), ["mechanisms.topology.window=2"])


def _deepening(base_dir, ticks: int, overrides: list[str] = ()) -> object:
    """Swarm + context only; four task types of rising difficulty (Yelp, AG News, Yahoo, DBpedia: more labels each)."""
    levels = [
        {"name": "swarm", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.5, "lr": 1e-2},
        {"name": "context", "rank": 4, "alpha": 8, "scope": "task", "inertia": 0.1, "lr": 5e-2},
    ]
    on = ["mechanisms.topology.enabled=true", "mechanisms.topology.window=3", "mechanisms.topology.checks=1", "mechanisms.topology.cooldown=1",
          "mechanisms.topology.split_excess=0.001", "mechanisms.topology.levels=[context]", "checkpoint_every=1", f"ticks={ticks}"]  # fmt: skip
    tree = config_tree(base_dir, levels=levels, agents=2, agent={"fast_steps": 2, "quality_bar": 0.0, "fast_levels": ["context"]})
    tree["stream"] = {"order": ["yelp", "agnews", "yahoo", "dbpedia"], "ticks_per_stage": 2, "method": "hive"}
    tree["suite"] = {**tree["suite"], "task_types": ["yelp", "agnews", "yahoo", "dbpedia"]}
    return parse_config(tree, [*on, *overrides])


def test_from_swarm_and_context_the_hierarchy_deepens_and_resume_is_exact(base_dir, tmp_path):
    runs.start(_deepening(base_dir, 8), tmp_path / "straight")
    db = sqlite3.connect(tmp_path / "straight" / "ledger.sqlite")
    rows = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'mechanism:topology'")]
    db.close()
    splits = [r for r in rows if r["action"] == "split"]
    state = json.loads((tmp_path / "straight" / "checkpoint" / "state.json").read_text())
    names = [lv["name"] for lv in state["stack"]["levels"]]
    assert splits and len(names) > 2, names  # a level grew out of the context level
    assert splits[0]["level"] == "context" and splits[0]["scope"] == "agent"
    with Ledger(tmp_path / "straight" / "ledger.sqlite") as ledger:
        line = dynamics_lines(mechanism_events(ledger))[-1]
    assert line.startswith(f"topology: {len(splits)} changes of the stack (") and "split context_g1 from context" in line
    printed = CliRunner().invoke(app, ["inspect", str(tmp_path / "straight")])
    assert printed.exit_code == 0 and " ".join(line.split()) in " ".join(printed.output.split()), printed.output
    # stopped right after the first split and resumed: the same end, bit for bit
    first = min(i for i, r in enumerate(rows) if r["action"] == "split") + 1

    def stop(tick: int, total: int, ctx: object) -> None:
        if tick == first:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.start(_deepening(base_dir, 8), tmp_path / "split", progress=stop)
    runs.resume(tmp_path / "split")
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "split")
    again = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    assert again["stack"] == state["stack"] and again["level_states"] == state["level_states"]


def test_a_checkpoint_carries_the_grown_stack_into_a_fresh_core(tokenizer, tmp_path):
    from lorahive.store import checkpoint

    hive = _hive(tokenizer)
    split_level(hive.core, "context", "context_g1", 1)
    before = _logits(hive)
    checkpoint.save(tmp_path, hive.core, {"tick": 1}, {})
    fresh = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    fresh.add_agents(AGENTS)
    checkpoint.load(tmp_path, fresh.core)
    assert fresh.stack == hive.stack and fresh.core.origin == {"context_g1": "context"}
    torch.testing.assert_close(_logits(fresh), before, rtol=0, atol=0)
    (tmp_path / "checkpoint" / "levels" / "context_g1.safetensors").write_bytes(b"broken")
    other = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    with pytest.raises(checkpoint.CheckpointError, match="context_g1"):
        checkpoint.load(tmp_path, other.core)
    assert other.stack == small_stack() and other.core.origin == {}  # a refused checkpoint leaves the core as it was
