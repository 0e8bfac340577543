"""Per-slot AdamW: only the slots a step used move, and only their optimizer state changes.

torch optimizers keep one state per tensor, so a slot that no row used would still move
(momentum, weight decay) and its step count would advance. Here every slot has its own
moments and its own step count, and an update touches only the given slots (the row-sparse
"lazy Adam" rule), which is what DESIGN.md invariant 3 asks for.

Speed: the used slots of a slot-first tensor are a few contiguous runs, and a run whose
slots share a step count is one AdamW problem with scalar bias corrections. So a step cuts
every parameter, gradient and moment into views of those runs (one ``split`` each, no copy)
and updates all of them at once with torch's fused multi-tensor AdamW kernel — a handful of
launches per level instead of ~15 per parameter. Slots outside the runs are never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

Run = tuple[int, int, int]  # [start, stop) of consecutive used slots, and their step count before this step


def slot_runs(slots: list[int], steps: list[int]) -> list[Run]:
    """Runs of consecutive slots with equal step counts; ``slots`` sorted, unique, ``steps`` aligned."""
    runs: list[Run] = []
    for s, t in zip(slots, steps, strict=True):
        if runs and runs[-1][1] == s and runs[-1][2] == t:
            runs[-1] = (runs[-1][0], s + 1, t)
        else:
            runs.append((s, s + 1, t))
    return runs


def split_sizes(runs: list[Run], n: int) -> list[int]:
    """Sizes that cut ``n`` slots into gap, run, gap, run, …, gap: the runs are chunks ``1::2``."""
    sizes, at = [], 0
    for start, stop, _ in runs:
        sizes += [start - at, stop - start]
        at = stop
    return sizes + [n - at]


@dataclass
class SlotAdamW:
    """AdamW over parameters whose first dimension is the slot.

    ``state[name]`` holds ``exp_avg`` and ``exp_avg_sq`` shaped like the parameter and
    ``step``, one long count per slot; callers may zero a slot's entries to reset it.
    """

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def _state(self, i: str, p: nn.Parameter) -> dict[str, torch.Tensor]:
        st = self.state.get(i)
        n = p.shape[0]
        if st is None:
            st = {
                "exp_avg": torch.zeros_like(p.data),
                "exp_avg_sq": torch.zeros_like(p.data),
                "step": torch.zeros(n, dtype=torch.long, device=p.device),
            }
            self.state[i] = st
        if st["step"].device != p.device:  # e.g. state loaded from a checkpoint on the CPU
            st = self.state[i] = {k: v.to(p.device) for k, v in st.items()}
        if st["step"].shape[0] < n:  # the bank grew: new slots start with empty state
            extra = n - st["step"].shape[0]
            for k in ("exp_avg", "exp_avg_sq"):
                st[k] = torch.cat([st[k], torch.zeros(extra, *p.shape[1:], device=p.device, dtype=p.dtype)])
            st["step"] = torch.cat([st["step"], torch.zeros(extra, dtype=torch.long, device=p.device)])
        return st

    @torch.no_grad()
    def step(self, params: dict[str, nn.Parameter], slots: torch.Tensor, lr: float | None = None) -> None:
        """Update ``slots`` (1-D long tensor of slot indices) of every named parameter with a grad.

        Parameters are passed by name at each step because banks are re-allocated when they grow.
        A slot listed twice is updated once.
        """
        live = [(p, self._state(i, p)) for i, p in params.items() if p.grad is not None]
        used = sorted({int(s) for s in slots.tolist()})
        if not live or not used:
            return
        groups: dict[tuple[torch.device, torch.dtype], list[tuple[nn.Parameter, dict[str, torch.Tensor]]]] = {}
        for p, st in live:
            groups.setdefault((p.device, p.dtype), []).append((p, st))
        for group in groups.values():
            self._step_group(group, used, self.lr if lr is None else lr)

    def _step_group(self, group: list[tuple[nn.Parameter, dict[str, torch.Tensor]]], used: list[int], lr: float) -> None:
        """One fused AdamW over the used runs of parameters that share a device and dtype."""
        device = group[0][0].device
        steps = self._used_steps([st["step"] for _, st in group], used)  # one device → host copy
        plans: dict[tuple[int, ...], tuple[list[Run], list[torch.Tensor]]] = {}
        params, grads, avgs, avg_sqs, counts, step_views = [], [], [], [], [], []
        for (p, st), row in zip(group, steps, strict=True):
            key = tuple(row)
            if key not in plans:
                runs = slot_runs(used, row)
                t = torch.tensor([r[2] + 1 for r in runs], dtype=torch.float32, device=device)
                plans[key] = runs, list(t.unbind(0))
            runs, new_counts = plans[key]
            sizes = split_sizes(runs, p.shape[0])
            params += p.detach().split(sizes)[1::2]
            assert p.grad is not None
            grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
            grads += grad.split(sizes)[1::2]
            avgs += st["exp_avg"].split(sizes)[1::2]
            avg_sqs += st["exp_avg_sq"].split(sizes)[1::2]
            step_views += st["step"].split(sizes)[1::2]
            counts += new_counts
        b1, b2 = self.betas
        torch._fused_adamw_(
            params, grads, avgs, avg_sqs, [], counts,
            lr=lr, beta1=b1, beta2=b2, weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False,
        )  # fmt: skip
        torch._foreach_add_(step_views, 1)

    @staticmethod
    def _used_steps(steps: list[torch.Tensor], used: list[int]) -> list[list[int]]:
        """Each tensor's step counts at the ``used`` slots, gathered in one kernel."""
        offsets = torch.tensor([0] + [s.shape[0] for s in steps[:-1]]).cumsum(0)  # (N,)
        flat = (offsets[:, None] + torch.tensor(used)[None, :]).view(-1)  # (N·k,)
        picked = torch.cat(steps).index_select(0, flat.to(steps[0].device))
        return picked.view(len(steps), len(used)).tolist()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{i}:{k}": v for i, st in self.state.items() for k, v in st.items()}

    def load_state_dict(self, flat: dict[str, torch.Tensor]) -> None:
        self.state = {}
        for key, v in flat.items():
            i, k = key.rsplit(":", 1)
            self.state.setdefault(i, {})[k] = v.clone()
