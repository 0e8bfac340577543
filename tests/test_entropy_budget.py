"""The entropy budget (mechanisms/entropy_budget.py): screening thresholds move until a level's
entropy ratio is in the healthy band, from a crystallised start and from an amnesic one."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.config import ConfigError, EntropyBudgetConfig, ScreeningConfig, parse_config
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.entropy_budget import EntropyBudget
from lorahive.mechanisms.registry import build_mechanisms
from lorahive.mechanisms.screening import Screening
from lorahive.runtime import run as runs
from tiny_runs import config_tree, tiny_config

# no decay of a screened pattern: the entropy ratio is 2 × the free patterns' share of the energy
SCREENING = ScreeningConfig(levels=["agent"], ema=0.0, up=0.1, down=0.03, screened_decay=0.0, free_decay=1e-6, by_inertia=False)
BUDGET = EntropyBudgetConfig(enabled=True)


def _hive(tokenizer) -> Hive:
    """Three agents, agent level of rank 2: six patterns of equal energy (every B entry 0.1)."""
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob", "cyd"])
    with torch.no_grad():
        for bank in hive.core.banks("agent"):
            bank.B[:3] = 0.1  # the agents' slots; a spare slot stays zero (unwritten)
    hive.core.rescan()
    return hive


def _view(hive: Hive, activity: torch.Tensor, phase: str, tick: int) -> TickView:
    """``activity`` for the agents' slots; any further (unused) slot of the level has none."""
    n = hive.core.n_slots("agent")
    activity = torch.cat([activity, activity.new_zeros(n - activity.shape[0], activity.shape[1])])
    rows = torch.arange(n) < 3
    return TickView(tick, phase, [], (), {}, hive.core.states, hive.core, activity=lambda levels: {"agent": (activity, rows)}, shared={})


def _ticks(hive: Hive, activity: list[list[float]], ticks: int, budget_on: bool = True) -> list[tuple[float | None, float]]:
    """Run budget then screening each tick; (entropy ratio before the budget, threshold factor after) per tick."""
    act = torch.tensor(activity)
    scr = Screening(SCREENING, ["agent"])
    budget = EntropyBudget(BUDGET, scr, free_target=0.5)
    out = []
    for t in range(1, ticks + 1):
        ratio = scr.entropy(_view(hive, act, "budget", t), "agent", 0.5)
        if budget_on:
            budget.run(_view(hive, act, "budget", t))
        scr.run(_view(hive, act, "decay", t))
        out.append((ratio, hive.core.states["agent"].thresholds.get("screening", 1.0)))
    return out


def test_a_crystallised_level_frees_its_least_active_patterns_until_the_ratio_is_healthy(tokenizer):
    # every pattern above up = 0.1: all screened, ratio 0
    log = _ticks(_hive(tokenizer), [[1.0, 0.5], [0.3, 0.22], [0.15, 0.12]], ticks=40)
    ratios = [r for r, _ in log[1:]]
    assert ratios[0] == pytest.approx(0.0)
    first = next(i for i, r in enumerate(ratios) if 0.8 <= r <= 1.2)
    assert all(0.8 <= r <= 1.2 for r in ratios[first:])  # it stays in the band: homeostasis
    assert ratios[-1] == pytest.approx(1.0, abs=1e-4)  # three of six equal patterns free
    scales = [s for _, s in log]
    assert scales[0] == 1.0 and scales[1] == pytest.approx(1.1)  # nothing measured at tick 1; then 1.1 a tick
    assert scales[-1] == scales[first + 1] > 1.1  # and held once in the band
    # without the budget the level stays crystallised
    still = _ticks(_hive(tokenizer), [[1.0, 0.5], [0.3, 0.22], [0.15, 0.12]], ticks=40, budget_on=False)
    assert all(r == pytest.approx(0.0) for r, _ in still[1:])


def test_an_amnesic_level_screens_more_until_the_ratio_is_healthy(tokenizer):
    # only the strongest pattern above up: five of six free, ratio 5/3
    log = _ticks(_hive(tokenizer), [[1.0, 0.05], [0.04, 0.03], [0.02, 0.025]], ticks=40)
    ratios = [r for r, _ in log[1:]]
    assert ratios[0] == pytest.approx(5 / 3, abs=1e-4)
    first = next(i for i, r in enumerate(ratios) if 0.8 <= r <= 1.2)
    assert all(0.8 <= r <= 1.2 for r in ratios[first:])
    assert log[-1][1] < 1.0  # the thresholds fell


def test_the_factor_moves_by_the_configured_steps_and_stays_within_its_bounds(tokenizer):
    hive = _hive(tokenizer)
    scr = Screening(SCREENING, ["agent"])
    act = torch.tensor([[1.0, 0.5], [0.3, 0.22], [0.15, 0.12]])
    scr.run(_view(hive, act, "decay", 1))  # all screened: crystallised
    budget = EntropyBudget(EntropyBudgetConfig(enabled=True, raise_by=2.0, max_scale=5.0), scr, 0.5)
    factors = []
    for t in range(2, 6):
        action = budget.run(_view(hive, act, "budget", t))
        factors.append(hive.core.states["agent"].thresholds["screening"])
        assert action is not None and action.kind == "budget" and action.detail["levels"]["agent"]["entropy_ratio"] == pytest.approx(0.0)
    assert factors == [2.0, 4.0, 5.0, 5.0]


def test_nothing_to_measure_means_no_action(tokenizer):
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann"])
    scr = Screening(SCREENING, ["agent"])
    assert EntropyBudget(BUDGET, scr, 0.5).run(_view(hive, torch.ones(1, 2), "budget", 1)) is None  # no mode yet, B = 0


def test_bad_bounds_are_refused_naming_the_field(base_dir):
    with pytest.raises(ConfigError, match="entropy_budget"):
        parse_config(config_tree(base_dir), ["mechanisms.entropy_budget.low=1.5"])
    with pytest.raises(ConfigError, match="min_scale"):
        parse_config(config_tree(base_dir), ["mechanisms.entropy_budget.min_scale=2.0"])
    with pytest.raises(ConfigError, match="raise_by"):
        parse_config(config_tree(base_dir), ["mechanisms.entropy_budget.raise_by=0.5"])


def test_off_by_default_and_built_with_screening(base_dir):
    [budget] = [m for m in build_mechanisms(tiny_config(base_dir), ["a", "b"]) if isinstance(m, EntropyBudget)]
    assert not budget.enabled and budget.phases == ("budget",)
    [on] = [m for m in build_mechanisms(tiny_config(base_dir, ["mechanisms.entropy_budget.enabled=true"]), ["a"]) if isinstance(m, EntropyBudget)]
    assert on.enabled
    [off] = [m for m in build_mechanisms(tiny_config(base_dir, ["mechanisms.entropy_budget.enabled=true", "mechanisms.screening.enabled=false"]), ["a"]) if isinstance(m, EntropyBudget)]
    assert not off.enabled  # nothing to steer without screening


def test_in_a_run_the_factors_are_in_the_ledger_and_the_checkpoint(base_dir, tmp_path):
    cfg = tiny_config(base_dir, ["mechanisms.entropy_budget.enabled=true", "ticks=4", "checkpoint_every=4"])
    runs.start(cfg, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    import sqlite3

    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    events = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'mechanism:entropy_budget'")]
    db.close()
    assert events, "the budget ran"
    last = {lv: v["scale"] for lv, v in events[-1]["levels"].items()}
    for lv, scale in last.items():
        assert state["level_states"][lv]["thresholds"]["screening"] == pytest.approx(scale)


def test_the_report_plots_the_factor_beside_the_decay(base_dir, tmp_path):
    from lorahive.observe.ledger import Ledger
    from lorahive.observe.report_mechanisms import decay_figure, mechanism_events

    runs.start(tiny_config(base_dir, ["mechanisms.entropy_budget.enabled=true", "ticks=3"]), tmp_path / "run")
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        events = mechanism_events(ledger)
    assert any(e["kind"] == "mechanism:entropy_budget" for e in events)
    fig = decay_figure(events)
    assert len(fig.axes) == 3 and fig.axes[2].get_lines() and "entropy budget" in fig.axes[2].get_title()
    plain = decay_figure([e for e in events if e["kind"] != "mechanism:entropy_budget"])
    assert len(plain.axes) == 2
