"""Row pins (core/pins.py): a pinned row runs given factors in one level instead of its agent's slot — exactly
as if its slot held them, in the fused and the reference path — the factors are never trained, the other
rows and the agent's own slot are untouched by them; context modes pin replayed rows to their type's mode."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.adapters import ActivityProbe
from lorahive.adapters.fused import use_fused
from lorahive.config import ContextModesConfig
from lorahive.core import RowPins
from lorahive.mechanisms import context_modes
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.context_modes import ContextModes

OWN = ("Sports: the team won the match.", " Sports")
PAST = ("World: the summit ended.", " World")


def _hive(tokenizer) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    return hive


def _mode_factors(hive: Hive, seed: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Two modes of the context level, with non-zero B so they change the output."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for path, bank in hive.core.named_banks("context"):
        a = torch.randn(2, *bank.A.shape[1:], generator=gen) * 0.3
        b = torch.randn(2, *bank.B.shape[1:], generator=gen) * 0.3
        out[path] = (a, b)
    return out


def _weights(hive: Hive, level: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in hive.core.level_params(level).values()]


@pytest.mark.parametrize("fused", ["on", "off"])
def test_a_pinned_row_learns_exactly_as_with_the_factors_in_its_slot(tokenizer, fused):
    hive = _hive(tokenizer)
    modes = _mode_factors(hive)
    with use_fused(fused):
        hive.core.pins = RowPins("context", modes, {("ann", *PAST): 1})
        pinned = hive.learn({"ann": [PAST]}, levels=["swarm", "context"])
        swarm_pinned, context_pinned = _weights(hive, "swarm"), _weights(hive, "context")

        twin = _hive(tokenizer)
        slot = twin.core.slot_of("context", "ann")
        twin.core.load_slots("context", [slot], {p: (a[1:2], b[1:2]) for p, (a, b) in modes.items()})
        loaded = twin.learn({"ann": [PAST]}, levels=["swarm", "context"])

    assert pinned["ann"] == pytest.approx(loaded["ann"], rel=1e-5)  # the same forward
    for x, y in zip(swarm_pinned, _weights(twin, "swarm"), strict=True):  # the same gradient reached the shared level
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    fresh = _hive(tokenizer)
    for x, y in zip(context_pinned, _weights(fresh, "context"), strict=True):  # no row used ann's own slot: it did not move
        torch.testing.assert_close(x, y)
    for path, (a, b) in _mode_factors(fresh).items():  # the pinned factors are read, not trained
        assert torch.equal(modes[path][0], a) and torch.equal(modes[path][1], b)


def test_unpinned_rows_and_other_agents_are_as_without_pins(tokenizer):
    hive = _hive(tokenizer)
    modes = _mode_factors(hive)
    hive.core.pins = RowPins("context", modes, {("bob", *PAST): 0})  # a row ann does not have
    with_pins = hive.learn({"ann": [OWN, PAST]}, levels=["swarm", "context"])
    plain = _hive(tokenizer).learn({"ann": [OWN, PAST]}, levels=["swarm", "context"])
    assert with_pins["ann"] == plain["ann"]

    hive = _hive(tokenizer)
    hive.core.pins = RowPins("context", modes, {("ann", *PAST): 0})
    mixed = hive.learn({"ann": [OWN, PAST], "bob": [OWN]}, levels=["context"])
    alone = _hive(tokenizer).learn({"ann": [OWN, PAST], "bob": [OWN]}, levels=["context"])
    assert mixed["bob"] == pytest.approx(alone["bob"], rel=1e-6) and mixed["ann"] != pytest.approx(alone["ann"], rel=1e-6)


def test_proposals_see_the_pinned_factors(tokenizer):
    hive = _hive(tokenizer)
    modes = _mode_factors(hive)
    hive.core.pins = RowPins("context", modes, {("ann", *PAST): 1})
    pinned, _ = hive.propose({"ann": [PAST]}, "swarm")
    twin = _hive(tokenizer)
    twin.core.load_slots("context", [twin.core.slot_of("context", "ann")], {p: (a[1:2], b[1:2]) for p, (a, b) in modes.items()})
    loaded, _ = twin.propose({"ann": [PAST]}, "swarm")
    for name, g in pinned["ann"].items():
        torch.testing.assert_close(g, loaded["ann"][name], rtol=1e-4, atol=1e-7)


def test_a_probe_counts_no_row_on_an_extra_slot():
    x = torch.randn(3, 2, 4)
    a, b = torch.randn(3, 2, 4), torch.randn(3, 5, 2)  # two bank slots and one extra
    probe = ActivityProbe(["context"], torch.ones(3, 2))
    probe.observe("context", x, a, b, torch.tensor([0, 2, 1]), 1.0, size=2)
    sums, rows = probe.totals()["context"]
    assert sums.shape == (2, 2) and rows.tolist() == [1.0, 1.0]
    alone = ActivityProbe(["context"], torch.ones(2, 2))
    alone.observe("context", x[[0, 2]], a[:2], b[:2], torch.tensor([0, 1]), 1.0)
    torch.testing.assert_close(sums, alone.totals()["context"][0])


def _view(hive: Hive, phase: str, support: dict, types: dict, shared: dict, quality: dict | None = None) -> TickView:
    return TickView(
        1, phase, [], (), {}, hive.core.states, hive.core, support=support, task_types=types, quality=quality or {}, quality_bar=0.5, shared=shared
    )


def test_context_modes_pin_replayed_rows_to_their_types_mode_until_the_tick_ends(tokenizer):
    hive = _hive(tokenizer)
    cm = ContextModes(ContextModesConfig(enabled=True, modes=2), "context")
    types = {"ann": "sports", "bob": "sports"}
    first = cm.run(_view(hive, "draw", {"ann": [OWN], "bob": [OWN]}, types, {}))
    assert first is not None and first.detail["pinned"] == 0 and hive.core.pins is None
    mode = first.detail["modes"]["ann"]
    cm.run(_view(hive, "decay", {}, {}, {}, quality={"ann": 1.0, "bob": 1.0}))
    cm.opened[:] = True
    cm.type_modes["world"] = 1 - mode  # where an earlier tick routed world's task

    support = {"ann": [OWN, PAST], "bob": [OWN]}
    action = cm.run(_view(hive, "draw", support, types, {"replayed": {"ann": {PAST: "world"}}}))

    assert action is not None and action.detail["modes"] == {"ann": mode, "bob": mode} and action.detail["pinned"] == 1
    assert hive.core.pins is not None and hive.core.pins.level == "context" and dict(hive.core.pins.rows) == {("ann", *PAST): 1 - mode}
    assert cm.state_dict()["type_modes"] == {"sports": mode, "world": 1 - mode}
    cm.run(_view(hive, "decay", support, {}, {}, quality={"ann": 1.0, "bob": 1.0}))
    assert hive.core.pins is None  # the tick's learning is over


def test_no_pins_when_the_replayed_type_shares_the_mode_or_replay_own_mode_is_off(tokenizer):
    for own_mode, world in ((True, "same"), (False, "other")):
        hive = _hive(tokenizer)
        cm = ContextModes(ContextModesConfig(enabled=True, modes=2, replay_own_mode=own_mode), "context")
        first = cm.run(_view(hive, "draw", {"ann": [OWN]}, {"ann": "sports"}, {}))
        assert first is not None
        mode = first.detail["modes"]["ann"]
        cm.opened[:] = True
        cm.type_modes["world"] = mode if world == "same" else 1 - mode
        action = cm.run(_view(hive, "draw", {"ann": [OWN, PAST]}, {"ann": "sports"}, {"replayed": {"ann": {PAST: "world"}}}))
        assert action is not None and action.detail["modes"]["ann"] == mode
        assert action.detail["pinned"] == 0 and hive.core.pins is None


def test_routing_reads_the_tasks_own_prompts_not_the_replayed_ones(tokenizer, monkeypatch):
    hive = _hive(tokenizer)
    seen: list[list[str]] = []
    cm = ContextModes(ContextModesConfig(enabled=True, modes=2, replay_own_mode=False), "context")
    real = context_modes.pooled_prompts
    monkeypatch.setattr(context_modes, "pooled_prompts", lambda core, prompts: (seen.append(list(prompts)), real(core, prompts))[1])
    cm.run(_view(hive, "draw", {"ann": [OWN, PAST]}, {"ann": "sports"}, {"replayed": {"ann": {PAST: "world"}}}))
    assert seen == [[OWN[0]]] and hive.core.pins is None


def test_in_a_stream_run_replayed_rows_are_pinned_once_a_past_type_has_its_mode(base_dir, tmp_path):
    from lorahive.observe.ledger import Ledger
    from lorahive.runtime import run as runs
    from tiny_runs import two_stage_stream

    cfg = two_stage_stream(base_dir, ["mechanisms.replay.fraction=0.5", "mechanisms.context_modes.enabled=true", "mechanisms.context_modes.open_below=0.0"])
    runs.start(cfg, tmp_path / "run")
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        routes = {e["tick"]: e["detail"] for e in ledger.events("mechanism:context_modes") if e["detail"]["action"] == "route"}
        replays = {e["tick"]: e["detail"]["replayed"] for e in ledger.events("mechanism:replay")}
    assert routes[1]["pinned"] == routes[2]["pinned"] == 0  # nothing replayed in the first stage
    yelp = routes[2]["modes"]["agent0"]
    for tick in (3, 4):  # agnews: the replayed yelp rows run yelp's mode wherever agnews took another
        others = sum(m != yelp for m in routes[tick]["modes"].values())
        assert routes[tick]["pinned"] == others * replays[tick] // 2, (tick, routes[tick], replays[tick])
    assert any(routes[t]["pinned"] > 0 for t in (3, 4))
