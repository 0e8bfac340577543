"""Drift map (implant/drift.py): zero for identical states, positive after a change, shapes, absent attention, files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_b, small_stack
from implant_cases import two_agent_hive
from lorahive import Hive
from lorahive.implant import (
    DriftMap,
    drift_map,
    layer_band,
    level_blocks,
    make_variants,
    plot_drift,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "In the summit, the team of the world, that won the match, is"
LAYERS = 2  # conftest's tiny Llama


_hive = two_agent_hive


@pytest.fixture
def hive(tokenizer) -> Hive:
    return _hive(tokenizer)


@pytest.fixture
def variants(hive):
    return make_variants(hive, PROMPT, " Paris", n=50, seed=0)


def test_a_fresh_hive_drifts_exactly_zero_everywhere(hive, variants):
    d = drift_map(hive, variants, "ann")
    assert d.logits.shape == d.hidden.shape == (50, LAYERS)
    assert d.attention is not None and d.attention.shape == (50, LAYERS)
    for t in (d.logits, d.hidden, d.attention):
        assert torch.equal(t, torch.zeros_like(t))


def test_levels_switched_off_drift_exactly_zero_even_when_they_hold_weights(hive, variants):
    randomize_b(hive)
    d = drift_map(hive, variants, "ann", levels=[])
    assert d.attention is not None
    assert not d.logits.any() and not d.hidden.any() and not d.attention.any()


def test_perturbed_levels_drift_positive_and_finite_in_every_cell(hive, variants):
    randomize_b(hive)
    d = drift_map(hive, variants, "ann", chunk=7)  # chunks of 7 rows: the map is assembled across them
    assert d.attention is not None
    for t in (d.logits, d.hidden, d.attention):
        assert t.shape == (50, LAYERS) and torch.isfinite(t).all() and (t > 0).all()
    assert (d.attention <= torch.log(torch.tensor(2.0)) + 1e-6).all()  # Jensen–Shannon is at most ln 2
    whole = drift_map(hive, variants, "ann", chunk=64)
    assert torch.allclose(whole.logits, d.logits, atol=1e-5) and torch.allclose(whole.hidden, d.hidden, atol=1e-5)


def test_the_last_layers_logit_drift_is_the_models_own_output_kl(hive, variants):
    randomize_b(hive)
    one = [v for v in variants if v.kind == "growth" and len(v.answer_ids) == 1]  # one answer token: predicted at the prompt's end
    d = drift_map(hive, one, "ann", attention=False)
    base = F.log_softmax(hive.logits([one[0].prompt], ["ann"], levels=[]), -1)
    edit = F.log_softmax(hive.logits([one[0].prompt], ["ann"]), -1)
    assert d.logits[0, -1] == pytest.approx(float((base.exp() * (base - edit)).sum()), rel=1e-4)


def test_attention_is_absent_not_zero_when_the_model_gives_none(hive, variants, monkeypatch, tmp_path):
    randomize_b(hive)
    assert drift_map(hive, variants[:4], "ann", attention=False).attention is None

    def refuse(_impl):
        raise ValueError("this model cannot switch its attention")

    monkeypatch.setattr(hive.model, "set_attn_implementation", refuse)
    d = drift_map(hive, variants[:4], "ann")
    assert d.attention is None and (d.logits > 0).all()
    assert plot_drift(d, tmp_path / "no-attention.png").stat().st_size > 0


def test_the_attention_implementation_is_put_back_after_the_map(hive, variants):
    before = hive.model.config._attn_implementation
    drift_map(hive, variants[:3], "ann")
    assert hive.model.config._attn_implementation == before


def test_a_level_limited_to_one_block_drifts_nothing_below_it(tokenizer):
    hive = _hive(tokenizer, layer_band(small_stack(), "agent", [1]))
    assert level_blocks(hive, "agent") == [1]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bank in hive.core.banks("agent"):
            bank.B.copy_(torch.randn(bank.B.shape, generator=gen) * 0.05)
    hive.core.rescan()
    d = drift_map(hive, make_variants(hive, PROMPT, " Paris", n=50, seed=0), "ann")
    assert d.attention is not None
    assert not d.hidden[:, 0].any() and not d.attention[:, 0].any() and not d.logits[:, 0].any()
    assert (d.hidden[:, 1] > 0).all() and (d.logits[:, 1] > 0).all()


def test_another_agents_slots_do_not_drift_this_agents_map(hive, variants):
    gen = torch.Generator().manual_seed(0)
    bob = hive.core.slot_of("agent", "bob")
    with torch.no_grad():
        for bank in hive.core.banks("agent"):
            bank.B[bob].copy_(torch.randn(bank.B[bob].shape, generator=gen) * 0.05)
    hive.core.rescan()
    assert not drift_map(hive, variants, "ann").logits.any()
    assert (drift_map(hive, variants, "bob").logits > 0).all()


def test_save_load_round_trip_and_plot(hive, variants, tmp_path):
    randomize_b(hive)
    d = drift_map(hive, variants, "ann", levels=["agent", "context"])
    d.save(tmp_path / "drift")
    back = DriftMap.load(tmp_path / "drift")
    assert back.attention is not None and d.attention is not None
    assert torch.equal(back.logits, d.logits) and torch.equal(back.hidden, d.hidden) and torch.equal(back.attention, d.attention)
    assert (back.kinds, back.distances, back.levels) == (d.kinds, d.distances, ("agent", "context"))
    png = plot_drift(d, tmp_path / "drift.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_refused(hive, variants):
    with pytest.raises(ValueError, match="variants"):
        drift_map(hive, [], "ann")
    with pytest.raises(ValueError, match="chunk"):
        drift_map(hive, variants, "ann", chunk=0)
    with pytest.raises(ValueError, match="unknown levels"):
        drift_map(hive, variants, "ann", levels=["nope"])
    with pytest.raises(ValueError, match="unknown agents"):
        drift_map(hive, variants, "zed")
