"""The sequential implant driver, consolidation and the probe (lorahive.implant) on a tiny random model."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import make_model
from implant_cases import small_implant_cfg, tiny_edits
from lorahive.config import ConfigError
from lorahive.implant.edits import spaced
from lorahive.implant.probe import fit_logistic, probe_implant, subject_prefix
from lorahive.implant.results import write_results
from lorahive.implant.sequential import (
    AGENT,
    PlainWriter,
    build_hive,
    consolidate,
    level_parameters,
    run_implant,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


small_cfg = small_implant_cfg


@pytest.fixture
def loader(tokenizer):
    return lambda: (make_model(len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def run(tokenizer, tmp_path_factory):
    cfg = small_cfg()
    results = run_implant(cfg, tiny_edits(8), lambda: (make_model(len(tokenizer)), tokenizer))
    out = tmp_path_factory.mktemp("implant")
    write_results(out, cfg, results)
    return cfg, results, out


def test_every_method_scores_every_checkpoint(run):
    cfg, results, _ = run
    assert list(results) == ["unedited", "hive", "lora"]
    for r in results.values():
        assert [s.n for s in r.checkpoints] == [1, 4, 8]


def test_hive_efficacy_rises_above_the_unedited_model(run):
    _, results, _ = run
    hive, base = results["hive"].checkpoints[-1], results["unedited"].checkpoints[-1]
    assert hive.efficacy >= 0.875 and hive.efficacy > base.efficacy
    assert hive.reliability > base.reliability


def test_memory_does_not_grow_with_edits(run):
    _, results, _ = run
    params = results["hive"].parameters
    assert len(params) == 3 and len(set(params)) == 1
    assert results["hive"].truncation < 1e-4  # memory rank = hidden size: consolidation is exact


def test_results_table_and_plot_are_written(run):
    _, _, out = run
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["methods"]) == {"unedited", "hive", "lora"}
    assert doc["methods"]["hive"]["checkpoints"][-1]["n"] == 8
    table = (out / "table.md").read_text()
    assert table.count("| hive |") == 3 and table.count("| lora |") == 3
    assert (out / "scores.png").stat().st_size > 1000


def test_consolidation_keeps_the_function_and_frees_the_slot(tokenizer, loader):
    hive = build_hive(small_cfg(), "hive", loader)
    edit = tiny_edits(1)[0]
    hive.learn({AGENT: [(edit.prompt, spaced(edit.target_new))]}, steps=5, levels=["edit"])
    before = hive.logits([edit.prompt], [AGENT])
    size = level_parameters(hive)
    err = consolidate(hive, "edit", "memory", AGENT)
    assert err < 1e-4
    assert torch.allclose(hive.logits([edit.prompt], [AGENT]), before, atol=1e-4)
    assert hive.core.is_zero("edit") and not hive.core.is_zero("memory")
    assert level_parameters(hive) == size


def test_band_outside_the_model_is_refused(loader):
    with pytest.raises(ConfigError, match="band"):
        build_hive(small_cfg(band=(1, 5)), "hive", loader)


def test_missing_curriculum_writer_is_named(monkeypatch, loader):
    monkeypatch.setitem(sys.modules, "lorahive.implant.curriculum", None)  # an import of it fails
    with pytest.raises(ConfigError, match="writer: 'curriculum'"):
        run_implant(small_cfg(writer="curriculum"), tiny_edits(2), loader)


def test_probe_is_at_chance_before_edits_and_reads_a_moved_representation(tokenizer, loader):
    hive = build_hive(small_cfg(), "hive", loader)
    edits = tiny_edits(32)
    before = probe_implant(hive, AGENT, edits, layer=2)
    assert before is not None and before.accuracy == 0.5 and before.unrelated_accuracy == 0.5
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a moved representation: the per-edit slot given random weights
        for bank in hive.core.banks("edit"):
            bank.B.copy_(torch.randn(bank.B.shape, generator=gen) * 1.0)
    hive.core.rescan()
    after = probe_implant(hive, AGENT, edits, layer=2)
    assert after is not None and after.accuracy > 0.7  # held-out subjects: above chance
    assert subject_prefix("The capital of France is", "France") == "The capital of France"


def test_logistic_probe_separates_a_shift_it_was_not_trained_on():
    gen = torch.Generator().manual_seed(0)
    shift = torch.randn(16, generator=gen)
    old = torch.randn(80, 16, generator=gen)
    new = torch.randn(80, 16, generator=gen) + shift
    w, b, mean, dev = fit_logistic(torch.cat([old[:40], new[:40]]), torch.cat([torch.zeros(40), torch.ones(40)]))
    pred = (((torch.cat([old[40:], new[40:]]) - mean) / dev) @ w + b) > 0
    assert (pred == torch.cat([torch.zeros(40), torch.ones(40)]).bool()).float().mean() > 0.9  # the Bayes rate here is about 0.98


def test_plain_writer_replays_earlier_edits_and_keeps_neighbours_at_the_hives_answer(loader):
    hive = build_hive(small_cfg(), "hive", loader)
    edits = tiny_edits(3)
    writer = PlainWriter(steps=4, check_every=2, margin=0.5, anchor=0.0, replay=1, neighbours=2, subjects=[e.subject for e in edits], neighbour_answers="hive")
    assert writer.replayed(edits[0]) == []
    writer(hive, AGENT, "edit", edits[0])
    assert writer.replayed(edits[1]) == [(edits[0].prompt, spaced(edits[0].target_new))]
    rows = writer.neighbour_rows(hive, AGENT, edits[2])
    assert sorted(p for p, _ in rows) == sorted(edits[2].prompt.replace(edits[2].subject, e.subject) for e in edits[:2])
    width = len(hive.tokenizer(spaced(edits[2].target_new), add_special_tokens=False)["input_ids"])  # as many tokens as the new object
    assert [a for _, a in rows] == hive.generate([p for p, _ in rows], [AGENT] * len(rows), max_new_tokens=width)
    assert writer.steps_taken and writer.steps_taken[0] in (2, 4)
    writer.neighbour_answers = "base"
    rows = writer.neighbour_rows(hive, AGENT, edits[2])
    assert [a for _, a in rows] == hive.generate([p for p, _ in rows], [AGENT] * len(rows), max_new_tokens=width, levels=[])
