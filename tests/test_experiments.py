"""The mechanism experiments' recipes (recipes/experiments/) at their small size: they run, their
metrics are well formed and hold the control beside the mechanism, and the criterion is applied to
their numbers (``reading``). Not their verdicts: those come from the full size (docs/results.md); the
judges themselves are tested on constructed results in tests/test_verdicts_*.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recipe_modules import ROOT, recipe

SEEDS = [0, 1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def finite(ms) -> bool:
    return set(ms) == {"mean", "std", "n"} and math.isfinite(ms["mean"]) and math.isfinite(ms["std"]) and ms["std"] >= 0


def written(out: Path, figure: str) -> dict:
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert (out / figure).stat().st_size > 1000 and (out / "summary.md").is_file()
    assert metrics["size"] == "small" and metrics["seeds"] == SEEDS and metrics["verdict"] == "pending full-size run"
    assert metrics["criterion"]
    assert metrics["reading"]["verdict"] in ("supported", "not supported", "inconclusive") and metrics["reading"]["why"]
    return metrics


def test_experiment_2_runs_the_swarm_and_the_isolated_control_on_the_same_draws(tmp_path, capsys):
    m = recipe("exp02_swarm").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp02.png")
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[exp02 small")]
    for system in ("A: isolated", "B: swarm"):  # a line as each seed of each system starts and ends
        for i, seed in enumerate(SEEDS, 1):
            assert f"[exp02 small {system}] seed {seed} ({i} of {len(SEEDS)}) …" in progress
            assert any(line.startswith(f"[exp02 small {system}] seed {seed} done in ") for line in progress)
    assert list(m["systems"]) == ["A: isolated", "B: swarm"] and m["control"] == "A: isolated" and m["target"] == 0.9
    n, tasks = m["config"]["agents"], ["agnews", "dbpedia", "yahoo", "yelp"]
    assert 3 <= n <= 5
    for runs in m["systems"].values():
        assert set(runs) == {str(s) for s in SEEDS}
        for r in runs.values():
            assert len(r["gain"]) == n and all(len(g) == len(tasks) and all(math.isfinite(x) for x in g) for g in r["gain"])
            assert set(r["per_task"]) <= set(tasks) and r["curve"][-1]["tick"] == m["config"]["ticks"]
            assert r["efficiency"] is None or math.isfinite(r["efficiency"])
            assert -1.0 - 1e-6 <= r["agent_cosine"] <= 1.0 + 1e-6
    a, b = (m["systems"][s][str(SEEDS[0])] for s in m["systems"])
    assert a["before"] == b["before"]  # the same model, seed and draws before any swarm update
    assert set(m["through_swarm"]["per_seed"]) <= {str(s) for s in SEEDS}
    assert all(finite(m["summary"][s]["efficiency"]) for s in m["systems"])


def test_experiment_3_runs_the_hierarchy_and_the_flat_control_through_the_same_periodic_shift(tmp_path):
    m = recipe("exp03_stability").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp03.png")
    a, b, matched = "A: flat (agent level)", "B: hierarchy (domain, swarm, agent)", "C: flat, step-matched"
    assert list(m["systems"]) == [a, b, matched] and m["control"] == a and m["step_matched"] == matched
    budget = {n: m["summary"][n]["step_budget"] for n in m["systems"]}
    assert budget[matched] == pytest.approx(budget[b]) and budget[b] > budget[a] and m["agent_lr_factor"] > 1
    cfg, tasks = m["config"], ["agnews", "dbpedia", "yahoo", "yelp"]
    for runs in m["systems"].values():
        assert set(runs) == {str(s) for s in SEEDS}
        for r in runs.values():
            assert [p["task"] for p in r["phases"]] == tasks * cfg["cycles"] and len(r["current"]) == 4 * cfg["cycles"] * cfg["phase_ticks"]
            assert set(r["forgetting"]) == set(tasks) and r["forgetting"]["yelp"] == 0.0  # the last phase's type: nothing after it
            assert all(math.isfinite(x) for x in [r["forgetting_mean"], r["adaptation"], r["final_loss"], *r["current"]])
    starts = [m["systems"][s][str(SEEDS[0])]["start"] for s in m["systems"]]
    assert starts[0] == starts[1] == starts[2]  # the same model and seed before any step
    assert all(finite(m["summary"][s][k]) for s in m["systems"] for k in ("forgetting_mean", "adaptation", "final_loss"))
    assert m["systems"][matched]["0"]["current"] != m["systems"][a]["0"]["current"]  # the larger step moves it differently


def test_experiment_5_sweeps_up_and_down_beside_the_narrow_band_control(tmp_path):
    m = recipe("exp05_screening").run("small", tmp_path, SEEDS)
    assert written(tmp_path, "exp05.png") == json.loads(json.dumps(m))
    assert set(m["variants"]) == {"hysteresis", m["control"]} and m["control"] == "control: narrow band"
    freqs = m["frequencies"]
    for v in m["variants"].values():
        assert all(finite(v[k]) and v[k]["n"] == len(SEEDS) for k in ("f_up", "f_down", "width", "sharpness"))
        for blocks in v["blocks"].values():
            assert [b["f"] for b in blocks] == freqs + freqs[::-1]
            assert all(0.0 <= b["screened"] <= 1.0 and 0.0 < b["kept"] <= 1.0 + 1e-6 for b in blocks)
    assert m["variants"][m["control"]]["config"]["down"] == pytest.approx(0.99 * m["variants"]["hysteresis"]["config"]["up"])
    assert all(b["slot_norm"] <= 1.0 + 1e-6 for v in m["variants"].values() for bl in v["blocks"].values() for b in bl)


def test_experiment_5_plants_and_measures_a_pattern_alike_at_every_norm():
    """The full size plants norm 0.003 on the embedded model; with add_delta's factors then ~50× below A0's rows, free
    decay (A toward A0) grew the slot's norm 8× (tests/test_lowrank.py holds the library's side). Planted with A at init
    scale, decay and the kept norm read the same at any pattern norm; ΔW is what was planted."""
    import torch

    exp05 = recipe("exp05_screening")
    c = exp05.c
    hive = c.make_hive(c.TINY, ["ann", "bob"])
    world = c.build_world(hive, 8)
    core, bob = hive.core, hive.core.slot_of("agent", "bob")

    def free_block(norm: float) -> tuple[float, float]:
        planted = exp05.plant(hive, "agent", bob, c.delta(world, hive, norm * world.local["agnews"]))
        start = float(c.energy(hive, "agent", [bob])[0].sqrt())
        assert start == pytest.approx(norm, rel=1e-4)  # ΔW as planted (u unit, v unit)
        for bank in core.banks("agent"):
            assert torch.allclose(bank.A[bob].norm(dim=1), bank.A0[bob].norm(dim=1), rtol=1e-4)
        for _ in range(20):
            core.decay_toward_init("agent", [bob], 0.05)
        return exp05.pattern_kept(hive, "agent", bob, planted), float(c.energy(hive, "agent", [bob])[0].sqrt()) / start

    kept_1, norm_1 = free_block(1.0)
    kept_small, norm_small = free_block(1e-3)
    assert kept_small == pytest.approx(kept_1, rel=1e-3) and norm_small == pytest.approx(norm_1, rel=1e-3)
    assert 0.0 < kept_1 < norm_1 < 1.0  # the pattern's part is below the slot's norm: decay adds B·A0 beside it


def test_experiment_6_runs_autocorrelation_and_the_timer_on_the_same_draws(tmp_path):
    m = recipe("exp06_consolidation").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp06.png")
    assert set(m["systems"]) == {"autocorrelation", "timer"} and m["control"] == "timer"
    for runs in m["systems"].values():
        assert set(runs) == {str(s) for s in SEEDS}
        for r in runs.values():
            assert r["migrated_stable"] + r["migrated_fluctuating"] == len(r["migrations"])
            assert r["precision"] is None or 0.0 <= r["precision"] <= 1.0
            assert math.isfinite(r["gain_stable"]) and -1.0 <= r["alignment_stable"] <= 1.0
    timer = m["systems"]["timer"]
    assert all(r["migrated_fluctuating"] + r["migrated_stable"] > 0 for r in timer.values())  # a timer always consolidates
    assert finite(m["summary"]["timer"]["precision"])


def test_experiment_10_runs_the_four_scenarios_on_one_avalanche(tmp_path):
    m = recipe("exp10_bandwidth").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp10.png")
    assert list(m["scenarios"]) == ["A: no limit", "B: fixed", "C: adaptive", "D: adaptive + bypass"] and m["control"] == "A: no limit"
    n = m["config"]["patterns"]
    for name, runs in m["scenarios"].items():
        for r in runs.values():
            assert 0 < r["ready_at_once"] <= n and r["migrated"] + r["dropped"] <= r["ready_at_once"]
            assert 0.0 < r["max_tick_share"] <= 1.0 + 1e-6 and r["max_loss_change"] >= 0.0
            assert (r["budget"] is None) == name.startswith("A")
            assert r["bypassed"] == 0 or name.startswith("D")
    assert all(finite(m["summary"][s]["max_tick_share"]) for s in m["scenarios"])
    assert m["summary"]["C: adaptive"]["budget"] == pytest.approx(2 * m["summary"]["B: fixed"]["budget"])  # 1 / inertia 0.5


def test_experiment_7_composes_linearly_and_resonantly_with_and_without_outliers(tmp_path):
    m = recipe("exp07_resonance").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp07.png")
    k = m["config"]["outliers"]
    systems = ["A: linear", "B: resonant", "C: linear, norm-matched"]
    assert list(m["cases"]) == [f"{s}, {o} outliers" for o in (k, 0) for s in systems]
    assert m["control"] == f"A: linear, {k} outliers" and m["norm_matched"] == f"C: linear, norm-matched, {k} outliers" and k > 0
    for name, runs in m["cases"].items():
        assert set(runs) == {str(s) for s in SEEDS}
        for r in runs.values():
            assert len(r["cosine"]) == m["config"]["ticks"] and all(-1.0 <= x <= 1.0 + 1e-6 for x in r["cosine"])
            assert set(r["gain"]) == {"agnews", "dbpedia", "yahoo", "yelp"} and math.isfinite(r["loss"])
            assert len(r["update_norms"]) == m["config"]["ticks"] and r["total_norm"] > 0
            if not name.startswith("B") or "0 outliers" in name:  # linear composition weighs nothing; no outliers to weigh
                assert r["outlier_factor"] is None
            else:
                assert 0.0 <= r["outlier_factor"] <= m["config"]["resonance"]["cap"]
    for o in (k, 0):  # the norm-matched control steps as far as resonance every tick, in Mean's direction
        for s in map(str, SEEDS):
            b, c = m["cases"][f"B: resonant, {o} outliers"][s], m["cases"][f"C: linear, norm-matched, {o} outliers"][s]
            assert c["update_norms"] == pytest.approx(b["update_norms"], rel=1e-5)
            assert c["cosine"] != b["cosine"] or o == 0
    assert all(finite(m["summary"][n]["final_cosine"]) and finite(m["summary"][n]["total_norm"]) for n in m["cases"])


def test_experiment_9_runs_the_four_budget_scenarios_at_every_complexity(tmp_path):
    m = recipe("exp09_entropy").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp09.png")
    assert list(m["scenarios"]) == ["A: no budget", "B: fixed", "C: adaptive", "D: dynamic boundaries"] and m["control"] == "A: no budget"
    ks = [str(k) for k in m["config"]["complexity"]]
    for name, by_k in m["scenarios"].items():
        assert list(by_k) == ks
        for runs in by_k.values():
            assert set(runs) == {str(s) for s in SEEDS}
            for r in runs.values():
                assert 0.0 <= r["screened_final"] <= 1.0 and 0.0 <= r["screened_mean"] <= 1.0
                assert r["state"] in {"crystallised", "balanced", "amnesic"} and -1e-6 <= r["forgetting"] <= 1.0
                assert len(r["curve"]["screened"]) == 2 * m["config"]["ticks"]
                if name.startswith("A"):  # the control runs no budget: the thresholds never move
                    assert r["scale_final"] == 1.0
                assert (r["band_centre_spread"] is None) != name.startswith("D")
    assert all(finite(m["summary"][s][k]["screened_final"]) for s in m["scenarios"] for k in ks)


def test_experiment_11_runs_the_three_pattern_types_and_the_random_control_with_and_without_vertical_resonance(tmp_path):
    m = recipe("exp11_vertical").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp11.png")
    kinds = ["type 1: local", "type 2: family", "type 3: universal", "random (control)"]
    scenarios = ["A: no vertical resonance", "B: vertical resonance", "C: several agents, no vertical resonance", "D: several agents, vertical resonance"]
    assert list(m["scenarios"]) == scenarios and m["control"] == "A: no vertical resonance"
    assert list(m["utility"]) == kinds and m["utility"]["random (control)"]["mean"] == 0.0
    for name, per in m["scenarios"].items():
        assert list(per) == kinds
        for runs in per.values():
            assert set(runs) == {str(s) for s in SEEDS}
            for r in runs.values():
                assert r["resonant_ticks"] + r["dissonant_ticks"] <= r["compared_ticks"] == len(r["modes"])
                assert set(r["final"]) == {"context", "agent", "swarm"} and all(math.isfinite(v) for v in r["final"].values())
                if "no vertical" in name:  # the controls run no vertical resonance
                    assert r["compared_ticks"] == 0 and r["settled_c"] is None and r["bypassed"] == 0
                else:
                    assert r["compared_ticks"] > 0 and -1.0 <= r["settled_c"] <= 1.0
    several = m["several_agents"]
    assert several["agents"] > 1 and several["tasks"] == [["agnews", "dbpedia", "yahoo", "yelp"][i % 4] for i in range(several["agents"])]
    assert list(several["utility"]) == kinds and several["utility"]["random (control)"] == 0.0
    for figures in (m, several):  # one agent (B) and several (D)
        assert figures["points"] == len(kinds) * len(SEEDS)
        r = figures["correlation_alignment_utility"]
        assert r is None or -1.0 <= r <= 1.0
        assert 0.0 <= figures["false_positive_rate"] <= 1.0 and figures["false_positive_ticks"][1] > 0
    assert all(finite(m["summary"][s][k]["resonant_share"]) for s in ("B: vertical resonance", "D: several agents, vertical resonance") for k in kinds)
    one, many = (m["scenarios"][s]["type 3: universal"]["0"]["final"] for s in ("A: no vertical resonance", "C: several agents, no vertical resonance"))
    assert one != many  # several agents learn their own draws, not the one agent's


@pytest.mark.parametrize("name", ["exp02", "exp03", "exp05", "exp06", "exp07", "exp09", "exp10", "exp11"])
def test_the_full_size_is_configured_like_the_small_one_on_the_embedded_model(name):
    import yaml

    tree = yaml.safe_load((ROOT / f"{name}.yaml").read_text(encoding="utf-8"))
    assert set(tree) == {"small", "full"}
    assert tree["small"]["base"] == "tiny-random" and tree["full"]["base"] == "embedded:smollm2-135m"
    assert set(tree["full"]) == set(tree["small"]) - {"threads"}  # the small size pins one thread for CI


def test_experiment_4_tracks_each_level_s_emergent_inertia_beside_the_inertia_off_control(tmp_path):
    m = recipe("exp04_temporal").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp04.png")
    assert list(m["scenarios"]) == ["constant alone", "episodic alone", "both", "control: inertia off"] and m["control"] == "control: inertia off"
    beta, ticks = m["config"]["beta"], m["config"]["ticks"]
    for name, runs in m["scenarios"].items():
        assert set(runs) == {str(s) for s in SEEDS}
        for r in runs.values():
            assert all(len(v) == ticks for v in r["curve"].values())
            assert all(beta - 1e-9 <= x <= 1.0 for lv in ("swarm", "agent") for x in r["curve"][f"{lv}_inertia"])
            assert r["swarm_scale"] >= 1.0 and all(math.isfinite(x) for x in r["loss"].values())
            if name.startswith("control"):  # no emergent inertia: every level stays at its base
                assert r["swarm_inertia"] == pytest.approx(beta) and r["agent_inertia"] == pytest.approx(beta)
    assert m["scenarios"]["constant alone"]["0"]["ticks_worked"]["constant"] == ticks
    assert all(finite(m["summary"][s][k]) for s in m["scenarios"] for k in ("swarm_inertia", "agent_inertia", "swarm_step", "swarm_scale"))


def test_experiment_1_runs_the_slow_and_fast_levels_beside_the_one_level_control_on_the_same_rows(tmp_path):
    m = recipe("exp01_two_layer").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp01.png")
    assert list(m["systems"]) == ["two levels: slow agent + fast context", "control: one level"] and m["control"] == "control: one level"
    cfg = m["config"]
    for name, runs in m["systems"].items():
        assert set(runs) == {str(s) for s in SEEDS}
        for r in runs.values():
            assert len(r["episodes"]) == cfg["rounds"] * 4 and len(r["start_by_round"]) == cfg["rounds"]
            assert [ep["task"] for ep in r["episodes"][:4]] == ["agnews", "dbpedia", "yahoo", "yelp"]
            assert all(math.isfinite(ep["start"]) and math.isfinite(ep["end"]) for ep in r["episodes"])
            assert set(r["retention"]) == {"agnews", "dbpedia", "yahoo", "yelp"} and r["slow_drift"] >= 0.0
            assert (r["fast_plasticity"] is None) == (name == m["control"])  # the control has no fast level
    for key in ("improvement", "slow_drift", "retention_mean", "episode_gain"):
        assert all(finite(m["summary"][s][key]) for s in m["systems"])


def test_experiment_8_tracks_the_depth_per_difficulty_beside_the_topology_off_control(tmp_path):
    m = recipe("exp08_growth").run("small", tmp_path, SEEDS)
    written(tmp_path, "exp08.png")
    assert list(m["systems"]) == ["topology", "control: topology off"] and m["control"] == "control: topology off"
    cfg = m["config"]
    ks = [str(k) for k in cfg["difficulty"]]
    for name, by_k in m["systems"].items():
        assert list(by_k) == ks
        for runs in by_k.values():
            assert set(runs) == {str(s) for s in SEEDS}
            for r in runs.values():
                assert len(r["depth"]) == cfg["ticks"] and 1 <= r["final_depth"] <= r["max_depth"] <= cfg["topology"]["max_levels"]
                assert r["splits"] + r["merges"] == len(r["changes"]) and math.isfinite(r["loss"]) and "context" in r["levels"]
                if name == m["control"]:  # no topology: the stack never changes
                    assert r["depth"] == [1] * cfg["ticks"] and r["excess"] == [] and r["changes"] == []
                else:
                    assert len(r["excess"]) == cfg["ticks"] and r["final_depth"] == 1 + r["splits"] - r["merges"]
    assert all(finite(m["summary"][s][k]["final_depth"]) for s in m["systems"] for k in ks)


@pytest.mark.parametrize("name", ["exp01", "exp04", "exp08"])
def test_experiments_1_4_and_8_are_configured_at_full_size_like_the_small_one(name):
    test_the_full_size_is_configured_like_the_small_one_on_the_embedded_model(name)


def test_no_size_asks_for_more_held_out_examples_than_the_demo_slice_has(tmp_path, monkeypatch):
    from lorahive.suites.demo import load_demo_suite

    c = recipe("exp01_two_layer").c
    assert {len(d.test) for d in load_demo_suite().values()} == {c.DEMO_TEST}
    for name in sorted(p.stem for p in ROOT.glob("exp*.yaml")):
        for size in ("small", "full"):
            assert 1 <= c.load_size(name, size).get("eval", 1) <= c.DEMO_TEST, (name, size)
    (tmp_path / "exp99.yaml").write_text("full: {eval: 48}\n", encoding="utf-8")
    monkeypatch.setattr(c, "HERE", tmp_path)
    with pytest.raises(ValueError, match=r"exp99.yaml full.eval = 48: held-out examples per task must be in 1..32"):
        c.load_size("exp99", "full")


SHARED_CL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cl" / "standard"


@pytest.mark.skipif(not SHARED_CL.is_dir(), reason="../shared/data/cl is absent")
def test_the_cl_table_runs_every_stream_and_method_over_the_seeds_and_collects_them_again(tmp_path):
    table = recipe("cl_table")
    m = table.run("small", tmp_path, SEEDS, root=str(SHARED_CL))
    assert (tmp_path / "cl_table.png").stat().st_size > 1000 and (tmp_path / "summary.md").is_file()
    assert list(m["runs"]) == ["order 1", "order 2", "order 3", "5-task"] and m["methods"] == ["hive", "seq-lora", "replay", "multitask"]
    assert m["streams"]["order 1"] == ["dbpedia", "amazon", "yahoo", "agnews"] and len(m["streams"]["5-task"]) == 5
    assert m["missing"] == [] and m["seeds"] == SEEDS and set(m["published_t5_large"]) == {"O-LoRA", "MIGU + FT", "multitask"}
    for stream, by_method in m["runs"].items():
        n = len(m["streams"][stream])
        for method, runs in by_method.items():
            assert set(runs) == {str(s) for s in SEEDS}
            for r in runs.values():
                assert len(r["R"]) == n + 1 and all(len(row) == n and all(0.0 <= v <= 1.0 for v in row) for row in r["R"])
                assert 0.0 <= r["ACC"] <= 1.0 and -1.0 <= r["BWT"] <= 1.0 and -1.0 <= r["FWT"] <= 1.0 and r["ppl_before"] > 1.0
            s = m["summary"][stream][method]
            assert s["runs"] == len(SEEDS) and all(finite(s[k]) for k in ("ACC", "BWT", "FWT", "ppl_after", "ppl_change"))
        for seed in map(str, SEEDS):  # every method starts from the same model: the same R before learning
            assert len({str(by_method[method][seed]["R"][0]) for method in by_method}) == 1
    assert all(finite(v) for v in m["orders_mean_acc"].values())
    again = table.collect(tmp_path / "runs", tmp_path / "again", "small")  # --collect: the table from the run directories alone
    assert again["summary"] == m["summary"] and again["orders_mean_acc"] == m["orders_mean_acc"]
