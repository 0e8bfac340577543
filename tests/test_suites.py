"""Tasks, scorers, the CL-benchmark loader and the shipped demo slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorahive.suites import (
    DEMO_TASK_TYPES,
    ExactMatch,
    LabelMatch,
    Task,
    build_demo_slice,
    demo_dir,
    load_cl,
    load_demo,
    map_to_label,
    normalize,
    sample_task,
    split_prompt,
    split_tasks,
    truncate_prompt,
)

SHARED_CL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cl" / "standard"
needs_shared = pytest.mark.skipif(not SHARED_CL.is_dir(), reason="../shared/data/cl is absent")

PROMPT = (
    "What is the topic of the following paragraph? Choose one from the option.\n"
    "Option: World, Sports, Business, Science or Technology \n"
    "Title: Team wins\n"
    "Text: " + "The home team won the match after a long and very hard fight. " * 6 + "\n"
    "Answer:"
)


def _write_task(folder: Path, n_train: int = 10, n_test: int = 6) -> None:
    folder.mkdir(parents=True)
    labels = ["World", "Sports"]
    rec = lambda i: {"prompt": f"Option: World, Sports \nText: item {i}\nAnswer:", "answer": labels[i % 2]}  # noqa: E731
    (folder / "train.json").write_text(json.dumps([rec(i) for i in range(n_train)]))
    (folder / "test.json").write_text(json.dumps([rec(100 + i) for i in range(n_test)]))
    (folder / "labels.json").write_text(json.dumps(labels))


# --- scoring -----------------------------------------------------------------------------


def test_normalize_lowercases_collapses_space_and_strips_trailing_punctuation():
    assert normalize("  Science   or\nTechnology.! ") == "science or technology"


def test_exact_match_ignores_case_and_punctuation():
    assert ExactMatch()("paris.", "Paris") == 1.0
    assert ExactMatch()("Paris, France", "Paris") == 0.0


def test_map_to_label_prefers_longest_prefix_label():
    labels = ["negative", "very negative", "positive"]
    assert map_to_label("Very negative, I think", labels) == "very negative"
    assert map_to_label("negative review", labels) == "negative"
    assert map_to_label("no idea", labels) is None


def test_label_match_scores_prediction_mapped_to_label():
    scorer = LabelMatch(["World", "Sports"])
    assert scorer("sports. The team won", "Sports") == 1.0
    assert scorer("World", "Sports") == 0.0


def test_task_with_labels_defaults_to_label_scorer_and_scores_quality():
    task = Task("t", support=[("p", "Sports")], query=[("a", "Sports"), ("b", "World")], labels=("World", "Sports"))
    assert isinstance(task.scorer, LabelMatch)
    assert task.score(["Sports!", "sports"]) == 0.5


def test_task_without_labels_uses_exact_match():
    task = Task("qa", support=[], query=[("capital of France?", "Paris")])
    assert isinstance(task.scorer, ExactMatch)


def test_task_score_refuses_wrong_number_of_predictions():
    task = Task("qa", support=[], query=[("q", "a")])
    with pytest.raises(ValueError, match="1 query"):
        task.score(["a", "b"])


# --- prompts and truncation --------------------------------------------------------------


def test_split_prompt_separates_instruction_text_and_answer_cue():
    head, body, tail = split_prompt(PROMPT)
    assert head.endswith("Science or Technology ")
    assert body.startswith("Title: Team wins")
    assert tail == "Answer:"


def test_truncate_prompt_fits_budget_and_keeps_head_and_tail(tokenizer):
    head, _, tail = split_prompt(PROMPT)
    budget = len(tokenizer(head + "\n...\n" + tail)["input_ids"]) + 20
    out = truncate_prompt(PROMPT, tokenizer, max_tokens=budget)
    assert len(tokenizer(out)["input_ids"]) <= budget
    assert out.startswith(PROMPT.split("\nTitle")[0])
    assert out.endswith("...\nAnswer:")


def test_truncate_prompt_leaves_short_prompt_unchanged(tokenizer):
    short = "Option: A, B \nText: hi\nAnswer:"
    assert truncate_prompt(short, tokenizer, max_tokens=200) == short


def test_truncate_prompt_refuses_budget_below_head_and_tail(tokenizer):
    with pytest.raises(ValueError, match="head and tail"):
        truncate_prompt(PROMPT, tokenizer, max_tokens=5)


def test_a_drawn_prompt_is_cut_once_per_tokenizer_and_budget(tokenizer):
    from lorahive.suites import cl

    head, _, tail = split_prompt(PROMPT)
    budget = len(tokenizer(head + "\n...\n" + tail)["input_ids"]) + 20
    calls = {"n": 0}
    real = cl.truncate_prompt

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    cl._CUTS.pop(tokenizer, None)
    cl.truncate_prompt = counted  # type: ignore[assignment]
    try:
        first = cl._truncate_all([(PROMPT, " x"), (PROMPT, " y")], tokenizer, budget)
        again = cl._truncate_all([(PROMPT, " z")], tokenizer, budget)
        other = cl._truncate_all([(PROMPT, " z")], tokenizer, budget + 5)
    finally:
        cl.truncate_prompt = real  # type: ignore[assignment]
    assert calls["n"] == 2  # once for each budget
    assert first == [(real(PROMPT, tokenizer, budget), " x"), (real(PROMPT, tokenizer, budget), " y")]
    assert again == [(first[0][0], " z")] and other == [(real(PROMPT, tokenizer, budget + 5), " z")]


# --- loading and sampling ----------------------------------------------------------------


def test_sample_task_is_seeded(tmp_path):
    _write_task(tmp_path / "toy")
    data = load_cl(tmp_path / "toy")
    a, b = sample_task(data, 3, 2, seed=7), sample_task(data, 3, 2, seed=7)
    assert (a.support, a.query) == (b.support, b.query)
    assert a.labels == ("World", "Sports")


def test_balanced_support_covers_the_labels():
    data = load_demo("yelp")
    for seed in range(5):
        task = sample_task(data, 5, 4, seed=seed, balanced=True)
        assert sorted(a for _, a in task.support) == sorted(data.labels)  # one per label
        assert len(set(task.support)) == 5
    eight = sample_task(data, 8, 4, seed=0, balanced=True)
    counts = [sum(a == lab for _, a in eight.support) for lab in data.labels]
    assert max(counts) - min(counts) <= 1
    assert sample_task(data, 5, 4, seed=3, balanced=True) == sample_task(data, 5, 4, seed=3, balanced=True)


def test_split_tasks_gives_disjoint_tasks(tmp_path):
    _write_task(tmp_path / "toy")
    tasks = split_tasks(load_cl(tmp_path / "toy"), n_tasks=3, n_support=3, n_query=2, seed=0)
    supports = [p for t in tasks for p, _ in t.support]
    queries = [p for t in tasks for p, _ in t.query]
    assert len(set(supports)) == 9 and len(set(queries)) == 6


def test_split_tasks_refuses_more_examples_than_exist(tmp_path):
    _write_task(tmp_path / "toy")
    with pytest.raises(ValueError, match="need 12 train"):
        split_tasks(load_cl(tmp_path / "toy"), n_tasks=4, n_support=3, n_query=1)


def test_load_cl_names_the_bad_file(tmp_path):
    _write_task(tmp_path / "toy")
    (tmp_path / "toy" / "test.json").write_text('[{"prompt": 1}]')
    with pytest.raises(ValueError, match="test.json"):
        load_cl(tmp_path / "toy")


@needs_shared
def test_cl_loader_reads_shared_agnews():
    data = load_cl(SHARED_CL / "agnews")
    assert (len(data.train), len(data.test)) == (500, 100)
    assert data.labels == ("World", "Sports", "Business", "Science or Technology")
    assert {a for _, a in data.train} <= set(data.labels)


# --- the shipped demo slice ----------------------------------------------------------------


def test_demo_slice_ships_inside_the_package():
    assert demo_dir().is_relative_to(Path(__import__("lorahive").__file__).parent)
    assert (demo_dir() / "PROVENANCE.md").is_file() and (demo_dir() / "LICENSE.O-LoRA").is_file()


@pytest.mark.parametrize("task_type", DEMO_TASK_TYPES)
def test_demo_answers_are_in_their_label_set(task_type):
    data = load_demo(task_type)
    assert len(data.train) >= 32 and len(data.test) >= 16
    assert {a for _, a in data.train + data.test} <= set(data.labels)


def test_demo_prompts_end_with_answer_cue():
    for t in DEMO_TASK_TYPES:
        assert all(p.endswith("\nAnswer:") for p, _ in load_demo(t).train)


def test_load_demo_rejects_unknown_type():
    with pytest.raises(ValueError, match="agnews"):
        load_demo("nope")


@needs_shared
def test_build_demo_slice_reproduces_shipped_files(tmp_path):
    from lorahive.base import home

    cached = home() / "models" / "smollm2-135m"
    if not (cached / "tokenizer.json").is_file():
        pytest.skip("the embedded model's tokenizer is not cached")
    from transformers import AutoTokenizer

    build_demo_slice(SHARED_CL, tmp_path, AutoTokenizer.from_pretrained(str(cached)))
    for t in DEMO_TASK_TYPES:
        for name in ("train.json", "test.json", "labels.json"):
            assert (tmp_path / t / name).read_bytes() == (demo_dir() / t / name).read_bytes()
