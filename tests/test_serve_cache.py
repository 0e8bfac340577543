"""The decode batch's KV cache (serve/decode.py): the same greedy tokens as recomputing every row.

The tiny random Llama of test_serve.py, two agents whose levels differ; rows join mid-decode
and leave; learning between two steps or two requests is seen at once.
"""

from __future__ import annotations

import queue

import torch

from lorahive.learning.batching import encode_prompt
from lorahive.serve import Engine, Settings
from lorahive.serve.decode import CachedDecoder, next_tokens
from lorahive.serve.engine import Feedback
from test_serve import OTHER, PROMPT, make_hive, wait_for

JOBS = [("ann", PROMPT, 30, 0), ("bob", OTHER, 12, 3), ("bob", "positive negative", 20, 5), ("ann", OTHER, 6, 5)]  # agent, prompt, tokens, the step it joins


def _decode(hive, cached: bool, learn_at: int | None = None) -> tuple[list[list[int]], list[tuple[int, ...]], CachedDecoder]:
    """Every job's tokens, decoded in one continuous batch (joins at their steps, leaves when done)."""
    dec = CachedDecoder(hive)
    prompts = [encode_prompt(hive.tokenizer, p) for _, p, _, _ in JOBS]
    outs: list[list[int]] = [[] for _ in JOBS]
    owners = [object() for _ in JOBS]
    active: list[int] = []
    batches: list[tuple[int, ...]] = []
    step = 0
    while active or step <= max(j[3] for j in JOBS):
        active += [i for i, j in enumerate(JOBS) if j[3] == step]
        if step == learn_at:  # the engine's order: learn, then reset, then the next step
            hive.learn({"ann": [(PROMPT, " blue")]}, steps=5, levels=["agent"])
            dec.reset()
        rows, agents = [prompts[i] + outs[i] for i in active], [JOBS[i][0] for i in active]
        toks = dec.step([owners[i] for i in active], rows, agents) if cached else next_tokens(hive, rows, agents)
        batches.append(tuple(active))
        for i, t in zip(active, toks, strict=True):
            outs[i].append(t)
        active = [i for i in active if len(outs[i]) < JOBS[i][2]]
        step += 1
    return outs, batches, dec


def test_cached_tokens_equal_recomputed_ones_with_rows_joining_and_leaving():
    hive = make_hive()
    plain, batches, _ = _decode(hive, cached=False)
    cached, _, dec = _decode(hive, cached=True)
    assert cached == plain
    assert plain[0] != plain[3][: len(plain[0])] and plain[1][:6] != plain[3]  # the agents (and prompts) answer differently
    assert (0,) in batches and (0, 1) in batches and (0, 1, 2, 3) in batches and (0, 2) in batches  # joined mid-decode, left
    assert dec.prefilled == len(JOBS)  # each row was prefilled once: every later step fed it one token


def test_learning_between_two_steps_is_seen_by_the_next_step():
    plain, _, _ = _decode(make_hive(), cached=False, learn_at=8)
    cached, batches, dec = _decode(make_hive(), cached=True, learn_at=8)
    assert cached == plain
    assert plain != _decode(make_hive(), cached=False)[0]  # the learning changed ann's tokens after step 8
    assert len(batches[8]) == 4 and dec.prefilled == len(JOBS) + 4  # the rows running at step 8 were prefilled again with the new weights


def _complete(engine: Engine, agent: str, prompt: str, n: int) -> tuple[str, str]:
    """A request straight to the engine: its id and text."""
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    seq = engine.make_sequence(agent, prompt, n, events.put)
    engine.submit(seq)
    text = ""
    while (e := events.get(timeout=60))[0] == "delta":
        text += e[1]
    assert e[0] == "done", e
    return seq.id, text


def test_a_learned_update_is_in_the_next_step_and_the_agents_next_request():
    engine = Engine(make_hive(), None, Settings(max_tokens=64, feedback_steps=20)).start()
    try:
        hive, n = engine.hive, 60
        first_id, first = _complete(engine, "ann", PROMPT, 6)
        events: queue.Queue[tuple[str, str]] = queue.Queue()
        long = engine.make_sequence("ann", OTHER, n, events.put)
        with engine.gate:
            old = _greedy(hive, long.ids, [], n)  # ann's answer before the learning
        learned_at: list[int] = []
        learn = engine._learn
        engine._learn = lambda *a, **k: (learned_at.append(len(long.out)), learn(*a, **k))[1]  # type: ignore[method-assign]
        steps = engine.stats["steps"]
        engine.submit(long)
        wait_for(lambda: engine.stats["steps"] >= steps + 3)
        engine.feedback(Feedback(first_id, -1.0, " blue")).result(timeout=60)  # learned between two of long's steps
        while events.get(timeout=60)[0] == "delta":
            pass
        k = learned_at[0]
        assert 3 <= k < len(long.out)  # long was decoding when ann's level changed
        with engine.gate:
            want = _greedy(hive, long.ids, long.out[:k], n)  # what recomputing every step gives: the learned level from token k on
            fresh = hive.generate([PROMPT], ["ann"], max_new_tokens=6)[0]
        assert long.out == want != old  # the running row saw the learning at its next step
        _, after = _complete(engine, "ann", PROMPT, 6)
        assert after == fresh == " blue" != first  # and the agent's next request: no stale cache, no stale prepared weights
        assert engine.decoder is not None and engine.decoder.enabled
    finally:
        engine.stop()


def _greedy(hive, prompt: list[int], start: list[int], n: int) -> list[int]:
    """``start`` continued greedily for ann, recomputing every step, up to ``n`` tokens or the end of sequence."""
    out = list(start)
    while len(out) < n and (tok := next_tokens(hive, [prompt + out], ["ann"])[0]) != hive.tokenizer.eos_token_id:
        out.append(tok)
    return out


def test_decoding_on_merged_shared_levels_gives_the_same_tokens_and_sees_learning(monkeypatch):
    """``Settings.merge_shared`` (adapters/merge.py): the shared levels folded into the weights, fp32 here."""
    plain, _, _ = _decode(make_hive(), cached=True)
    hive = make_hive()
    with hive.core.routing.merging():
        merged, _, _ = _decode(hive, cached=True)
        assert any(m.merged is not None for m in hive.model.modules() if hasattr(m, "merged"))
    assert merged == plain

    def learn_swarm(hive, cached, learn_at):  # the shared swarm level changes mid-decode: the merged weights must follow
        gen = torch.Generator().manual_seed(9)
        pattern = {p: (torch.randn(b.out_features, 1, generator=gen), torch.randn(1, b.in_features, generator=gen)) for p, b in hive.core.named_banks("swarm")}
        monkeypatch.setattr(hive, "learn", lambda ex, steps, levels: hive.core.add_delta("swarm", 0, pattern))
        return _decode(hive, cached, learn_at)[0]

    want = learn_swarm(make_hive(), True, 8)
    hive = make_hive()
    with hive.core.routing.merging():
        got = learn_swarm(hive, True, 8)
    assert want != plain  # the swarm step changed the tokens after step 8
    assert got == want


def test_the_engine_decodes_on_merged_weights_when_told_to():
    texts = {}
    for merge in (False, True):
        hive = make_hive()
        engine = Engine(hive, None, Settings(max_tokens=16, merge_shared=merge)).start()
        try:
            texts[merge] = [_complete(engine, agent, PROMPT, 8)[1] for agent in ("ann", "bob")]
        finally:
            engine.stop()
        assert any(getattr(m, "merged", None) is not None for m in hive.model.modules()) == merge
    assert texts[True] == texts[False] and texts[False][0] != texts[False][1]
