"""ACC / BWT / FWT on hand-made accuracy matrices, and held-out perplexity under a hive."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import make_model, randomize_b
from lorahive.observe.metrics import (
    AccuracyMatrix,
    acc,
    bwt,
    cl_metrics,
    fwt,
    heldout_text,
    perplexity,
)

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2-valid.txt"

# rows: before learning, after task 1, after task 2, after task 3; columns: tasks 1..3
R3 = [
    [0.10, 0.20, 0.30],
    [0.80, 0.25, 0.35],
    [0.70, 0.90, 0.40],
    [0.60, 0.85, 0.95],
]


def test_metrics_of_a_hand_made_matrix():
    m = cl_metrics(R3)

    assert m.acc == pytest.approx((0.60 + 0.85 + 0.95) / 3)  # 0.8
    assert m.bwt == pytest.approx(((0.60 - 0.80) + (0.85 - 0.90)) / 2)  # -0.125
    assert m.fwt == pytest.approx(((0.25 - 0.20) + (0.40 - 0.30)) / 2)  # 0.075


def test_no_forgetting_and_no_transfer_give_zero_bwt_and_fwt():
    r = [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0]]

    assert acc(r) == pytest.approx(1.0)
    assert bwt(r) == pytest.approx(0.0)
    assert fwt(r) == pytest.approx(0.0)


def test_total_forgetting_gives_bwt_minus_one():
    r = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    assert bwt(r) == pytest.approx(-1.0)
    assert acc(r) == pytest.approx(1 / 3)


def test_single_task_has_undefined_bwt_and_fwt():
    r = [[0.2], [0.9]]

    assert acc(r) == pytest.approx(0.9)
    assert math.isnan(bwt(r)) and math.isnan(fwt(r))


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match=r"\(T\+1, T\)"):
        acc([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match="missing"):
        acc([[0.1], [float("nan")]])


def test_accuracy_matrix_fills_rows_and_reports_metrics():
    tasks = ["agnews", "yelp", "dbpedia"]
    r = AccuracyMatrix(tasks)
    for stage, row in enumerate(R3):
        for task, value in zip(tasks, row, strict=True):
            assert not r.complete()
            r.record(stage, task, value)

    out = r.to_dict()

    assert r.complete()
    assert out["R"] == R3
    assert out["ACC"] == pytest.approx(0.8) and out["BWT"] == pytest.approx(-0.125)
    with pytest.raises(ValueError, match="unknown task"):
        r.record(1, "amazon", 0.5)
    with pytest.raises(ValueError, match="stage"):
        r.record(4, "yelp", 0.5)


def test_incomplete_accuracy_matrix_omits_metrics():
    r = AccuracyMatrix(["a", "b"])
    r.record(0, "a", 0.3)

    out = r.to_dict()

    assert out["R"][0] == [0.3, None] and "ACC" not in out


# ---------------------------------------------------------------------- perplexity
def _hf_perplexity(model, ids: list[int], window: int) -> float:
    """Reference: HF's own causal-LM loss (mean over a window's targets), weighted by targets."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), window):
            w = torch.tensor([ids[i : i + window]])
            if w.shape[1] < 2:
                continue
            loss = model(input_ids=w, labels=w).loss
            total += float(loss) * (w.shape[1] - 1)
            count += w.shape[1] - 1
    return math.exp(total / count)


def test_fresh_hive_perplexity_equals_bare_model(hive):
    text = heldout_text()[:700]
    ids = hive.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) % 48 not in (0, 1)  # the last window is ragged
    expected = _hf_perplexity(make_model(len(hive.tokenizer)), ids, 48)

    got = perplexity(hive.core, text, "ann", window=48, batch_size=3)

    assert got == pytest.approx(expected, rel=1e-5)


def test_perplexity_follows_the_agents_levels(hive):
    text = heldout_text()[:400]
    base = perplexity(hive.core, text, "ann", window=64)
    randomize_b(hive, scale=0.3)

    full = perplexity(hive.core, text, "ann", window=64)
    ablated = perplexity(hive.core, text, "ann", levels=[], window=64)

    assert full != pytest.approx(base, rel=1e-3)
    assert ablated == pytest.approx(base, rel=1e-6)


def test_perplexity_refuses_bad_arguments(hive):
    with pytest.raises(ValueError, match="window"):
        perplexity(hive.core, "some text here", "ann", window=1)
    with pytest.raises(ValueError, match="unknown agents"):
        perplexity(hive.core, "some text here", "zed")


def test_shipped_heldout_slice_is_cut_from_wikitext2_valid():
    text = heldout_text()

    assert 2_000 < len(text.encode()) < 20_000
    if not SHARED_TEXT.exists():
        pytest.skip("shared WikiText-2 file not present")
    assert SHARED_TEXT.read_text(encoding="utf-8").startswith(text)
