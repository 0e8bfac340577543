"""GPU speed of the per-slot optimizer alone: the fused ``SlotAdamW`` against the per-tensor loop it replaced.

    PYTHONPATH=src python benchmarks/gpu/optim.py --agents 8 64

The four trainable levels of the default stack on Qwen2.5-0.5B's 168 wrapped projections
(domain r32 and swarm r16 with one slot; agent r8 and context r4 with one slot per agent),
fp32 banks with random gradients; one step updates every level, all agents' slots
(contiguous), and once more with every other agent's slot (scattered runs). Prints the
median step time of both optimizers and the largest difference of their results.
"""

from __future__ import annotations

import argparse

import torch
from common import emit, median_ms
from torch import nn

from lorahive.learning import SlotAdamW

LAYERS = 24
PROJ = {"q": (896, 896), "k": (896, 128), "v": (896, 128), "o": (896, 896), "gate": (896, 4864), "up": (896, 4864), "down": (4864, 896)}
LEVELS = {"domain": 32, "swarm": 16, "agent": 8, "context": 4}


class LoopSlotAdamW:
    """The per-tensor gather / update / scatter AdamW that ``SlotAdamW`` used to be (the baseline)."""

    def __init__(self, lr: float, weight_decay: float) -> None:
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, (0.9, 0.999), 1e-8
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, params: dict[str, nn.Parameter], slots: torch.Tensor) -> None:
        b1, b2 = self.betas
        for i, p in params.items():
            st = self.state.setdefault(i, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": torch.zeros(p.shape[0], dtype=torch.long, device=p.device)})
            g = p.grad[slots]  # type: ignore[index]
            st["step"][slots] += 1
            t = st["step"][slots].to(p.dtype).view(-1, *([1] * (p.dim() - 1)))
            m = st["exp_avg"][slots].mul_(b1).add_(g, alpha=1 - b1)
            v = st["exp_avg_sq"][slots].mul_(b2).addcmul_(g, g, value=1 - b2)
            st["exp_avg"][slots], st["exp_avg_sq"][slots] = m, v
            w = p.data[slots] * (1 - self.lr * self.wd)
            p.data[slots] = w - self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps)


def level_params(rank: int, slots: int, gen: torch.Generator) -> dict[str, nn.Parameter]:
    params = {}
    for layer in range(LAYERS):
        for name, (fan_in, fan_out) in PROJ.items():
            for key, shape in (("A", (slots, rank, fan_in)), ("B", (slots, fan_out, rank))):
                p = nn.Parameter(torch.randn(shape, device="cuda", generator=gen) * 0.02)
                p.grad = torch.randn(shape, device="cuda", generator=gen)
                params[f"{layer}.{name}.{key}"] = p
    return params


def bench(k: int, gen: torch.Generator) -> None:
    """Both optimizers on K agents' banks, contiguous and scattered slots."""
    levels = {lv: level_params(r, 1 if lv in ("domain", "swarm") else k, gen) for lv, r in LEVELS.items()}
    twins = {lv: {n: nn.Parameter(p.detach().clone()) for n, p in ps.items()} for lv, ps in levels.items()}
    for lv, ps in twins.items():
        for n, p in ps.items():
            p.grad = levels[lv][n].grad
    for pattern, used in (("contiguous", torch.arange(k)), ("every_other", torch.arange(0, k, 2))):
        used = used.cuda()
        for lv, ps in twins.items():
            for n, p in ps.items():
                p.data.copy_(levels[lv][n].data)
        one = torch.zeros(1, dtype=torch.long, device="cuda")
        fused = {lv: SlotAdamW(lr=1e-3, weight_decay=0.01) for lv in LEVELS}
        loop = {lv: LoopSlotAdamW(lr=1e-3, weight_decay=0.01) for lv in LEVELS}

        def run(opts, banks, used=used, one=one) -> None:
            for lv, opt in opts.items():
                opt.step(banks[lv], one if lv in ("domain", "swarm") else used)

        run(fused, levels), run(loop, twins)
        diff = max(float((levels[lv][n].data - twins[lv][n].data).abs().max()) for lv in LEVELS for n in levels[lv])
        f = median_ms(lambda fused=fused, run=run: run(fused, levels), warmup=2, reps=7)
        o = median_ms(lambda loop=loop, run=run: run(loop, twins), warmup=1, reps=3)
        n_params = sum(p.numel() for ps in levels.values() for p in ps.values())
        emit(figure="optimizer_step", K=k, slots=pattern, tensors=sum(len(ps) for ps in levels.values()), params_M=n_params / 1e6, fused_ms=f, loop_ms=o, speedup=o / f, max_abs_diff_after_first_step=diff)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, nargs="+", default=[8, 64])
    args = ap.parse_args()
    print(f"# optimizer step on {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for k in args.agents:
        bench(k, gen)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
