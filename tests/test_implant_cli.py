"""``lorahive implant`` end to end on the tiny local model: results written, bad options refused with nothing written."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from implant_cases import tiny_edits, write_records
from lorahive.cli.main import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--set", "band=[0,1]", "--set", "checkpoints=[1,3]", "--set", "steps=4", "--set", "check_every=2", "--set", "contexts=1", "--set", "threads=1"]


@pytest.fixture
def data(tmp_path):
    return write_records(tmp_path / "edits.json", tiny_edits(4))


def test_a_tiny_run_writes_results(base_dir, data, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["implant", str(data), "--out", str(out), "--edits", "3", "--base", str(base_dir), "--method", "all", *SMALL])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["methods"]) == ["unedited", "hive", "lora"]
    assert [c["n"] for c in doc["methods"]["hive"]["checkpoints"]] == [1, 3]
    assert doc["config"]["band"] == [0, 1] and doc["edits"] == 3
    assert (out / "table.md").is_file() and (out / "scores.png").is_file()
    assert "after     3 edits: efficacy" in res.output


def test_a_config_file_and_one_method(base_dir, data, tmp_path):
    cfg = tmp_path / "implant.yaml"
    cfg.write_text(yaml.safe_dump({"data": data.name, "base": str(base_dir), "edits": 2, "band": [1, 1], "checkpoints": [2], "steps": 2, "check_every": 1, "contexts": 0}))
    out = tmp_path / "one"
    res = runner.invoke(app, ["implant", "--config", str(cfg), "--out", str(out), "--method", "hive"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["methods"]) == ["hive"] and doc["config"]["data"] == str(data)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--method", "rome"], "--method: rome is not a method; allowed: hive | lora | unedited | all"),
        (["--writer", "magic"], "writer: Input should be 'plain' or 'curriculum'"),
        (["--edits", "9"], "edits: 9 edits asked"),
        (["--edits", "0"], "edits: Input should be greater than 0"),
        (["--set", "steps=0"], "steps: Input should be greater than 0"),
        (["--set", "band=[3,1]"], "band: band must be [first, last]"),
        (["--set", "band=[1,5]"], "band: blocks [1, 5] do not fit a model of 2 decoder blocks"),
        (["--set", "bogus=1"], "bogus: Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(base_dir, data, tmp_path, args, named):
    out = tmp_path / "never"
    res = runner.invoke(app, ["implant", str(data), "--out", str(out), "--base", str(base_dir), "--edits", "2", *SMALL, *args])
    assert res.exit_code == 2, res.output
    assert named in " ".join(res.output.split())
    assert not out.exists()


def test_an_unreadable_data_file_is_named(base_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    res = runner.invoke(app, ["implant", str(bad), "--out", str(tmp_path / "x"), "--base", str(base_dir)])
    assert res.exit_code == 2 and "data: cannot read" in res.output


def test_a_non_empty_out_needs_force(base_dir, data, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["implant", str(data), "--out", str(out), "--base", str(base_dir), "--edits", "2", *SMALL])
    assert res.exit_code == 2 and "--force" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("name", ["implant.yaml", "implant-small.yaml"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    from lorahive.config import read_tree
    from lorahive.config.implant import parse_implant

    cfg = parse_implant(read_tree(Path(__file__).parent.parent / "configs" / name))
    assert cfg.score_points()[-1] == cfg.edits and cfg.band[1] < 30  # SmolLM2-135M has 30 blocks
