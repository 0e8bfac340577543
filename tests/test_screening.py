"""Screening and free dispersion (mechanisms/screening.py): unused patterns fade to their init, used
ones hold, the mode switches with hysteresis; the per-pattern decay primitive; the activity probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive
from lorahive.config import ScreeningConfig
from lorahive.core import LevelState
from lorahive.mechanisms.base import Activity, TickView
from lorahive.mechanisms.registry import build_mechanisms, join_states, split_states
from lorahive.mechanisms.screening import Screening, hysteresis
from tiny_runs import tiny_config

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SUPPORT = [
    ("Question: what colour is the sky? Answer:", " blue"),
    ("The capital of France is", " Paris"),
]
CFG = ScreeningConfig(
    levels=["agent"], ema=0.5, up=0.2, down=0.05, screened_decay=0.002, free_decay=0.1
)


def _view(
    hive: Hive,
    activity: Callable[..., Activity],
    states: Mapping[str, LevelState] | None = None,
    tick: int = 1,
    shared: dict | None = None,
) -> TickView:
    core = hive.core
    return TickView(
        tick,
        "decay",
        [],
        (),
        {},
        core.states if states is None else states,
        core,
        activity=activity,
        shared={} if shared is None else shared,
    )


def _measured(hive: Hive, agents: list[str]) -> Callable[..., Activity]:
    support = {a: SUPPORT for a in agents}
    return lambda levels: hive.activity(support, levels)


def _given(level: str, act: list[list[float]]) -> Callable[..., Activity]:
    """An activity callable that returns ``act`` for ``level`` (every slot had rows)."""
    t = torch.tensor(act)
    return lambda levels: {level: (t, torch.ones(t.shape[0], dtype=torch.bool))}


def _slot(hive: Hive, level: str, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The slot's B and A − A0 in every module (copies)."""
    banks = list(hive.core.banks(level))
    return [b.B[slot].detach().clone() for b in banks], [
        (b.A[slot] - b.A0[slot]).detach().clone() for b in banks
    ]


def _scaled(
    now: list[torch.Tensor], before: list[torch.Tensor], factor: float, atol: float = 1e-8
) -> None:
    for x, y in zip(now, before, strict=True):
        torch.testing.assert_close(x, y * factor, rtol=1e-5, atol=atol)


A_TOL = 1e-6  # A − A0 is a difference of float32 numbers of size ~0.2, rounded at every lerp


def _perturb_a(hive: Hive, level: str) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for bank in hive.core.banks(level):
            bank.A.add_(torch.randn(bank.A.shape, generator=gen) * 0.1)


WARM = 6  # ticks with all three agents before cyd leaves


def _scenario(hive: Hive, by_inertia: bool, warm: int = WARM, after: int = 12):
    """All three agents for ``warm`` ticks, then cyd (slot 2) leaves. Snapshots and modes per tick."""
    randomize_b(hive)
    _perturb_a(hive, "agent")
    scr = Screening(CFG.model_copy(update={"by_inertia": by_inertia}), ["agent"])
    states = {lv: LevelState(mix=1.0, inertia=0.6, lr=1e-2) for lv in hive.core.states}
    keep = 0.4 if by_inertia else 1.0
    log = []  # (agents, ema before, ema after, screened after, snapshots before of slots 0, 2, 3)
    for t in range(warm + after):
        agents = ["ann", "bob", "cyd"] if t < warm else ["ann", "bob"]
        before = {s: _slot(hive, "agent", s) for s in (0, 2, 3)}
        ema0 = scr.ema.get("agent", torch.zeros(4, 2)).clone()
        action = scr.run(_view(hive, _measured(hive, agents), states, tick=t + 1))
        assert action is not None and action.kind == "decay"
        log.append((agents, ema0, scr.ema["agent"].clone(), scr.screened["agent"].clone(), before))
    return log, keep, {s: _slot(hive, "agent", s) for s in (0, 2, 3)}


@pytest.fixture(scope="module", params=[False, True], ids=["unscaled", "by_inertia"])
def scenario(request, tokenizer):
    """One scenario run per setting of by_inertia, shared by the tests that read it."""
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob", "cyd"])
    return _scenario(hive, request.param)


def test_an_unused_pattern_fades_then_decays_to_its_init_at_the_free_rate(scenario):
    log, keep, end = scenario
    warm = WARM

    assert log[warm - 1][3][2].all()  # cyd's patterns were screened while cyd had rows
    for agents, ema0, ema1, *_ in log[warm:]:
        assert "cyd" not in agents
        # no rows: activity 0, the EMA falls geometrically
        torch.testing.assert_close(ema1[2], CFG.ema * ema0[2])
    for i in range(2):  # each pattern of cyd's slot
        modes = [bool(scr[2, i]) for *_, scr, _ in log[warm:]]
        # screened until its EMA drops below `down`, then free for good
        first = modes.index(False)
        assert all(modes[:first]) and not any(modes[first:]) and 0 < first < len(modes) - 4
        assert float(log[warm + first][2][2, i]) < CFG.down <= float(log[warm + first - 1][2][2, i])
        # B[:, i] shrinks by (1 − free rate·keep) per free tick, A[i] − A0[i] likewise; before, at the screened rate
        n_free = len(modes) - first
        start_b, start_a = log[warm + first][4][2]
        end_b, end_a = end[2]
        _scaled(
            [b[:, i] for b in end_b],
            [b[:, i] for b in start_b],
            (1 - CFG.free_decay * keep) ** n_free,
        )
        _scaled(
            [a[i] for a in end_a],
            [a[i] for a in start_a],
            (1 - CFG.free_decay * keep) ** n_free,
            atol=A_TOL,
        )
        left_b, _ = log[warm][4][2]
        _scaled(
            [b[:, i] for b in start_b],
            [b[:, i] for b in left_b],
            (1 - CFG.screened_decay * keep) ** first,
        )
    # slot 3 has no agent at all: free from the first tick, decayed at the free rate every tick
    _scaled(end[3][0], log[0][4][3][0], (1 - CFG.free_decay * keep) ** len(log))
    _scaled(end[3][1], log[0][4][3][1], (1 - CFG.free_decay * keep) ** len(log), atol=A_TOL)
    assert not any(bool(scr[3].any()) for *_, scr, _ in log)


def test_a_used_pattern_holds_decaying_only_at_the_screened_rate(scenario):
    log, keep, end = scenario

    # ann has rows every tick: screened throughout
    assert all(bool(scr[0].all()) for *_, scr, _ in log)
    b0, a0 = log[0][4][0]
    _scaled(end[0][0], b0, (1 - CFG.screened_decay * keep) ** len(log))
    _scaled(end[0][1], a0, (1 - CFG.screened_decay * keep) ** len(log), atol=A_TOL)
    assert (1 - CFG.screened_decay * keep) ** len(log) > 0.95  # it held


def test_decay_rates_scale_with_one_minus_the_levels_inertia(hive):
    """by_inertia: a level at inertia 0.75 decays at a quarter of the configured rate."""
    randomize_b(hive)
    cfg = CFG.model_copy(update={"levels": ["swarm"], "ema": 0.0})
    states = {lv: LevelState(mix=1.0, inertia=0.75, lr=1e-2) for lv in hive.core.states}
    before, _ = _slot(hive, "swarm", 0)
    action = Screening(cfg, ["swarm"]).run(
        _view(hive, _given("swarm", [[1.0, 0.5, 0.01, 0.0]]), states)
    )

    after, _ = _slot(hive, "swarm", 0)
    rates = (
        torch.tensor([cfg.screened_decay, cfg.screened_decay, cfg.free_decay, cfg.free_decay])
        * 0.25
    )
    for x, y in zip(after, before, strict=True):
        torch.testing.assert_close(x, y * (1 - rates))
    assert (
        action is not None
        and action.detail["levels"]["swarm"]["screened"] == 2
        and action.detail["levels"]["swarm"]["free"] == 2
    )


# ---------------------------------------------------------------------------- hysteresis

UP, DOWN = 0.3, 0.1


def _modes_of(hive: Hive, values: list[float], ema: float = 0.0) -> list[bool]:
    """Drive pattern 1 of the swarm level through ``values`` (pattern 0 is the level's strongest, 1.0)."""
    randomize_b(hive)
    scr = Screening(ScreeningConfig(levels=["swarm"], ema=ema, up=UP, down=DOWN), ["swarm"])
    modes = []
    for t, x in enumerate(values):
        scr.run(_view(hive, _given("swarm", [[1.0, x, 0.0, 0.0]]), tick=t + 1))
        modes.append(bool(scr.screened["swarm"][0, 1]))
    return modes


def test_a_pattern_is_screened_only_above_up_and_freed_only_below_down(hive):
    ramp = [0.0, 0.05, 0.15, 0.25, 0.35, 0.45, 0.35, 0.25, 0.15, 0.05, 0.15, 0.25, 0.35]
    modes = _modes_of(hive, ramp)

    assert modes == [False] * 4 + [True] * 5 + [False] * 3 + [True]
    # between down and up the mode is the history's: the same activity, both modes
    between = {(x, m) for x, m in zip(ramp, modes, strict=True) if DOWN < x < UP}
    assert between == {(0.15, False), (0.25, False), (0.15, True), (0.25, True)}


def test_the_switch_points_on_a_fine_ramp_are_up_and_down(hive):
    up = [i / 100 for i in range(1, 100, 2)]  # odd hundredths: never exactly a threshold
    ramp = up + up[::-1]
    modes = _modes_of(hive, ramp)

    on = modes.index(True)
    off = len(up) + modes[len(up) :].index(False)
    assert ramp[on] > UP >= ramp[on - 1]
    assert ramp[off] < DOWN <= ramp[off - 1]
    assert all(modes[on:off]) and not any(modes[:on]) and not any(modes[off:])


def test_with_an_ema_the_mode_follows_the_smoothed_activity(hive):
    """The EMA lags: one spike above `up` does not screen a pattern, a sustained level does."""
    modes = _modes_of(hive, [0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0], ema=0.8)
    # EMA: 0.1, 0.08, 0.064, 0.151, 0.221, 0.277, 0.321, 0.257, 0.206, 0.165, 0.132, 0.105, ...
    assert modes == [False] * 6 + [True] * 6


@st.composite
def _runs(draw):
    down = draw(st.floats(0.0, 0.9))
    up = draw(st.floats(down, 1.0).filter(lambda u: u > down))
    n = draw(st.integers(1, 6))
    # exactly on a threshold, too
    value = st.one_of(st.floats(0.0, 1.0), st.sampled_from([up, down]))
    steps = draw(st.lists(st.lists(value, min_size=n, max_size=n), min_size=1, max_size=12))
    start = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return up, down, start, steps


@SETTINGS
@given(run=_runs())
def test_hysteresis_is_the_two_threshold_state_machine(run):
    up, down, start, steps = run
    mode = torch.tensor(start)
    ref = list(start)
    for ema in steps:
        mode = hysteresis(torch.tensor(ema, dtype=torch.float64), mode, up, down)
        for i, e in enumerate(ema):
            if e > up:
                ref[i] = True
            elif e < down:
                ref[i] = False
        assert mode.dtype == torch.bool and mode.tolist() == ref


@SETTINGS
@given(values=st.lists(st.integers(0, 20), min_size=1, max_size=15))
def test_screening_modes_follow_the_state_machine_of_relative_activity(hive, values):
    # multiples of 0.05, never exactly 0.3 nor 0.1 as float32 vs. float64
    xs = [v / 20 for v in values]
    xs = [x + 0.01 if x in (UP, DOWN) else x for x in xs]
    modes = _modes_of(hive, xs)

    ref, state = [], False
    for x in xs:
        state = True if x > UP else False if x < DOWN else state
        ref.append(state)
    assert modes == ref


def test_a_rewritten_slot_restarts_its_ema_and_a_freed_migrated_pattern_is_a_conflict(hive):
    randomize_b(hive)
    scr = Screening(ScreeningConfig(levels=["agent"], ema=0.9, up=0.3, down=0.1), ["agent"])
    for t in range(12):
        scr.run(_view(hive, _given("agent", [[1.0, 1.0]] * 4), tick=t + 1))
    assert scr.screened["agent"].all()
    old = scr.ema["agent"].clone()
    low = [[1.0, 1.0], [0.05, 0.5], [0.5, 0.05], [1.0, 1.0]]
    shared: dict = {"rewritten": {"agent": {1, 2}}, "conflicts": 1}

    scr.run(_view(hive, _given("agent", low), tick=13, shared=shared))

    ema, t_low = scr.ema["agent"], torch.tensor(low)
    # re-factored slots: the EMA restarts from this tick
    torch.testing.assert_close(ema[1:3], t_low[1:3])
    torch.testing.assert_close(ema[[0, 3]], 0.9 * old[[0, 3]] + 0.1 * t_low[[0, 3]])
    assert scr.screened["agent"].tolist() == [
        [True, True],
        [False, True],
        [True, False],
        [True, True],
    ]
    # slot 1's strongest (migrated) component was freed at once; slot 2's second does not count
    assert shared["conflicts"] == 1 + 1


def test_the_swarm_builds_screening_for_the_lasting_trainable_levels(base_dir):
    cfg = tiny_config(base_dir, ["mechanisms.screening.free_decay=0.2"])
    [scr] = [m for m in build_mechanisms(cfg, ["a", "b"]) if isinstance(m, Screening)]
    # not the task-scoped context
    assert (
        scr.levels == ["swarm", "agent"] and scr.phases == ("decay",) and scr.cfg.free_decay == 0.2
    )
    only = tiny_config(base_dir, ["mechanisms.screening.levels=[agent]"])
    levels = [m.levels for m in build_mechanisms(only, ["a"]) if isinstance(m, Screening)]
    assert levels == [["agent"]]


# ---------------------------------------------------------------------------- the decay primitive


def test_per_pattern_decay_moves_exactly_the_chosen_components(hive):
    randomize_b(hive)
    _perturb_a(hive, "agent")
    core = hive.core
    banks = list(core.banks("agent"))
    a_before = [b.A.detach().clone() for b in banks]
    b_before = [b.B.detach().clone() for b in banks]
    others = {
        lv.name: {k: p.detach().clone() for k, p in core.level_params(lv.name).items()}
        for lv in hive.levels
        if lv.name != "agent"
    }
    rate = torch.tensor([[0.0, 1.0], [0.25, 0.0]])  # slots 0 and 2; slots 1 and 3 are not named

    core.decay_toward_init("agent", [0, 2], rate)

    for bank, a, b in zip(banks, a_before, b_before, strict=True):
        a0 = bank.A0
        # rate 0: untouched, exactly
        assert torch.equal(bank.B[0][:, 0], b[0][:, 0]) and torch.equal(bank.A[0][0], a[0][0])
        assert torch.equal(bank.B[2][:, 1], b[2][:, 1]) and torch.equal(bank.A[2][1], a[2][1])
        # rate 1: back to init (B = 0, A = A0)
        assert torch.equal(bank.B[0][:, 1], torch.zeros_like(b[0][:, 1]))
        torch.testing.assert_close(bank.A[0][1], a0[0][1], rtol=0, atol=1e-7)
        # rate 0.25: a quarter of the way
        torch.testing.assert_close(bank.B[2][:, 0], 0.75 * b[2][:, 0])
        torch.testing.assert_close(bank.A[2][0], a[2][0] + 0.25 * (a0[2][0] - a[2][0]))
        # slots not named: untouched
        for s in (1, 3):
            assert torch.equal(bank.B[s], b[s]) and torch.equal(bank.A[s], a[s])
    for lv, params in others.items():
        assert all(torch.equal(p, core.level_params(lv)[k]) for k, p in params.items()), lv


def test_a_uniform_rate_tensor_equals_the_scalar_rate(hive, tokenizer):
    twin = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    twin.add_agents(["ann", "bob", "cyd"])
    for h in (hive, twin):
        randomize_b(h)
        _perturb_a(h, "agent")

    hive.core.decay_toward_init("agent", [1, 3], 0.3)
    twin.core.decay_toward_init("agent", [1, 3], torch.full((2, 2), 0.3))

    for x, y in zip(hive.core.banks("agent"), twin.core.banks("agent"), strict=True):
        torch.testing.assert_close(x.A, y.A)
        torch.testing.assert_close(x.B, y.B)
    with pytest.raises(ValueError, match="sorted and distinct"):
        hive.core.decay_toward_init("agent", [3, 1], torch.zeros(2, 2))


# ---------------------------------------------------------------------------- the activity probe


def test_a_pattern_with_zero_b_has_no_activity(hive):
    randomize_b(hive)
    with torch.no_grad():
        for bank in hive.core.banks("agent"):
            bank.B[0][:, 1] = 0.0  # ann's second pattern, in every module

    act, rows = hive.activity({"ann": SUPPORT, "bob": SUPPORT}, ["agent"])["agent"]

    assert act[0, 1] == 0.0 and act[0, 0] > 0 and (act[1] > 0).all()
    assert rows.tolist() == [True, True, False, False] and (act[2:] == 0).all()


def test_activity_is_linear_in_a_patterns_b(hive):
    randomize_b(hive, scale=1e-4)  # small B: the level barely changes the hidden states downstream
    before, _ = hive.activity({"ann": SUPPORT, "bob": SUPPORT}, ["agent"])["agent"]
    with torch.no_grad():
        for bank in hive.core.banks("agent"):
            bank.B[0][:, 0] *= 3.0

    after, _ = hive.activity({"ann": SUPPORT, "bob": SUPPORT}, ["agent"])["agent"]

    assert float(after[0, 0]) == pytest.approx(3.0 * float(before[0, 0]), rel=1e-3)
    torch.testing.assert_close(after[0, 1], before[0, 1], rtol=1e-3, atol=0)
    # bob's slot: other rows, unaffected
    torch.testing.assert_close(after[1], before[1], rtol=1e-5, atol=0)


def test_another_agents_rows_do_not_count_in_this_agents_slot(hive):
    randomize_b(hive)
    alone, rows_alone = hive.activity({"ann": SUPPORT}, ["agent"])["agent"]
    other = [
        ("Sports: the team won the match.", " World"),
        ("positive negative neutral great", " fine"),
        ("The summit", " ended"),
    ]
    both, rows_both = hive.activity({"ann": SUPPORT, "bob": other}, ["agent"])["agent"]
    with torch.no_grad():
        for bank in hive.core.banks("agent"):
            bank.B[1] *= 10.0  # bob's slot
    louder, _ = hive.activity({"ann": SUPPORT, "bob": other}, ["agent"])["agent"]

    assert rows_alone.tolist() == [True, False, False, False]
    assert rows_both.tolist() == [True, True, False, False]
    assert (alone[1] == 0).all() and (both[1] > 0).all()
    # bob's rows add nothing to ann's slot
    torch.testing.assert_close(both[0], alone[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(louder[0], alone[0], rtol=1e-5, atol=0)
    assert (louder[1] > 2 * both[1]).all()  # bob's slot did change


# ---------------------------------------------------------------------------- state


def test_screening_state_survives_state_dict_and_load(hive, tmp_path):
    randomize_b(hive)
    cfg = ScreeningConfig(levels=["swarm", "agent"], ema=0.7, up=0.3, down=0.1)
    scr = Screening(cfg, ["swarm", "agent"])
    seq = [[[1.0, 0.5, 0.2, 0.05]], [[1.0, 0.35, 0.2, 0.0]], [[1.0, 0.2, 0.6, 0.0]]]
    for t, act in enumerate(seq):
        scr.run(
            _view(
                hive,
                lambda levels, a=act: (
                    _given("swarm", a)(levels)
                    | {"agent": (torch.rand(4, 2), torch.ones(4, dtype=torch.bool))}
                ),
                tick=t + 1,
            )
        )
    # a mix of modes to carry over
    assert scr.screened["swarm"].any() and not scr.screened["swarm"].all()

    plain, tensors = split_states({"screening": scr.state_dict()})
    save_file(tensors, str(tmp_path / "extra.safetensors"))
    fresh = Screening(cfg, ["swarm", "agent"])
    fresh.load_state_dict(
        join_states(plain, load_file(str(tmp_path / "extra.safetensors")))["screening"]
    )

    assert set(fresh.ema) == set(fresh.screened) == {"swarm", "agent"}
    for lv in ("swarm", "agent"):
        assert torch.equal(fresh.ema[lv], scr.ema[lv]) and fresh.ema[lv].dtype == torch.float32
        assert (
            torch.equal(fresh.screened[lv], scr.screened[lv])
            and fresh.screened[lv].dtype == torch.bool
        )
    # and both go on the same way: 0.2 is between the thresholds, so the mode is the carried one
    nxt = _given("swarm", [[1.0, 0.2, 0.2, 0.2]])
    scr.run(_view(hive, nxt, tick=4))
    fresh.run(_view(hive, nxt, tick=4))
    assert torch.equal(fresh.screened["swarm"], scr.screened["swarm"])
    assert torch.equal(fresh.ema["swarm"], scr.ema["swarm"])
