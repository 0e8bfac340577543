"""``lorahive serve``: the OpenAI-compatible service, driven by the official ``openai`` client.

A tiny random Llama (conftest.py) with two agents whose levels differ; the server runs
in-process (uvicorn in a thread on an ephemeral loopback port, or FastAPI's TestClient for
the pure-HTTP refusals).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import make_model, make_tokenizer, randomize_b, small_stack
from lorahive import Hive
from lorahive.cli.main import app
from lorahive.runtime import run as runs
from lorahive.serve import Engine, Settings, create_app
from lorahive.serve.keys import KeyStore
from lorahive.serve.load import engine_for_run
from lorahive.serve.protocol import Message, chat_prompt
from tiny_runs import tiny_config

PROMPT = "Question: what colour is the sky? Answer:"
OTHER = "The capital of France is"


def make_hive() -> Hive:
    tok = make_tokenizer()
    hive = Hive(make_model(len(tok)), tok, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    randomize_b(hive, scale=0.3)  # the agents' levels differ, so do their answers
    return hive


@contextmanager
def serving(engine: Engine, keys: KeyStore | None = None, api_key: str = "x") -> Iterator[openai.OpenAI]:
    """The engine behind uvicorn on an ephemeral loopback port; an ``openai`` client pointed at it."""
    engine.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, keys), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0, timeout=60)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.stop()
        sock.close()


def alone(engine: Engine, prompt: str, agent: str, n: int) -> str:
    """What ``Hive.generate`` answers for ``agent`` alone (the worker held off the model meanwhile)."""
    with engine.gate:
        return engine.hive.generate([prompt], [agent], max_new_tokens=n)[0]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Engine, openai.OpenAI]]:
    engine = Engine(make_hive(), None, Settings(max_tokens=64))
    with serving(engine) as client:
        yield engine, client


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.002)


# ---------------------------------------------------------------------- the OpenAI surface
def test_models_lists_the_agents(served):
    engine, client = served
    assert [m.id for m in client.models.list()] == ["ann", "bob"]
    assert client.models.retrieve("bob").id == "bob"


def test_completion_equals_generate_and_has_the_openai_shape(served):
    engine, client = served
    r = client.completions.create(model="ann", prompt=PROMPT, max_tokens=8)
    assert r.object == "text_completion" and r.model == "ann" and r.id and r.created > 0
    assert r.choices[0].text == alone(engine, PROMPT, "ann", 8)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage is not None and r.usage.prompt_tokens == len(engine.hive.tokenizer(PROMPT)["input_ids"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert alone(engine, PROMPT, "ann", 8) != alone(engine, PROMPT, "bob", 8)  # the agents really differ


def test_chat_completion_joins_roles_without_a_template(served):
    engine, client = served
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what colour is the sky?"}]
    r = client.chat.completions.create(model="bob", messages=messages, max_tokens=6)  # type: ignore[arg-type]
    prompt = "system: Be brief.\nuser: what colour is the sky?\nassistant:"
    assert chat_prompt(engine.hive.tokenizer, [Message(**m) for m in messages]) == prompt
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == alone(engine, prompt, "bob", 6)


def test_chat_template_is_applied_when_the_tokenizer_has_one():
    tok = make_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert chat_prompt(tok, [Message(role="user", content="hi")]) == "<user>hi<assistant>"


def test_streaming_gives_the_same_text_as_non_streaming(served):
    engine, client = served
    whole = client.completions.create(model="bob", prompt=OTHER, max_tokens=10).choices[0].text
    chunks = list(client.completions.create(model="bob", prompt=OTHER, max_tokens=10, stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")

    messages = [{"role": "user", "content": "hello"}]
    text = client.chat.completions.create(model="ann", messages=messages, max_tokens=10).choices[0].message.content  # type: ignore[arg-type]
    parts = list(client.chat.completions.create(model="ann", messages=messages, max_tokens=10, stream=True))  # type: ignore[arg-type]
    assert parts[0].choices[0].delta.role == "assistant"
    assert all(p.object == "chat.completion.chunk" and p.id == parts[0].id for p in parts)
    assert "".join(p.choices[0].delta.content or "" for p in parts) == text
    assert parts[-1].choices[0].finish_reason in ("length", "stop")


def test_streaming_is_server_sent_events_ending_in_done(served):
    engine, client = served
    raw = client.with_raw_response.completions.create(model="ann", prompt=PROMPT, max_tokens=3, stream=True)
    body = raw.http_response.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


# ---------------------------------------------------------------------- batching across agents
def test_concurrent_requests_of_two_agents_decode_in_one_batch(served):
    engine, client = served
    jobs = [("ann", PROMPT, 12), ("bob", PROMPT, 12), ("ann", OTHER, 7), ("bob", "positive negative", 9)]
    expected = [alone(engine, p, a, n) for a, p, n in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool, engine.gate:  # the worker waits until all four are queued
        futures = [pool.submit(client.completions.create, model=a, prompt=p, max_tokens=n) for a, p, n in jobs]
        wait_for(lambda: engine._jobs.qsize() >= len(jobs) - 1)  # one may already wait on the gate
        time.sleep(0.05)
    answers = [f.result() for f in futures]
    assert [r.choices[0].text for r in answers] == expected
    ids = {r.id for r in answers}
    assert any(set(step) == ids for step in engine.recent)  # all four rows, two agents, in one forward


def test_a_request_joins_a_batch_that_is_already_decoding(served):
    engine, client = served
    expected_long, expected_short = alone(engine, PROMPT, "ann", 40), alone(engine, OTHER, "bob", 5)
    with ThreadPoolExecutor(2) as pool:
        steps = engine.stats["steps"]
        long = pool.submit(client.completions.create, model="ann", prompt=PROMPT, max_tokens=40)
        wait_for(lambda: engine.stats["steps"] >= steps + 3)
        short = pool.submit(client.completions.create, model="bob", prompt=OTHER, max_tokens=5)
        long_r, short_r = long.result(), short.result()
    assert (long_r.choices[0].text, short_r.choices[0].text) == (expected_long, expected_short)
    assert long_r.choices[0].finish_reason == "length" and long_r.usage is not None and long_r.usage.completion_tokens == 40
    assert [s for s in engine.recent if s == (long_r.id,)]  # it ran alone at first,
    assert [s for s in engine.recent if set(s) == {long_r.id, short_r.id}]  # then the newcomer joined it


# ---------------------------------------------------------------------- feedback into learning
def test_a_correction_changes_that_agent_only_and_is_in_the_ledger_first(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    engine = Engine(make_hive(), ledger, Settings(max_tokens=32, feedback_steps=20))
    with serving(engine) as client:
        first = client.completions.create(model="ann", prompt=PROMPT, max_tokens=6)
        bob_before = client.completions.create(model="bob", prompt=PROMPT, max_tokens=6).choices[0].text
        ack = client.post("/feedback", body={"completion_id": first.id, "reward": -1.0, "correction": " blue"}, cast_to=object)
        assert isinstance(ack, dict) and ack["recorded"] is True and ack["learning"] == "queued" and ack["model"] == "ann"
        with sqlite3.connect(ledger) as db:  # acknowledged: it is already in the ledger
            rows = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'serve_feedback'")]
        assert [(r["completion_id"], r["agent"], r["correction"], r["reward"]) for r in rows] == [(first.id, "ann", " blue", -1.0)]
        after = client.completions.create(model="ann", prompt=PROMPT, max_tokens=6).choices[0].text
        bob_after = client.completions.create(model="bob", prompt=PROMPT, max_tokens=6).choices[0].text
        assert after != first.choices[0].text
        assert after == " blue"  # twenty steps on the correction: it is now the agent's answer
        assert bob_after == bob_before
        low_reward = client.post("/feedback", body={"completion_id": first.id, "reward": 0.2}, cast_to=object)
        assert isinstance(low_reward, dict) and (low_reward["learning"], low_reward["source"]) == ("none", "negative")
    with sqlite3.connect(ledger) as db:
        learned = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'serve_learn'")]
    assert [(r["agent"], r["feedback_id"], r["levels"], r["source"]) for r in learned] == [("ann", ack["id"], ["agent"], "correction")]


# ---------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def http(served) -> Iterator[TestClient]:
    engine, _ = served
    with TestClient(create_app(engine)) as c:
        yield c


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_unknown_agent_is_404_naming_the_agents(http, served):
    err = _error(http.post("/v1/chat/completions", json={"model": "zed", "messages": [{"role": "user", "content": "hi"}]}), 404)
    assert "ann" in err["message"] and "bob" in err["message"] and err["code"] == "model_not_found"
    _error(http.post("/v1/completions", json={"model": "zed", "prompt": "hi"}), 404)
    _error(http.get("/v1/models/zed"), 404)
    with pytest.raises(openai.NotFoundError):
        served[1].completions.create(model="zed", prompt="hi", max_tokens=2)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",  # not UTF-8
        b'{"model": "ann", "prompt": "\xc3\x28"}',  # invalid UTF-8 inside a string
        b"[]",
        b'{"model": "ann"}',  # no prompt
        b'{"prompt": "hi"}',  # no model
        b'{"model": "ann", "prompt": 3}',
        b'{"model": "ann", "prompt": "hi", "max_tokens": "many"}',
        b'{"model": "ann", "prompt": ["a", "b"]}',
        b'{"model": "ann", "prompt": "hi", "n": 2}',
        b'{"model": "ann", "prompt": ""}',
    ],
)
def test_malformed_completion_bodies_are_400(http, body):
    _error(http.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 400)


def test_malformed_chat_bodies_are_400(http):
    for body in ({"model": "ann"}, {"model": "ann", "messages": []}, {"model": "ann", "messages": [{"content": "hi"}]}, {"model": "ann", "messages": "hi"}):
        _error(http.post("/v1/chat/completions", json=body), 400)


def test_max_tokens_beyond_the_cap_or_below_one_is_400(http, served):
    err = _error(http.post("/v1/completions", json={"model": "ann", "prompt": "hi", "max_tokens": 10**9}), 400)
    assert err["param"] == "max_tokens" and "64" in err["message"]
    _error(http.post("/v1/completions", json={"model": "ann", "prompt": "hi", "max_tokens": 0}), 400)
    _error(http.post("/v1/chat/completions", json={"model": "ann", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 65}), 400)
    with pytest.raises(openai.BadRequestError):
        served[1].completions.create(model="ann", prompt="hi", max_tokens=100_000)


def test_oversized_prompts_are_400(http, served):
    limit = served[0].hive.core.max_length
    err = _error(http.post("/v1/completions", json={"model": "ann", "prompt": "Paris " * limit, "max_tokens": 4}), 400)
    assert err["code"] == "context_length_exceeded" and str(limit) in err["message"]
    _error(http.post("/v1/completions", json={"model": "ann", "prompt": "x" * (20 * limit)}), 400)  # refused before tokenizing


def test_bad_feedback_is_4xx(http):
    _error(http.post("/v1/feedback", json={"completion_id": "cmpl-nope", "reward": 1.0}), 404)
    _error(http.post("/v1/feedback", json={"completion_id": "cmpl-nope"}), 400)  # neither reward nor correction
    _error(http.post("/v1/feedback", json={"reward": 1.0}), 400)
    _error(http.post("/v1/feedback", content=b'{"completion_id": "c", "reward": NaN}', headers={"content-type": "application/json"}), 400)
    _error(http.post("/v1/feedback", json={"completion_id": "c", "correction": ""}), 400)
    _error(http.post("/v1/feedback", json={"completion_id": "c", "correction": "x" * 10**5}), 400)
    done = http.post("/v1/completions", json={"model": "bob", "prompt": PROMPT, "max_tokens": 2}).json()
    err = _error(http.post("/v1/feedback", json={"completion_id": done["id"], "correction": "Paris " * 200}), 400)
    assert err["code"] == "context_length_exceeded"


def test_nothing_above_crashes_the_server(http, served):
    _error(http.get("/v1/nowhere"), 404)
    _error(http.get("/v1/completions"), 405)
    assert http.get("/health").json()["status"] == "ok"
    r = http.post("/v1/completions", json={"model": "ann", "prompt": PROMPT, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == alone(served[0], PROMPT, "ann", 3)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "model": st.sampled_from(["ann", "bob", "zed", ""]) | JSON,
    "prompt": st.text(max_size=30) | JSON,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", ""]) | JSON, "content": st.text(max_size=20) | JSON}), max_size=3) | JSON,
    "max_tokens": st.integers(-3, 8) | st.integers(10**6, 10**20) | JSON,
    "stream": st.booleans() | JSON,
    "stop": st.text(max_size=3) | JSON,
    "completion_id": st.text(max_size=10) | JSON,
    "reward": st.floats(allow_nan=False, allow_infinity=False) | JSON,
    "correction": st.text(max_size=10) | JSON,
}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/feedback"]),
    body=st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=6).flatmap(
        lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})
    ) | JSON,
)
def test_no_request_body_crashes_the_server(http, path, body):
    r = http.post(path, json=body)
    assert r.status_code in (200, 400, 404), (r.status_code, r.text)
    if r.status_code != 200:
        _error(r, r.status_code)


def test_metrics_are_prometheus_text(http):
    http.post("/v1/completions", json={"model": "ann", "prompt": PROMPT, "max_tokens": 2})
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {line.split()[0]: float(line.split()[1]) for line in r.text.splitlines() if line and not line.startswith("#")}
    assert values["lorahive_requests_total"] >= 1 and values["lorahive_generated_tokens_total"] >= 2
    assert values["lorahive_batch_rows_max"] >= 1 and values["lorahive_queue_depth"] >= 0


# ---------------------------------------------------------------------- a run directory
def test_serve_opens_a_run_directory_at_its_checkpoint(tmp_path, base_dir):
    out = tmp_path / "run"
    runs.start(tiny_config(base_dir, ["ticks=1"]), out)
    engine = engine_for_run(out, Settings(max_tokens=8))
    assert engine.agents == ["agent0", "agent1", "agent2"] and engine.tick == 1
    expected = alone(engine, PROMPT, "agent1", 4)
    with serving(engine) as client:
        assert [m.id for m in client.models.list()] == engine.agents
        assert client.completions.create(model="agent1", prompt=PROMPT, max_tokens=4).choices[0].text == expected


def test_cli_refuses_what_is_not_a_run(tmp_path: Path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "no run" in result.output
    assert CliRunner().invoke(app, ["serve", str(tmp_path / "missing")]).exit_code == 2


# ---------------------------------------------------------------------- operations: structured logs, feedback lag
def test_json_logs_and_the_feedback_lag(tmp_path):
    import io
    import logging

    from lorahive.serve.logs import use_json_logs

    stream = io.StringIO()
    handler = use_json_logs(stream=stream)
    try:
        engine = Engine(make_hive(), tmp_path / "ledger.sqlite", Settings(max_tokens=16, feedback_steps=1))
        with serving(engine) as client:
            first = client.completions.create(model="ann", prompt=PROMPT, max_tokens=4)
            client.post("/feedback", body={"completion_id": first.id, "correction": " blue"}, cast_to=object)
            wait_for(lambda: engine.stats["learned"] >= 1)
            with TestClient(create_app(engine)) as http:
                text = http.get("/metrics").text
    finally:
        logger = logging.getLogger("lorahive.serve")
        logger.removeHandler(handler)
        logger.propagate = True
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [r for r in records if r.get("event") == "completion"]
    learned = [r for r in records if r.get("event") == "feedback"]
    assert [(r["id"], r["agent"], r["completion_tokens"] <= 4) for r in done] == [(first.id, "ann", True)]
    assert done[0]["seconds"] > 0 and done[0]["time"].endswith("Z") and done[0]["level"] == "info"
    assert len(learned) == 1 and learned[0]["agent"] == "ann" and learned[0]["source"] == "correction"
    assert learned[0]["lag_seconds"] >= learned[0]["seconds"] > 0  # the lag includes the learning itself
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values["lorahive_feedback_lag_seconds_max"] == pytest.approx(learned[0]["lag_seconds"], abs=1e-3)
    assert values["lorahive_feedback_lag_seconds_total"] >= values["lorahive_feedback_lag_seconds_max"] > 0
