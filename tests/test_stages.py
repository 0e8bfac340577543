"""Training stages (runtime/stages.py, docs/stages.md): config, DPO loss, scope, budgets, attribution, the recipe."""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lorahive import Hive, LevelSpec, StackSpec
from lorahive.cli.main import app
from lorahive.config import ConfigError, parse_stages_config
from lorahive.learning import pack_examples
from lorahive.learning.batching import IGNORE
from lorahive.learning.dpo import dpo_loss
from lorahive.observe.subspace import delta_factors, delta_norm, overlap
from lorahive.runtime import stages as runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "stages"))
import recipe  # noqa: E402

KNOWLEDGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "knowledge" / "counterfact-edit-1k.json"
LEVELS = [{"name": "swarm", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.0, "lr": 5e-2}]
DATA = {"topics": {"source": "cl", "task_type": "agnews", "train": 8, "eval": 4, "max_prompt_tokens": 64}}


@pytest.fixture(scope="module")
def stage_base(tmp_path_factory) -> str:
    """The recipe's tiny random Llama, its tokenizer trained on the demo slice's text."""
    texts = recipe._texts({"data": DATA})
    return str(recipe.tiny_base(tmp_path_factory.mktemp("stage-base"), texts))


def config(base: str, stages: list[dict], **extra):
    return parse_stages_config({"base": base, "threads": 1, "levels": LEVELS, "data": DATA, "stages": stages, **extra})


SFT = {"objective": "sft", "data": "topics", "levels": ["swarm"], "steps": 3, "batch": 4}
DPO = {"objective": "dpo", "data": "topics", "levels": ["swarm"], "steps": 3, "batch": 4, "beta": 0.5}


# ---------------------------------------------------------------------- config
def test_stages_are_tagged_by_objective_and_occurrence_and_get_their_own_scoped_levels():
    cfg = config("x", [SFT, {**DPO, "scope": {"targets": ["q_proj"], "blocks": [1]}}, SFT])
    assert cfg.stage_names() == ["sft1", "dpo1", "sft2"]
    assert cfg.stack().names() == ["swarm_sft1", "swarm_dpo1", "swarm_sft2"]
    dpo = cfg.levels_of(1)[0]
    assert (dpo.targets, dpo.blocks, dpo.rank, dpo.scope) == (("q_proj",), (1,), 2, "shared")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stages": [{**SFT, "levels": ["nope"]}]}, "stages.0.levels"),
        ({"stages": [SFT, {**DPO, "data": "nope"}]}, "stages.1.data"),
        ({"stages": [{**SFT, "budget": {"share": 0.5}}]}, "needs total_norm"),
        ({"stages": [{**SFT, "budget": {"share": 0.6}}, {**DPO, "budget": {"share": 0.6}}], "total_norm": 1.0}, "add up to 1.2"),
        ({"stages": [{**SFT, "objective": "ppo"}]}, "stages.0.objective"),
        ({"stages": [{**SFT, "scope": {"blocks": [1, 1]}}]}, "stages.0.scope.blocks"),
        ({"stages": [{**SFT, "scope": {"blocks": [-1]}}]}, "stages.0.scope.blocks"),
        ({"stages": [{**SFT, "scope": {"targets": ["q_proj", "q_proj"]}}]}, "stages.0.scope.targets"),
        ({"stages": [{**SFT, "beta": 0.5}]}, "beta: 0.5 is the DPO inverse temperature"),
        ({"stages": [SFT, {**SFT, "name": "sft1"}]}, "names ['sft1'] are used twice"),
        ({"data": {"topics": {**DATA["topics"], "path": "x.json"}}}, "path is for source 'knowledge'"),
        ({"data": {"topics": {"source": "knowledge", "path": "x.json", "task_type": "agnews"}}}, "task_type and root are for source 'cl'"),
        ({"data": {"topics": {"source": "knowledge", "path": "x.json", "train": 2, "eval": 3}}}, "eval: 3 > train 2"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
    ],
)
def test_bad_stage_values_are_refused_naming_the_field(change, field):
    tree = {"base": "x", "levels": LEVELS, "data": DATA, "stages": [SFT], **change}
    with pytest.raises(ConfigError, match=re.escape(field)):
        parse_stages_config(tree)


def test_a_budget_share_is_that_share_of_total_norm_and_a_repeated_stage_gets_its_own_budget():
    cfg = config("x", [{**SFT, "budget": {"share": 0.25}}, {**DPO, "budget": {"max_norm": 0.3}}, {**SFT, "budget": {"share": 0.5}}, SFT], total_norm=2.0)
    assert [cfg.cap(i) for i in range(4)] == [0.5, 0.3, 1.0, None]
    assert (cfg.first_step(2), cfg.total_steps()) == (6, 12)


def test_a_level_with_a_block_scope_wraps_only_those_blocks(tokenizer):
    from conftest import make_model

    spec = LevelSpec(name="late", rank=2, alpha=2, scope="shared", inertia=0.0, lr=1e-2, targets=("q_proj", "v_proj"), blocks=(1,))
    hive = Hive(make_model(len(tokenizer)), tokenizer, StackSpec(levels=(spec,)))
    paths = [p for p, _ in hive.core.named_banks("late")]
    assert paths == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


# ---------------------------------------------------------------------- DPO and subspaces
def test_dpo_loss_is_log2_at_the_reference_and_its_gradient_raises_chosen_over_rejected():
    chosen, rejected = torch.tensor([-3.0, -5.0], requires_grad=True), torch.tensor([-4.0, -2.0], requires_grad=True)
    loss, margin = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1)
    assert torch.allclose(loss, torch.full((2,), math.log(2.0)))
    assert torch.equal(margin, torch.zeros(2))
    loss.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises log π(chosen), lowers log π(rejected)
    loss2, margin2 = dpo_loss(torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), beta=0.5)
    assert float(margin2) == pytest.approx(1.0) and float(loss2) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


def test_principal_angles_are_zero_for_one_subspace_and_ninety_for_orthogonal_ones():
    e = torch.eye(6, dtype=torch.float64)
    a = {"m": (e[:, :2] * 3.0, e[:2, :])}
    same = {"m": (e[:, :2] @ torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64), e[:2, :])}
    other = {"m": (e[:, 2:4], e[2:4, :])}
    o = overlap(a, same)
    assert o["out_overlap"] == pytest.approx(1.0) and o["out_min_angle"] == pytest.approx(0.0, abs=1e-5)
    o = overlap(a, other)
    assert o["out_overlap"] == pytest.approx(0.0) and o["out_min_angle"] == pytest.approx(90.0) and o["cosine"] == pytest.approx(0.0)
    assert delta_norm(a) == pytest.approx(3.0 * math.sqrt(2.0))
    assert overlap(a, {"m": (-a["m"][0], a["m"][1])})["cosine"] == pytest.approx(-1.0)


# ---------------------------------------------------------------------- runs
def test_budgets_hold_after_every_step_and_bind_where_training_would_go_further(stage_base):
    free = runner.run_stages(config(stage_base, [SFT, DPO]))
    caps = [0.5 * free["stages"][0]["norm"], 0.5 * free["stages"][1]["norm"]]
    capped = runner.run_stages(config(stage_base, [{**SFT, "budget": {"max_norm": caps[0]}}, {**DPO, "budget": {"max_norm": caps[1]}}]))
    for st, cap in zip(capped["stages"], caps, strict=True):
        assert st["within_budget"] and st["clipped_steps"] > 0
        assert all(s["norm"] <= cap * (1 + runner.BUDGET_RTOL) for s in st["steps"])
        assert st["norm"] == pytest.approx(cap, rel=1e-4)
    assert capped["norms"] == pytest.approx(dict(zip(["sft1", "dpo1"], caps, strict=True)), rel=1e-4)


def test_a_stage_writes_only_its_scope_and_its_shapley_values_add_up(stage_base):
    cfg = config(stage_base, [SFT, {**DPO, "scope": {"targets": ["v_proj"], "blocks": [0]}}])
    hive = runner.build_hive(cfg)
    result = runner.run_stages(cfg, hive=hive)
    assert list(delta_factors(hive.core, ["swarm_dpo1"], runner.LEARNER)) == ["model.layers.0.self_attn.v_proj"]
    d = result["data"]["topics"]
    assert set(d["shapley_logp"]) == {"sft1", "dpo1"} and all(v > 0 for v in d["kl_drop"].values())
    assert sum(d["shapley_logp"].values()) == pytest.approx(d["after"]["logp_chosen"] - d["before"]["logp_chosen"], abs=1e-3)
    assert sum(d["shapley_margin"].values()) == pytest.approx(d["after"]["margin"] - d["before"]["margin"], abs=1e-3)
    dpo = result["stages"][1]["steps"]
    assert dpo[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-4)  # the reference is the model as the stage found it
    assert dpo[-1]["loss"] < dpo[0]["loss"]


def test_stage_shapley_values_and_drop_one_kl_are_the_definitions_computed_by_hand(stage_base):
    """Three stages (the first writes two levels, one player), two-level DPO in between: φ from all 2³ coalitions by hand."""
    levels = [*LEVELS, {**LEVELS[0], "name": "domain", "lr": 3e-2}]
    stages = [{**SFT, "levels": ["swarm", "domain"]}, {**DPO, "scope": {"targets": ["q_proj", "v_proj"]}}, {**SFT, "steps": 2}]
    cfg = config(stage_base, stages, levels=levels)
    hive = runner.build_hive(cfg)
    result = runner.run_stages(cfg, hive=hive)
    tags, players = cfg.stage_names(), [[lv.name for lv in cfg.levels_of(i)] for i in range(3)]
    assert players[0] == ["swarm_sft1", "domain_sft1"]
    eval_pairs = runner.load_data(cfg, hive)["topics"].eval
    value = {}  # coalition (bitmask) -> per-example log p(chosen), log p(rejected)
    for m in range(8):
        on = [lv for i in range(3) if m >> i & 1 for lv in players[i]]
        value[m] = [runner._logp(hive, [(p.prompt, getattr(p, side)) for p in eval_pairs], on) for side in ("chosen", "rejected")]
    for i, tag in enumerate(tags):
        phi_c = phi_m = 0.0
        for m in range(8):
            if m >> i & 1:
                continue
            size = bin(m).count("1")
            w = math.factorial(size) * math.factorial(3 - size - 1) / math.factorial(3)
            gain_c = value[m | 1 << i][0] - value[m][0]
            phi_c += w * float(gain_c.mean())
            phi_m += w * float((gain_c - (value[m | 1 << i][1] - value[m][1])).mean())
        d = result["data"]["topics"]
        assert d["shapley_logp"][tag] == pytest.approx(phi_c, abs=1e-4)
        assert d["shapley_margin"][tag] == pytest.approx(phi_m, abs=1e-4)
        kl, n = 0.0, 0  # KL(p_all || p_without_stage) over the chosen answers' positions, from plain forwards
        others = [lv for j in range(3) if j != i for lv in players[j]]
        for p in eval_pairs:
            batch = pack_examples(hive.tokenizer, [(p.prompt, p.chosen)], hive.core.max_length)
            keep = batch.labels[0, 1:] != IGNORE  # (T-1,): positions that predict an answer token
            logp = []
            for on in (None, others):
                with torch.no_grad(), hive.core.routing.use(hive.core.route([runner.LEARNER], on)):
                    logits = hive.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, :-1]  # (T-1, V)
                logp.append(torch.log_softmax(logits[keep].float(), -1))
            kl += float(torch.nn.functional.kl_div(logp[1], logp[0], log_target=True, reduction="sum"))
            n += int(keep.sum())
        assert d["kl_drop"][tag] == pytest.approx(kl / n, rel=1e-3, abs=1e-6)


def test_the_recipe_runs_small_with_well_formed_outputs_and_budgets_that_hold(tmp_path):
    tree = recipe.load_recipe("small")
    if not KNOWLEDGE.is_file():  # CI without ../shared: the CL pairs only
        tree = copy.deepcopy(tree)
        del tree["config"]["data"]["facts"]
        for st in tree["stages"].values():
            st["data"] = ["topics"]
    started = time.perf_counter()
    summary = recipe.run("small", tmp_path, recipe=tree)
    assert time.perf_counter() - started < 60
    assert list(summary["orders"]) == ["sft-dpo", "dpo-sft", "sft-dpo-sft"]
    for name, r in summary["orders"].items():
        assert {f.name for f in (tmp_path / name).iterdir()} >= {"config.yaml", "ledger.sqlite", "metrics.json", "stages.safetensors"}
        assert r == json.loads((tmp_path / name / "metrics.json").read_text())
        assert r["order"] == {"sft-dpo": ["sft1", "dpo1"], "dpo-sft": ["dpo1", "sft1"], "sft-dpo-sft": ["sft1", "dpo1", "sft2"]}[name]
        for st in r["stages"]:
            assert st["within_budget"] and st["norm"] <= st["cap"] * (1 + runner.BUDGET_RTOL)
        for d in r["data"].values():
            assert set(d["shapley_logp"]) == set(r["order"]) == set(d["shapley_margin"]) == set(d["kl_drop"])
            assert all(math.isfinite(v) for v in [*d["shapley_logp"].values(), *d["shapley_margin"].values(), *d["after"].values()])
        assert all(0.0 <= o["out_overlap"] <= 1.0 + 1e-9 for o in r["overlap"].values())
    assert set(summary["order_effect"]) == {"sft-dpo vs dpo-sft", "sft-dpo vs sft-dpo-sft"}
    assert "## Attribution" in (tmp_path / "summary.md").read_text()
    assert 'id="compare"' in (tmp_path / "report.html").read_text()

    (tmp_path / "dpo-sft" / "metrics.json").unlink()  # as if killed while measuring
    again = recipe.run("small", tmp_path, recipe=tree, resume=True)  # read back, resumed, read back
    strip = {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in summary["orders"].items()}
    assert {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in again["orders"].items()} == strip
    with pytest.raises(SystemExit, match="holds a run of another config"):
        recipe.run("small", tmp_path, recipe=tree, overrides=["seed=1"], resume=True)


def test_lorahive_run_takes_a_stages_config_and_refuses_a_bad_one(stage_base, tmp_path):
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump({"base": stage_base, "threads": 1, "levels": LEVELS, "data": DATA, "stages": [SFT, DPO]}))
    bad = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "bad"), "stages.0.levels=[nope]"])
    assert bad.exit_code == 2 and "stages.0.levels" in bad.output and not (tmp_path / "bad").exists()
    ok = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["order"] == ["sft1", "dpo1"]
    again = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--force"])
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.0.scope.targets=[q_proj, qproj]", "stages.0.scope.targets: ['qproj'] name no Linear module of the model; its projections are"),
        ("stages.0.scope.blocks=[0, 7]", "stages.0.scope.blocks: [7] are not blocks of the model (its blocks: 0–1)"),
        ("data.topics.train=65", "data.topics.train: 65 pairs asked; agnews has 64 training examples"),
        ("data.topics.eval=40", "data.topics.eval: 40 pairs asked; agnews has 32 test examples"),
        ("data.topics.max_prompt_tokens=8", "data.topics.max_prompt_tokens: prompt head and tail alone exceed 8 tokens"),
        ("data.topics.task_type=nope", "data.topics.task_type: unknown demo task type 'nope'"),
        ("data.facts={source: knowledge, path: /nonexistent/cf.json, train: 2, eval: 1}", "data.facts.path: cannot read /nonexistent/cf.json"),
        ("base=/nonexistent", "base: no model directory at /nonexistent"),
        ("threads=100000", "threads: 100000 is more than 4 × the"),
    ],
)
def test_values_only_the_model_or_the_data_can_refuse_exit_2_naming_the_field_and_write_nothing(stage_base, tmp_path, override, message):
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump({"base": stage_base, "threads": 1, "levels": LEVELS, "data": DATA, "stages": [SFT, DPO]}))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), override])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "out").exists()


def test_the_recipe_runs_its_orders_in_processes_side_by_side_with_the_same_results(tmp_path):
    tree = copy.deepcopy(recipe.load_recipe("small"))
    del tree["config"]["data"]["facts"]
    for st in tree["stages"].values():
        st["data"], st["steps"] = ["topics"], 3
    tree["orders"] = tree["orders"][:2]
    one = recipe.run("small", tmp_path / "one", recipe=tree)
    two = recipe.run("small", tmp_path / "two", base=one["base"], recipe=tree, jobs=2)
    assert list(two["orders"]) == list(one["orders"])
    for name, r in one["orders"].items():
        s = two["orders"][name]
        assert s["stages"] == r["stages"]  # every step's loss and norm, bit for bit
        for data, d in r["data"].items():
            for key, value in d.items():
                assert s["data"][data][key] == (pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, dict) else value), (data, key)
