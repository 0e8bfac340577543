"""The ``lorahive`` command end to end on a tiny local model: run, inspect, resume, bad input."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from lorahive.cli.main import app
from tiny_runs import LEVELS

runner = CliRunner()


def write_config(path, base, **over):
    tree = {
        "base": str(base),
        "levels": LEVELS,
        "agents": 2,
        "ticks": 1,
        "threads": 1,
        "suite": {"task_types": ["agnews", "yelp"], "support": 2, "query": 2, "eval_query": 2, "max_prompt_tokens": 300},
        "agent": {"fast_steps": 1, "quality_bar": 0.0},
        **over,
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def test_run_inspect_resume(base_dir, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", base_dir)
    out = tmp_path / "run"

    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "agents=3"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ticks"] == 1 and len(metrics["agents"]) == 3  # the override applied
    assert "metrics.json" in res.output

    res = runner.invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0, res.output
    assert "tick 1" in res.output and "agent2" in res.output and "swarm" in res.output

    res = runner.invoke(app, ["resume", str(out), "--ticks", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["ticks"] == 2


def test_existing_run_is_refused_without_force(base_dir, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", base_dir)
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(cfg), "--out", str(out)]).exit_code == 0
    before = (out / "metrics.json").read_bytes()

    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
    assert (out / "metrics.json").read_bytes() == before


def test_bad_config_value_names_the_field_and_writes_nothing(base_dir, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", base_dir, aggregation={"strategy": "vote"})
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 2
    assert "aggregation.strategy" in res.output and "median" in res.output
    assert not out.exists()


def test_invalid_yaml_is_refused_with_the_file_named(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("ticks: [1, 2\n")
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "broken.yaml" in res.output and "invalid YAML" in res.output
    assert not (tmp_path / "run").exists()


def test_bad_override_is_refused(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "run"), "ticks=-1"])
    assert res.exit_code == 2 and "ticks" in res.output
    assert not (tmp_path / "run").exists()


def test_resume_of_a_directory_without_a_run_is_refused(tmp_path):
    res = runner.invoke(app, ["resume", str(tmp_path)])
    assert res.exit_code == 2 and "no config.yaml" in res.output
