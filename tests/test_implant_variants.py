"""Micro-variants (implant/variants.py): count, kinds, vocabulary, determinism, growth prefixes, bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, randomize_b, small_stack
from lorahive import Hive
from lorahive.adapters import Routing
from lorahive.implant import KINDS, edit_distance, make_variants
from lorahive.learning.batching import encode_answer, encode_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLAUSES = "In the summit, the team of the world, that won the match, is"
PLAIN = "The capital of France is"


@pytest.fixture
def hive(tokenizer) -> Hive:
    h = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    h.add_agent("ann")
    return h


def test_fifty_distinct_variants_with_every_kind_on_a_prompt_with_clauses(hive):
    vs = make_variants(hive, CLAUSES, " Paris", n=50, seed=0)
    assert len(vs) == 50
    assert {v.kind for v in vs} == set(KINDS)
    assert len({(v.prompt_ids, v.answer_ids) for v in vs}) == 50


def test_every_id_is_in_the_vocabulary_and_is_what_the_tokenizer_makes_of_the_text(hive, tokenizer):
    original = tuple(encode_prompt(tokenizer, CLAUSES))
    for v in make_variants(hive, CLAUSES, " Paris", n=60, seed=3):
        assert all(0 <= i < len(tokenizer) for i in v.prompt_ids + v.answer_ids)
        assert tuple(encode_prompt(tokenizer, v.prompt)) == v.prompt_ids
        assert tuple(encode_answer(tokenizer, v.answer, eos=False)) == v.answer_ids
        assert v.distance == edit_distance(v.prompt_ids, original)
        assert (v.distance == 0) == (v.kind == "growth")


def test_a_kind_that_does_not_apply_is_skipped_and_the_others_fill_its_share(hive):
    vs = make_variants(hive, PLAIN, " Paris", n=50, seed=0)  # one "of": two clauses, nothing to reorder
    assert len(vs) == 50
    assert "reorder" not in {v.kind for v in vs}
    assert {"growth", "marker"} <= {v.kind for v in vs}


def test_same_seed_same_variants_another_seed_another_mix(hive):
    a = make_variants(hive, CLAUSES, " Paris", n=50, seed=7)
    b = make_variants(hive, CLAUSES, " Paris", n=50, seed=7)
    c = make_variants(hive, CLAUSES, " Paris", n=50, seed=8)
    assert a == b
    assert a != c


def test_growth_answers_are_prefixes_of_the_target_growing_by_the_step_up_to_the_whole(hive, tokenizer):
    target = " the team won the match"
    ids = tuple(encode_answer(tokenizer, target, eos=False))
    for step in (1, 2):
        grown = [v for v in make_variants(hive, PLAIN, target, n=50, seed=0, growth=step) if v.kind == "growth"]
        lengths = sorted(len(v.answer_ids) for v in grown)
        assert all(v.answer_ids == ids[: len(v.answer_ids)] and v.prompt == PLAIN for v in grown)
        assert lengths[0] == 1 and lengths[-1] == len(ids)
        assert all(b - a <= step for a, b in zip(lengths, lengths[1:], strict=False))
    assert len([v for v in make_variants(hive, PLAIN, target, n=50, seed=0, growth=2) if v.kind == "growth"]) < len(ids)


def test_synonyms_come_from_the_base_models_top_k_whatever_the_levels_hold(hive, tokenizer):
    original = encode_prompt(tokenizer, CLAUSES)
    with hive.core.routing.use(Routing(active=frozenset())), torch.no_grad():
        top = hive.model(input_ids=torch.tensor([original])).logits[0].topk(32, dim=-1).indices
    allowed = set(top.flatten().tolist())
    before = make_variants(hive, CLAUSES, " Paris", n=50, seed=0)
    synonyms = [v for v in before if v.kind == "synonym"]
    assert synonyms
    for v in synonyms:
        assert set(v.prompt_ids) - set(original) <= allowed
    randomize_b(hive)  # the levels now change the model's predictions; the candidates must not move
    assert make_variants(hive, CLAUSES, " Paris", n=50, seed=0) == before


def test_a_plain_model_with_its_tokenizer_gives_the_hives_variants(hive, tokenizer):
    model = make_model(len(tokenizer))
    assert make_variants(model, CLAUSES, " Paris", n=50, seed=1, tokenizer=tokenizer) == make_variants(hive, CLAUSES, " Paris", n=50, seed=1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"n": 0}, "n"), ({"target": ""}, "target"), ({"target": "   "}, "target"), ({"prompt": ""}, "prompt"),
     ({"growth": 3}, "growth"), ({"top_k": 0}, "top_k"), ({"markers": ("",)}, "markers"), ({"n": 5000}, "n")],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_field(hive, kwargs, field):
    args = {"prompt": PLAIN, "target": " Paris", "n": 50, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=field):
        make_variants(hive, **args)


def test_a_plain_model_without_a_tokenizer_is_refused(tokenizer):
    with pytest.raises(ValueError, match="tokenizer"):
        make_variants(make_model(len(tokenizer)), PLAIN, " Paris")


def test_edit_distance_counts_insertions_deletions_and_substitutions():
    assert edit_distance((1, 2, 3), (1, 2, 3)) == 0
    assert edit_distance((1, 2, 3), (1, 9, 3)) == 1
    assert edit_distance((1, 2, 3), (7, 8, 1, 2, 3)) == 2
    assert edit_distance((), (4, 5)) == 2


def test_kept_phrases_are_never_swapped_or_split(hive, tokenizer):
    kept = "the team"
    vs = make_variants(hive, CLAUSES, " Paris", n=50, seed=0, keep=(kept,))
    free = make_variants(hive, CLAUSES, " Paris", n=50, seed=0)
    assert any(kept not in v.prompt for v in free if v.kind in ("synonym", "marker"))  # without keep, some do break it
    assert all(kept in v.prompt for v in vs if v.kind in ("synonym", "marker"))
    with pytest.raises(ValueError, match="keep"):
        make_variants(hive, CLAUSES, " Paris", keep=("Danielle",))
