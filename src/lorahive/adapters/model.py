"""Injection of HiveLinear layers into a Hugging Face causal LM, by target-module names."""

from __future__ import annotations

from typing import Any

from torch import nn

from lorahive.adapters.layer import HiveLinear
from lorahive.adapters.routing import RoutingState
from lorahive.config import StackSpec


def inject(model: nn.Module, stack: StackSpec, slots: dict[str, int], state: RoutingState, seed: int = 0) -> dict[str, HiveLinear]:
    """Freeze ``model`` and wrap every Linear that some level wraps (its last name a target, its block in scope).

    Returns the wrapped layers by module path. Raises ``ValueError`` when a level targets
    nothing in this model.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    fold_head_input(model)
    found: dict[str, list] = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            levels = [lv for lv in stack.levels if lv.wraps(path)]
            if levels:
                found[path] = levels
    for lv in stack.levels:
        if not any(lv in levels for levels in found.values()):
            scope = "" if lv.blocks is None else f" in blocks {list(lv.blocks)}"
            raise ValueError(f"level {lv.name!r}: targets {list(lv.targets)}{scope} match no nn.Linear in {type(model).__name__}")
    layers: dict[str, HiveLinear] = {}
    for path, levels in found.items():
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        layer = HiveLinear(getattr(parent, leaf), path, levels, slots, state, seed)
        setattr(parent, leaf, layer)
        layers[path] = layer
    return layers


def _contiguous_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    if x is None or not hasattr(x, "is_contiguous") or x.is_contiguous():
        return None
    return (x.contiguous(), *args[1:])


def fold_head_input(model: nn.Module) -> None:
    """Give the output head a contiguous input, so its matmul runs as one ``mm`` over the vocabulary.

    With ``logits_to_keep=1`` the head reads ``hidden[:, -1:, :]``, a view whose rows are a sequence apart. torch's
    matmul folds such a 3-D input into a matrix only when the weight requires grad; once the model is frozen it
    falls back to a ``bmm`` that expands the (vocab × hidden) matrix once per row — 64 reads of 272 MB per forward
    for a 0.5B model's head. A copy of the few kept positions avoids that; a contiguous input passes unchanged.
    """
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and not getattr(head, "_lorahive_folds_input", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._lorahive_folds_input = True  # type: ignore[assignment]
