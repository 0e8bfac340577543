"""Resumable implants (implant/resume.py): a run stopped after a saved state and resumed gives exactly the scores,
steps and levels of a run that never stopped — hive (plain writer, with and without null-space protection) and the
lora baseline, whose optimizer state carries over; a changed config is refused, naming the field."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_model
from implant_cases import small_implant_cfg, tiny_edits, write_records
from lorahive.cli.main import app
from lorahive.config import ConfigError
from lorahive.implant import sequential
from lorahive.implant.resume import load_state, state_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Stop(Exception):
    pass


def _levels(hive) -> dict[str, torch.Tensor]:
    return {f"{lv.name}/{k}": v for lv in hive.levels for k, v in hive.core.slot_rows(lv.name, range(hive.core.n_slots(lv.name))).items()}


def _run(cfg, tokenizer, out, resume=False, stop_at=None, keep=None):
    """One method's run; ``stop_at``: raise after that many edits (a crash); ``keep`` gets the hive at the end."""
    def load():
        return make_model(len(tokenizer)), tokenizer

    def on_edit(method, done, total):
        if stop_at is not None and done == stop_at:
            raise Stop

    built = sequential.build_hive

    def build(cfg_, method, load_):
        hive = built(cfg_, method, load_)
        if keep is not None:
            keep.append(hive)
        return hive

    sequential.build_hive = build
    try:
        return sequential.run_method(cfg.methods[0], cfg, tiny_edits(cfg.edits), load, on_edit, None, out, resume)
    finally:
        sequential.build_hive = built


@pytest.mark.parametrize("method,extra", [("hive", {}), ("hive", {"protect": "nullspace", "protect_edits": True, "protect_tokens": 64}), ("lora", {"steps": 3, "check_every": 3})])
def test_a_resumed_run_equals_one_that_never_stopped(tokenizer, tmp_path, method, extra):
    cfg = small_implant_cfg(methods=(method,), save_every=3, **extra)
    straight_hive: list = []
    straight = _run(cfg, tokenizer, tmp_path / "straight", keep=straight_hive)
    with pytest.raises(Stop):
        _run(cfg, tokenizer, tmp_path / "split", stop_at=5)  # saved after 3 edits, crashed after 5
    assert load_state(tmp_path / "split", method, cfg).done == 3
    resumed_hive: list = []
    resumed = _run(cfg, tokenizer, tmp_path / "split", resume=True, keep=resumed_hive)

    assert [s.model_dump() for s in resumed.checkpoints] == [s.model_dump() for s in straight.checkpoints]
    assert resumed.parameters == straight.parameters and resumed.truncation == straight.truncation
    assert resumed.steps_per_edit == straight.steps_per_edit and resumed.key_energy_kept == straight.key_energy_kept
    a, b = _levels(straight_hive[-1]), _levels(resumed_hive[-1])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_changed_config_is_refused_naming_the_field(tokenizer, tmp_path):
    cfg = small_implant_cfg(methods=("hive",), save_every=2, edits=4, checkpoints=(1, 4))
    with pytest.raises(Stop):
        _run(cfg, tokenizer, tmp_path, stop_at=3)
    assert (state_dir(tmp_path, "hive") / "state.json").is_file()
    with pytest.raises(ConfigError, match="differs from the saved run's in lr"):
        load_state(tmp_path, "hive", small_implant_cfg(methods=("hive",), save_every=2, edits=4, checkpoints=(1, 4), lr=0.5))
    assert load_state(tmp_path, "hive", small_implant_cfg(methods=("hive",), save_every=5, edits=4, checkpoints=(1, 4), threads=1)) is not None


def test_the_cli_resumes_and_refuses_an_out_without_state(base_dir, tmp_path):
    data = write_records(tmp_path / "edits.json", tiny_edits(4))
    args = ["implant", str(data), "--edits", "4", "--base", str(base_dir), "--method", "hive", "--set", "band=[0,1]", "--set", "checkpoints=[1,4]",
            "--set", "steps=4", "--set", "check_every=2", "--set", "contexts=1", "--set", "threads=1", "--set", "save_every=2"]  # fmt: skip
    empty = tmp_path / "empty"
    res = CliRunner().invoke(app, [*args, "--out", str(empty), "--resume"])
    assert res.exit_code == 2 and "holds no saved state" in res.output and not empty.exists()
    out = tmp_path / "out"
    first = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert json.loads((state_dir(out, "hive") / "state.json").read_text())["done"] == 2
    again = CliRunner().invoke(app, [*args, "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.output
    a = json.loads((out / "results.json").read_text())["methods"]["hive"]["checkpoints"]
    assert [c["n"] for c in a] == [1, 4]
