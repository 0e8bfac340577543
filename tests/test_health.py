"""Health: the entropy ratio, the metrics and their statuses from the tick's notes, the conflict
rate over ticks, and a real tiny run's ``metrics.json`` section and ledger events.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorahive.config import HealthConfig, ScreeningConfig
from lorahive.mechanisms.base import Proposal, TickView
from lorahive.observe.health import Health, entropy_ratio
from lorahive.observe.health_bands import BANDS, STATUSES
from lorahive.observe.ledger import Ledger
from lorahive.runtime import run as runs
from tiny_runs import tiny_config

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SCREENED, FREE = 1e-4, 1e-2


def view(tick: int, shared: dict, proposals: int = 0) -> TickView:
    props = [Proposal(f"a{i}", "swarm", tick, {}) for i in range(proposals)]
    return TickView(tick, "health", props, (), {}, {}, None, shared=shared)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- entropy_ratio
def test_entropy_ratio_all_screened_all_free_and_the_target_mix():
    energy = torch.tensor([1.0, 2.0, 3.0, 4.0])
    optimal = 0.5 * FREE + 0.5 * SCREENED
    screened = entropy_ratio(torch.full((4,), SCREENED), energy, SCREENED, FREE, 0.5)
    free = entropy_ratio(torch.full((4,), FREE), energy, SCREENED, FREE, 0.5)
    # crystallised (critical) and amnesic
    assert screened == pytest.approx(SCREENED / optimal) and screened < 0.5
    assert free == pytest.approx(FREE / optimal) and free > 1.9
    # the target mix: free patterns hold half of the energy (1 + 4 of 10)
    mix = torch.tensor([FREE, SCREENED, SCREENED, FREE])
    assert entropy_ratio(mix, energy, SCREENED, FREE, 0.5) == pytest.approx(1.0)
    assert entropy_ratio(mix, energy, SCREENED, FREE, 1.0) == pytest.approx(
        0.5 * (1 + SCREENED / FREE)
    )
    # no energy: no ratio
    assert entropy_ratio(mix, torch.zeros(4), SCREENED, FREE, 0.5) is None
    assert entropy_ratio(mix, energy, 0.0, 0.0, 0.5) is None


@SETTINGS
@given(
    energy=st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=12),
    free_target=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_entropy_ratio_is_one_at_the_target_mix_and_between_the_extremes(energy, free_target, data):
    e = torch.tensor(energy, dtype=torch.float64)
    free = torch.tensor(
        data.draw(st.lists(st.booleans(), min_size=len(energy), max_size=len(energy)))
    )
    rate = SCREENED + (FREE - SCREENED) * free.double()
    share = float(e[free].sum() / e.sum())  # the energy share of the free patterns
    r = entropy_ratio(rate, e, SCREENED, FREE, share)
    assert r == pytest.approx(1.0, rel=1e-9)
    lo = entropy_ratio(torch.full_like(e, SCREENED), e, SCREENED, FREE, free_target)
    hi = entropy_ratio(torch.full_like(e, FREE), e, SCREENED, FREE, free_target)
    any_mix = entropy_ratio(rate, e, SCREENED, FREE, free_target)
    assert lo is not None and hi is not None and any_mix is not None
    assert lo - 1e-9 <= any_mix <= hi + 1e-9 and lo <= 1.0 + 1e-9 <= hi + 2e-9


# ---------------------------------------------------------------------- Health.run
def health(free_target: float = 0.5) -> Health:
    return Health(
        HealthConfig(free_target=free_target),
        ScreeningConfig(screened_decay=SCREENED, free_decay=FREE),
    )


def test_health_classifies_the_ticks_notes_with_the_spec_statuses():
    keep = 0.3  # the level's 1 − inertia, carried by the rates
    energy = torch.tensor([[1.0, 1.0], [2.0, 0.5]])
    shared = {
        "patterns": {
            "agent": {
                "rate": torch.tensor([[FREE, SCREENED], [SCREENED, FREE]]) * keep,
                "energy": torch.tensor([[1.0, 2.0], [1.0, 0.0]]),
                "scale": keep,
            },
            "swarm": {
                "rate": torch.full((2, 2), SCREENED),
                "energy": energy,
            },  # all screened, no scale
        },
        "bandwidth": {
            "queue_depth": {"context→agent": 12, "agent→swarm": 3},
            "wait_time": {"context→agent": 4.0, "agent→swarm": 25.0},
            "rejection_rate": 0.02,
            "fast_track_rate": 0.1,
        },
        "ops": {"decay": 80, "migrate": 15},
        "conflicts": 2,
    }
    h = health()
    action = h.run(view(1, shared, proposals=5))
    assert action is not None and action.kind == "health"
    m, s = action.detail["metrics"], action.detail["status"]
    assert set(m) == set(s) == set(BANDS)
    # agent: free energy 1 + 0 of 4 → ratio (1·FREE + 3·SCREENED) / (4 · (FREE + SCREENED) / 2)
    assert m["entropy_ratio"]["agent"] == pytest.approx(
        (FREE + 3 * SCREENED) / (2 * (FREE + SCREENED))
    )
    assert m["entropy_ratio"]["swarm"] == pytest.approx(SCREENED / (0.5 * (FREE + SCREENED)))
    assert m["queue_depth"] == {"context→agent": 12, "agent→swarm": 3}
    assert m["wait_time"] == {"context→agent": 4.0, "agent→swarm": 25.0}
    assert m["rejection_rate"] == 0.02 and m["fast_track_rate"] == 0.1
    assert m["conflict_rate"] == pytest.approx(2 / 100)  # 80 decays + 15 migrations + 5 proposals
    assert s == {
        "entropy_ratio": "critical",  # agent ≈ 0.52 (warning), swarm ≈ 0.02 (critical): the worst
        "queue_depth": "warning",  # 12
        "wait_time": "critical",  # 25 ticks
        "rejection_rate": "warning",  # 2 %
        "fast_track_rate": "healthy",  # 10 %
        "conflict_rate": "warning",  # 2 %
    }
    assert action.detail["overall"] == "critical" and h.last == action.detail


def test_health_with_nothing_to_measure_is_healthy_or_na():
    action = health().run(view(1, {}))
    assert action is not None
    assert action.detail["metrics"] == {
        "entropy_ratio": {},
        "queue_depth": {},
        "wait_time": {},
        "rejection_rate": 0.0,
        "fast_track_rate": None,
        "conflict_rate": 0.0,
    }
    assert action.detail["status"] == {
        "entropy_ratio": "n/a",
        "queue_depth": "n/a",
        "wait_time": "n/a",
        "rejection_rate": "healthy",
        "fast_track_rate": "n/a",
        "conflict_rate": "healthy",
    }
    assert action.detail["overall"] == "healthy"


def test_a_level_at_the_target_mix_is_healthy_whatever_its_inertia_factor():
    shared = {
        "patterns": {
            "agent": {
                "rate": torch.tensor([FREE, SCREENED]) * 0.2,
                "energy": torch.tensor([3.0, 3.0]),
                "scale": 0.2,
            }
        }
    }
    action = health().run(view(1, shared))
    assert action is not None
    assert action.detail["metrics"]["entropy_ratio"]["agent"] == pytest.approx(1.0)
    assert action.detail["status"]["entropy_ratio"] == "healthy"


def test_the_conflict_rate_is_conflicts_over_operations_accumulated_over_ticks():
    h = health()
    ticks = [
        ({"ops": {"decay": 10, "migrate": 5}, "conflicts": 1}, 5),
        ({"ops": {"decay": 30}, "conflicts": 3}, 0),
        ({}, 2),  # a tick with proposals only
        ({"ops": {"migrate": 3}}, 0),
    ]
    ops = conflicts = 0
    rates = []
    for t, (shared, props) in enumerate(ticks, 1):
        ops += sum(shared.get("ops", {}).values()) + props
        conflicts += shared.get("conflicts", 0)
        action = h.run(view(t, dict(shared), proposals=props))
        assert action is not None
        rates.append(action.detail["metrics"]["conflict_rate"])
        assert rates[-1] == pytest.approx(conflicts / ops)
    assert rates == pytest.approx([1 / 20, 4 / 50, 4 / 52, 4 / 55])
    assert h.state_dict() == {"ops": 55, "conflicts": 4}
    fresh = health()
    fresh.load_state_dict(json.loads(json.dumps(h.state_dict())))
    action = fresh.run(view(5, {"ops": {"decay": 45}, "conflicts": 1}))
    assert action is not None and action.detail["metrics"]["conflict_rate"] == pytest.approx(
        5 / 100
    )


# ---------------------------------------------------------------------- a real tiny run
def test_a_tiny_run_has_a_health_section_and_one_health_event_per_tick(base_dir, tmp_path):
    metrics = runs.start(tiny_config(base_dir, ticks=3), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "health" in on_disk and on_disk["health"] == json.loads(json.dumps(metrics["health"]))
    section = on_disk["health"]
    assert section["ticks"] == 3 and section["overall"] in STATUSES
    assert set(section["last"]) == set(section["status"]) == set(BANDS)
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        events = ledger.events("mechanism:health")
    assert [e["tick"] for e in events] == [1, 2, 3]
    for e in events:
        d = e["detail"]
        assert d["action"] == "health" and set(d["metrics"]) == set(BANDS)
        assert all(v in STATUSES for v in d["status"].values()) and d["overall"] in STATUSES
    assert section["last"] == events[-1]["detail"]["metrics"]
    # screening ran on its levels (trainable, not task-scoped) and left their patterns
    entropy = events[-1]["detail"]["metrics"]["entropy_ratio"]
    assert entropy and set(entropy) <= {"swarm", "agent"}
