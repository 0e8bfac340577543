"""API keys of ``lorahive serve``: ``lorahive keys add/list`` and the server's 401 / 403, with the ``openai`` client.

One tiny run directory (tests/tiny_runs.py, agents agent0..agent2) for the module; the server
runs in-process as in tests/test_serve.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lorahive.cli.main import app
from lorahive.runtime import run as runs
from lorahive.runtime.rundir import OWNED
from lorahive.serve import Settings, create_app
from lorahive.serve.keys import KeyStore
from lorahive.serve.load import engine_for_run
from test_serve import PROMPT, serving
from tiny_runs import tiny_config

KEY = re.compile(r"^lh-[A-Za-z0-9_-]{40,}$", re.M)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, base_dir) -> Path:
    out = tmp_path_factory.mktemp("keys") / "run"
    runs.start(tiny_config(base_dir, ["ticks=1"]), out)
    return out


def add(run_dir: Path, *args: str) -> str:
    r = CliRunner().invoke(app, ["keys", "add", str(run_dir), *args])
    assert r.exit_code == 0, r.output
    keys = KEY.findall(r.output)
    assert len(keys) == 1, r.output
    return keys[0]


def events(run_dir: Path, kind: str) -> list[dict]:
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        return [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = ?", (kind,))]


def test_keys_are_printed_once_and_only_their_hash_is_stored(tmp_path, base_dir):
    run = tmp_path / "run"
    runs.start(tiny_config(base_dir, ["ticks=1"]), run)
    key = add(run, "--agent", "agent1")
    admin = add(run, "--admin")
    text = (run / "keys.json").read_text()
    assert key not in text and admin not in text and key[3:] not in text
    stored = json.loads(text)["keys"]
    assert [(k["sha256"], k["role"]) for k in stored] == [(hashlib.sha256(key.encode()).hexdigest(), "agent1"), (hashlib.sha256(admin.encode()).hexdigest(), "admin")]
    assert all(k["created"] and k["id"] == k["sha256"][:12] for k in stored)
    listed = CliRunner().invoke(app, ["keys", "list", str(run)])
    assert listed.exit_code == 0 and key not in listed.output and admin not in listed.output
    assert all(k["id"] in listed.output for k in stored) and "agent1" in listed.output and "admin" in listed.output

    before = (run / "keys.json").read_bytes()
    r = CliRunner().invoke(app, ["keys", "add", str(run), "--agent", "zed"])
    assert r.exit_code == 2 and all(a in r.output for a in ("zed", "agent0", "agent1", "agent2")) and not KEY.search(r.output)
    assert (run / "keys.json").read_bytes() == before  # nothing written
    for args in ([], ["--agent", "agent0", "--admin"]):
        assert CliRunner().invoke(app, ["keys", "add", str(run), *args]).exit_code == 2
    assert (run / "keys.json").read_bytes() == before

    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["keys", "add", str(empty), "--admin"])
    assert r.exit_code == 2 and not KEY.search(r.output) and not list(empty.iterdir())
    assert CliRunner().invoke(app, ["keys", "add", str(tmp_path / "missing"), "--admin"]).exit_code == 2
    assert "keys.json" in OWNED  # --force clears it with the rest of the run


def test_wrong_or_missing_keys_are_401_and_other_agents_403(run_dir):
    ann = add(run_dir, "--agent", "agent1")
    admin = add(run_dir, "--admin")
    engine = engine_for_run(run_dir, Settings(max_tokens=8))
    with serving(engine, KeyStore(run_dir), api_key=ann) as client:
        for bad in ("wrong", "lh-" + "x" * 43, admin[:-1]):
            with pytest.raises(openai.AuthenticationError):
                client.with_options(api_key=bad).models.list()
            with pytest.raises(openai.AuthenticationError):
                client.with_options(api_key=bad).completions.create(model="agent1", prompt=PROMPT, max_tokens=2)
        assert engine.stats["requests"] == 0  # nothing was decoded for a refused request

        assert [m.id for m in client.models.list()] == ["agent1"]  # an agent key sees its agent only
        done = client.completions.create(model="agent1", prompt=PROMPT, max_tokens=3)
        chat = client.chat.completions.create(model="agent1", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert done.model == chat.model == "agent1"
        requests = engine.stats["requests"]
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="agent0", prompt=PROMPT, max_tokens=2)
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="agent2", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True)
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="zed", prompt=PROMPT, max_tokens=2)  # an unknown agent is not revealed
        with pytest.raises(openai.PermissionDeniedError):
            client.models.retrieve("agent0")
        assert engine.stats["requests"] == requests

        admin_client = client.with_options(api_key=admin)
        assert [m.id for m in admin_client.models.list()] == ["agent0", "agent1", "agent2"]
        other = admin_client.completions.create(model="agent0", prompt=PROMPT, max_tokens=2)
        for agent in ("agent0", "agent1", "agent2"):
            assert admin_client.completions.create(model=agent, prompt=PROMPT, max_tokens=2).model == agent

        with pytest.raises(openai.PermissionDeniedError):  # feedback on another agent's completion
            client.post("/feedback", body={"completion_id": other.id, "reward": -1.0, "correction": " blue"}, cast_to=object)
        with pytest.raises(openai.AuthenticationError):
            client.with_options(api_key="wrong").post("/feedback", body={"completion_id": done.id, "correction": " blue"}, cast_to=object)
        assert engine.stats["feedback"] == 0 and engine.stats["learned"] == 0
        assert events(run_dir, "serve_feedback") == [] and events(run_dir, "serve_learn") == []

        ack = client.post("/feedback", body={"completion_id": done.id, "reward": 1.0}, cast_to=object)
        assert isinstance(ack, dict) and ack["recorded"] is True and ack["model"] == "agent1"
        assert admin_client.post("/feedback", body={"completion_id": other.id, "reward": 0.5}, cast_to=object)["model"] == "agent0"  # type: ignore[index]
        assert [e["agent"] for e in events(run_dir, "serve_feedback")] == ["agent1", "agent0"]

        later = add(run_dir, "--agent", "agent2")  # the keys file is re-read when it changes
        assert [m.id for m in client.with_options(api_key=later).models.list()] == ["agent2"]


def test_without_keys_the_server_is_open_and_errors_have_the_openai_shape(tmp_path, base_dir, run_dir):
    open_run = tmp_path / "open"
    runs.start(tiny_config(base_dir, ["ticks=1"]), open_run)
    engine = engine_for_run(open_run, Settings(max_tokens=8)).start()
    try:
        with TestClient(create_app(engine, KeyStore(open_run))) as http:
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["agent0", "agent1", "agent2"]
        with TestClient(create_app(engine, KeyStore(run_dir))) as http:  # run_dir has keys
            for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}, {"authorization": "Bearer nope"}):
                r = http.get("/v1/models", headers=headers)
                assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
            r = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 401  # the key is checked before the body is read
            assert http.get("/health").status_code == 200  # outside /v1: no key needed
    finally:
        engine.stop()
