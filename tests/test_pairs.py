"""Preference pairs (suites/pairs.py): from the CL tasks and from the knowledge edits of ../shared/data/knowledge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorahive.config.stages import PairsSpec
from lorahive.suites.demo import load_demo
from lorahive.suites.pairs import PairsError, cl_pairs, knowledge_pairs, load_pairs

KNOWLEDGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "knowledge"
COUNTERFACT = [
    {"prompt": f"P{i} plays", "target_new": f"new{i}", "ground_truth": f"old{i}", "rephrase_prompt": f"R{i}: P{i} plays", "subject": f"P{i}"} for i in range(6)
]
ZSRE = [{"src": f"Who made U{i}?", "alt": f"new{i}", "answers": [f"old{i}", "other"], "rephrase": f"Maker of U{i}?", "pred": f"old{i}"} for i in range(5)] + [
    {"src": "Same?", "alt": "same", "answers": ["same"], "rephrase": "Same again?"},  # new = old: no pair
    {"src": "None?", "alt": "", "answers": ["old"], "rephrase": "None again?"},  # no new answer: no pair
]


def _write(tmp_path: Path, name: str, records: list) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_cl_pairs_prefer_the_correct_label_over_a_wrong_one_of_the_label_set(tokenizer):
    data = load_demo("agnews")
    pairs = cl_pairs(data, 8, 4, seed=0, tokenizer=tokenizer, max_tokens=400)
    labels = {" " + lb for lb in data.labels}
    assert len(pairs.train) == 8 and len(pairs.eval) == 4 and set(pairs.labels or ()) == labels
    answers = {p: " " + a for p, a in data.train + data.test}
    for p in pairs.train + pairs.eval:
        assert p.chosen == answers[p.prompt] and p.rejected in labels and p.rejected != p.chosen
    assert {p.prompt for p in pairs.eval} <= {p for p, _ in data.test}  # held out: the test split
    assert cl_pairs(data, 8, 4, 0, tokenizer, 400) == pairs and cl_pairs(data, 8, 4, 1, tokenizer, 400) != pairs  # the seed decides


def test_counterfact_pairs_prefer_the_new_target_and_hold_out_the_paraphrases(tmp_path):
    pairs = knowledge_pairs(_write(tmp_path, "cf.json", COUNTERFACT), 4, 2, seed=0)
    by_prompt = {r["prompt"]: r for r in COUNTERFACT}
    for p in pairs.train:
        r = by_prompt[p.prompt]
        assert (p.chosen, p.rejected) == (" " + r["target_new"], " " + r["ground_truth"])
    assert [p.prompt for p in pairs.eval] == [by_prompt[p.prompt]["rephrase_prompt"] for p in pairs.train[:2]]
    assert [(p.chosen, p.rejected) for p in pairs.eval] == [(p.chosen, p.rejected) for p in pairs.train[:2]]
    assert pairs.labels is None


def test_zsre_pairs_prefer_the_alternative_over_the_first_true_answer_and_skip_edits_without_one(tmp_path):
    pairs = knowledge_pairs(_write(tmp_path, "zsre.json", ZSRE), 5, 2, seed=0)
    by_q = {r["src"]: r for r in ZSRE}
    assert sorted(p.prompt for p in pairs.train) == sorted(r["src"] for r in ZSRE[:5])  # the records without two answers are skipped
    for p in pairs.train:
        assert (p.chosen, p.rejected) == (" " + by_q[p.prompt]["alt"], " " + by_q[p.prompt]["answers"][0])
    assert [p.prompt for p in pairs.eval] == [by_q[p.prompt]["rephrase"] for p in pairs.train[:2]]
    with pytest.raises(PairsError, match=r"^train: 6 pairs asked; .* holds 5 usable edits"):
        knowledge_pairs(tmp_path / "zsre.json", 6, 2, seed=0)


@pytest.mark.skipif(not KNOWLEDGE.is_dir(), reason="needs ../shared/data/knowledge")
@pytest.mark.parametrize(("name", "usable"), [("counterfact-edit-1k.json", 1000), ("zsre_mend_train-1k.json", 981)])
def test_the_shared_knowledge_files_both_give_pairs(name, usable):
    with pytest.raises(PairsError, match=f"holds {usable} usable edits"):
        knowledge_pairs(KNOWLEDGE / name, usable + 1, 1, seed=0)
    pairs = knowledge_pairs(KNOWLEDGE / name, 16, 4, seed=0)
    assert len(pairs.train) == 16 and len(pairs.eval) == 4 and all(p.chosen != p.rejected for p in pairs.train)


@pytest.mark.parametrize(
    ("records", "field", "message"),
    [
        ([{"question": "q", "answer": "a"}], "path", "neither format"),
        ([*COUNTERFACT, {"prompt": "p", "target_new": 3, "ground_truth": "g", "rephrase_prompt": "r"}], "path", "record 6 lacks"),
        ([*COUNTERFACT, {"prompt": "p", "target_new": "n", "ground_truth": "g", "rephrase_prompt": " "}], "path", "record 6 lacks"),
        ({"prompt": "not a list"}, "path", "expected a non-empty JSON list"),
    ],
)
def test_a_knowledge_file_of_another_shape_is_refused_naming_the_record(tmp_path, records, field, message):
    with pytest.raises(PairsError, match=message) as err:
        knowledge_pairs(_write(tmp_path, "bad.json", records), 2, 1, seed=0)
    assert err.value.field == field


def test_sizes_beyond_the_data_are_refused_naming_the_field(tokenizer, tmp_path):
    data = load_demo("agnews")
    with pytest.raises(PairsError, match=r"^train: 65 pairs asked; agnews has 64 training examples"):
        cl_pairs(data, 65, 4, 0, tokenizer, 400)
    with pytest.raises(PairsError, match=r"^eval: 33 pairs asked; agnews has 32 test examples"):
        cl_pairs(data, 8, 33, 0, tokenizer, 400)
    with pytest.raises(PairsError, match=r"^max_prompt_tokens: prompt head and tail alone exceed 8 tokens"):
        cl_pairs(data, 8, 4, 0, tokenizer, 8)
    with pytest.raises(PairsError, match=r"^task_type: unknown demo task type 'nope'"):
        load_pairs(PairsSpec(source="cl", task_type="nope"), 0, tokenizer)
    with pytest.raises(PairsError, match=r"^path: cannot read"):
        load_pairs(PairsSpec(source="knowledge", path=str(tmp_path / "missing.json"), train=2, eval=1), 0, tokenizer)
