"""``lorahive export`` / ``import-peft`` end to end through the CLI, checked against ``peft``."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from lorahive.cli.main import app
from lorahive.config import dump_config
from lorahive.learning.batching import pack_prompts
from lorahive.runtime.interop import restore_hive
from tiny_runs import tiny_config

PROMPTS = ["The capital of France is", "Question: what colour", "Sports: the team"]
runner = CliRunner()


def _text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def run_dir(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-run")
    (root / "config.yaml").write_text(dump_config(tiny_config(base_dir)), encoding="utf-8")
    result = runner.invoke(app, ["run", str(root / "config.yaml"), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root / "run"


def _peft_logits(model, tokenizer) -> torch.Tensor:
    batch = pack_prompts(tokenizer, PROMPTS, 128)
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    return out.logits[:, -1].float()


def test_export_gives_peft_the_agents_logits(base_dir, run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir), "--agent", "agent1", "--out", str(tmp_path / "ad")])

    assert result.exit_code == 0, result.output
    hive = restore_hive(run_dir).hive
    expected = hive.logits(PROMPTS, ["agent1"] * 3, levels=["swarm", "agent"])
    assert not torch.allclose(expected, hive.logits(PROMPTS, ["agent1"] * 3, levels=[]), atol=1e-4)  # the run learned
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / "ad"))
    torch.testing.assert_close(_peft_logits(loaded, hive.tokenizer), expected, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["r"] == 4  # swarm r2 + agent r2


def test_export_of_chosen_levels(base_dir, run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir), "--agent", "agent0", "--levels", "swarm", "--out", str(tmp_path / "ad")])

    assert result.exit_code == 0, result.output
    hive = restore_hive(run_dir).hive
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / "ad"))
    torch.testing.assert_close(_peft_logits(loaded, hive.tokenizer), hive.logits(PROMPTS, ["agent0"] * 3, levels=["swarm"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "zed"], "unknown agent 'zed'; agents are ['agent0', 'agent1', 'agent2']"),
        (["--agent", "agent0", "--levels", "swarm,nope"], "unknown levels: nope; levels are ['swarm', 'agent', 'context']"),
        (["--agent", "agent0", "--levels", ","], "names no level"),
    ],
)
def test_export_refuses_unknown_names_with_exit_code_2(run_dir, tmp_path, args, message):
    result = runner.invoke(app, ["export", str(run_dir), *args, "--out", str(tmp_path / "ad")])

    assert result.exit_code == 2
    assert message in _text(result)
    assert not (tmp_path / "ad").exists()


def test_export_of_a_directory_without_a_run_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path), "--agent", "agent0", "--out", str(tmp_path / "ad")])

    assert result.exit_code == 2
    assert "no config.yaml" in _text(result)


def _peft_adapter(base_dir, path) -> torch.Tensor:
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(str(path))
    return _peft_logits(model, AutoTokenizer.from_pretrained(base_dir))


def test_import_peft_fills_the_slot_and_checkpoints(base_dir, tmp_path):
    (tmp_path / "config.yaml").write_text(dump_config(tiny_config(base_dir, ticks=1)), encoding="utf-8")
    assert runner.invoke(app, ["run", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run")]).exit_code == 0
    expected = _peft_adapter(base_dir, tmp_path / "ad")

    result = runner.invoke(app, ["import-peft", str(tmp_path / "run"), str(tmp_path / "ad"), "--level", "swarm"])

    assert result.exit_code == 0, result.output
    hive = restore_hive(tmp_path / "run").hive
    torch.testing.assert_close(hive.logits(PROMPTS, ["agent0"] * 3, levels=["swarm"]), expected, rtol=1e-4, atol=1e-4)
    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind = 'import_peft'").fetchone()[0] == 1
    assert runner.invoke(app, ["resume", str(tmp_path / "run"), "--ticks", "2"]).exit_code == 0


def test_import_peft_refuses_unknown_level_and_changes_nothing(base_dir, run_dir, tmp_path):
    _peft_adapter(base_dir, tmp_path / "ad")
    before = {p: p.read_bytes() for p in sorted((run_dir / "checkpoint").rglob("*")) if p.is_file()}

    bad_level = runner.invoke(app, ["import-peft", str(run_dir), str(tmp_path / "ad"), "--level", "nope"])
    bad_agent = runner.invoke(app, ["import-peft", str(run_dir), str(tmp_path / "ad"), "--level", "agent", "--agent", "zed"])

    assert bad_level.exit_code == bad_agent.exit_code == 2
    assert "unknown level 'nope'; levels are ['swarm', 'agent', 'context']" in _text(bad_level)
    assert "unknown agent 'zed'; agents are" in _text(bad_agent)
    assert {p: p.read_bytes() for p in sorted((run_dir / "checkpoint").rglob("*")) if p.is_file()} == before
