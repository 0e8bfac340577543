"""``memory:`` in a run's config (config/run.py → MemorySpec): a run that regenerates A's init and keeps its
moments on the host learns exactly what a resident run learns, resumes, and a bad value names its field."""

from __future__ import annotations

import json

import pytest
import torch

from lorahive.config import ConfigError, parse_config
from lorahive.runtime import run as runs
from tiny_runs import checkpoint_tensors, config_tree, tiny_config

LEAN = ["memory.store_init=false", "memory.host_moments=true", "memory.slot_grads=true"]
ON = ["mechanisms.screening.free_decay=0.05"]  # screening's decay toward init reads A's init every tick


def test_a_lean_run_learns_bit_for_bit_what_a_resident_run_learns(base_dir, tmp_path):
    runs.start(tiny_config(base_dir, ON, ticks=3), tmp_path / "resident")
    runs.start(tiny_config(base_dir, [*ON, *LEAN], ticks=3), tmp_path / "lean")

    a, b = checkpoint_tensors(tmp_path / "resident"), checkpoint_tensors(tmp_path / "lean")
    assert any(k.endswith("/A0_chunks") for k in b) and not any(k.endswith("/A0_chunks") for k in a)  # the lean layout was used
    weights = [k for k in a if k.endswith(("/A", "/B"))]
    assert weights and all(k in b for k in weights)
    for k in weights:
        assert torch.equal(a[k], b[k]), k
    qa = json.loads((tmp_path / "resident" / "metrics.json").read_text())["agents"]
    qb = json.loads((tmp_path / "lean" / "metrics.json").read_text())["agents"]
    assert qa == qb


def test_a_lean_run_resumes_where_it_stopped(base_dir, tmp_path):
    whole = tiny_config(base_dir, [*ON, *LEAN], ticks=4)
    runs.start(whole, tmp_path / "whole")
    runs.start(tiny_config(base_dir, [*ON, *LEAN], ticks=2), tmp_path / "part")
    runs.resume(tmp_path / "part", ticks=4)

    a, b = checkpoint_tensors(tmp_path / "whole"), checkpoint_tensors(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("rng/torch"):
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_bad_memory_value_names_the_field(base_dir, value):
    with pytest.raises(ConfigError, match=r"memory\.store_init"):
        parse_config(config_tree(base_dir), [f"memory.store_init={value}"])
