"""Context modes (mechanisms/context_modes.py): the router opens a mode per kind of input and reuses it;
a task's context starts from its mode, the mode takes what the context learned, unused modes weaken;
in a run two task types end on different modes, in the ledger, the report and inspect; resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.config import ConfigError, ContextModesConfig, parse_config
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.context_modes import ContextModes, route
from lorahive.mechanisms.registry import build_mechanisms
from tiny_runs import checkpoint_tensors, config_tree, tiny_config

ON = ["mechanisms.context_modes.enabled=true", "mechanisms.context_modes.open_below=0.0"]  # the tiny random model separates less


def _clusters(kinds: list[int], dim: int = 16, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """One vector per entry of ``kinds``: a common offset, plus 3 × a direction of its own per kind, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    offset = 10.0 * torch.randn(dim, generator=gen)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
    return torch.stack([offset + 3.0 * basis[k] + noise * torch.randn(dim, generator=gen) for k in kinds])


def _route(vectors: torch.Tensor, modes: int = 4, open_below: float = 0.3):
    keys, opened = torch.zeros(modes, vectors.shape[1]), torch.zeros(modes, dtype=torch.bool)
    return route(vectors, keys, opened, vectors.mean(0), open_below, 0.9), keys, opened


def test_each_kind_opens_a_mode_and_later_inputs_of_it_reuse_it():
    vectors = _clusters([0, 1, 0, 1, 1])
    routed, keys, opened = _route(vectors)
    assert routed.modes == [0, 1, 0, 1, 1] and routed.opened == [0, 1]
    assert routed.cosines[:2] == [None, None] and all(c is not None and c > 0.9 for c in routed.cosines[2:])
    assert opened.tolist() == [True, True, False, False] and torch.equal(keys[2:], torch.zeros(2, 16))


def test_with_every_mode_open_a_new_kind_takes_the_nearest_mode():
    routed, _, opened = _route(_clusters([0, 1, 2]), modes=2)
    assert routed.modes[:2] == [0, 1] and routed.modes[2] in (0, 1) and routed.opened == [0, 1]
    assert routed.cosines[2] is not None and routed.cosines[2] < 0.3 and bool(opened.all())


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 4).flatmap(lambda n: st.integers(1, 5).flatmap(lambda k: st.permutations([i for i in range(n) for _ in range(k)]))), st.integers(0, 2**16))
def test_property_balanced_kinds_each_get_one_mode_of_their_own(kinds, seed):
    """As many inputs of each kind (an imbalanced mix moves the centre toward the majority: docs/mechanisms.md)."""
    routed, _, _ = _route(_clusters(kinds, seed=seed))
    by_kind = {k: {m for kk, m in zip(kinds, routed.modes, strict=True) if kk == k} for k in set(kinds)}
    assert all(len(ms) == 1 for ms in by_kind.values())
    assert len({next(iter(ms)) for ms in by_kind.values()}) == len(by_kind)
    assert len(routed.opened) == len(by_kind)


def test_a_stream_of_one_kind_per_tick_opens_one_mode_per_kind_with_the_spread_rule():
    """Every agent of a tick on one kind (a stream's stage): the cosine rule splits the first kind on noise, the spread rule does not."""
    gen = torch.Generator().manual_seed(5)  # one offset and basis (seed 0), fresh noise per tick
    a1, a2, b, a3, c = (_clusters([k] * 8) + 0.05 * torch.randn(8, 16, generator=gen) for k in (0, 0, 1, 0, 2))
    router = ContextModes(ContextModesConfig(enabled=True, modes=4, open_rule="spread", open_spread=4.0), "context")

    def tick(vectors: torch.Tensor) -> list[int]:  # one call per tick, as the draw makes it
        return router.route_inputs(vectors).modes

    assert tick(a1) == [0] * 8 and tick(a2) == [0] * 8
    assert tick(b) == [1] * 8  # a new kind opens one mode, and all of its tick's inputs take it
    assert tick(a3) == [0] * 8 and tick(c) == [2] * 8
    assert router.opened.tolist() == [True, True, True, False] and router.count[:3] == [24, 8, 8]
    split, _, _ = _route(a1)  # the cosine rule, centred on one kind: noise decides, and the first tick fills the modes
    assert len(set(split.modes)) > 1


# ---------------------------------------------------------------------- on a hive
def _hive(tokenizer) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    return hive


SUPPORT = {"ann": [("Sports: the team won the match.", " Sports")], "bob": [("World: the summit ended.", " World")]}


def _view(hive: Hive, phase: str, quality: dict | None = None, shared: dict | None = None, agents: tuple[str, ...] = ("ann", "bob")) -> TickView:
    support = {a: list(SUPPORT[a]) for a in agents}
    return TickView(1, phase, [], (), {}, hive.core.states, hive.core, support=support, quality=quality or {}, quality_bar=0.5, shared={} if shared is None else shared)


def _slot(hive: Hive, agent: str) -> list[torch.Tensor]:
    s = hive.core.slot_of("context", agent)
    return [t.detach()[s].clone() for bank in hive.core.banks("context") for t in (bank.A, bank.B)]


def _learn(hive: Hive, agent: str, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    pattern = {p: (torch.randn(b.out_features, 1, generator=gen) * 0.1, torch.randn(1, b.in_features, generator=gen) * 0.1) for p, b in hive.core.named_banks("context")}
    hive.core.add_delta("context", hive.core.slot_of("context", agent), pattern)


def test_a_task_starts_from_its_mode_and_the_mode_takes_what_a_good_task_learned(tokenizer):
    hive = _hive(tokenizer)
    cm = ContextModes(ContextModesConfig(enabled=True, modes=1), "context")
    shared: dict = {}
    action = cm.run(_view(hive, "draw", shared=shared))
    assert action is not None and action.detail["modes"] == {"ann": 0, "bob": 0} == shared["context_modes"]
    ann0 = _slot(hive, "ann")
    assert all(torch.equal(x, y) for x, y in zip(_slot(hive, "bob"), ann0, strict=True))  # a fresh mode: its opener's init
    _learn(hive, "ann", seed=1)
    _learn(hive, "bob", seed=2)
    learned = _slot(hive, "ann")

    done = cm.run(_view(hive, "decay", quality={"ann": 1.0, "bob": 0.0}))  # bob is below the bar: his slot is not taken

    assert done is not None and done.detail["reinforced"] == {"0": ["ann"]} and done.detail["norm"]["0"] > 0
    cm.run(_view(hive, "draw"))
    for agent in ("ann", "bob"):
        assert all(torch.equal(x, y) for x, y in zip(_slot(hive, agent), learned, strict=True))


def test_a_mode_no_agent_used_weakens_by_forget(tokenizer):
    hive = _hive(tokenizer)
    cm = ContextModes(ContextModesConfig(enabled=True, modes=2, forget=0.25), "context")
    cm.run(_view(hive, "draw", agents=("ann",)))
    assert cm.routed == {"ann": 0}
    cm.opened[1] = True  # a mode some earlier kind of input opened
    for _, b in cm.factors.values():
        b[1] = 1.0
    done = cm.run(_view(hive, "decay", quality={"ann": 1.0}, agents=("ann",)))
    assert done is not None and done.detail["idle"] == [1]
    assert all(torch.equal(b[1], torch.full_like(b[1], 0.75)) for _, b in cm.factors.values())


def test_its_state_survives_state_dict_and_load(tokenizer):
    hive = _hive(tokenizer)
    cm = ContextModes(ContextModesConfig(enabled=True, modes=3), "context")
    cm.run(_view(hive, "draw"))
    _learn(hive, "ann")
    cm.run(_view(hive, "decay", quality={"ann": 1.0, "bob": 1.0}))
    twin = ContextModes(ContextModesConfig(enabled=True, modes=3), "context")
    twin.load_state_dict({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in cm.state_dict().items()})
    assert twin.uses == cm.uses and twin.seen == cm.seen and torch.equal(twin.opened, cm.opened)
    assert cm.keys is not None and twin.keys is not None and torch.equal(twin.keys, cm.keys)
    for path, (a, b) in cm.factors.items():
        assert torch.equal(twin.factors[path][0], a) and torch.equal(twin.factors[path][1], b)


def test_config_off_by_default_validated_and_built_on_the_context_level(base_dir):
    [cm] = [m for m in build_mechanisms(tiny_config(base_dir), ["a"]) if isinstance(m, ContextModes)]
    assert not cm.enabled and cm.level == "context" and cm.phases == ("draw", "decay")
    with pytest.raises(ConfigError, match="modes"):
        parse_config(config_tree(base_dir), ["mechanisms.context_modes.modes=0"])
    with pytest.raises(ConfigError, match="context_modes needs agent.context_level"):
        parse_config(config_tree(base_dir), ["mechanisms.context_modes.enabled=true", "agent.context_level=null"])


def test_with_it_on_the_context_level_has_no_default_migration_channel_but_a_configured_one_stays(base_dir):
    off = parse_config(config_tree(base_dir))
    on = parse_config(config_tree(base_dir), ["mechanisms.context_modes.enabled=true"])
    assert ("context", "agent") in off.channels()
    assert on.channels() == [ch for ch in off.channels() if ch[0] != "context"] and on.channels()
    configured = parse_config(config_tree(base_dir), ["mechanisms.context_modes.enabled=true", "mechanisms.consolidation.channels=[context>agent]"])
    assert configured.channels() == [("context", "agent")]


# ---------------------------------------------------------------------- in a run
def test_in_a_run_two_task_types_end_on_different_modes_in_the_ledger_report_and_inspect(base_dir, tmp_path):
    from typer.testing import CliRunner

    from lorahive.cli.main import app
    from lorahive.observe.ledger import Ledger
    from lorahive.observe.report import render_report
    from lorahive.observe.report_mechanisms import dynamics_lines, mechanism_events
    from lorahive.runtime import run as runs

    runs.start(tiny_config(base_dir, [*ON, "ticks=3"]), tmp_path / "run")  # agent0 and agent2 on agnews, agent1 on yelp

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        routes = [e for e in ledger.events("mechanism:context_modes") if e["detail"]["action"] == "route"]
        lines = dynamics_lines(mechanism_events(ledger))
    assert [e["tick"] for e in routes] == [1, 2, 3]
    for e in routes:
        modes = e["detail"]["modes"]
        assert modes["agent0"] == modes["agent2"] != modes["agent1"], e
    [line] = [line for line in lines if line.startswith("context modes")]
    assert "over 3 ticks: 2 of 4 modes used" in line
    printed = CliRunner().invoke(app, ["inspect", str(tmp_path / "run")])
    assert printed.exit_code == 0 and " ".join(line.split()) in " ".join(printed.output.split()), printed.output
    assert line in render_report(tmp_path / "run")


def test_resume_with_it_on_continues_exactly(base_dir, tmp_path):
    from lorahive.runtime import run as runs

    runs.start(tiny_config(base_dir, [*ON, "ticks=3"]), tmp_path / "straight")
    runs.start(tiny_config(base_dir, [*ON, "ticks=1"]), tmp_path / "split")
    runs.resume(tmp_path / "split", ticks=3)

    a, b = checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(tmp_path / "split")
    assert a.keys() == b.keys() and any("mechanism/context_modes/mode." in k for k in a)
    for k in a:
        if not k.endswith("rng/torch"):
            assert torch.equal(a[k], b[k]), k
    sa, sb = (json.loads((tmp_path / d / "checkpoint" / "state.json").read_text()) for d in ("straight", "split"))
    assert sa["mechanisms"]["context_modes"] == sb["mechanisms"]["context_modes"] and sa["level_states"] == sb["level_states"]
