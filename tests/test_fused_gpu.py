"""The fused path (adapters/fused.py) against the reference path of HiveLinear.

The math is checked on the CPU in every CI run by forcing each path in turn (the fused path is
the default on the CPU and CUDA); the same checks run on CUDA when a GPU is present, in fp32
and bf16.

Tolerances: fp32 — ``assert_close(rtol=1e-5, atol=1e-5)`` on logits and gradients (only the
summation order differs); bf16 — against the same model in fp32, the fused path's relative
logit error ‖fused − fp32‖ / ‖fp32‖ is at most 1.25 × the reference path's in bf16 (+1e-3):
both round the fp32 banks to bf16, and bf16 rounding through a deep random model is several
per cent either way, so the check is "no less accurate than the reference".
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive, StackSpec
from lorahive.adapters.fused import use_fused
from lorahive.learning.batching import pack_prompts
from lorahive.learning.objective import last_logits

PROMPTS = ["The capital of France is", "Question: what colour", "Sports: the team", "great"]
AGENTS = ["ann", "bob", "cyd", "bob"]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_cuda])]


def _hive(tokenizer, device: str, dtype: torch.dtype = torch.float32) -> Hive:
    hive = Hive(make_model(len(tokenizer)).to(device=device, dtype=dtype), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob", "cyd"])
    randomize_b(hive, scale=0.2)
    return hive


def _logits(hive: Hive, mode: str, agents: list[str], gates: dict | None = None, levels=None) -> torch.Tensor:
    batch = pack_prompts(hive.tokenizer, PROMPTS[: len(agents)], 128).to(hive.device)
    with torch.no_grad(), use_fused(mode), hive.core.routing.use(hive.core.route(agents, levels, gates)):  # type: ignore[arg-type]
        return last_logits(hive.model, batch)


def _grads(hive: Hive, mode: str, agents: list[str], gates: dict | None = None) -> dict[str, torch.Tensor]:
    batch = pack_prompts(hive.tokenizer, PROMPTS[: len(agents)], 128).to(hive.device)
    hive.model.zero_grad(set_to_none=True)
    with use_fused(mode), hive.core.routing.use(hive.core.route(agents, gates=gates)):
        last_logits(hive.model, batch).pow(2).mean().backward()
    grads = {f"{lv.name}.{k}": p.grad.clone() for lv in hive.levels for k, p in hive.core.level_params(lv.name).items() if p.grad is not None}
    hive.model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("agents", [AGENTS, ["bob"] * 4, ["cyd"]])
def test_fused_logits_equal_reference_fp32(tokenizer, device, agents):
    hive = _hive(tokenizer, device)
    torch.testing.assert_close(_logits(hive, "on", agents), _logits(hive, "off", agents), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_keeps_gates_mix_and_ablation(tokenizer, device):
    hive = _hive(tokenizer, device)
    hive.core.states["domain"].mix = 0.5
    hive.core.states["swarm"].mix = 0.0
    gates = {"agent": torch.tensor([1.0, 0.0, 0.5, 2.0], device=device), "domain": torch.tensor([0.0, 1.0, 1.0, 0.3], device=device)}
    for levels in (None, ["agent", "context"], []):
        fused = _logits(hive, "on", AGENTS, gates, levels)
        torch.testing.assert_close(fused, _logits(hive, "off", AGENTS, gates, levels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("agents", [AGENTS, ["bob"] * 4, ["cyd"]])
def test_fused_gradients_equal_reference_fp32(tokenizer, device, agents):
    hive = _hive(tokenizer, device)
    fused, ref = _grads(hive, "on", agents), _grads(hive, "off", agents)
    assert fused.keys() == ref.keys() and fused
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_gradients_keep_gates_and_mix(tokenizer, device):
    hive = _hive(tokenizer, device)
    hive.core.mix["domain"], hive.core.states["agent"].mix = 0.5, 1.5
    gates = {"context": torch.tensor([1.0, 0.0, 0.5, 2.0], device=device), "swarm": torch.tensor([0.0, 1.0, 1.0, 0.3], device=device)}
    fused, ref = _grads(hive, "on", AGENTS, gates), _grads(hive, "off", AGENTS, gates)
    assert fused.keys() == ref.keys() and fused
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_learning_moves_only_used_slots(tokenizer, device):
    hive = _hive(tokenizer, device)
    before = {k: p.detach()[1].clone() for k, p in hive.core.level_params("agent").items()}  # bob
    with use_fused("on"):
        hive.learn({"ann": [("The capital of France is", " Paris")], "cyd": [("great", " positive")]}, steps=2)
    for k, p in hive.core.level_params("agent").items():
        assert torch.equal(before[k], p.detach()[1]), k


@pytest.mark.parametrize("device", DEVICES)
def test_fused_runs_a_level_scoped_to_later_modules(tokenizer, device):
    """A level wrapping only some modules (a stage's scope) runs where it has banks, not only where the first module does."""
    levels = list(small_stack().levels)
    scoped = levels[2].model_copy(update={"name": "late", "targets": ("v_proj", "down_proj"), "blocks": (1,)})
    hive = Hive(make_model(len(tokenizer)).to(device), tokenizer, StackSpec(levels=(*levels, scoped)), seed=0)
    hive.add_agents(["ann", "bob", "cyd"])
    randomize_b(hive, scale=0.2)
    without = _logits(hive, "on", AGENTS, levels=[lv.name for lv in levels])
    fused = _logits(hive, "on", AGENTS)
    torch.testing.assert_close(fused, _logits(hive, "off", AGENTS), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused, without)
    grads = _grads(hive, "on", AGENTS)
    assert {k for k in grads if k.startswith("late.")} == {f"late.{k}" for k in hive.core.level_params("late")}


def test_fresh_fused_hive_is_bit_identical_to_bare_model(tokenizer):
    bare = make_model(len(tokenizer))
    batch = pack_prompts(tokenizer, PROMPTS, 128)
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack())
    hive.add_agents(["a", "b"])
    with use_fused("on"):
        got = hive.logits(PROMPTS, ["a", "b", "a", "b"])
    assert torch.equal(got, last_logits(bare, batch))


def test_use_fused_rejects_unknown_modes():
    with pytest.raises(ValueError, match="fused mode"), use_fused("always"):  # type: ignore[arg-type]
        pass


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("agents", [AGENTS, ["bob"] * 4])
def test_fused_bf16_is_as_accurate_as_reference_bf16(tokenizer, agents):
    exact = _logits(_hive(tokenizer, "cuda"), "off", agents)  # same weights in fp32
    hive = _hive(tokenizer, "cuda", torch.bfloat16)
    fused, ref = _logits(hive, "auto", agents), _logits(hive, "off", agents)
    fused_err = float((fused - exact).norm() / exact.norm())
    ref_err = float((ref - exact).norm() / exact.norm())
    assert torch.isfinite(fused).all()
    assert fused_err <= 1.25 * ref_err + 1e-3, (fused_err, ref_err)


@pytest.mark.gpu
@requires_cuda
def test_gpu_generation_of_a_mixed_batch_equals_rows_alone(tokenizer):
    hive = _hive(tokenizer, "cuda")
    agents = ["ann", "bob", "cyd"]
    mixed = hive.generate(PROMPTS[:3], agents, max_new_tokens=8)
    alone = [hive.generate([p], [a], max_new_tokens=8)[0] for p, a in zip(PROMPTS[:3], agents, strict=True)]
    with use_fused("off"):
        reference = hive.generate(PROMPTS[:3], agents, max_new_tokens=8)
    assert mixed == alone == reference


@pytest.mark.gpu
@requires_cuda
def test_fresh_hive_on_gpu_is_bit_identical_to_bare_model(tokenizer):
    bare = make_model(len(tokenizer)).cuda()
    batch = pack_prompts(tokenizer, PROMPTS, 128).to("cuda")
    hive = Hive(make_model(len(tokenizer)).cuda(), tokenizer, small_stack())
    hive.add_agents(["a", "b"])
    assert torch.equal(hive.logits(PROMPTS, ["a", "b", "a", "b"]), last_logits(bare, batch))
