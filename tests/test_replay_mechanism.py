"""Replay of past successes (mechanisms/replay.py): bounded memory, only successes, replay of other
task types into the end of the support, a deterministic draw; and in a real stream run.
"""

from __future__ import annotations

import json
import random
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorahive.config import ReplayConfig
from lorahive.mechanisms.base import Example, TickView
from lorahive.mechanisms.registry import build_mechanisms
from lorahive.mechanisms.replay import Reservoir, SuccessReplay
from lorahive.observe.ledger import Ledger
from lorahive.runtime import run as runs
from tiny_runs import tiny_config, two_stage_stream

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _view(
    phase: str,
    tick: int,
    support: dict[str, list[Example]],
    types: dict[str, str],
    quality: dict[str, float] | None = None,
    bar: float = 0.5,
    seed: int = 0,
) -> TickView:
    return TickView(
        tick, phase, [], (), {}, {}, cast(Any, None),
        support=support, task_types=types, quality=quality or {}, quality_bar=bar, seed=seed,
    )  # fmt: skip


def _tick(
    rep: SuccessReplay,
    tick: int,
    support: dict[str, list[Example]],
    types: dict[str, str],
    quality: dict[str, float],
    bar: float = 0.5,
    seed: int = 0,
) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """One draw and one record; returns the support after the draw and the record's detail."""
    view = _view("draw", tick, {a: list(x) for a, x in support.items()}, types, seed=seed)
    assert rep.run(view) is None
    action = rep.run(_view("record", tick, view.support, types, quality, bar, seed))
    assert action is not None and action.kind == "replay"
    return view.support, action.detail


def _examples(tag: str, n: int) -> list[Example]:
    return [(f"{tag} prompt {i}", f" {tag}{i}") for i in range(n)]


def _filled(
    cfg: ReplayConfig, agents: list[str], types: list[str], per_type: int = 6
) -> SuccessReplay:
    """A replay whose buffers hold ``per_type`` successes of each task type, every agent's own too."""
    rep = SuccessReplay(cfg, agents)
    for t, task_type in enumerate(types):
        support = {a: _examples(f"{task_type}-{a}", per_type) for a in agents}
        _tick(rep, t + 1, support, dict.fromkeys(agents, task_type), dict.fromkeys(agents, 1.0))
    return rep


def _type_of(example: Example) -> str:
    return example[0].split("-")[0]


# ---------------------------------------------------------------------------- memory


@SETTINGS
@given(
    capacity=st.integers(1, 8),
    adds=st.lists(
        st.tuples(st.sampled_from("abc"), st.text(max_size=5), st.text(max_size=5)), max_size=60
    ),
)
def test_a_reservoir_never_holds_more_than_its_capacity(capacity, adds):
    res, rng = Reservoir(capacity), random.Random(0)
    for item in adds:
        res.add(item, rng)
        assert len(res.items) <= capacity
    assert res.seen == len(adds) and len(res.items) == min(capacity, len(adds))
    assert all(x in adds for x in res.items)


@SETTINGS
@given(
    caps=st.tuples(st.integers(1, 6), st.integers(1, 10)),
    ticks=st.lists(
        st.dictionaries(
            st.sampled_from(["a0", "a1", "a2", "stranger"]),
            st.tuples(st.integers(0, 7), st.sampled_from(["x", "y", "z"]), st.floats(0.0, 1.0)),
            max_size=4,
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_the_replay_buffers_stay_bounded_whatever_is_added(caps, ticks):
    agent_cap, swarm_cap = caps
    rep = SuccessReplay(
        ReplayConfig(agent_capacity=agent_cap, swarm_capacity=swarm_cap, fraction=0.5),
        ["a0", "a1", "a2"],
    )
    for t, agents in enumerate(ticks):
        support = {a: _examples(f"{ty}-{a}-{t}", n) for a, (n, ty, _) in agents.items()}
        _, detail = _tick(
            rep,
            t + 1,
            support,
            {a: ty for a, (_, ty, _) in agents.items()},
            {a: q for a, (*_, q) in agents.items()},
        )
        assert all(len(b.items) <= agent_cap for b in rep.agents.values())
        assert len(rep.swarm.items) <= swarm_cap
        assert detail["buffer"] == {
            "agents": sum(len(b.items) for b in rep.agents.values()),
            "swarm": len(rep.swarm.items),
        }
        assert detail["buffer"]["agents"] <= len(rep.agents) * agent_cap
        assert detail["bytes"] == sum(
            len(t) + len(p) + len(a)
            for b in [*rep.agents.values(), rep.swarm]
            for t, p, a in b.items
        )


def test_only_successes_are_stored_and_only_the_ticks_own_support():
    rep = SuccessReplay(ReplayConfig(), ["ann", "bob", "cyd", "dan"])
    support = {a: _examples(f"x-{a}", 3) for a in ("ann", "bob", "cyd", "dan")}
    quality = {"ann": 0.9, "bob": 0.5, "cyd": 0.49}  # dan has no quality this tick

    _, detail = _tick(rep, 1, support, dict.fromkeys(support, "x"), quality, bar=0.5)

    assert detail["stored"] == 6
    # at the bar counts, below does not
    assert {a for a, b in rep.agents.items() if b.items} == {"ann", "bob"}
    assert sorted(rep.swarm.items) == sorted(
        ("x", p, ans) for a in ("ann", "bob") for p, ans in support[a]
    )
    # a replayed example is not stored again: what joins the buffers is the tick's own support
    rep2 = _filled(ReplayConfig(fraction=0.5), ["ann"], ["old"])
    mixed, detail = _tick(rep2, 2, {"ann": _examples("new-ann", 4)}, {"ann": "new"}, {"ann": 1.0})
    assert any(_type_of(x) == "old" for x in mixed["ann"]) and detail["replayed"] == 2
    new_items = [(p, a) for t, p, a in rep2.agents["ann"].items if t == "new"]
    assert sorted(new_items) == sorted(_examples("new-ann", 4))
    assert all(t == _type_of((p, a)) for t, p, a in rep2.swarm.items)


# ---------------------------------------------------------------------------- the draw


@pytest.mark.parametrize("swarm_share", [0.0, 0.5, 1.0])
def test_replayed_examples_are_of_other_task_types_and_replace_the_last_ones(swarm_share):
    agents = ["ann", "bob"]
    rep = _filled(ReplayConfig(fraction=0.25, swarm_share=swarm_share), agents, ["x", "y", "z"])
    support = {a: _examples(f"y-{a}-now", 8) for a in agents}

    for tick in range(10, 20):
        view = _view(
            "draw", tick, {a: list(x) for a, x in support.items()}, dict.fromkeys(agents, "y")
        )
        rep.run(view)
        for a in agents:
            got = view.support[a]
            # round(0.25 × 8) = 2: the first six are kept
            assert len(got) == 8 and got[:6] == support[a][:6]
            assert got[6:] != support[a][6:]
            # never the agent's current task type
            assert all(_type_of(x) in ("x", "z") for x in got[6:])
            assert len(set(got[6:])) == 2
            # and each replayed example's own type is noted for context modes (core/pins.py)
            assert view.shared["replayed"][a] == {x: _type_of(x) for x in got[6:]}


@SETTINGS
@given(n=st.integers(1, 12), fraction=st.floats(0.0, 1.0))
def test_the_last_round_fraction_times_support_examples_are_replaced(n, fraction):
    rep = _filled(
        ReplayConfig(fraction=fraction, agent_capacity=64), ["ann"], ["x", "z"], per_type=12
    )
    own = _examples("y-ann-now", n)
    view = _view("draw", 5, {"ann": list(own)}, {"ann": "y"})

    rep.run(view)

    k = round(fraction * n)
    got = view.support["ann"]
    assert len(got) == n and got[: n - k] == own[: n - k]
    assert all(_type_of(x) in ("x", "z") for x in got[n - k :])


@SETTINGS
@given(n=st.integers(1, 12), fraction=st.floats(0.0, 1.0))
def test_add_mode_keeps_the_whole_support_and_appends_round_fraction_times_support(n, fraction):
    rep = _filled(
        ReplayConfig(mode="add", fraction=fraction, agent_capacity=64), ["ann"], ["x", "z"], per_type=12
    )
    own = _examples("y-ann-now", n)
    view = _view("draw", 5, {"ann": list(own)}, {"ann": "y"})

    rep.run(view)

    k = round(fraction * n)
    got = view.support["ann"]
    assert len(got) == n + k and got[:n] == own
    assert all(_type_of(x) in ("x", "z") for x in got[n:]) and len(set(got[n:])) == k
    assert view.shared["replayed"].get("ann", {}) == {x: _type_of(x) for x in got[n:]}


def test_add_mode_draws_the_same_examples_as_replace_mode():
    """Only where the replayed examples go differs: the same seed, tick and agent draw the same ones."""
    got = {}
    for mode in ("replace", "add"):
        rep = _filled(ReplayConfig(mode=mode, fraction=0.5), ["ann"], ["x", "z"])
        view = _view("draw", 7, {"ann": _examples("y-ann-now", 6)}, {"ann": "y"})
        rep.run(view)
        got[mode] = view.support["ann"]
    assert got["add"][:6] == _examples("y-ann-now", 6)
    assert got["add"][6:] == got["replace"][3:]


@pytest.mark.parametrize("agents", [["ann"], ["ann", "bob"]])
def test_a_replay_draw_never_repeats_an_example(agents):
    """An agent's successes are in its own buffer and in the swarm's: the two draws must not both pick one.

    (Before the fix, with one agent about a sixth of the draws held one past example twice.) The
    same example stored at two ticks is one example, too.
    """
    rep = _filled(ReplayConfig(fraction=0.5, swarm_share=0.5), agents, ["x"], per_type=4)
    # the same successes again at tick 2: every buffer holds each example twice
    _tick(
        rep,
        2,
        {a: _examples(f"x-{a}", 4) for a in agents},
        dict.fromkeys(agents, "x"),
        dict.fromkeys(agents, 1.0),
    )
    assert len(rep.agents["ann"].items) == 8 and len(set(rep.agents["ann"].items)) == 4

    for tick in range(3, 103):
        view = _view(
            "draw",
            tick,
            {a: _examples(f"y-{a}-now", 8) for a in agents},
            dict.fromkeys(agents, "y"),
        )
        rep.run(view)
        for a in agents:
            replayed = view.support[a][4:]
            assert all(_type_of(x) == "x" for x in replayed)
            assert len(set(replayed)) == 4, (tick, replayed)


def test_the_draw_is_deterministic_from_seed_tick_and_agent():
    agents = ["ann", "bob", "cyd"]
    cfg = ReplayConfig(fraction=0.5)
    a, b = _filled(cfg, agents, ["x", "z"]), SuccessReplay(cfg, agents)
    b.load_state_dict(a.state_dict())  # the same buffers, a separate instance (as after a resume)

    def draw(
        rep: SuccessReplay, tick: int, seed: int = 0, bob_support: int = 4
    ) -> dict[str, list[Example]]:
        support = {n: _examples(f"y-{n}-now", bob_support if n == "bob" else 4) for n in agents}
        view = _view("draw", tick, support, dict.fromkeys(agents, "y"), seed=seed)
        rep.run(view)
        return view.support

    first = draw(a, 7)
    assert draw(b, 7) == first  # same seed, tick and agent: the same examples
    # another agent's support does not change ann's draw
    assert draw(a, 7, bob_support=8)["ann"] == first["ann"]
    # other ticks draw others
    assert {tuple(draw(a, t)["ann"]) for t in range(7, 17)} != {tuple(first["ann"])}
    # so do other seeds
    assert {tuple(draw(a, 7, seed=s)["ann"]) for s in range(10)} != {tuple(first["ann"])}
    assert first["ann"] != first["bob"]


def test_probability_zero_never_replays():
    agents = ["ann", "bob"]
    rep = _filled(ReplayConfig(probability=0.0, fraction=1.0), agents, ["x", "z"])
    assert rep.swarm.items and all(b.items for b in rep.agents.values())

    for tick in range(3, 40):
        support = {a: _examples(f"y-{a}-{tick}", 4) for a in agents}
        mixed, detail = _tick(
            rep, tick, support, dict.fromkeys(agents, "y"), dict.fromkeys(agents, 1.0)
        )
        assert mixed == support and detail["replayed"] == 0


def test_an_agent_replays_at_a_tick_with_the_configured_probability():
    agents = [f"a{i}" for i in range(8)]
    rep = _filled(ReplayConfig(probability=0.3, fraction=0.5), agents, ["x"])
    hits = 0
    for tick in range(2, 52):
        view = _view(
            "draw",
            tick,
            {a: _examples(f"y-{a}-{tick}", 4) for a in agents},
            dict.fromkeys(agents, "y"),
        )
        rep.run(view)
        hits += sum(any(_type_of(x) == "x" for x in view.support[a]) for a in agents)
    assert 0.22 < hits / 400 < 0.38


def test_probability_one_always_replays_when_there_is_something_to_replay():
    rep = _filled(ReplayConfig(probability=1.0, fraction=0.5), ["ann"], ["x"])
    for tick in range(3, 13):
        mixed, detail = _tick(
            rep, tick, {"ann": _examples(f"y-ann-{tick}", 4)}, {"ann": "y"}, {"ann": 0.0}
        )
        assert detail["replayed"] == 2 and all(_type_of(x) == "x" for x in mixed["ann"][2:])
    # nothing of another type stored: nothing to replay
    only_x = _filled(ReplayConfig(probability=1.0, fraction=0.5), ["ann"], ["x"])
    mixed, detail = _tick(only_x, 3, {"ann": _examples("x-ann-now", 4)}, {"ann": "x"}, {"ann": 1.0})
    assert detail["replayed"] == 0 and mixed["ann"] == _examples("x-ann-now", 4)


def test_replay_state_round_trips():
    rep = _filled(ReplayConfig(agent_capacity=4, swarm_capacity=5), ["ann", "bob"], ["x", "y", "z"])
    fresh = SuccessReplay(ReplayConfig(agent_capacity=4, swarm_capacity=5), ["ann", "bob"])
    fresh.load_state_dict(json.loads(json.dumps(rep.state_dict())))

    assert fresh.swarm.items == rep.swarm.items and fresh.swarm.seen == rep.swarm.seen == 36
    assert {a: (b.items, b.seen) for a, b in fresh.agents.items()} == {
        a: (b.items, b.seen) for a, b in rep.agents.items()
    }


# ---------------------------------------------------------------------------- in a run


def test_the_swarm_builds_replay_for_the_hive_only(base_dir):
    cfg = tiny_config(
        base_dir, ["mechanisms.replay.agent_capacity=3", "mechanisms.replay.swarm_capacity=7"]
    )
    [rep] = [m for m in build_mechanisms(cfg, ["a", "b"]) if isinstance(m, SuccessReplay)]
    assert set(rep.agents) == {"a", "b"} and rep.agents["a"].capacity == 3
    assert rep.swarm.capacity == 7
    assert rep.phases == ("draw", "record")
    baseline = tiny_config(
        base_dir, ticks=4, stream={"order": ["yelp", "agnews"], "method": "seq-lora"}
    )
    assert not any(isinstance(m, SuccessReplay) for m in build_mechanisms(baseline, ["a", "b"]))


def test_a_stream_run_replays_past_stages_after_the_first(base_dir, tmp_path):
    runs.start(two_stage_stream(base_dir, ["mechanisms.replay.fraction=0.5"]), tmp_path / "run")

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        events = ledger.events("mechanism:replay")
    by_tick = {e["tick"]: e["detail"] for e in events}
    assert sorted(by_tick) == [1, 2, 3, 4]
    assert all(d["action"] == "replay" for d in by_tick.values())
    # stage 1 (yelp): only yelp in the buffers, nothing of another type to replay
    assert by_tick[1]["replayed"] == by_tick[2]["replayed"] == 0
    # stage 2 (agnews): yelp successes replace round(0.5 × 4) = 2 support examples per agent
    assert by_tick[3]["replayed"] == by_tick[4]["replayed"] == 2 * 2
    # quality bar 0: every tick's own support is kept
    assert all(d["stored"] == 2 * 4 for d in by_tick.values())
    assert by_tick[4]["buffer"] == {"agents": 2 * 16, "swarm": 32} and by_tick[4]["bytes"] > 0


def test_a_stream_run_in_add_mode_appends_replayed_examples_and_stores_only_its_own(base_dir, tmp_path):
    cfg = two_stage_stream(base_dir, ["mechanisms.replay.fraction=0.5", "mechanisms.replay.mode=add"])
    runs.start(cfg, tmp_path / "run")

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        by_tick = {e["tick"]: e["detail"] for e in ledger.events("mechanism:replay")}
    assert by_tick[1]["replayed"] == by_tick[2]["replayed"] == 0
    # stage 2: round(0.5 × 4) = 2 yelp successes added to each agent's 4 agnews examples
    assert by_tick[3]["replayed"] == by_tick[4]["replayed"] == 2 * 2
    # only the tick's own 4 examples per agent are stored, never the replayed ones
    assert all(d["stored"] == 2 * 4 for d in by_tick.values())
