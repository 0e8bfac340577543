"""Emergent inertia (mechanisms/inertia.py): a level used by more agents, or more often, gets heavier;
the inertia it gets is the step size the level's optimizer steps then take.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorahive import Hive
from lorahive.config import InertiaConfig
from lorahive.core import LevelState
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.inertia import EmergentInertia, emergent_inertia, rms_gradient
from lorahive.mechanisms.registry import build_mechanisms
from tiny_runs import tiny_config

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CFG = InertiaConfig(k=4.0, ema=0.8)
EXAMPLE = [("Question: what colour is the sky? Answer:", " blue")]


def _agents(n: int) -> dict[str, list[tuple[str, str]]]:
    return {f"a{i}": list(EXAMPLE) for i in range(n)}


def _view(
    hive: Hive,
    support: dict[str, list[tuple[str, str]]],
    states: dict[str, LevelState] | None = None,
    tick: int = 1,
) -> TickView:
    core = hive.core
    return TickView(
        tick, "draw", [], (), {}, core.states if states is None else states, core, support=support
    )


def _states(hive: Hive) -> dict[str, LevelState]:
    return {lv.name: LevelState.from_spec(lv) for lv in hive.levels}


def _step(hive: Hive, level: str, value: float | dict[str, torch.Tensor], slots: list[int]) -> None:
    """One optimizer step of ``level`` on ``slots`` with a constant (or given) gradient for every parameter."""
    params = hive.core.level_params(level)
    grads = (
        value
        if isinstance(value, dict)
        else {k: torch.full_like(p, value) for k, p in params.items()}
    )
    hive.core.step(level, grads, slots)


def _mechanism(levels: list[str], hive: Hive, cfg: InertiaConfig = CFG) -> EmergentInertia:
    return EmergentInertia(cfg, levels, {lv.name: lv.inertia for lv in hive.levels})


def _reference(
    base: float, used: list[int], cfg: InertiaConfig = CFG, grad: float = 1.0
) -> list[float]:
    """Inertia per tick for ``used[t]`` users at tick t, with a constant relative gradient."""
    f, out = 0.0, []
    for users in used:
        f = cfg.ema * f + (1 - cfg.ema) * float(users > 0)
        out.append(base + (1 - base) * math.tanh(users * f * grad / cfg.k))
    return out


def _drive(
    hive: Hive, level: str, supports: list[dict[str, list[tuple[str, str]]]]
) -> tuple[list[float], list[float]]:
    mech, states = _mechanism([level], hive), _states(hive)
    inertia, density = [], []
    for t, support in enumerate(supports):
        action = mech.run(_view(hive, support, states, tick=t + 1))
        assert action is not None and action.kind == "inertia"
        inertia.append(states[level].inertia)
        density.append(action.detail["levels"][level]["density"])
        assert action.detail["levels"][level]["inertia"] == states[level].inertia
    return inertia, density


def test_a_shared_level_used_by_more_agents_gets_heavier(hive):
    _step(hive, "swarm", 0.5, [0])  # a gradient to read; no more steps: its relative size stays 1
    beta = hive.core.stack.get("swarm").inertia

    one, d1 = _drive(hive, "swarm", [_agents(1)] * 6)
    eight, d8 = _drive(hive, "swarm", [_agents(8)] * 6)

    assert all(b > a > beta for a, b in zip(one, eight, strict=True))
    assert one == pytest.approx(_reference(beta, [1] * 6))
    assert eight == pytest.approx(_reference(beta, [8] * 6))
    assert d8 == pytest.approx([8 * d for d in d1])  # density is linear in the users
    assert one == sorted(one) and eight == sorted(eight)  # and the frequency EMA only grows


def test_a_per_agent_level_has_one_user_per_slot_however_many_agents(hive):
    _step(hive, "agent", 0.5, [0, 1, 2])
    beta = hive.core.stack.get("agent").inertia

    one, _ = _drive(hive, "agent", [_agents(1)] * 4)
    eight, _ = _drive(hive, "agent", [_agents(8)] * 4)

    assert one == eight == pytest.approx(_reference(beta, [1] * 4)) and one[-1] > beta


def test_a_level_used_every_tick_is_heavier_than_one_used_every_other_tick(hive):
    _step(hive, "swarm", 0.5, [0])
    beta = hive.core.stack.get("swarm").inertia
    every = [_agents(4)] * 8
    other = [_agents(4) if t % 2 == 0 else {a: [] for a in _agents(4)} for t in range(8)]

    dense, _ = _drive(hive, "swarm", every)
    sparse, _ = _drive(hive, "swarm", other)

    assert sparse == pytest.approx(_reference(beta, [4 if t % 2 == 0 else 0 for t in range(8)]))
    assert dense == pytest.approx(_reference(beta, [4] * 8))
    # ticks both used it: the frequent one is heavier
    assert all(dense[t] > sparse[t] for t in range(2, 8, 2))
    # unused: no density, the configured inertia
    assert all(sparse[t] == beta for t in range(1, 8, 2))


def test_the_gradient_term_is_the_rms_gradient_over_its_peak(hive):
    beta = hive.core.stack.get("swarm").inertia
    mech, states = _mechanism(["swarm"], hive), _states(hive)
    support = _agents(2)

    action = mech.run(_view(hive, support, states))
    assert action is not None and action.detail["levels"]["swarm"]["density"] == 0.0
    assert states["swarm"].inertia == beta  # no step yet: no gradient
    _step(hive, "swarm", 1.0, [0])
    g1 = rms_gradient(hive.core.optimizers["swarm"])
    action = mech.run(_view(hive, support, states, tick=2))
    assert action is not None
    f = 0.8 * 0.2 + 0.2
    assert action.detail["levels"]["swarm"]["density"] == pytest.approx(2 * f * 1.0)
    _step(hive, "swarm", 0.1, [0])  # a smaller gradient: the RMS falls below its peak
    g2 = rms_gradient(hive.core.optimizers["swarm"])
    action = mech.run(_view(hive, support, states, tick=3))
    assert action is not None
    f = 0.8 * f + 0.2
    assert 0 < g2 < g1 and mech.peak["swarm"] == pytest.approx(g1)
    assert action.detail["levels"]["swarm"]["density"] == pytest.approx(2 * f * g2 / g1)
    assert states["swarm"].inertia == pytest.approx(emergent_inertia(beta, 2 * f * g2 / g1, CFG.k))


@SETTINGS
@given(users=st.lists(st.integers(0, 8), min_size=1, max_size=10))
def test_inertia_follows_the_density_rule_for_any_usage(hive, users):
    if not hive.core.optimizers["swarm"].state:
        _step(hive, "swarm", 0.5, [0])
    beta = hive.core.stack.get("swarm").inertia
    names = [f"a{i}" for i in range(8)]
    supports = [{a: list(EXAMPLE) if i < n else [] for i, a in enumerate(names)} for n in users]

    inertia, _ = _drive(hive, "swarm", supports)

    assert inertia == pytest.approx(_reference(beta, users))
    assert all(beta <= x < 1 for x in inertia)


@SETTINGS
@given(
    base=st.floats(0.0, 0.99),
    d=st.lists(st.floats(0.0, 1e3), min_size=2, max_size=2),
    k=st.floats(0.1, 100.0),
)
def test_inertia_is_monotone_in_density_from_beta_toward_one(base, d, k):
    lo, hi = sorted(d)

    a, b = emergent_inertia(base, lo, k), emergent_inertia(base, hi, k)

    assert base <= a <= b <= 1.0
    assert a == pytest.approx(base + (1 - base) * math.tanh(lo / k))
    assert emergent_inertia(base, 0.0, k) == base == emergent_inertia(base, -lo - 1.0, k)


def test_the_step_size_the_inertia_sets_is_what_the_next_step_takes(hive):
    core = hive.core
    spec = core.stack.get("agent")

    def b0() -> torch.Tensor:
        return next(core.banks("agent")).B[0].detach().clone()

    assert torch.equal(b0(), torch.zeros_like(b0()))
    # a constant gradient: every Adam step moves each weight by −step size
    _step(hive, "agent", 1.0, [0])
    first = -float(b0().mean())
    mech = _mechanism(["agent"], hive, InertiaConfig(k=0.25, ema=0.8))
    mech.run(_view(hive, {"ann": list(EXAMPLE)}))  # the hive's own level states
    st_ = core.states["agent"]
    before = b0()
    _step(hive, "agent", 1.0, [0])
    moved = before - b0()
    second = float(moved.mean())

    assert first == pytest.approx(spec.lr * (1 - spec.inertia), rel=1e-5)
    assert st_.inertia > spec.inertia + 0.2
    assert st_.step_size == pytest.approx(spec.lr * (1 - st_.inertia))
    assert second == pytest.approx(st_.step_size, rel=1e-4)
    assert torch.allclose(moved, torch.full_like(moved, second), rtol=1e-3)


def test_rms_gradient_is_the_root_of_the_bias_corrected_mean_second_moment(hive):
    core = hive.core
    opt = core.optimizers["agent"]
    assert rms_gradient(opt) == 0.0  # nothing stepped yet
    params = core.level_params("agent")
    gen = torch.Generator().manual_seed(3)
    g1 = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
    g2 = {k: torch.randn(p.shape, generator=gen) * 3 for k, p in params.items()}
    _step(hive, "agent", g1, [0, 2])  # slots 0 and 2 once, then slot 0 again; slots 1 and 3 never
    _step(hive, "agent", g2, [0])

    b2 = opt.betas[1]
    per_slot = []
    for k in params:
        x1, x2 = g1[k].double(), g2[k].double()
        v0 = b2 * (1 - b2) * x1[0] ** 2 + (1 - b2) * x2[0] ** 2  # slot 0: two steps
        per_slot.append(float((v0 / (1 - b2**2)).mean()))
        # slot 2: one step, exactly g²
        per_slot.append(float(((1 - b2) * x1[2] ** 2 / (1 - b2)).mean()))
    expected = math.sqrt(sum(per_slot) / len(per_slot))

    assert rms_gradient(opt) == pytest.approx(expected, rel=1e-5)
    assert len(per_slot) == 2 * len(params) and opt.host_steps[next(iter(params))] == [2, 0, 1, 0]


def test_inertia_state_round_trips(hive):
    _step(hive, "swarm", 0.5, [0])
    mech, states = _mechanism(["swarm", "agent"], hive), _states(hive)
    for t in range(3):
        mech.run(_view(hive, _agents(3), states, tick=t + 1))

    state = json.loads(json.dumps(mech.state_dict()))  # plain JSON: it goes to the run state
    fresh, fresh_states = _mechanism(["swarm", "agent"], hive), _states(hive)
    fresh.load_state_dict(state | {"frequency": state["frequency"] | {"gone": 0.5}})

    assert fresh.frequency == mech.frequency and fresh.peak == mech.peak
    assert "gone" not in fresh.frequency
    assert mech.frequency["swarm"] > 0 and mech.peak["swarm"] > 0
    mech.run(_view(hive, _agents(3), states, tick=4))
    fresh.run(_view(hive, _agents(3), fresh_states, tick=4))
    assert fresh_states["swarm"].inertia == states["swarm"].inertia
    assert states["swarm"].inertia > hive.core.stack.get("swarm").inertia


def test_the_swarm_builds_inertia_for_the_trainable_levels_with_their_configured_base(base_dir):
    cfg = tiny_config(base_dir, ["mechanisms.inertia.k=3.0"])
    [mech] = [m for m in build_mechanisms(cfg, ["a", "b"]) if isinstance(m, EmergentInertia)]
    assert mech.levels == ["swarm", "agent", "context"]
    assert mech.phases == ("draw",) and mech.cfg.k == 3.0
    assert mech.base == {"swarm": 0.5, "agent": 0.5, "context": 0.1}
