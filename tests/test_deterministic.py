"""``deterministic: true``: torch's deterministic algorithms for a run, switched on before the model loads."""

from __future__ import annotations

import os

import pytest
import torch

from lorahive.config import ConfigError
from lorahive.runtime import run as runs
from lorahive.runtime.precheck import use_deterministic_algorithms
from tiny_runs import checkpoint_tensors, tiny_config


@pytest.fixture
def restore_torch_flags(monkeypatch):
    """Put torch's global determinism flags back as they were (the test process is shared)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def test_the_switch_sets_torch_and_cublas(restore_torch_flags):
    use_deterministic_algorithms()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()  # an op without a deterministic kernel warns, it does not stop a run
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_workspace_already_chosen_is_kept(restore_torch_flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    use_deterministic_algorithms()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_run_switches_it_on_only_when_asked(base_dir, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(runs, "use_deterministic_algorithms", lambda: calls.append(1))
    runs._prepare(tiny_config(base_dir))
    assert calls == []
    runs._prepare(tiny_config(base_dir, deterministic=True))
    assert calls == [1]


def test_two_deterministic_runs_agree_bit_for_bit(base_dir, tmp_path, restore_torch_flags):
    """Every op of a run has a kernel the switch accepts; on a GPU (where runs differ without it) this is the real check."""
    metrics = [runs.start(tiny_config(base_dir, deterministic=True), tmp_path / f"r{i}") for i in range(2)]
    a, b = (checkpoint_tensors(tmp_path / f"r{i}") for i in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics[0]["agents"] == metrics[1]["agents"]


def test_the_field_is_a_boolean(base_dir):
    with pytest.raises(ConfigError, match="deterministic"):
        tiny_config(base_dir, deterministic="sometimes")

