"""Injection of HiveLinear layers into a Hugging Face causal LM, by target-module names."""

from __future__ import annotations

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
