"""Durability of ``lorahive serve``: a real server SIGKILLed under load resumes with every
acknowledged feedback event applied exactly once.

The server runs as a subprocess (``python -m lorahive.cli.main serve``) over a one-tick run of
the tiny random Llama; three ``openai`` clients send completions and feedback (corrections,
high and low rewards) until the test kills the server right after its first checkpoint and
a few more acknowledgements. Then: the checkpoint's ledger mark splits the acknowledged events
into applied (at or below it) and queued (above it), both present; ``lorahive resume`` is
refused; a restarted server learns the queued ones again (``serve_start.replayed``), takes
more feedback, and stops cleanly (after which ``lorahive resume`` is allowed). At the end every teaching feedback row has exactly one
``serve_learn`` row, and each agent's optimizer step count on its own level grew by exactly
its number of teaching events — learning lost or applied twice would change the count.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
from safetensors.torch import load_file

from lorahive.runtime import run as runs
from lorahive.runtime.rundir import RunDirError
from lorahive.store import checkpoint
from tiny_runs import tiny_config

CLI = [sys.executable, "-m", "lorahive.cli.main"]
PROMPTS = ["Question: what colour is the sky? Answer:", "The capital of France is", "Sports: the team"]
AGENTS = ["agent0", "agent1", "agent2"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(run: Path, port: int, log: Path) -> subprocess.Popen:
    args = ["serve", str(run), "--port", str(port), "--max-tokens", "8", "--tick-every", "3", "--checkpoint-every", "4", "--checkpoint-seconds", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([*CLI, *args], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start: " + log.read_text()[-3000:])


def _rows(run: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(run / "ledger.sqlite", timeout=30)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def _events(run: Path, kind: str) -> list[tuple[int, dict]]:
    return [(i, json.loads(d)) for i, d in _rows(run, "SELECT id, detail FROM events WHERE kind = ? ORDER BY id", (kind,))]


def _agent_steps(run: Path) -> list[int]:
    """Each slot's AdamW step count on the per-agent level, from the checkpoint on disk."""
    optim = load_file(str(checkpoint.locate(run) / "optim" / "agent.safetensors"))
    return optim[sorted(k for k in optim if k.endswith(":step"))[0]].tolist()


class Load:
    """Clients that complete and give feedback until stopped or the server goes away; keeps every acknowledgement."""

    def __init__(self, port: int, clients: int = 3) -> None:
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        self.acks: list[dict] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            agent, prompt = AGENTS[(i + n) % 3], PROMPTS[n % 3]
            body: dict = [{"correction": " blue"}, {"reward": 1.0}, {"reward": 0.0}, {"correction": " Paris", "reward": 0.1}][(i + n) % 4]
            n += 1
            try:
                r = self.client.completions.create(model=agent, prompt=prompt, max_tokens=3)
                ack = self.client.post("/feedback", body={"completion_id": r.id, **body}, cast_to=object)
            except (openai.APIError, httpx.HTTPError):
                return  # the server went away
            assert isinstance(ack, dict) and ack["recorded"] is True
            self.acks.append(ack)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_sigkill_under_load_then_restart_applies_every_acknowledged_feedback_once(base_dir, tmp_path):
    run, log = tmp_path / "run", tmp_path / "serve.log"
    runs.start(tiny_config(base_dir, ["ticks=1"]), run)
    steps_before = _agent_steps(run)
    checkpoints_before = len(_rows(run, "SELECT id FROM checkpoints"))

    # 1. load, then SIGKILL just after the server's first checkpoint and a few more acknowledgements
    port = _port()
    proc = _serve(run, port, log)
    load = Load(port)
    deadline = time.time() + 180
    while len(_rows(run, "SELECT id FROM checkpoints")) == checkpoints_before:
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.01)
    seen = len(load.acks)
    while len(load.acks) < seen + 3:
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    load.join()
    acked = list(load.acks)

    # 2. what the crash left: every acknowledgement is in the ledger; the checkpoint's mark splits them
    assert _rows(run, "PRAGMA integrity_check")[0][0] == "ok"
    line = json.loads((checkpoint.locate(run) / "state.json").read_text())["ledger"]["max_ids"]["events"]
    rows = {d["feedback_id"]: (i, d) for i, d in _events(run, "serve_feedback")}
    assert all(a["id"] in rows for a in acked)
    teaching = [a["id"] for a in acked if a["learning"] == "queued"]
    applied = [f for f in teaching if rows[f][0] <= line]
    queued = [f for f in teaching if rows[f][0] > line]
    print(f"\nacknowledged {len(acked)} feedback events ({len(teaching)} teaching): {len(applied)} applied, {len(queued)} queued at the kill")
    assert applied and queued
    assert {a["source"] for a in acked} == {"correction", "reward", "negative"}
    with pytest.raises(RunDirError, match="lorahive serve"):
        runs.resume(run)  # a tick loop would checkpoint over the queued feedback: refused

    # 3. restart: the queued events (and any recorded but not acknowledged) are learned again, once
    proc = _serve(run, port, log)
    start = _events(run, "serve_start")[-1][1]
    recorded_after = [f for f, (i, d) in rows.items() if i > line and d["learning"]]
    assert start["replayed"] == recorded_after and set(queued) <= set(start["replayed"])
    load = Load(port, clients=2)
    time.sleep(3)
    load.join()
    assert load.acks, "the restarted server took no feedback"
    proc.send_signal(signal.SIGTERM)  # a clean stop writes the last checkpoint
    assert proc.wait(120) == 0, log.read_text()[-3000:]

    # 4. exactly once: one serve_learn row per teaching feedback row, and the optimizer agrees
    feedback = [d for _, d in _events(run, "serve_feedback")]
    learned = Counter(d["feedback_id"] for _, d in _events(run, "serve_learn"))
    want = [d["feedback_id"] for d in feedback if d["learning"]]
    assert learned == Counter(want), "a teaching feedback event is learned twice or not at all"
    replays = {d["feedback_id"] for _, d in _events(run, "serve_learn") if d["replay"]}
    assert set(queued) <= replays and not replays & set(applied)
    per_agent = Counter(d["agent"] for d in feedback if d["learning"])
    steps_after = _agent_steps(run)
    grown = {a: steps_after[k] - steps_before[k] for k, a in enumerate(AGENTS)}
    assert grown == {a: per_agent[a] for a in AGENTS}, (grown, per_agent)
    consumed = [f for _, d in _events(run, "serve_tick") for f in d["feedback"]]
    assert len(consumed) == len(set(consumed)) and set(consumed) <= set(want)  # no example in two swarm updates
    assert _rows(run, "SELECT COUNT(*) FROM events WHERE kind = 'serve_tick'")[0][0] >= 1
    assert runs.resume(run)["ticks"] == 1  # after a clean stop the tick loop may resume from the server's checkpoint
