"""Drift map: how far a hive state moves each variant's logits, hidden states and attention, layer by layer (seed note 001).

For every variant and every decoder layer, the edited state (an agent's levels on) is
compared with the base (every level off) on the same tokens (prompt + answer):

* ``logits`` — ``KL(base ‖ edited)`` of the next-token distribution read from the layer's
  output through the final norm and the LM head (the "logit lens"), mean over the positions
  that predict answer tokens. The last layer's column is the model's own output KL.
* ``hidden`` — ``1 − cos`` between the layer's output hidden states, mean over the row's tokens.
* ``attention`` — Jensen–Shannon divergence between the layer's attention rows (each query's
  distribution over keys), mean over heads and query tokens; ``None`` when the model gives no
  attention weights (see :func:`drift_map`), never zeros standing in for them.

Variants go through in chunks, two forwards a chunk (base, edited), with every number kept
on the device until the map is complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from lorahive.adapters import Routing
from lorahive.implant.variants import Variant
from lorahive.runtime.hive import Hive
from lorahive.store.files import atomic_write_bytes, atomic_write_json
from lorahive.tensors import to_device

__all__ = ["DriftMap", "drift_map", "plot_drift"]


@dataclass(frozen=True)
class DriftMap:
    """Per variant and decoder layer: logit, hidden-state and attention drift of a state against the base."""

    logits: torch.Tensor  # (N, L) KL(base ‖ edited), logit lens at the answer positions
    hidden: torch.Tensor  # (N, L) 1 − cos of the layer outputs, mean over tokens
    attention: torch.Tensor | None  # (N, L) JS divergence of attention rows; None: the model gave none
    kinds: tuple[str, ...]
    distances: tuple[int, ...]
    levels: tuple[str, ...] | None  # the levels on in the edited state (None: all)

    def save(self, path: str | Path) -> None:
        """``<path>.safetensors`` (the tensors) and ``<path>.json`` (kinds, distances, levels), each written atomically."""
        path = Path(path)
        tensors = {"logits": self.logits, "hidden": self.hidden} | ({} if self.attention is None else {"attention": self.attention})
        atomic_write_bytes(path.with_suffix(".safetensors"), save_tensors({k: v.contiguous() for k, v in tensors.items()}))
        meta = {"kinds": list(self.kinds), "distances": list(self.distances), "levels": None if self.levels is None else list(self.levels), "attention": self.attention is not None}
        atomic_write_json(path.with_suffix(".json"), meta)

    @classmethod
    def load(cls, path: str | Path) -> DriftMap:
        """A map written by :meth:`save` (nothing is unpickled)."""
        path = Path(path)
        tensors = load_tensors(path.with_suffix(".safetensors").read_bytes())
        meta = json.loads(path.with_suffix(".json").read_text())
        levels = meta["levels"]
        return cls(tensors["logits"], tensors["hidden"], tensors.get("attention"), tuple(meta["kinds"]), tuple(meta["distances"]), None if levels is None else tuple(levels))


@torch.no_grad()
def drift_map(hive: Hive, variants: Sequence[Variant], agent: str, levels: Sequence[str] | None = None, chunk: int = 32, attention: bool = True) -> DriftMap:
    """The drift of ``agent``'s state (``levels`` on, default all) against the base, per variant and layer.

    ``attention=True`` runs the passes with eager attention (switched on for them and back
    after) so the weights exist; a model that cannot switch, or whose attention modules give
    no weights, gets ``attention=None``. ``chunk`` variants go through per pair of forwards.
    """
    if not variants:
        raise ValueError("variants: give at least one variant")
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1, got {chunk}")
    active = hive.core.check_levels(levels)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    with _eager(hive.model, attention) as eager:
        for i in range(0, len(variants), chunk):
            rows = variants[i : i + chunk]
            ids, mask, at = _pack(rows, _pad_id(hive), hive.device)
            base = _layers(hive, ids, mask, Routing(active=frozenset()), eager)
            edit = _layers(hive, ids, mask, hive.core.route([agent] * len(rows), active), eager)
            parts.append(_compare(hive, base, edit, mask, at))
    logits = torch.cat([p[0] for p in parts]).cpu()
    hidden = torch.cat([p[1] for p in parts]).cpu()
    attn = None if any(p[2] is None for p in parts) else torch.cat([cast(torch.Tensor, p[2]) for p in parts]).cpu()
    return DriftMap(logits, hidden, attn, tuple(v.kind for v in variants), tuple(v.distance for v in variants), None if levels is None else tuple(levels))


def _pad_id(hive: Hive) -> int:
    tok = hive.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else 0)


def _pack(rows: Sequence[Variant], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T), mask (B, T), and (2, N) rows/positions predicting each answer token."""
    seqs = [list(v.prompt_ids) + list(v.answer_ids) for v in rows]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    at = [(r, t) for r, v in enumerate(rows) for t in range(len(v.prompt_ids) - 1, len(v.prompt_ids) + len(v.answer_ids) - 1)]
    return to_device(ids, device), to_device(mask, device), to_device(torch.tensor(at, dtype=torch.long).t().contiguous(), device)


@contextmanager
def _eager(model: nn.Module, want: bool) -> Iterator[bool]:
    """Eager attention for the block if ``want`` and the model can switch; yields whether weights can be had."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if not want:
        yield False
        return
    if before == "eager":
        yield True
        return
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is None:
            raise TypeError("no set_attn_implementation")
        setter("eager")
    except (TypeError, ValueError, ImportError):
        yield False
        return
    try:
        yield getattr(config, "_attn_implementation", None) == "eager"
    finally:
        setter(before)


def _decoder_layers(hive: Hive) -> tuple[nn.Module, list[nn.Module]]:
    decoder = cast(nn.Module, hive.model.get_decoder())
    return decoder, list(cast(nn.ModuleList, decoder.layers))


def _layers(hive: Hive, ids: torch.Tensor, mask: torch.Tensor, routing: Routing, attention: bool) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Every decoder layer's output (B, T, H) and attention weights (B, heads, T, T) or None, from one forward."""
    decoder, layers = _decoder_layers(hive)
    hidden: list[torch.Tensor] = [torch.empty(0)] * len(layers)
    attn: list[torch.Tensor | None] = [None] * len(layers)
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(lambda _m, _a, out, i=i: hidden.__setitem__(i, out[0] if isinstance(out, tuple) else out)))
        mod = getattr(layer, "self_attn", None)
        if attention and mod is not None:
            hooks.append(mod.register_forward_hook(lambda _m, _a, out, i=i: attn.__setitem__(i, out[1] if isinstance(out, tuple) and len(out) > 1 else None)))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        with hive.core.routing.use(routing):
            decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return hidden, attn


def _compare(hive: Hive, base: tuple[list, list], edit: tuple[list, list], mask: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(B, L) logit, hidden and attention drift of one chunk."""
    decoder, _ = _decoder_layers(hive)
    norm = cast(nn.Module, getattr(decoder, "norm", nn.Identity()))
    head = cast(nn.Module, hive.model.get_output_embeddings())
    rows, pos = at[0], at[1]
    n_rows = mask.shape[0]
    per_row = torch.zeros(n_rows, device=mask.device).index_add(0, rows, torch.ones_like(rows, dtype=torch.float32))
    m = mask.float()  # (B, T)
    logit_cols, hidden_cols, attn_cols = [], [], []
    for hb, he, ab, ae in zip(base[0], edit[0], base[1], edit[1], strict=True):
        lb = F.log_softmax(head(norm(hb[rows, pos])).float(), -1)  # (N, V)
        le = F.log_softmax(head(norm(he[rows, pos])).float(), -1)
        kl = (lb.exp() * (lb - le)).sum(-1)  # (N,)
        logit_cols.append(torch.zeros(n_rows, device=kl.device).index_add(0, rows, kl) / per_row.clamp_min(1))
        same = (hb == he).all(-1)  # identical vectors drift exactly 0, not 1 − cos rounding
        dist = torch.where(same, 0.0, 1.0 - F.cosine_similarity(hb.float(), he.float(), dim=-1))  # (B, T)
        hidden_cols.append((dist * m).sum(-1) / m.sum(-1))
        if ab is not None and ae is not None:
            a, b = ab.float(), ae.float()  # (B, heads, T, T)
            mid = (a + b) / 2
            js = 0.5 * (torch.xlogy(a, a) - torch.xlogy(a, mid)).sum(-1) + 0.5 * (torch.xlogy(b, b) - torch.xlogy(b, mid)).sum(-1)  # (B, heads, T)
            attn_cols.append((js.mean(1) * m).sum(-1) / m.sum(-1))
    attn = torch.stack(attn_cols, 1) if len(attn_cols) == len(base[0]) else None
    return torch.stack(logit_cols, 1), torch.stack(hidden_cols, 1), attn


def plot_drift(drift: DriftMap, path: str | Path) -> Path:
    """Heatmaps (variants × layers) of each drift kind in one PNG at ``path``; rows labelled by kind and distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("logit KL(base ‖ edited)", drift.logits), ("hidden 1 − cos", drift.hidden)]
    if drift.attention is not None:
        panels.append(("attention JS", drift.attention))
    n = drift.logits.shape[0]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 1.2 + 0.16 * n), squeeze=False, sharey=True)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        im = ax.imshow(values.numpy(), aspect="auto", interpolation="nearest", cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("decoder layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, fraction=0.046)
    labels = [f"{k} d{d}" for k, d in zip(drift.kinds, drift.distances, strict=True)]
    axes[0][0].set_yticks(range(n), labels, fontsize=5 if n > 30 else 7)
    if drift.attention is None:
        fig.text(0.99, 0.01, "attention: not available for this model", ha="right", fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
