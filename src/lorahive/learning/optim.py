"""Per-slot AdamW: only the slots a step used move, and only their optimizer state changes.

torch optimizers keep one state per tensor, so a slot that no row used would still move
(momentum, weight decay) and its step count would advance. Here every slot has its own
moments and its own step count, and an update touches only the given slots (the row-sparse
"lazy Adam" rule), which is what DESIGN.md invariant 3 asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SlotAdamW:
    """AdamW over parameters whose first dimension is the slot."""

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
        elif st["step"].shape[0] < n:  # the bank grew: new slots start with empty state
            extra = n - st["step"].shape[0]
            for k in ("exp_avg", "exp_avg_sq"):
                st[k] = torch.cat([st[k], torch.zeros(extra, *p.shape[1:], device=p.device, dtype=p.dtype)])
            st["step"] = torch.cat([st["step"], torch.zeros(extra, dtype=torch.long, device=p.device)])
        return st

    @torch.no_grad()
    def step(self, params: dict[str, nn.Parameter], slots: torch.Tensor, lr: float | None = None) -> None:
        """Update ``slots`` (1-D long tensor of slot indices) of every named parameter with a grad.

        Parameters are passed by name at each step because banks are re-allocated when they grow.
        """
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        for i, p in params.items():
            if p.grad is None:
                continue
            st = self._state(i, p)
            idx = slots.to(p.device)
            g = p.grad[idx]
            st["step"][idx] += 1
            t = st["step"][idx].to(p.dtype).view(-1, *([1] * (p.dim() - 1)))
            m = st["exp_avg"][idx].mul_(b1).add_(g, alpha=1 - b1)
            v = st["exp_avg_sq"][idx].mul_(b2).addcmul_(g, g, value=1 - b2)
            st["exp_avg"][idx], st["exp_avg_sq"][idx] = m, v
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            w = p.data[idx]
            if self.weight_decay:
                w = w * (1 - lr * self.weight_decay)
            p.data[idx] = w - lr * m_hat / (v_hat.sqrt() + self.eps)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{i}:{k}": v for i, st in self.state.items() for k, v in st.items()}

    def load_state_dict(self, flat: dict[str, torch.Tensor]) -> None:
        self.state = {}
        for key, v in flat.items():
            i, k = key.rsplit(":", 1)
            self.state.setdefault(i, {})[k] = v.clone()
