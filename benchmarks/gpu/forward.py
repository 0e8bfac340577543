"""GPU forward and generation speed of a 5-level hive against the bare model and PEFT.

    PYTHONPATH=src python benchmarks/gpu/forward.py --arch qwen2.5-0.5b --agents 1 8 64 256

Prints, as each is measured:
  R1  5-level forward tokens/s ÷ bare model (same batch)
  R2  K distinct agents ÷ all rows on one agent (same batch)
  R1 merged  the same with the shared levels folded into the weights (adapters/merge.py), only the per-agent terms live
  R1 captured  the live forward recorded once as a CUDA graph and replayed (core/captured.py)
  R1 captured merged  the same graph over merged shared levels, only the per-agent terms live
  R1 captured gathered  where the captured forward ran a small fleet's per-row levels densely (adapters/dense.py):
              the same graph with them gathered per row, side by side (--fleet N sets the agents the banks hold)
  R3  mixed-agent generation tokens/s ÷ bare model generation
  R3 captured (merged)  the same greedy decoding over a static KV cache, each step one CUDA graph replay;
              ratio_vs_bare_captured sets it beside the bare model decoded the same way (every level off), the fair limit
  R6  fused path ÷ the reference (unfused) path on the GPU, speed-up and output difference
and beside them the largest difference of last-position logits between the hive and the
same agent exported to one exact PEFT LoRA adapter (rank = sum of the level ranks).

Batches: 64 rows × 128 tokens for K ≤ 64; 256 rows × 32 tokens (the same 8,192 tokens) for
K = 256, since K distinct agents need K rows. Generation: one prompt of 64 tokens per row
(64 rows, or K rows for K > 64) and 32 new tokens, greedy, KV cache. The forward computes
logits at the last position only (``logits_to_keep=1``), as the hive's own scoring does.
"""

from __future__ import annotations

import argparse

import torch
from common import (
    build,
    emit,
    export_agent,
    median_ms,
    random_ids,
    randomize_b,
    twin_of,
    unwrap,
    word_tokenizer,
)

from lorahive import Hive, default_levels
from lorahive.adapters import fused as fused_path
from lorahive.adapters.fused import use_fused
from lorahive.core import CapturedDecode, CapturedForward

NEW_TOKENS, PROMPT = 32, 64


def shape_for(k: int) -> tuple[int, int]:
    return (64, 128) if k <= 64 else (k, 8192 // k)


def forward_fn(model, ids: torch.Tensor, hive: Hive | None = None, agents: list[str] | None = None, all_logits: bool = False):
    """One forward; the hive gets a fresh routing per call, as ``Hive.logits`` does."""
    mask = torch.ones_like(ids)
    keep = 0 if all_logits else 1

    def run() -> torch.Tensor:
        with torch.no_grad():
            if hive is None:
                return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            with hive.core.routing.use(hive.core.route(agents or [])):
                return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits

    return run


def generate_fn(model, ids: torch.Tensor, hive: Hive | None = None, agents: list[str] | None = None):
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)

    def run() -> torch.Tensor:
        with torch.no_grad():
            if hive is None:
                return model.generate(input_ids=ids, attention_mask=mask, **kw)
            with hive.core.routing.use(hive.core.route(agents or [])):
                return model.generate(input_ids=ids, attention_mask=mask, **kw)

    return run


def peft_difference(hive: Hive, twin, arch: str) -> tuple[float, float, object]:
    """Max |Δ logit| hive vs PEFT export of agent a0, and max |Δ logit| hive vs bare (the effect)."""
    ids = random_ids(8, 128, seed=7)
    bare = forward_fn(twin, ids)()
    ours = forward_fn(hive.model, ids, hive, ["a0"] * 8)()
    peft = export_agent(twin, hive, "a0", "a0")
    theirs = forward_fn(unwrap(peft), ids)()
    diff = float((ours.float() - theirs.float()).abs().max())
    effect = float((ours.float() - bare.float()).abs().max())
    emit(arch=arch, figure="hive_vs_peft_logits", max_abs_diff=diff, adapter_effect=effect, logit_absmax=float(theirs.float().abs().max()))
    return diff, effect, peft


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--fleet", type=int, default=None, help="agents the banks hold (default: the largest K); ≤ 21 runs the per-row levels densely")
    args = ap.parse_args()
    arch, ks, reps = args.arch, args.agents, args.reps
    fleet = args.fleet or max(ks)
    if fleet < max(ks):
        ap.error(f"--fleet {fleet} must be at least the largest --agents ({max(ks)})")
    print(f"# {arch} on {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    model = build(arch)
    twin = twin_of(model, arch)
    base_fwd, base_gen, bare_cap = {}, {}, {}
    for shape in sorted({shape_for(k) for k in ks}):
        ids = random_ids(*shape)
        base_fwd[shape] = median_ms(forward_fn(twin, ids), reps=reps)
        full = median_ms(forward_fn(twin, ids, all_logits=True), reps=reps)
        emit(arch=arch, figure="bare_forward", rows=shape[0], tokens=shape[1], ms=base_fwd[shape], tok_s=shape[0] * shape[1] / base_fwd[shape] * 1e3, ms_all_logits=full)
        rows = shape[0]
        base_gen[rows] = median_ms(generate_fn(twin, random_ids(rows, PROMPT, seed=3)), warmup=1, reps=3)
        emit(arch=arch, figure="bare_generate", rows=rows, new_tokens=NEW_TOKENS, ms=base_gen[rows], tok_s=rows * NEW_TOKENS / base_gen[rows] * 1e3)
    hive = Hive(model, word_tokenizer(), default_levels())
    hive.add_agents([f"a{i}" for i in range(fleet)])
    randomize_b(hive)
    diff, effect, peft = peft_difference(hive, twin, arch)
    ids = random_ids(*shape_for(1))
    p_ms = median_ms(forward_fn(unwrap(peft), ids), reps=reps)
    emit(arch=arch, figure="peft_export_forward", rank=124, ms=p_ms, ratio_vs_bare=base_fwd[shape_for(1)] / p_ms)
    del peft, twin
    torch.cuda.empty_cache()
    for k in ks:
        shape = shape_for(k)
        rows = shape[0]
        ids = random_ids(*shape)
        mixed = [f"a{i % k}" for i in range(rows)]
        fused = median_ms(forward_fn(model, ids, hive, mixed), reps=reps)
        emit(arch=arch, figure="R1", K=k, rows=rows, tokens=shape[1], ms=fused, ratio=base_fwd[shape] / fused, target=">=0.90 (0.5B) / >=0.97 (8B)", peft_diff=diff)
        try:  # the same forward recorded once as a CUDA graph and replayed (core/captured.py)
            cap = CapturedForward(hive.core, rows, shape[1])
            captured = median_ms(lambda cap=cap, ids=ids, mixed=mixed: cap(ids, mixed, clone=False), reps=reps)
            cap_diff = float((cap(ids, mixed).float() - forward_fn(model, ids, hive, mixed)().float()).abs().max())
            dense = any(layer.pooled is not None and layer.pooled.dense for layer in hive.core.layers.values())
            emit(arch=arch, figure="R1 captured", K=k, rows=rows, ms=captured, ratio=base_fwd[shape] / captured, ms_live=fused, target=">=0.80 live",
                 captured_vs_live_max_abs=cap_diff, adapter_effect=effect, captures=cap.captures, dense=dense)  # fmt: skip
            del cap
            if dense:  # the same graph with the per-row levels gathered per row instead
                limit, fused_path.DENSE_COLUMNS = fused_path.DENSE_COLUMNS, 0
                try:
                    cap = CapturedForward(hive.core, rows, shape[1])
                    gathered = median_ms(lambda cap=cap, ids=ids, mixed=mixed: cap(ids, mixed, clone=False), reps=reps)
                    emit(arch=arch, figure="R1 captured gathered", K=k, rows=rows, ms=gathered, ratio=base_fwd[shape] / gathered, dense_ms=captured, dense_speedup=gathered / captured)
                    del cap
                finally:
                    fused_path.DENSE_COLUMNS = limit
        except Exception as e:  # a capture that fails is a figure too; the rest of the benchmark goes on
            emit(arch=arch, figure="R1 captured", K=k, error=f"{type(e).__name__}: {e}"[:400])
        try:  # captured, with the shared levels folded into the weights: only the per-agent terms in the graph
            cap = CapturedForward(hive.core, rows, shape[1], merged=True)
            captured_m = median_ms(lambda cap=cap, ids=ids, mixed=mixed: cap(ids, mixed, clone=False), reps=reps)
            cap_diff = float((cap(ids, mixed).float() - forward_fn(model, ids, hive, mixed)().float()).abs().max())
            emit(arch=arch, figure="R1 captured merged", K=k, rows=rows, ms=captured_m, ratio=base_fwd[shape] / captured_m, ms_live=fused, target=">=0.95 merged",
                 captured_vs_live_max_abs=cap_diff, adapter_effect=effect, captures=cap.captures)  # fmt: skip
            del cap
        except Exception as e:
            emit(arch=arch, figure="R1 captured merged", K=k, error=f"{type(e).__name__}: {e}"[:400])
        with hive.core.routing.merging():  # the shared levels folded into the weights (adapters/merge.py)
            merged = median_ms(forward_fn(model, ids, hive, mixed), reps=reps)
            merged_out = forward_fn(model, ids[:8], hive, mixed[:8])()
        live_out = forward_fn(model, ids[:8], hive, mixed[:8])()
        emit(arch=arch, figure="R1 merged", K=k, rows=rows, ms=merged, ratio=base_fwd[shape] / merged, ms_live=fused, target=">=0.95",
             merged_vs_live_max_abs=float((merged_out.float() - live_out.float()).abs().max()), adapter_effect=effect)  # fmt: skip
        one = median_ms(forward_fn(model, ids, hive, ["a0"] * rows), reps=reps)
        emit(arch=arch, figure="R2", K=k, ms_one_agent=one, ms_k_agents=fused, ratio=one / fused, target=">=0.95", peft_diff=diff)
        with use_fused("off"):
            ref = median_ms(forward_fn(model, ids, hive, mixed), warmup=1, reps=max(3, reps // 2))
            ref_out = forward_fn(model, ids[:8], hive, mixed[:8])()
        out = forward_fn(model, ids[:8], hive, mixed[:8])()
        emit(arch=arch, figure="R6", K=k, ms_fused=fused, ms_reference=ref, speedup=ref / fused, fused_vs_ref_max_abs=float((out.float() - ref_out.float()).abs().max()), adapter_effect=effect)
        gen_ids = random_ids(rows, PROMPT, seed=3)
        g = median_ms(generate_fn(model, gen_ids, hive, mixed), warmup=1, reps=3)
        emit(arch=arch, figure="R3", K=k, rows=rows, ms=g, tok_s=rows * NEW_TOKENS / g * 1e3, ratio=base_gen[rows] / g, target=">=0.90", peft_diff=diff)
        live_tokens = generate_fn(model, gen_ids, hive, mixed)()[:, PROMPT:]
        if rows not in bare_cap:  # the bare model's own captured decoding: every level off, the same graph and cache
            try:
                dec = CapturedDecode(hive.core, rows, PROMPT, NEW_TOKENS, levels=False)
                bare_cap[rows] = median_ms(lambda dec=dec, gen_ids=gen_ids, mixed=mixed: dec(gen_ids, mixed), warmup=1, reps=3)
                emit(arch=arch, figure="bare_generate captured", rows=rows, new_tokens=NEW_TOKENS, ms=bare_cap[rows], vs_generate=base_gen[rows] / bare_cap[rows])
                del dec
            except Exception as e:
                emit(arch=arch, figure="bare_generate captured", rows=rows, error=f"{type(e).__name__}: {e}"[:400])
        for merged_levels in (False, True):  # every decode step one CUDA graph replay (core/captured_decode.py)
            name = "R3 captured merged" if merged_levels else "R3 captured"
            try:
                dec = CapturedDecode(hive.core, rows, PROMPT, NEW_TOKENS, merged=merged_levels)
                g_cap = median_ms(lambda dec=dec, gen_ids=gen_ids, mixed=mixed: dec(gen_ids, mixed), warmup=1, reps=3)
                agree = float((dec(gen_ids, mixed) == live_tokens).float().mean())
                vs_bare_captured = bare_cap[rows] / g_cap if rows in bare_cap else "n/a"
                emit(arch=arch, figure=name, K=k, rows=rows, ms=g_cap, tok_s=rows * NEW_TOKENS / g_cap * 1e3, ratio=base_gen[rows] / g_cap, ratio_vs_bare_captured=vs_bare_captured, ms_live=g,
                     target=">=0.80 (K=8) / >=0.45 (K=64)", tokens_as_generate=agree, captures=dec.captures)  # fmt: skip
                del dec
            except Exception as e:
                emit(arch=arch, figure=name, K=k, error=f"{type(e).__name__}: {e}"[:400])
    print(f"# peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
