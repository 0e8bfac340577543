"""The consensus detector (mechanisms/consensus.py): agreeing proposals move the members' common
pattern into the swarm with their views kept; disagreeing ones move nothing; a held consensus asks
for a swarm → domain migration."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.config import ConfigError, ConsensusConfig, parse_config
from lorahive.mechanisms.base import Proposal, TickView
from lorahive.mechanisms.consensus import Consensus, dominant_cluster, proposal_cosines
from lorahive.mechanisms.registry import build_mechanisms
from tiny_runs import config_tree, tiny_config

AGENTS = ["ann", "bob", "cyd", "dan"]
TEXT = [("the cat sat on the mat", " yes"), ("rain fell on the town", " no")]
CFG = ConsensusConfig(enabled=True, threshold=0.5, fraction=0.6, rank=1, hold=2)


def _hive(tokenizer) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(AGENTS)
    return hive


def _rank1(hive: Hive, level: str, seed: int, scale: float = 0.3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {p: (torch.randn(b.out_features, 1, generator=gen) * scale, torch.randn(1, b.in_features, generator=gen) * scale) for p, b in hive.core.named_banks(level)}


def _proposals(hive: Hive, seeds: list[int]) -> list[Proposal]:
    """One swarm proposal per agent; agents with the same seed propose the same direction (scaled)."""
    out = []
    for i, (agent, seed) in enumerate(zip(AGENTS, seeds, strict=True)):
        gen = torch.Generator().manual_seed(seed)
        delta = {k: torch.randn(p.shape[1:], generator=gen) * (1.0 + i) for k, p in hive.core.level_params("swarm").items()}
        out.append(Proposal(agent, "swarm", 1, delta))
    return out


def _view(hive: Hive, proposals: list[Proposal], shared: dict | None = None) -> TickView:
    return TickView(1, "detect", proposals, (), {}, hive.core.states, hive.core, shared={} if shared is None else shared)


def test_cosines_and_the_dominant_cluster():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    props = [{"x": a.clone(), "y": torch.ones(2)}, {"x": 2 * a, "y": 2 * torch.ones(2)}, {"x": b, "y": -torch.ones(2)}]
    cos = proposal_cosines(props)
    flat = torch.stack([torch.cat([p["x"], p["y"]]) for p in props])
    flat = flat / flat.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cos, flat @ flat.T)
    assert dominant_cluster(cos, 0.5) == [0, 1]
    assert dominant_cluster(torch.eye(3), 0.5) == [0]  # nobody agrees: the first alone


def test_agreeing_agents_hand_their_common_pattern_to_the_swarm_and_keep_their_views(tokenizer):
    hive = _hive(tokenizer)
    common = _rank1(hive, "agent", 1)
    for a in AGENTS[:3]:  # three agents learned the same pattern; dan his own
        hive.core.add_delta("agent", hive.core.slot_of("agent", a), common)
    hive.core.add_delta("agent", hive.core.slot_of("agent", "dan"), _rank1(hive, "agent", 9))
    before = hive.loss({a: TEXT for a in AGENTS})
    cons = Consensus(CFG, "agent", "swarm", "domain")
    action = cons.run(_view(hive, _proposals(hive, [5, 5, 5, 6])))
    assert action is not None and action.detail["found"] and action.detail["cluster"] == ["ann", "bob", "cyd"]
    after = hive.loss({a: TEXT for a in AGENTS})
    for a in AGENTS[:3]:  # the swarm gained exactly what each member's slot lost
        assert after[a] == pytest.approx(before[a], abs=1e-4)
        assert action.detail["truncation"][a] == pytest.approx(0.0, abs=1e-4)
        s = hive.core.slot_of("agent", a)  # the common pattern left the slot: B·A ≈ 0
        assert max(float((b.B[s] @ b.A[s]).abs().max()) for b in hive.core.banks("agent")) < 1e-5
    assert after["dan"] != pytest.approx(before["dan"], abs=1e-4)  # the others gain the pattern
    assert action.detail["norm"] > 0


def test_disagreeing_agents_move_nothing(tokenizer):
    hive = _hive(tokenizer)
    for i, a in enumerate(AGENTS):
        hive.core.add_delta("agent", hive.core.slot_of("agent", a), _rank1(hive, "agent", 20 + i))
    weights = {k: v.detach().clone() for k, v in hive.core.level_params("agent").items()}
    action = Consensus(CFG, "agent", "swarm", "domain").run(_view(hive, _proposals(hive, [1, 2, 3, 4])))
    assert action is not None and not action.detail["found"]
    assert hive.core.is_zero("swarm")
    for k, v in hive.core.level_params("agent").items():
        assert torch.equal(v, weights[k])


def test_a_held_consensus_asks_for_a_swarm_to_domain_migration(tokenizer):
    hive = _hive(tokenizer)
    cons = Consensus(CFG, "agent", "swarm", "domain")
    handed = []
    for _ in range(4):
        for a in AGENTS[:3]:
            hive.core.add_delta("agent", hive.core.slot_of("agent", a), _rank1(hive, "agent", 1))
        shared: dict = {}
        action = cons.run(_view(hive, _proposals(hive, [5, 5, 5, 6]), shared))
        assert action is not None
        handed.append((action.detail["to_slower"], [(r.source, r.target, r.slot) for r in shared.get("ready", [])]))
    assert handed == [(False, []), (True, [("swarm", "domain", 0)]), (False, []), (True, [("swarm", "domain", 0)])]
    cons.load_state_dict({"held": 1})
    assert cons.state_dict() == {"held": 1}


def test_off_by_default_validated_and_built_over_agent_and_swarm(base_dir):
    [c] = [m for m in build_mechanisms(tiny_config(base_dir), ["a", "b"]) if isinstance(m, Consensus)]
    assert not c.enabled and (c.source, c.target) == ("agent", "swarm") and c.phases == ("detect",)
    assert c.slower is None  # the tiny stack has nothing slower than its swarm level
    with pytest.raises(ConfigError, match="fraction"):
        parse_config(config_tree(base_dir), ["mechanisms.consensus.fraction=1.5"])


def test_in_a_run_it_is_in_the_ledger(base_dir, tmp_path):
    import json
    import sqlite3

    from lorahive.runtime import run as runs

    runs.start(tiny_config(base_dir, ["mechanisms.consensus.enabled=true", "mechanisms.consensus.threshold=-0.99", "ticks=2"]), tmp_path / "run")
    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    rows = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'mechanism:consensus'")]
    db.close()
    assert rows and all(r["action"] == "consensus" for r in rows) and any(r["found"] for r in rows)


def test_inspect_and_the_report_summarise_the_swarm_dynamics(base_dir, tmp_path):
    from typer.testing import CliRunner

    from lorahive.cli.main import app
    from lorahive.observe.ledger import Ledger
    from lorahive.observe.report import render_report
    from lorahive.observe.report_mechanisms import dynamics_lines, mechanism_events
    from lorahive.runtime import run as runs

    on = ["mechanisms.consensus.enabled=true", "mechanisms.consensus.threshold=-0.99", "mechanisms.vertical_resonance.enabled=true", "mechanisms.entropy_budget.enabled=true", "ticks=3"]
    runs.start(tiny_config(base_dir, on), tmp_path / "run")
    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        lines = dynamics_lines(mechanism_events(ledger))
    assert [line.split(" ")[0] for line in lines] == ["entropy", "vertical", "consensus"]
    assert "over 2 ticks" in lines[1] and lines[2].startswith("consensus in ")  # resonance compares from tick 2
    printed = CliRunner().invoke(app, ["inspect", str(tmp_path / "run")])
    flat = " ".join(printed.output.split())  # rich wraps long lines
    assert printed.exit_code == 0 and all(" ".join(line.split()) in flat for line in lines), printed.output
    assert all(line in render_report(tmp_path / "run") for line in lines)
    runs.start(tiny_config(base_dir, ["ticks=1"]), tmp_path / "plain")
    with Ledger(tmp_path / "plain" / "ledger.sqlite") as ledger:
        assert dynamics_lines(mechanism_events(ledger)) == []
