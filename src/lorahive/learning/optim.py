"""Per-slot AdamW: only the slots a step used move, and only their optimizer state changes.

torch optimizers keep one state per tensor, so a slot that no row used would still move
(momentum, weight decay) and its step count would advance. Here every slot has its own
moments and its own step count, and an update touches only the given slots (the row-sparse
"lazy Adam" rule), which is what DESIGN.md invariant 3 asks for.

Speed: the used slots of a slot-first tensor are usually a few contiguous runs (often the
whole tensor), and slots that share a step count are one AdamW problem with scalar bias
corrections. So a step cuts every parameter, gradient and moment into views of those runs
(no copy; slots scattered over many runs are gathered into copies and scattered back) and
updates all of them at once with torch's fused multi-tensor AdamW kernel — a handful of
launches per level instead of ~15 per parameter. Slots outside the runs are never written.

``host=True`` keeps the moments on the host instead (learning/paged.py), rows only for slots
that trained: a step gathers its slots' weights, gradients and moments into contiguous copies
on the device, runs the same kernel on them and scatters them back, so the update is the one
the resident state makes, bit for bit.

A gradient may be slot-shaped or, under ``MemorySpec.slot_grads``, sparse over the slots its
rows used; the step compacts a sparse one to its slots and cuts the same pieces from it
(learning/step_grads.py), so the update is the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.graph import increment_version

from lorahive.learning.paged import HostMoments
from lorahive.learning.step_grads import StepGrads
from lorahive.tensors import to_device

MAX_RUNS = 8  # a step count's slots in more runs than this are gathered into copies, not cut into views
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


@dataclass
class SlotAdamW:
    """AdamW over parameters whose first dimension is the slot.

    ``state[name]`` holds ``exp_avg`` and ``exp_avg_sq`` shaped like the parameter and
    ``step``, one long count per slot. The step counts are mirrored on the host, so planning
    a step never reads the device; :meth:`reset` is the only way to clear a slot's state.
    With ``host`` the moments live in :attr:`pages` instead (``state`` stays empty) and the
    host's step counts are the only ones; read moments through :meth:`moment` and
    :meth:`moment_rows`, which serve either layout.
    """

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    host_steps: dict[str, list[int]] = field(default_factory=dict)
    host: bool = False  # moments on the host, rows for slots that trained (learning/paged.py)
    host_dtype: torch.dtype | None = None  # the host rows' dtype (bfloat16: half the bytes, rounded every step); None: the parameters'
    pages: HostMoments = field(default_factory=HostMoments)

    def __post_init__(self) -> None:
        self.pages.dtype = self.host_dtype

    def _state(self, i: str, p: nn.Parameter) -> dict[str, torch.Tensor]:
        if self.host:
            self.pages.add(i, p.shape[1:], p.dtype, pin=p.device.type == "cuda")
            steps = self.host_steps.setdefault(i, [])
            steps.extend([0] * (p.shape[0] - len(steps)))
            return {}
        st = self.state.get(i)
        n = p.shape[0]
        if st is None:
            st = {
                "exp_avg": torch.zeros_like(p.data),
                "exp_avg_sq": torch.zeros_like(p.data),
                "step": torch.zeros(n, dtype=torch.long, device=p.device),
            }
            self.state[i] = st
            self.host_steps[i] = [0] * n
        if st["step"].device != p.device:  # e.g. state loaded from a checkpoint on the CPU
            st = self.state[i] = {k: v.to(p.device) for k, v in st.items()}
        if st["step"].shape[0] < n:  # the bank grew: new slots start with empty state
            extra = n - st["step"].shape[0]
            for k in ("exp_avg", "exp_avg_sq"):
                st[k] = torch.cat([st[k], torch.zeros(extra, *p.shape[1:], device=p.device, dtype=p.dtype)])
            st["step"] = torch.cat([st["step"], torch.zeros(extra, dtype=torch.long, device=p.device)])
            self.host_steps[i] = self.host_steps[i] + [0] * extra
        return st

    @torch.no_grad()
    def step(self, params: dict[str, nn.Parameter], slots: Sequence[int] | torch.Tensor, lr: float | None = None, found_inf: torch.Tensor | None = None) -> None:
        """Update ``slots`` (slot indices, best a host list) of every named parameter with a grad.

        Parameters are passed by name at each step because banks are re-allocated when they grow.
        A slot listed twice is updated once. ``found_inf`` (a one-element float tensor on the
        parameters' device) leaves weights and moments as they were when non-zero, decided on
        the device without reading it back; the step counts advance either way, so the host's
        copy of them stays exact.
        """
        live = [(i, p, self._state(i, p)) for i, p in params.items() if p.grad is not None]
        used = sorted({int(s) for s in (slots.tolist() if isinstance(slots, torch.Tensor) else slots)})
        if not live or not used:
            return
        groups: dict[tuple[torch.device, torch.dtype], list[tuple[str, nn.Parameter, dict[str, torch.Tensor]]]] = {}
        for i, p, st in live:
            groups.setdefault((p.device, p.dtype), []).append((i, p, st))
        grads = StepGrads(used)
        for group in groups.values():
            (self._step_host if self.host else self._step_group)(group, grads, self.lr if lr is None else lr, found_inf)

    def _step_host(self, group: list[tuple[str, nn.Parameter, dict[str, torch.Tensor]]], grads: StepGrads, lr: float, found_inf: torch.Tensor | None) -> None:
        """:meth:`_step_group` with the moments on the host, brought to the device for the pieces the resident step cuts.

        The pieces (a run of slots, or a step count's gathered slots) are those :meth:`_plan` gives
        the resident step, each one tensor, so the kernel meets every element at the same place in
        the same-sized tensor (its CPU version computes a tensor's tail apart from its vectorised
        body) and the update is the resident one bit for bit.
        """
        device, used = group[0][1].device, grads.used
        plans: dict[tuple[int, ...], list[tuple[torch.Tensor, list[Run], torch.Tensor | None]]] = {}
        counts: dict[int, torch.Tensor] = {}
        lists: list[list[torch.Tensor]] = [[], [], [], [], []]  # params, grads, m, v, step counts
        back: list[tuple[torch.Tensor, torch.Tensor | None, str, torch.Tensor]] = []  # weight, its index if copied, name, moment rows
        self.pages.index(used)  # rows for slots stepping for the first time, before any gather
        index: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        for name, p, _ in group:
            plan = self._advance(name, used, plans, counts, device)
            assert p.grad is not None
            w = p.detach()
            g, compacted = grads.of(p.grad)
            for count, runs, idx in plan:
                pieces = [list(range(a, b)) for a, b, _ in runs] if idx is None else [[s for a, b, _ in runs for s in range(a, b)]]
                for slots in pieces:
                    if tuple(slots) not in index:
                        index[tuple(slots)] = (to_device(torch.tensor(slots), device), self.pages.index(slots))
                    at, rows = index[tuple(slots)]
                    if idx is None:  # a run: weight and gradient as views, as the resident step takes them
                        a, b = slots[0], slots[-1] + 1
                        whole = a == 0 and b == w.shape[0]
                        wp, gp = w if whole else w[a:b], grads.run(g, compacted, a, b, whole)
                    else:
                        wp, gp = w.index_select(0, at), grads.gather(g, compacted, at)
                    m, v = self.pages.gather(name, rows, device)
                    for lst, c in zip(lists, (wp, gp, m, v, count), strict=True):
                        lst.append(c)
                    back.append((w, at if idx is not None else None, name, rows))
        params, grad_parts, avgs, avg_sqs, steps = lists
        self._adamw(params, grad_parts, avgs, avg_sqs, steps, lr, found_inf)
        for (w, copied, name, rows), tw, tm, tv in zip(back, params, avgs, avg_sqs, strict=True):
            if copied is not None:
                w.index_copy_(0, copied, tw)
            self.pages.scatter(name, rows, tm, tv)
        for _, p, _ in group:  # views written by the fused kernel: bump the version counter, as the resident step does
            increment_version(p.detach())

    def _step_group(self, group: list[tuple[str, nn.Parameter, dict[str, torch.Tensor]]], grads: StepGrads, lr: float, found_inf: torch.Tensor | None) -> None:
        """One fused AdamW over the used slots of parameters that share a device and dtype."""
        device, used = group[0][1].device, grads.used
        plans: dict[tuple[int, ...], list[tuple[torch.Tensor, list[Run], torch.Tensor | None]]] = {}
        counts: dict[int, torch.Tensor] = {}
        views: list[list[torch.Tensor]] = [[], [], [], [], [], []]  # params, grads, m, v, new counts, step counts
        gathered: list[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, list[torch.Tensor], int]] = []
        for name, p, st in group:
            plan = self._advance(name, used, plans, counts, device)
            w = p.detach()
            assert p.grad is not None
            g, compacted = grads.of(p.grad)
            tensors = (w, st["exp_avg"], st["exp_avg_sq"], st["step"])
            for count, runs, idx in plan:
                if idx is None:  # a few runs: views, no copy
                    for start, stop, _ in runs:
                        whole = start == 0 and stop == w.shape[0]
                        w_, m_, v_, s_ = (t if whole else t[start:stop] for t in tensors)
                        g_ = grads.run(g, compacted, start, stop, whole)
                        for lst, view in zip(views, (w_, g_, m_, v_, count, s_), strict=True):
                            lst.append(view)
                else:  # many runs: gather into contiguous copies, scatter back after
                    w_, m_, v_ = (t.index_select(0, idx) for t in tensors[:3])
                    gathered.append((w, st, idx, [w_, grads.gather(g, compacted, idx), m_, v_], runs[0][2] + 1))
        params, grad_parts, avgs, avg_sqs, steps = views[:5]
        for *_, copies, new_count in gathered:
            for lst, c in zip((params, grad_parts, avgs, avg_sqs, steps), (*copies, counts[new_count]), strict=True):
                lst.append(c)
        self._adamw(params, grad_parts, avgs, avg_sqs, steps, lr, found_inf)
        if views[5]:
            torch._foreach_add_(views[5], 1)
        for _, p, _ in group:  # the fused kernel writes through views without bumping the version counter; caches keyed on it need it
            increment_version(p.detach())
        for w, st, idx, (tw, _, tm, tv), new_count in gathered:
            w.index_copy_(0, idx, tw)
            st["exp_avg"].index_copy_(0, idx, tm)
            st["exp_avg_sq"].index_copy_(0, idx, tv)
            st["step"].index_fill_(0, idx, new_count)

    def _adamw(self, params: list[torch.Tensor], grads: list[torch.Tensor], avgs: list[torch.Tensor], avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lr: float, found_inf: torch.Tensor | None) -> None:
        """torch's fused multi-tensor AdamW over the pieces, with this optimizer's settings."""
        b1, b2 = self.betas
        torch._fused_adamw_(
            params, grads, avgs, avg_sqs, [], steps,
            lr=lr, beta1=b1, beta2=b2, weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False,
            found_inf=found_inf,
        )  # fmt: skip

    def _advance(self, name: str, used: list[int], plans: dict[tuple[int, ...], list[tuple[torch.Tensor, list[Run], torch.Tensor | None]]], counts: dict[int, torch.Tensor], device: torch.device) -> list[tuple[torch.Tensor, list[Run], torch.Tensor | None]]:
        """Parameter ``name``'s plan for this step (shared by parameters whose used slots have the same counts); its host counts advance."""
        host = self.host_steps[name]
        key = tuple(host[s] for s in used)
        for s in used:
            host[s] += 1
        if key not in plans:
            plans[key] = self._plan(used, list(key), counts, device)
        return plans[key]

    @staticmethod
    def _plan(used: list[int], row: list[int], counts: dict[int, torch.Tensor], device: torch.device) -> list[tuple[torch.Tensor, list[Run], torch.Tensor | None]]:
        """Per step count among the used slots: its new count, its runs, and a gather index if the runs are many."""
        by_step: dict[int, list[int]] = {}
        for s, t in zip(used, row, strict=True):
            by_step.setdefault(t, []).append(s)
        plan = []
        for t, slots in by_step.items():
            if t + 1 not in counts:
                counts[t + 1] = torch.full((), float(t + 1), device=device)
            runs = slot_runs(slots, [t] * len(slots))
            idx = to_device(torch.tensor(slots), device) if len(runs) > MAX_RUNS else None
            plan.append((counts[t + 1], runs, idx))
        return plan

    def names(self) -> list[str]:
        """The parameters that have optimizer state, sorted."""
        return sorted(self.host_steps if self.host else self.state)

    def moment(self, name: str, key: str, device: torch.device | None = None) -> torch.Tensor:
        """Moment ``key`` (``exp_avg`` or ``exp_avg_sq``) of ``name``, slot-shaped (a copy made from the rows under ``host``)."""
        if not self.host:
            return self.state[name][key]
        full = self.pages.slot_rows(name, key, list(range(len(self.host_steps[name]))))
        return full if device is None else full.to(device)

    def moment_rows(self, name: str, key: str, slots: Sequence[int], index: torch.Tensor | None = None, device: torch.device | None = None) -> torch.Tensor:
        """Moment ``key`` of ``slots`` of ``name``, row ``i`` for ``slots[i]`` (on ``device``, default where it is kept).

        ``index``: the same slots on the device the resident state is on, when the caller has them.
        """
        if not self.host:
            t = self.state[name][key]
            idx = index if index is not None and index.device == t.device else to_device(torch.tensor(list(slots), dtype=torch.long), t.device)
            return t.index_select(0, idx)
        rows = self.pages.slot_rows(name, key, list(slots))
        return rows if device is None else rows.to(device)

    def device_of_state(self) -> torch.device:
        """Where the moments are kept: the host under ``host`` (or before any state exists), else the parameters' device."""
        if self.host or not self.state:
            return torch.device("cpu")
        return next(iter(self.state.values()))["step"].device

    def nbytes(self) -> dict[str, int]:
        """Bytes of optimizer state by where it is kept: ``{"device": …, "host": …}`` (step counts on the device included)."""
        if self.host:
            return {"device": 0, "host": self.pages.nbytes()}
        return {"device": sum(t.numel() * t.element_size() for st in self.state.values() for t in st.values()), "host": 0}

    def slot_state(self, slots: Sequence[int]) -> dict[str, torch.Tensor]:
        """The moments and step counts of ``slots`` (row ``i`` for ``slots[i]``), keyed ``<param>:<moment>``, on the CPU.

        What another process needs to take these slots over (:meth:`load_slot_state`).
        """
        if self.host:
            steps = {name: torch.tensor([self.host_steps[name][s] for s in slots], dtype=torch.long) for name in self.names()}
            return {
                f"{name}:{k}": steps[name] if k == "step" else self.pages.slot_rows(name, k, list(slots))
                for name in self.names() for k in ("exp_avg", "exp_avg_sq", "step")
            }  # fmt: skip
        idx = torch.tensor(list(slots), dtype=torch.long)
        return {f"{name}:{k}": v.detach().cpu().index_select(0, idx) for name, st in sorted(self.state.items()) for k, v in st.items()}

    @torch.no_grad()
    def load_slot_state(self, slots: Sequence[int], params: dict[str, nn.Parameter], rows: dict[str, torch.Tensor]) -> None:
        """Write :meth:`slot_state` rows back into ``slots``; the host's step counts follow."""
        for name in sorted({key.rpartition(":")[0] for key in rows}):
            st = self._state(name, params[name])
            if self.host:
                at = self.pages.index(list(slots))
                self.pages.scatter(name, at, rows[f"{name}:exp_avg"], rows[f"{name}:exp_avg_sq"])
                for s, t in zip(slots, rows[f"{name}:step"].tolist(), strict=True):
                    self.host_steps[name][s] = int(t)
                continue
            idx = to_device(torch.tensor(list(slots), dtype=torch.long), st["step"].device)
            for k in ("exp_avg", "exp_avg_sq", "step"):
                st[k].index_copy_(0, idx, rows[f"{name}:{k}"].to(st[k].device, st[k].dtype))
            host = self.host_steps[name]
            for s, t in zip(slots, rows[f"{name}:step"].tolist(), strict=True):
                host[s] = int(t)

    @torch.no_grad()
    def reset(self, slots: Sequence[int], index: torch.Tensor | None = None) -> None:
        """Clear the moments and step counts of ``slots`` in every parameter's state.

        ``index`` is the same slots as a device tensor, when the caller has one already.
        """
        if not slots:
            return
        if self.host:
            self.pages.zero(slots)
            for host in self.host_steps.values():
                for s in slots:
                    if s < len(host):
                        host[s] = 0
            return
        for name, st in self.state.items():
            idx = index if index is not None and index.device == st["step"].device else to_device(torch.tensor(list(slots)), st["step"].device)
            for k in ("exp_avg", "exp_avg_sq", "step"):
                st[k].index_fill_(0, idx, 0)
            host = self.host_steps[name]
            for s in slots:
                if s < len(host):
                    host[s] = 0

    def resync(self) -> None:
        """Read the step counts back from the device (after loading a state); under ``host`` they are the host's already."""
        if not self.host:
            self.host_steps = {name: [int(v) for v in st["step"].tolist()] for name, st in self.state.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``<param>:exp_avg|exp_avg_sq|step``, slot-shaped; under ``host`` up to the last slot that has a row."""
        if not self.host:
            return {f"{i}:{k}": v for i, st in self.state.items() for k, v in st.items()}
        if not self.pages.rows:
            return {}
        slots = list(range(max(self.pages.rows) + 1))
        return {key: v for key, v in self.slot_state(slots).items()}

    def load_state_dict(self, flat: dict[str, torch.Tensor]) -> None:
        if self.host:
            self._load_host(flat)
            return
        self.state = {}
        for key, v in flat.items():
            i, k = key.rsplit(":", 1)
            self.state.setdefault(i, {})[k] = v.clone()
        self.resync()

    def _load_host(self, flat: dict[str, torch.Tensor]) -> None:
        """:meth:`load_state_dict` under ``host``: rows for the slots that stepped or hold a moment."""
        self.pages, self.host_steps = HostMoments(self.host_dtype), {}
        names = sorted({key.rpartition(":")[0] for key in flat})
        live: set[int] = set()
        for name in names:
            m, v, steps = (flat[f"{name}:{k}"] for k in ("exp_avg", "exp_avg_sq", "step"))
            live.update(int(s) for s in (steps.ne(0) | m.flatten(1).ne(0).any(1) | v.flatten(1).ne(0).any(1)).nonzero().flatten().tolist())
        slots = sorted(live)
        for name in names:
            m, v = flat[f"{name}:exp_avg"], flat[f"{name}:exp_avg_sq"]
            self.pages.add(name, m.shape[1:], m.dtype, pin=True)
            self.host_steps[name] = [int(t) for t in flat[f"{name}:step"].tolist()]
            if slots:
                idx = torch.tensor(slots, dtype=torch.long)
                self.pages.scatter(name, self.pages.index(slots), m.index_select(0, idx), v.index_select(0, idx))
