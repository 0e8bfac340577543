"""CounterFact scores (lorahive.implant.edits) on hand-built cases whose answers are known."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_model
from implant_cases import tiny_edits
from lorahive import Hive, LevelSpec, StackSpec
from lorahive.implant.edits import Edit, EditScorer, load_edits, shipped_edits, spaced, token_scores
from lorahive.suites.pairs import PairsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AGENT = "ed"


def fresh_hive(tokenizer) -> Hive:
    stack = StackSpec(levels=(LevelSpec(name="fast", rank=4, alpha=8, scope="agent", inertia=0.0, lr=3e-2),))
    hive = Hive(make_model(len(tokenizer)), tokenizer, stack, seed=0)
    hive.add_agent(AGENT)
    return hive


def taught(tokenizer, rows: list[tuple[str, str]], steps: int = 60) -> Hive:
    """A hive whose one level has learned ``rows`` (prompt → answer) until it prefers those answers."""
    hive = fresh_hive(tokenizer)
    hive.learn({AGENT: rows}, steps=steps)
    return hive


def test_token_scores_match_a_plain_forward(tokenizer):
    hive = fresh_hive(tokenizer)
    rows = [("The capital of France is", " Paris"), ("Sports: the team", " won the match")]
    ts = token_scores(hive, AGENT, rows, chunk=1)
    for i, (p, a) in enumerate(rows):
        pi = tokenizer(p)["input_ids"]
        ai = tokenizer(a, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = make_model(len(tokenizer))(torch.tensor([pi + ai])).logits[0].log_softmax(-1)
        per = torch.stack([logp[len(pi) - 1 + j, t] for j, t in enumerate(ai)])
        assert ts.lengths[i] == len(ai)
        assert torch.allclose(ts.logp[i], per.sum(), atol=1e-4)
        assert torch.allclose(ts.mean_logp[i], per.mean(), atol=1e-4)


def test_a_model_taught_the_new_object_scores_full_efficacy(tokenizer):
    edit = tiny_edits(1)[0]
    hive = taught(tokenizer, [(edit.prompt, spaced(edit.target_new)), (edit.rephrase_prompt, spaced(edit.target_new)), (edit.locality_prompt, spaced(edit.locality_ground_truth))])
    scorer = EditScorer(hive, AGENT, [edit])
    s = scorer.score(hive, AGENT, 1)
    assert (s.efficacy, s.paraphrase, s.neighbourhood) == (1.0, 1.0, 1.0)
    assert s.reliability == 1.0 and s.generalization == 1.0


def test_swapping_the_answers_flips_the_scores(tokenizer):
    edit = tiny_edits(1)[0]
    hive = taught(tokenizer, [(edit.prompt, spaced(edit.target_new)), (edit.locality_prompt, spaced(edit.locality_ground_truth))])
    swapped = Edit(edit.case_id, edit.prompt, edit.subject, edit.ground_truth, edit.target_new, edit.rephrase_prompt, edit.locality_prompt, edit.locality_ground_truth)
    s = EditScorer(hive, AGENT, [swapped]).score(hive, AGENT, 1)
    assert s.efficacy == 0.0 and s.reliability == 0.0
    # the neighbour's listed truth is now an untaught word, and the "new object" is what it was taught
    moved = Edit(edit.case_id, edit.prompt, edit.subject, edit.locality_ground_truth, edit.ground_truth, edit.rephrase_prompt, edit.locality_prompt, "France")
    assert EditScorer(hive, AGENT, [moved]).score(hive, AGENT, 1).neighbourhood == 0.0


def test_nothing_changed_keeps_locality_at_one_and_equals_the_base(tokenizer):
    hive = fresh_hive(tokenizer)
    edits = tiny_edits(6)
    scorer = EditScorer(hive, AGENT, edits)
    now, base = scorer.score(hive, AGENT, 6), scorer.score(hive, AGENT, 6, levels=[])
    assert now.locality == 1.0
    assert now == base


def test_learning_an_unrelated_answer_lowers_locality(tokenizer):
    edit = tiny_edits(1)[0]
    hive = fresh_hive(tokenizer)
    scorer = EditScorer(hive, AGENT, [edit])  # base argmaxes kept before any learning
    hive.learn({AGENT: [(edit.locality_prompt, " blue blue blue")]}, steps=60)
    assert scorer.score(hive, AGENT, 1).locality < 1.0


def test_scoring_many_edits_takes_few_forward_passes(tokenizer):
    hive = fresh_hive(tokenizer)
    edits = tiny_edits(12)
    scorer = EditScorer(hive, AGENT, edits)
    calls = []
    handle = hive.model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    scorer.score(hive, AGENT, 12)  # 72 rows: two chunks of 64
    handle.remove()
    assert len(calls) == 2


def test_length_normalised_and_whole_sequence_comparisons_differ_where_lengths_differ(tokenizer):
    hive = fresh_hive(tokenizer)
    long_new = Edit(0, "The capital of France is", "France", "great terrible fine neutral positive", "Paris", "Question: what is France? Answer:", "Sports: the team won the", "match")
    rows = EditScorer(hive, AGENT, [long_new]).rows(1)
    ts = token_scores(hive, AGENT, rows[:2])
    assert ts.lengths[0] > ts.lengths[1]
    assert ts.logp[0] < ts.mean_logp[0] * ts.lengths[1]  # a longer answer's summed log-probability is penalised by its length


def test_shipped_slice_and_record_checks(tmp_path):
    edits = load_edits()
    assert len(edits) == 32 and shipped_edits().is_file()
    assert all(e.subject in e.prompt for e in edits[:5])
    with pytest.raises(PairsError, match="edits: 40 edits asked"):
        load_edits(None, 40)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x", "target_new": "a"}]))
    with pytest.raises(PairsError, match="record 0 lacks") as err:
        load_edits(bad)
    assert err.value.field == "data"
