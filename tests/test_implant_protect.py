"""Null-space protection of the per-edit slot (lorahive.implant.protect) on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model
from implant_cases import small_implant_cfg, tiny_edits
from lorahive.config import ConfigError
from lorahive.config.implant import ImplantConfig, parse_implant
from lorahive.implant.edits import spaced, token_scores
from lorahive.implant.protect import (
    NullSpace,
    NullSpaceWriter,
    dominant_basis,
    general_keys,
    projected_steps,
    subject_keys,
)
from lorahive.implant.sequential import AGENT, PlainWriter, build_hive, run_implant

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cfg(**over) -> ImplantConfig:
    return small_implant_cfg(**({"edits": 4, "checkpoints": (2, 4), "contexts": 0, "replay": 0, "neighbours": 0} | over))


@pytest.fixture
def loader(tokenizer):
    return lambda: (make_model(len(tokenizer)), tokenizer)


def slot_output(hive, level: str, slot: int, keys: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per module: ``‖B·A·k‖ / (‖B·A‖·‖k‖)`` over the keys, largest — 0 when the slot ignores them."""
    out = {}
    for path, bank in hive.core.named_banks(level):
        w = (bank.B[slot] @ bank.A[slot]).detach().double()
        k = keys[path].double()
        out[path] = float(((k @ w.t()).norm(dim=-1) / (w.norm() * k.norm(dim=-1))).max())
    return out


def test_dominant_basis_keeps_all_but_the_null_energy():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    scales = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.1, 0.01, 0.001], dtype=torch.float64)
    keys = torch.diag(scales.sqrt()) @ q.t()  # rows √λ_i · q_iᵀ: keysᵀ·keys has eigenvalues λ_i, eigenvectors q_i
    energy = scales / scales.sum()
    for null in (0.5, 0.05, 0.001):
        u = dominant_basis(keys, null)
        want = int((energy.cumsum(0) < 1 - null).sum()) + 1
        assert u.shape == (8, want)
        assert torch.allclose(u.t() @ u, torch.eye(want, dtype=u.dtype), atol=1e-8)
        assert torch.allclose((u.t() @ q[:, :want]).abs().sum(0), torch.ones(want, dtype=u.dtype), atol=1e-6)  # the top eigenvectors
    assert dominant_basis(keys[:3], 0.001).shape == (8, 3)  # fewer keys than inputs: the SVD path
    assert dominant_basis(torch.zeros(3, 8), 0.1).shape == (8, 0)


def test_projected_slot_is_silent_on_preserved_inputs_and_the_subject_still_learns(loader):
    hive = build_hive(small_cfg(), "hive", loader)
    edit = tiny_edits(1)[0]
    general = general_keys(hive, AGENT, "edit", tokens=512)
    assert all(k.shape[0] == 512 for k in general.values())
    space = NullSpace.of_keys(general, null_energy=0.3)  # a small model: leave room outside U
    own = subject_keys(hive, AGENT, "edit", [edit])
    kept = space.surviving(own)
    assert 0.05 < kept < 1.0
    writer = NullSpaceWriter(PlainWriter(steps=24, check_every=4, margin=1.0, anchor=0.0), null_energy=0.3, tokens=512, space=space, protect_edits=True)
    before = token_scores(hive, AGENT, [(edit.prompt, spaced(edit.target_new))]).mean_logp
    writer(hive, AGENT, "edit", edit)
    slot = hive.core.slot_of("edit", AGENT)
    basis = {p: space.general[p].t() for p in general}  # the preserved directions themselves, as keys
    assert max(slot_output(hive, "edit", slot, basis).values()) < 1e-5
    assert max(slot_output(hive, "edit", slot, {p: k @ space.general[p] @ space.general[p].t() for p, k in general.items()}).values()) < 1e-5  # each token's preserved part
    assert max(slot_output(hive, "edit", slot, own).values()) > 1e-2  # the subject's key still reaches the update
    after = token_scores(hive, AGENT, [(edit.prompt, spaced(edit.target_new))]).mean_logp
    assert float(after[0]) > float(before[0]) + 1.0
    assert writer.kept and writer.kept[0] == pytest.approx(kept)
    assert all(len(v) == 1 for v in space.edit_keys.values())  # the written edit is protected from the next one
    assert space.surviving(own) < 0.05


def test_projection_follows_every_step_and_is_undone_after_the_block(loader):
    hive = build_hive(small_cfg(), "hive", loader)
    edit = tiny_edits(1)[0]
    keys = {p: torch.randn(3, bank.in_features, generator=torch.Generator().manual_seed(1)) for p, bank in hive.core.named_banks("edit")}
    space = NullSpace.of_keys(keys, null_energy=1e-6)
    slot = hive.core.slot_of("edit", AGENT)
    space.project(hive, "edit", slot)
    with projected_steps(hive, "edit", slot, space):
        hive.learn({AGENT: [(edit.prompt, spaced(edit.target_new))]}, steps=3, levels=["edit"])
    assert "step" not in vars(hive.core)
    assert max(slot_output(hive, "edit", slot, keys).values()) < 1e-5
    hive.learn({AGENT: [(edit.prompt, spaced(edit.target_new))]}, steps=3, levels=["edit"])  # unprotected steps leave the subspace
    assert max(slot_output(hive, "edit", slot, keys).values()) > 1e-3


def test_later_edits_leave_earlier_subject_keys_alone(loader):
    hive = build_hive(small_cfg(), "hive", loader)
    first, second = tiny_edits(2)
    writer = NullSpaceWriter(PlainWriter(steps=8, check_every=4, margin=1.0, anchor=0.0), null_energy=0.3, tokens=256, protect_edits=True)
    writer(hive, AGENT, "edit", first)
    assert writer.space is not None
    kept = {p: torch.stack(v) for p, v in writer.space.edit_keys.items()}
    hive.core.reset("edit", [hive.core.slot_of("edit", AGENT)])
    writer(hive, AGENT, "edit", second)
    assert max(slot_output(hive, "edit", hive.core.slot_of("edit", AGENT), kept).values()) < 1e-5


def test_run_reports_the_subject_energy_kept(loader):
    results = run_implant(small_cfg(protect="nullspace", null_energy=0.3, protect_tokens=256, methods=("hive",)), tiny_edits(4), loader)
    r = results["hive"]
    assert r.key_energy_kept is not None and 0.0 < r.key_energy_kept < 1.0
    assert r.as_dict()["key_energy_kept"] == r.key_energy_kept
    assert r.steps_per_edit is not None
    off = run_implant(small_cfg(methods=("hive",), edits=1, checkpoints=(1,)), tiny_edits(1), loader)["hive"]
    assert off.key_energy_kept is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("protect", "alphaedit"), ("null_energy", 0.0), ("null_energy", 1.0), ("protect_tokens", 0), ("protect_tokens", 1.5), ("protect_edits", "maybe")],
)
def test_bad_protect_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        parse_implant({field: value})
    assert parse_implant({}).protect == "none"  # off by default
