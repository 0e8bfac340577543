"""The decode worker: one thread owns the model; requests of many agents decode together.

Every model call (decoding, learning) runs on this one thread, so the routing in force is
never raced on; a batch's routing is per row (each row its own agent's levels). Between two
decode steps the worker takes new requests in (continuous batching: a request joins at the
next step and leaves when it is done), writes feedback to the ledger and acknowledges it,
then turns queued corrections into learning on the agent's own levels. The decode batch
keeps a KV cache that rows join and leave (:class:`~lorahive.serve.decode.CachedDecoder`);
every write to the levels drops it, so the next step rebuilds it with the new weights.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorahive.learning.batching import encode_answer, encode_prompt
from lorahive.observe.ledger import Ledger
from lorahive.runtime.hive import Hive
from lorahive.serve.decode import CachedDecoder, next_tokens
from lorahive.serve.durable import Keeper, Queued
from lorahive.serve.feedback import lesson
from lorahive.serve.swarm_feed import SwarmFeed

if TYPE_CHECKING:
    from lorahive.runtime.run import Run

log = logging.getLogger("lorahive.serve")

#: What a sequence reports: ("delta", text) while decoding, then ("done", finish_reason) or ("error", message).
Event = tuple[str, str]


class ServeError(Exception):
    """A request the service refuses: an HTTP status, an OpenAI error type and a message."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


@dataclass(frozen=True)
class Settings:
    """Limits and learning of the service (``lorahive serve`` options)."""

    max_tokens: int = 256  # the most tokens one request may ask for
    default_max_tokens: int = 16  # when a request gives none
    max_batch: int = 16  # rows decoded together
    feedback_steps: int = 1  # learning steps per taught example
    feedback_levels: tuple[str, ...] | None = None  # None: the trainable per-agent levels
    max_completions: int = 10_000  # completions remembered for feedback
    reward_threshold: float = 0.5  # a reward at least this, without a correction, teaches the completion itself
    checkpoint_every: int = 32  # learned feedback events between two checkpoints (over a run directory)
    checkpoint_seconds: float = 60.0  # the longest a learned event waits for a checkpoint
    tick_every: int = 16  # taught examples per serve tick (swarm proposals); 0: no serve ticks
    kv_cache: bool = True  # keep the decode batch's KV cache (serve/decode.py); False: every step recomputes every row
    merge_shared: bool = False  # decode with the shared levels folded into the weights (adapters/merge.py): faster, rounded once in bf16


@dataclass(eq=False)
class Sequence_:
    """One request being decoded."""

    id: str
    agent: str
    prompt: str
    ids: list[int]
    max_tokens: int
    emit: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    out: list[int] = field(default_factory=list)
    sent: str = ""
    cancelled: bool = False
    started: float = field(default_factory=time.perf_counter)  # when the request was made

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Feedback:
    completion_id: str
    reward: float | None
    correction: str | None
    only_agent: str | None = None  # an agent key's agent: feedback on another agent's completion is refused


_STOP = object()


class Engine:
    """The decode worker over ``hive``; feedback goes to the ledger at ``ledger_path`` (if any).

    With ``run`` (a run directory opened by :func:`~lorahive.serve.load.engine_for_run`) the
    worker also checkpoints, replays at startup and runs serve ticks; ``hive`` is ``run.hive``.
    """

    def __init__(self, hive: Hive, ledger_path: str | Path | None = None, settings: Settings | None = None, tick: int = 0, run: Run | None = None) -> None:
        self.hive = hive
        self.run = run
        # the request side's own tokenizer: a Rust tokenizer is not to be shared across threads
        self._request_tok = copy.deepcopy(hive.tokenizer)
        self._request_lock = threading.Lock()
        self.settings = settings or Settings()
        self.tick = tick
        self.ledger_path = Path(ledger_path) if ledger_path is not None else None
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.gate = threading.Lock()  # held by the worker while it takes jobs and steps; a test holds it to line requests up
        self._failed: BaseException | None = None
        self._completions: OrderedDict[str, tuple[str, str, str]] = OrderedDict()  # id → (agent, prompt, answer); worker only
        self._arrived: dict[str, float] = {}  # feedback id → when its request arrived (feedback lag); worker only
        self.learn_levels = self._learn_levels()
        self.decoder = CachedDecoder(hive) if self.settings.kv_cache else None
        self.recent: deque[tuple[str, ...]] = deque(maxlen=1000)  # the request ids of each recent decode step
        self.timeline: deque[tuple[str, float]] = deque(maxlen=5000)  # ("step" | "tick" | "checkpoint", seconds), in order
        self.keeper: Keeper | None = None
        self.feed: SwarmFeed | None = None
        self.stats: dict[str, float] = {
            "requests": 0, "steps": 0, "tokens": 0, "max_batch_seen": 0, "rows": 0, "feedback": 0, "learned": 0,
            "feedback_lag_seconds": 0.0, "feedback_lag_max": 0.0,
            "decode_seconds": 0.0, "learn_seconds": 0.0, "replayed": 0, "checkpoints": 0, "checkpoint_seconds": 0.0,
            "serve_ticks": 0, "tick_seconds": 0.0, "tick_stall_max": 0.0,
        }

    def _learn_levels(self) -> list[str]:
        if self.settings.feedback_levels is not None:
            self.hive.core.check_levels(self.settings.feedback_levels)
            return list(self.settings.feedback_levels)
        return [lv.name for lv in self.hive.levels if lv.scope == "agent" and lv.trainable]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lorahive-decode", daemon=True)
            self._thread.start()
            self._ready.wait()
            if self._failed is not None:
                raise self._failed
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._jobs.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    # ------------------------------------------------------------------ what the routes call
    @property
    def agents(self) -> list[str]:
        return list(self.hive.agents)

    def check_agent(self, agent: str) -> None:
        if agent not in self.hive.agents:
            known = ", ".join(self.hive.agents)
            raise ServeError(404, f"The model {agent!r} does not exist; the models (agents) are: {known}", "invalid_request_error", "model", "model_not_found")

    def make_sequence(self, agent: str, prompt: str, max_tokens: int | None, emit: Callable[[Event], None], stop: Sequence[str] = (), kind: str = "cmpl") -> Sequence_:
        """Check a request and tokenize its prompt (on the caller's thread); nothing is queued."""
        self.check_agent(agent)
        s = self.settings
        n = s.default_max_tokens if max_tokens is None else max_tokens
        if n < 1:
            raise ServeError(400, f"max_tokens must be at least 1, got {n}", param="max_tokens")
        if n > s.max_tokens:
            raise ServeError(400, f"max_tokens is {n}; this server allows at most {s.max_tokens}", param="max_tokens", code="max_tokens_too_large")
        limit = self.hive.core.max_length
        if len(prompt) > 16 * limit:
            raise ServeError(400, f"the prompt has {len(prompt)} characters; the model's context holds {limit} tokens", param="messages", code="context_length_exceeded")
        with self._request_lock:
            ids = encode_prompt(self._request_tok, prompt)
        if not ids:
            raise ServeError(400, "the prompt is empty", param="prompt")
        if len(ids) + n > limit:
            raise ServeError(
                400, f"the prompt has {len(ids)} tokens and max_tokens is {n}: {len(ids) + n} > the model's context of {limit} tokens",
                param="messages", code="context_length_exceeded",
            )
        return Sequence_(f"{kind}-{uuid.uuid4().hex}", agent, prompt, ids, n, emit, tuple(x for x in stop if x))

    def chat_prompt(self, messages: list[Any]) -> str:
        """The prompt text of a chat (:func:`~lorahive.serve.protocol.chat_prompt`), on the request side's tokenizer."""
        from lorahive.serve.protocol import chat_prompt

        with self._request_lock:
            return chat_prompt(self._request_tok, messages)

    def submit(self, seq: Sequence_) -> None:
        self._alive()
        self.stats["requests"] += 1
        self._jobs.put(("gen", seq))

    def feedback(self, fb: Feedback) -> Future[dict[str, Any]]:
        """Queue feedback; the future resolves once it is in the ledger (or fails with a :class:`ServeError`)."""
        self._alive()
        fut: Future[dict[str, Any]] = Future()
        self._jobs.put(("fb", fb, fut, time.perf_counter()))
        return fut

    @property
    def queued(self) -> int:
        """Jobs (requests, feedback) not yet taken in by the worker."""
        return self._jobs.qsize()

    def _alive(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise ServeError(503, "the decode worker is not running", "server_error")

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        try:
            ledger = Ledger(self.ledger_path, durable=True) if self.ledger_path is not None else None
            if self.run is not None and ledger is not None:
                self._recover(self.run, ledger)
        except BaseException as e:
            log.exception("the decode worker could not start")
            self._failed = e
            self._ready.set()
            return
        self._ready.set()
        waiting: deque[Sequence_] = deque()
        active: list[Sequence_] = []
        try:
            while True:
                jobs = [] if (active or waiting or (self.feed is not None and self.feed.busy)) else self._wait()
                with self.gate:
                    running = self._iteration(ledger, jobs, waiting, active)
                if running is None:
                    return
                active = running
        finally:
            if ledger is not None:
                ledger.close()

    def _wait(self) -> list[Any]:
        """The next job, or none once a timed checkpoint is due (the worker is idle meanwhile)."""
        timeout = self.keeper.wait() if self.keeper is not None else None
        try:
            return [self._jobs.get(timeout=timeout)]
        except queue.Empty:
            return []

    def _recover(self, run: Run, ledger: Ledger) -> None:
        """Take the run's ledger, learn again the acknowledged feedback no checkpoint holds, set up serve ticks."""
        s = self.settings
        self.keeper = Keeper(run, s.checkpoint_every, s.checkpoint_seconds)
        rec = self.keeper.recover(ledger)
        for q in rec.replay:
            self._learn(ledger, q, replay=True)
        self.stats["replayed"] = len(rec.replay)
        if rec.replay:
            self._checkpoint()
        level = run.cfg.swarm_level
        if s.tick_every and run.swarm.method.name == "hive" and self.hive.stack.get(level).trainable:
            self.feed = SwarmFeed(run.swarm, s.tick_every, rec.serve_ticks, rec.waiting)
        if rec.replay or rec.deleted:
            log.info("recovered: %d feedback events learned again, %d rows of lost learning deleted", len(rec.replay), rec.deleted)

    def _iteration(self, ledger: Ledger | None, jobs: list[Any], waiting: deque[Sequence_], active: list[Sequence_]) -> list[Sequence_] | None:
        """Take the queued jobs in, learn from feedback, one serve-tick unit, a due checkpoint, admit, one decode step; ``None``: stop."""
        while True:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        learn: list[Queued] = []
        stopping = False
        for job in jobs:
            if stopping:
                self._refuse(job)
            elif job is _STOP:
                stopping = True
            elif job[0] == "gen":
                waiting.append(job[1])
            else:
                n = len(learn)
                self._take_feedback(ledger, job[1], job[2], learn)
                if len(learn) > n:
                    self._arrived[learn[-1].feedback_id] = job[3]
        for q in learn:  # every event acknowledged above is learned before any checkpoint: see durable.py
            self._learn(ledger, q)
        if stopping:
            for seq in [*active, *waiting]:
                seq.emit(("error", "the server is shutting down"))
            if self.keeper is not None and self.keeper.first_change is not None:
                self._checkpoint()
            return None
        if self.feed is not None and self.feed.busy:
            self._tick_unit(ledger)
        if self.keeper is not None and self.keeper.due():
            self._checkpoint()
        while waiting and len(active) < self.settings.max_batch:
            active.append(waiting.popleft())
        active = [s for s in active if not s.cancelled]
        if active:
            active = self._step(active)
        if not active:
            self._drop_cache()  # idle: the cache's memory is given back
        return active

    def _refuse(self, job: Any) -> None:
        """A job that came after the stop: refused, never silently dropped."""
        if job is _STOP:
            return
        if job[0] == "gen":
            job[1].emit(("error", "the server is shutting down"))
        else:
            job[2].set_exception(ServeError(503, "the server is shutting down; the feedback was not recorded", "server_error"))

    def _tick_unit(self, ledger: Ledger | None) -> None:
        assert self.feed is not None
        t = time.perf_counter()
        try:
            record = self.feed.step(ledger)
        except Exception:
            log.exception("a serve tick failed; its examples are dropped from the swarm's queue")
            self.feed.tick = None
            record = None
            self._drop_cache()
        spent = time.perf_counter() - t
        self.timeline.append(("tick", spent))
        self.stats["tick_seconds"] += spent
        self.stats["tick_stall_max"] = max(self.stats["tick_stall_max"], spent)
        if record is not None:  # the swarm level was written
            self._drop_cache()
            self.stats["serve_ticks"] += 1
            if self.keeper is not None:
                self.keeper.changed(learned=False)

    def _drop_cache(self) -> None:
        """The levels were written (or no row is left): the decode batch's cache — keys, values, prepared weights — is rebuilt at the next step."""
        if self.decoder is not None:
            self.decoder.reset()

    def _checkpoint(self) -> None:
        assert self.keeper is not None
        try:
            spent = self.keeper.save()
        except Exception:
            log.exception("the checkpoint could not be written; the learning since the last one is replayed after a restart")
            return
        self.timeline.append(("checkpoint", spent))
        self.stats["checkpoints"] += 1
        self.stats["checkpoint_seconds"] += spent

    def _take_feedback(self, ledger: Ledger | None, fb: Feedback, fut: Future[dict[str, Any]], learn: list[Queued]) -> None:
        try:
            done = self._completions.get(fb.completion_id)
            if done is None:
                raise ServeError(404, f"no completion {fb.completion_id!r} is known to this server (it keeps the last {self.settings.max_completions}, and none from before a restart)", param="completion_id", code="completion_not_found")
            agent, prompt, answer = done
            if fb.only_agent is not None and agent != fb.only_agent:
                raise ServeError(403, f"this API key is for agent {fb.only_agent!r}; completion {fb.completion_id!r} is another agent's", "permission_error", "completion_id", "permission_denied")
            taught = lesson(answer, fb.reward, fb.correction, self.settings.reward_threshold)
            if fb.correction is not None:
                size = len(encode_prompt(self.hive.tokenizer, prompt)) + len(encode_answer(self.hive.tokenizer, fb.correction))
                if size > self.hive.core.max_length:
                    raise ServeError(400, f"prompt + correction is {size} tokens; the model's context holds {self.hive.core.max_length}", param="correction", code="context_length_exceeded")
            fid = f"fb-{uuid.uuid4().hex}"
            learns = taught.learns and bool(self.learn_levels)
            row = 0
            if ledger is not None:
                row = ledger.record_event(self.tick, "serve_feedback", {
                    "feedback_id": fid, "completion_id": fb.completion_id, "agent": agent, "reward": fb.reward,
                    "correction": fb.correction, "prompt": prompt, "answer": answer, "learning": learns, "source": taught.source,
                })  # committed (and fsynced) before the acknowledgement below
            self.stats["feedback"] += 1
            if learns:
                assert taught.answer is not None
                learn.append(Queued(row, fid, agent, prompt, taught.answer, taught.source))
            elif self.keeper is not None:
                self.keeper.changed(learned=False)  # a checkpoint moves the line past it too: see durable.py
            fut.set_result({
                "id": fid, "object": "feedback", "completion_id": fb.completion_id, "model": agent, "recorded": True,
                "learning": "queued" if learns else "none", "source": taught.source,
            })  # fmt: skip
        except ServeError as e:
            fut.set_exception(e)
        except Exception as e:  # the ledger could not be written: not acknowledged
            log.exception("feedback failed")
            fut.set_exception(ServeError(500, f"the feedback could not be recorded: {e}", "server_error"))

    def _learn(self, ledger: Ledger | None, q: Queued, replay: bool = False) -> None:
        """Learn one taught example on the agent's own levels; it then waits for the next serve tick."""
        t = time.perf_counter()
        try:
            losses = self.hive.learn({q.agent: [(q.prompt, q.answer)]}, steps=self.settings.feedback_steps, levels=self.learn_levels)
            detail: dict[str, Any] = {"feedback_id": q.feedback_id, "agent": q.agent, "levels": self.learn_levels, "steps": self.settings.feedback_steps, "loss": losses.get(q.agent), "source": q.source, "replay": replay}
            self.stats["learned"] += 1
        except Exception as e:
            log.exception("learning from feedback failed")
            detail = {"feedback_id": q.feedback_id, "agent": q.agent, "error": str(e), "replay": replay}
        self._drop_cache()
        detail["seconds"] = round(time.perf_counter() - t, 4)
        self.stats["learn_seconds"] += detail["seconds"]
        if self.keeper is not None:
            self.keeper.changed()
        arrived = self._arrived.pop(q.feedback_id, None)
        if arrived is not None:  # feedback lag: from the request to its learning done
            lag = time.perf_counter() - arrived
            detail["lag_seconds"] = round(lag, 4)
            self.stats["feedback_lag_seconds"] += lag
            self.stats["feedback_lag_max"] = max(self.stats["feedback_lag_max"], lag)
        log.info("feedback learned", extra={"event": "feedback", **{k: v for k, v in detail.items() if k != "levels"}})
        if self.feed is not None and not replay:  # a replayed example is already among the recovery's waiting ones
            self.feed.add(q)
        if ledger is not None:
            try:
                ledger.record_event(self.tick, "serve_learn", detail)
            except Exception:
                log.exception("could not record learning")

    def _step(self, active: list[Sequence_]) -> list[Sequence_]:
        """One decode step for every active sequence; returns those still running."""
        t = time.perf_counter()
        try:
            rows, agents = [s.ids + s.out for s in active], [s.agent for s in active]
            with self.hive.core.routing.merging(self.settings.merge_shared):
                toks = next_tokens(self.hive, rows, agents) if self.decoder is None else self.decoder.step(active, rows, agents)
        except Exception as e:
            log.exception("decode step failed")
            self._drop_cache()
            for s in active:
                s.emit(("error", f"decoding failed: {e}"))
            return []
        self.stats["steps"] += 1
        self.stats["decode_seconds"] += time.perf_counter() - t
        self.timeline.append(("step", time.perf_counter() - t))
        self.recent.append(tuple(s.id for s in active))
        self.stats["tokens"] += len(active)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(active))
        eos = self.hive.tokenizer.eos_token_id
        running = []
        for s, tok in zip(active, toks, strict=True):
            finish = None
            if eos is not None and tok == eos:
                finish = "stop"
            else:
                s.out.append(tok)
                if len(s.out) >= s.max_tokens:
                    finish = "length"
            text = str(self.hive.tokenizer.decode(s.out, skip_special_tokens=True))
            for stop in s.stop:
                at = text.find(stop)
                if at >= 0:
                    text, finish = text[:at], "stop"
            partial = finish is None and text.endswith("\ufffd")  # half a character: wait for the rest
            if not partial and text.startswith(s.sent) and len(text) > len(s.sent):
                s.emit(("delta", text[len(s.sent) :]))
                s.sent = text
            if finish is None:
                running.append(s)
            else:
                self._remember(s.id, (s.agent, s.prompt, s.sent))
                s.emit(("done", finish))
                log.info("completion", extra={
                    "event": "completion", "id": s.id, "agent": s.agent, "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": len(s.out), "finish": finish, "seconds": round(time.perf_counter() - s.started, 4),
                })  # fmt: skip
        self.stats["rows"] = len(running)
        return running

    def _remember(self, cid: str, record: tuple[str, str, str]) -> None:
        self._completions[cid] = record
        while len(self._completions) > self.settings.max_completions:
            self._completions.popitem(last=False)
