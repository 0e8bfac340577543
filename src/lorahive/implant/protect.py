"""Null-space protection of the per-edit slot: an edit's update leaves preserved inputs alone.

In the spirit of AlphaEdit (Fang et al., ICLR 2025): a weight update ``ΔW`` with
``ΔW·k ≈ 0`` for the keys ``k`` of knowledge to preserve cannot change what the module
does on them. In LoRA form the slot's update of one module is ``(a/r)·B·A`` and its input
side is ``A`` (rank × in); with ``P = I − U·Uᵀ`` and ``U`` an orthonormal basis of the
preserved keys' dominant directions, ``A ← A·P`` makes ``B·A·k = 0`` for every ``k`` in
the span of ``U``, whatever ``B`` learns.

The preserved keys of each module the slot wraps (its band's ``gate_proj``/``up_proj``/
``down_proj``):

* **general text** — the module's inputs at every token of the package's held-out
  WikiText-2 slice (:func:`lorahive.observe.metrics.heldout_text`, the first
  ``protect_tokens`` tokens), read once on the unedited hive with forward hooks; ``U`` holds
  the top eigenvectors of their covariance ``K·Kᵀ`` (:func:`torch.linalg.eigh`) that carry
  all but ``null_energy`` of its energy (trace);
* **earlier edits** (``protect_edits``) — after each edit, the module's input at the last subject token of the
  edit's prompt (on the hive as it is then); their parts outside the general-text basis
  are added to ``U`` by the same rule (an SVD of those residual keys), so later edits do not
  overwrite earlier ones.

:class:`NullSpaceWriter` wraps a writer: the slot's ``A`` rows are projected before the
edit's first step and after every optimizer step of the slot's level (the projection is
applied to the weights, not to the gradient: Adam's per-coordinate scaling would carry a
projected gradient out of the subspace again). :attr:`NullSpaceWriter.kept` records, per
edit, the fraction of the edit's own subject key energy that survives ``P`` (mean over
modules) — what is left for the edit to be written through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lorahive.implant.edits import Edit
from lorahive.implant.probe import subject_prefix
from lorahive.learning.batching import Batch, encode_prompt, pad_right
from lorahive.learning.objective import hidden_states
from lorahive.observe.metrics import heldout_text

if TYPE_CHECKING:
    from lorahive.runtime.hive import Hive

__all__ = ["NullSpace", "NullSpaceWriter", "dominant_basis", "general_keys", "module_inputs", "subject_keys"]

#: Writes one edit into ``level`` of ``agent``'s view (the driver's Writer).
WriterFn = Callable[["Hive", str, str, Edit], None]


def dominant_basis(keys: torch.Tensor, null_energy: float) -> torch.Tensor:
    """Orthonormal columns (in, k) spanning the rows of ``keys`` (N, in) up to all but ``null_energy`` of their energy.

    The eigenvectors of ``keysᵀ·keys`` by decreasing eigenvalue, as few as carry at least
    ``1 − null_energy`` of the trace (the squared norms of the keys, summed).
    """
    if keys.shape[0] == 0:
        return keys.new_zeros(keys.shape[1], 0)
    k = keys.double()
    if k.shape[0] < k.shape[1]:  # few keys: an SVD of the keys themselves
        _, s, vh = torch.linalg.svd(k, full_matrices=False)
        energy, vectors = s.square(), vh.t()
    else:
        energy, vectors = torch.linalg.eigh(k.t() @ k)
        energy, vectors = energy.flip(0).clamp(min=0.0), vectors.flip(1)
    total = float(energy.sum())
    if total <= 0.0:
        return keys.new_zeros(keys.shape[1], 0)
    held = energy.cumsum(0) / total
    n = int((held < 1.0 - null_energy).sum()) + 1
    return vectors[:, : min(n, vectors.shape[1])].to(keys.dtype).contiguous()  # one memory layout, however made (a saved and reloaded basis multiplies the same)


@torch.no_grad()
def module_inputs(hive: Hive, agent: str, level: str, batch: Batch, where: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each module of ``level``'s input (N, in) at the chosen positions of ``batch``, routed to ``agent``.

    ``where`` (B, T) bool picks positions (default: every unpadded token); one forward pass,
    forward hooks on the wrapped modules, no gradient.
    """
    pick = (batch.attention_mask > 0) if where is None else where
    pick = pick.to(hive.device)
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for path, _ in hive.core.named_banks(level):

        def keep(_module: Any, args: tuple[torch.Tensor, ...], path: str = path) -> None:
            got[path] = args[0][pick].detach().float()

        hooks.append(hive.core.layers[path].register_forward_pre_hook(keep))
    try:
        with hive.core.routing.use(hive.core.route([agent] * batch.input_ids.shape[0])):
            hidden_states(hive.model, batch.to(hive.device))
    finally:
        for h in hooks:
            h.remove()
    return got



def general_keys(hive: Hive, agent: str, level: str, tokens: int, window: int = 128) -> dict[str, torch.Tensor]:
    """Each module's inputs (N, in) at the first ``tokens`` tokens of the held-out text, in windows of ``window``."""
    ids = list(hive.tokenizer(heldout_text(), add_special_tokens=False)["input_ids"])[:tokens]
    if not ids:
        raise ValueError("the held-out text tokenizes to nothing")
    return module_inputs(hive, agent, level, pad_right(hive.tokenizer, [ids[i : i + window] for i in range(0, len(ids), window)]))


def subject_keys(hive: Hive, agent: str, level: str, edits: Sequence[Edit]) -> dict[str, torch.Tensor]:
    """Each module's input (E, in) at the last subject token of each edit's prompt (the last prompt token if the subject is absent)."""
    tok = hive.tokenizer
    ends = [len(encode_prompt(tok, subject_prefix(e.prompt, e.subject))) - 1 for e in edits]
    batch = pad_right(tok, [encode_prompt(tok, e.prompt) for e in edits])
    where = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    where[torch.arange(len(edits)), torch.tensor(ends)] = True
    return module_inputs(hive, agent, level, batch, where)


@dataclass
class NullSpace:
    """Per module: the general-text basis and the earlier edits' keys; the projector ``P = I − U·Uᵀ`` of their union."""

    null_energy: float
    general: dict[str, torch.Tensor]  # path -> (in, k0) orthonormal
    edit_keys: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # path -> [(in,)]
    projectors: dict[str, torch.Tensor] = field(default_factory=dict)  # path -> (in, in)

    @classmethod
    def of_keys(cls, keys: dict[str, torch.Tensor], null_energy: float) -> NullSpace:
        space = cls(null_energy, {p: dominant_basis(k, null_energy) for p, k in keys.items()})
        space.rebuild()
        return space

    def basis(self, path: str) -> torch.Tensor:
        """``U`` (in, k) of one module: the general basis, then the earlier edits' keys outside it."""
        u0 = self.general[path]
        keys = self.edit_keys.get(path, [])
        if not keys:
            return u0
        k = torch.stack(keys)  # (E, in)
        residual = k - (k @ u0) @ u0.t()
        return torch.cat([u0, dominant_basis(residual, self.null_energy)], dim=1)

    def rebuild(self) -> None:
        for path in self.general:
            u = self.basis(path)
            self.projectors[path] = torch.eye(u.shape[0], dtype=u.dtype, device=u.device) - u @ u.t()

    def add_edit_keys(self, keys: dict[str, torch.Tensor]) -> None:
        """Protect these keys (path -> (E, in)) from later edits too."""
        for path, k in keys.items():
            self.edit_keys.setdefault(path, []).extend(k.unbind(0))
        self.rebuild()

    def surviving(self, keys: dict[str, torch.Tensor]) -> float:
        """Mean over modules (and keys) of ``‖P·k‖² / ‖k‖²``: the share of a key's energy an update can still reach."""
        parts = [((k @ self.projectors[p]).square().sum(-1) / k.square().sum(-1).clamp(min=1e-12)).mean() for p, k in keys.items()]
        return float(torch.stack(parts).mean())

    @torch.no_grad()
    def project(self, hive: Hive, level: str, slot: int) -> None:
        """``A ← A·P`` on ``slot``'s rows of every bank of ``level``."""
        for path, bank in hive.core.named_banks(level):
            p = self.projectors[path].to(bank.A.device, bank.A.dtype)
            bank.A[slot] = bank.A[slot] @ p


@contextmanager
def projected_steps(hive: Hive, level: str, slot: int, space: NullSpace) -> Iterator[None]:
    """Within the block, every optimizer step of ``level`` is followed by :meth:`NullSpace.project` of ``slot``."""
    core = hive.core
    step = core.step

    def projected(name: str, *args: Any, **kwargs: Any) -> None:
        step(name, *args, **kwargs)
        if name == level:
            space.project(hive, level, slot)

    core.step = projected  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del core.step


@dataclass
class NullSpaceWriter:
    """A writer whose slot updates are kept in the null space of the preserved keys (module docstring).

    The space is built on the first call, on the hive as it is then (the driver calls the
    writer first on the unedited hive); ``protect_edits`` adds each written edit's subject
    keys to it (off by default, as the config's field).
    """

    inner: WriterFn
    null_energy: float
    tokens: int
    protect_edits: bool = False
    space: NullSpace | None = None
    kept: list[float] = field(default_factory=list)  # per edit: its subject key energy surviving P

    def __call__(self, hive: Hive, agent: str, level: str, edit: Edit) -> None:
        if self.space is None:
            self.space = NullSpace.of_keys(general_keys(hive, agent, level, self.tokens), self.null_energy)
        space = self.space
        own = subject_keys(hive, agent, level, [edit])
        self.kept.append(space.surviving(own))
        slot = hive.core.slot_of(level, agent)
        space.project(hive, level, slot)
        with projected_steps(hive, level, slot, space):
            self.inner(hive, agent, level, edit)
        if self.protect_edits:
            space.add_edit_keys(subject_keys(hive, agent, level, [edit]))
