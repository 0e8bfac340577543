"""PEFT export/import checked against ``peft`` itself (DESIGN.md invariant 4)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from conftest import make_model, randomize_b
from lorahive import Hive, LevelSpec, StackSpec
from lorahive.learning.batching import pack_prompts
from lorahive.store.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft, import_peft

PROMPTS = ["The capital of France is", "Question: what colour", "Sports: the team"]


def _peft_logits(model, tokenizer) -> torch.Tensor:
    batch = pack_prompts(tokenizer, PROMPTS, 128)
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    return out.logits[:, -1].float()


def _peft_adapter(tokenizer, path, seed: int = 3, **config) -> torch.Tensor:
    """Save an adapter made by peft with random B; return peft's logits with it."""
    model = get_peft_model(make_model(len(tokenizer)), LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(str(path))
    return _peft_logits(model, tokenizer)


def _b_state(hive: Hive, level: str) -> dict[str, torch.Tensor]:
    return {p: bank.B.detach().clone() for p, bank in hive.core.named_banks(level)}


# ---------------------------------------------------------------------- export
def test_export_gives_peft_the_agents_logits(hive, tmp_path):
    randomize_b(hive, scale=0.1)
    expected = hive.logits(PROMPTS, ["bob"] * 3)

    out = export_peft(hive.core, "bob", tmp_path / "bob")
    loaded = PeftModel.from_pretrained(make_model(len(hive.tokenizer)), str(out))

    got = _peft_logits(loaded, hive.tokenizer)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, hive.logits(PROMPTS, ["bob"] * 3, levels=[]), atol=1e-3)
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 4 + 4 + 4 + 2 + 2


def test_export_of_uneven_targets_and_mix_uses_rank_pattern(tokenizer, tmp_path):
    stack = StackSpec(
        levels=(
            LevelSpec(name="swarm", rank=4, alpha=8, scope="shared", inertia=0.5, lr=1e-2, targets=("q_proj", "v_proj")),
            LevelSpec(name="agent", rank=2, alpha=4, scope="agent", inertia=0.5, lr=1e-2),
        )
    )
    hive = Hive(make_model(len(tokenizer)), tokenizer, stack)
    hive.add_agents(["ann", "bob"])
    randomize_b(hive, scale=0.1)
    hive.core.states["swarm"].mix = 0.5
    expected = hive.logits(PROMPTS, ["ann"] * 3)

    out = export_peft(hive.core, "ann", tmp_path / "ann")
    loaded = PeftModel.from_pretrained(make_model(len(tokenizer)), str(out))

    torch.testing.assert_close(_peft_logits(loaded, tokenizer), expected, rtol=1e-4, atol=1e-4)
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert cfg["r"] == 2 and cfg["rank_pattern"] == {"q_proj": 6, "v_proj": 6} == cfg["alpha_pattern"]


def test_export_of_chosen_levels_matches_the_ablated_hive(hive, tmp_path):
    randomize_b(hive, scale=0.1)
    levels = ["swarm", "agent"]
    expected = hive.logits(PROMPTS, ["cyd"] * 3, levels=levels)

    out = export_peft(hive.core, "cyd", tmp_path / "cyd", levels=levels)
    loaded = PeftModel.from_pretrained(make_model(len(hive.tokenizer)), str(out))

    torch.testing.assert_close(_peft_logits(loaded, hive.tokenizer), expected, rtol=1e-4, atol=1e-4)


def test_export_refuses_unknown_agents_and_levels(hive, tmp_path):
    with pytest.raises(ValueError, match="unknown agents"):
        export_peft(hive.core, "zed", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown levels"):
        export_peft(hive.core, "ann", tmp_path / "x", levels=["nope"])
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------- import
def test_import_of_a_smaller_rank_adapter_reproduces_peft(hive, tmp_path):
    expected = _peft_adapter(hive.tokenizer, tmp_path / "ad", r=2, lora_alpha=6, target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"down_proj": 3}, alpha_pattern={"down_proj": 2})

    report = import_peft(hive.core, tmp_path / "ad", "swarm")

    got = hive.logits(PROMPTS, ["ann"] * 3, levels=["swarm"])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert report.max_error == 0.0 and report.slot == 0
    assert set(report.ranks.values()) == {2, 3}
    assert any(p.endswith("o_proj") for p in report.zeroed)


def test_import_into_an_agents_slot_leaves_other_agents_alone(hive, tmp_path):
    randomize_b(hive, scale=0.1)
    expected = _peft_adapter(hive.tokenizer, tmp_path / "ad", r=2, lora_alpha=2, target_modules=["k_proj", "up_proj"], use_rslora=True)
    ann_before = hive.logits(PROMPTS, ["ann"] * 3)

    report = import_peft(hive.core, tmp_path / "ad", "agent", agent="bob")

    got = hive.logits(PROMPTS, ["bob"] * 3, levels=["agent"])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(hive.logits(PROMPTS, ["ann"] * 3), ann_before)
    assert report.slot == hive.core.slot_of("agent", "bob")


def test_import_of_a_larger_rank_adapter_reports_the_truncation_error(hive, tmp_path):
    _peft_adapter(hive.tokenizer, tmp_path / "ad", r=8, lora_alpha=8, target_modules=["q_proj", "gate_proj"])
    weights = load_file(str(tmp_path / "ad" / ADAPTER_WEIGHTS))

    report = import_peft(hive.core, tmp_path / "ad", "swarm")  # swarm has rank 4

    lv = hive.stack.get("swarm")
    for path, bank in hive.core.named_banks("swarm"):
        if path not in report.errors:
            continue
        a, b = weights[f"base_model.model.{path}.lora_A.weight"], weights[f"base_model.model.{path}.lora_B.weight"]
        want = (b @ a).double()
        have = (hive.core.mix["swarm"] * lv.scale * bank.B[0] @ bank.A[0]).detach().double()
        measured = float((want - have).norm() / want.norm())
        assert report.errors[path] == pytest.approx(measured, rel=1e-3)
    assert report.max_error > 0.05


def test_import_of_a_larger_rank_but_low_rank_product_is_exact(hive, tmp_path):
    _peft_adapter(hive.tokenizer, tmp_path / "ad", r=8, lora_alpha=16, target_modules=["v_proj"])
    weights = load_file(str(tmp_path / "ad" / ADAPTER_WEIGHTS))
    for key in weights:
        if "lora_B" in key:
            weights[key][:, 3:] = 0.0  # rank 3 product stored at rank 8
    save_file(weights, str(tmp_path / "ad" / ADAPTER_WEIGHTS))
    expected = _peft_logits(PeftModel.from_pretrained(make_model(len(hive.tokenizer)), str(tmp_path / "ad")), hive.tokenizer)

    report = import_peft(hive.core, tmp_path / "ad", "swarm")

    assert report.max_error < 1e-5
    torch.testing.assert_close(hive.logits(PROMPTS, ["ann"] * 3, levels=["swarm"]), expected, rtol=1e-4, atol=1e-4)


def test_export_then_import_round_trips_through_a_wide_level(hive, tokenizer, tmp_path):
    randomize_b(hive, scale=0.1)
    expected = hive.logits(PROMPTS, ["ann"] * 3)
    export_peft(hive.core, "ann", tmp_path / "ann")
    wide = Hive(make_model(len(tokenizer)), tokenizer, [LevelSpec(name="imported", rank=16, alpha=32, scope="shared", inertia=0.5, lr=1e-2)])
    wide.add_agents(["x"])

    report = import_peft(wide.core, tmp_path / "ann", "imported")

    assert report.max_error == 0.0
    torch.testing.assert_close(wide.logits(PROMPTS, ["x"] * 3), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- bad input
@pytest.fixture
def adapter(hive, tmp_path):
    _peft_adapter(hive.tokenizer, tmp_path / "ad", r=2, lora_alpha=4, target_modules=["q_proj"])
    return tmp_path / "ad"


def _rewrite(adapter, edit) -> None:
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    edit(weights)
    save_file(weights, str(adapter / ADAPTER_WEIGHTS))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda w: w.update({k: v * float("nan") for k, v in w.items() if "lora_B" in k}), "NaN"),
        (lambda w: w.update({k: v[:, :-1].contiguous() for k, v in w.items() if "lora_A" in k}), "does not fit"),
        (lambda w: w.update({k.replace("q_proj", "r_proj"): w.pop(k) for k in list(w)}), "unknown module"),
        (lambda w: w.update({k: v.to(torch.int32) for k, v in w.items() if "lora_A" in k}), "not a float"),
        (lambda w: [w.pop(k) for k in list(w) if "lora_B" in k], "both lora_A and lora_B"),
        (lambda w: w.update({"base_model.model.lm_head.weight": torch.zeros(2, 2)}), "unsupported tensor"),
    ],
)
def test_import_refuses_bad_weights_and_changes_nothing(hive, adapter, edit, message):
    _rewrite(adapter, edit)
    before = _b_state(hive, "swarm")

    with pytest.raises(ValueError, match=message):
        import_peft(hive.core, adapter, "swarm")

    after = _b_state(hive, "swarm")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_import_refuses_missing_or_pickled_files(hive, adapter, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        import_peft(hive.core, tmp_path / "nowhere", "swarm")
    (adapter / ADAPTER_WEIGHTS).rename(adapter / "adapter_model.bin")
    with pytest.raises(ValueError, match="never unpickles"):
        import_peft(hive.core, adapter, "swarm")
    (adapter / "adapter_model.bin").unlink()
    with pytest.raises(ValueError, match=f"missing {ADAPTER_WEIGHTS}"):
        import_peft(hive.core, adapter, "swarm")


def test_import_refuses_bad_configs_and_truncated_weights(hive, adapter):
    good = (adapter / ADAPTER_CONFIG).read_text()
    (adapter / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        import_peft(hive.core, adapter, "swarm")
    (adapter / ADAPTER_CONFIG).write_text(json.dumps({**json.loads(good), "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        import_peft(hive.core, adapter, "swarm")
    (adapter / ADAPTER_CONFIG).write_text(json.dumps({**json.loads(good), "r": 3}))
    with pytest.raises(ValueError, match="config gives rank 3"):
        import_peft(hive.core, adapter, "swarm")
    (adapter / ADAPTER_CONFIG).write_text(good)
    data = (adapter / ADAPTER_WEIGHTS).read_bytes()
    (adapter / ADAPTER_WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        import_peft(hive.core, adapter, "swarm")


def test_import_needs_the_right_slot_owner_and_a_target_level(hive, adapter):
    with pytest.raises(ValueError, match="name the agent"):
        import_peft(hive.core, adapter, "agent")
    with pytest.raises(ValueError, match="do not name an agent"):
        import_peft(hive.core, adapter, "swarm", agent="ann")
    with pytest.raises(ValueError, match="unknown level"):
        import_peft(hive.core, adapter, "nope")
    narrow = Hive(
        make_model(len(hive.tokenizer)),
        hive.tokenizer,
        [
            LevelSpec(name="v", rank=2, alpha=2, scope="shared", inertia=0.5, lr=1e-2, targets=("v_proj",)),
            LevelSpec(name="q", rank=2, alpha=2, scope="shared", inertia=0.5, lr=1e-2, targets=("q_proj",)),
        ],
    )
    with pytest.raises(ValueError, match="not targeted by level 'v'"):
        import_peft(narrow.core, adapter, "v")
    report = import_peft(narrow.core, adapter, "q")
    assert report.max_error == 0.0


def test_import_clears_the_slots_optimizer_state(hive, adapter):
    hive.learn({"ann": [("The capital of France is", " Paris")]}, steps=2)
    assert any(int(st["step"][0]) > 0 for st in hive.core.optimizers["swarm"].state.values())

    import_peft(hive.core, adapter, "swarm")

    for st in hive.core.optimizers["swarm"].state.values():
        assert int(st["step"][0]) == 0
        assert not st["exp_avg"][0].any() and not st["exp_avg_sq"][0].any()
