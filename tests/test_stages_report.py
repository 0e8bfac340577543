"""A stages run read back: ``lorahive resume``, ``inspect``, ``report`` and ``compare`` on stages run directories."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lorahive.cli.main import app
from lorahive.config import parse_stages_config
from lorahive.observe.report import STAGES_SECTIONS, render_report
from lorahive.runtime import stages as runner
from test_report import Page

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "stages"))
import recipe  # noqa: E402

LEVELS = [{"name": "swarm", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.0, "lr": 5e-2}]
DATA = {"topics": {"source": "cl", "task_type": "agnews", "train": 6, "eval": 3, "max_prompt_tokens": 64}}
SFT = {"objective": "sft", "data": "topics", "levels": ["swarm"], "steps": 2, "batch": 3, "budget": {"max_norm": 0.5}}
DPO = {"objective": "dpo", "data": "topics", "levels": ["swarm"], "steps": 2, "batch": 3, "beta": 0.5, "scope": {"targets": ["v_proj"]}}


class _Stop(BaseException):
    pass


def _stop_after(steps: int):
    seen = {"n": 0}

    def progress(tag: str, k: int, n: int) -> None:
        seen["n"] += 1
        if seen["n"] == steps:
            raise _Stop

    return progress


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished stages runs (SFT → DPO and DPO → SFT) and one stopped after 3 of its 4 steps."""
    base = str(recipe.tiny_base(tmp_path_factory.mktemp("stage-base"), recipe._texts({"data": DATA})))
    root = tmp_path_factory.mktemp("stage-runs")
    tree = {"base": base, "threads": 1, "levels": LEVELS, "data": DATA, "checkpoint_every": 1}
    runner.start(parse_stages_config({**tree, "stages": [SFT, DPO]}), root / "sft-dpo")
    runner.start(parse_stages_config({**tree, "stages": [DPO, SFT]}), root / "dpo-sft")
    with pytest.raises(_Stop):
        runner.start(parse_stages_config({**tree, "stages": [SFT, DPO]}), root / "stopped", progress=_stop_after(3))
    return root


def _said(res) -> str:
    return " ".join(res.output.split())


def test_inspect_shows_where_an_unfinished_stages_run_stands(runs):
    res = CliRunner().invoke(app, ["inspect", str(runs / "stopped")], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    out = _said(res)
    assert "stages sft1 → dpo1: 3 of 4 steps so far, not finished" in out and "last checkpoint after step 3 of 4" in out
    assert "2 of 2" in out and "1 of 2" in out and "v_proj in all blocks" in out
    assert "Shapley" not in out  # nothing measured yet


def test_lorahive_resume_finishes_a_stopped_stages_run_as_if_it_had_not_stopped(runs, tmp_path):
    run = tmp_path / "stopped"
    shutil.copytree(runs / "stopped", run)  # the module's copy stays unfinished
    res = CliRunner().invoke(app, ["resume", str(run)])
    assert res.exit_code == 0, res.output
    assert "stages sft1 → dpo1" in res.output and (run / "report.html").is_file()
    straight, resumed = (json.loads((d / "metrics.json").read_text()) for d in (runs / "sft-dpo", run))
    straight.pop("seconds"), resumed.pop("seconds")
    assert resumed == straight


def test_inspect_shows_a_finished_runs_stages_budgets_behaviour_attribution_and_overlaps(runs):
    res = CliRunner().invoke(app, ["inspect", str(runs / "sft-dpo")], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    out = _said(res)
    assert "stages sft1 → dpo1: 4 of 4 steps, finished" in out
    for words in ("within budget", "behaviour on held-out pairs", "per-stage attribution", "drop-one KL", "sft1 vs dpo1", "ledger: 4 stage steps, 0 resumes, measured"):
        assert words in out, words
    metrics = json.loads((runs / "sft-dpo" / "metrics.json").read_text())
    assert f"{metrics['data']['topics']['shapley_logp']['dpo1']:.4g}" in out


def test_the_report_of_stages_runs_has_their_sections_plots_and_comparison(runs):
    page = Page()
    page.feed(render_report(runs / "sft-dpo", [runs / "dpo-sft"]))
    assert list(page.sections) == list(STAGES_SECTIONS)
    assert {sid: len(imgs) for sid, imgs in page.sections.items()} == {"summary": 0, "budgets": 1, "behaviour": 0, "attribution": 1, "overlap": 0, "compare": 1}
    for images in page.sections.values():
        for src in images:
            img = Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,"))))
            img.load()
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    alone = render_report(runs / "sft-dpo")
    assert "no other stages run given" in alone and "sft1 vs dpo1" in alone and "dpo1" in alone


def test_lorahive_report_and_compare_take_stages_runs_and_refuse_to_mix_kinds(runs, tmp_path):
    res = CliRunner().invoke(app, ["report", str(runs / "sft-dpo"), str(runs / "dpo-sft")])
    assert res.exit_code == 0, res.output
    assert "compare" in (runs / "sft-dpo" / "report.html").read_text()
    res = CliRunner().invoke(app, ["compare", str(runs / "sft-dpo"), str(runs / "dpo-sft"), "--markdown"])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| sft-dpo") or line.startswith("| dpo-sft")]
    assert len(rows) == 2 and all("| stages | 4 |" in r for r in rows)
    swarm = tmp_path / "swarm"
    swarm.mkdir()
    (swarm / "metrics.json").write_text(json.dumps({"ticks": 1, "finished": True, "method": "hive", "agents": {}}))
    res = CliRunner().invoke(app, ["report", str(runs / "sft-dpo"), str(swarm)])
    assert res.exit_code == 2 and "is a stages run" in _said(res) and "a report compares runs of one kind" in _said(res)
