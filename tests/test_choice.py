"""Option scoring through the KV cache equals scoring each prompt + option in full."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_b
from lorahive.adapters.fused import use_fused


@pytest.mark.parametrize("fused", ["off", "on"])
def test_option_nll_equals_full_rows(hive, fused):
    randomize_b(hive)
    rows = [("ann", "The capital of France is"), ("bob", "Question: what colour is the sky? Answer:"), ("cyd", "great")]
    options = [" Paris", " blue sky", " positive and negative"]

    with use_fused(fused):
        got = hive.option_nll(rows, options, chunk=2)

    full = hive.row_nll([(a, p, o) for a, p in rows for o in options]).view(len(rows), len(options))
    torch.testing.assert_close(got, full, rtol=1e-4, atol=1e-4)


def test_option_nll_respects_level_ablation(hive):
    randomize_b(hive)
    rows = [("ann", "great"), ("bob", "great")]
    full = hive.option_nll(rows, [" positive", " negative"])
    base = hive.option_nll(rows, [" positive", " negative"], levels=[])
    assert not torch.allclose(full, base)
    torch.testing.assert_close(base[0], base[1])
