"""The OpenAI request bodies this service reads, and the response shapes it writes."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import PreTrainedTokenizerBase


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields this server does not use


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: str = Field(min_length=1, max_length=64)
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class _Generate(_Body):
    model: str
    max_tokens: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    n: int | None = None
    temperature: float | None = None  # decoding is greedy whatever this says

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("this server returns one choice per request (n = 1)")
        return v

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatRequest(_Generate):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Generate):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("prompt: give one prompt (a string, or a list of one string)")
        return self.prompt[0]


class FeedbackRequest(_Body):
    completion_id: str = Field(min_length=1, max_length=200)
    reward: float | None = None
    correction: str | None = Field(default=None, min_length=1)

    @field_validator("reward")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("reward must be a finite number")
        return v


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> str:
    """The prompt text of a chat: the tokenizer's chat template if it has one, else ``role: content`` lines."""
    turns = [{"role": m.role, "content": m.text()} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_response(cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(cid: str, model: str, created: int, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def completion_response(cid: str, model: str, text: str, finish: str | None, prompt_tokens: int | None = None, completion_tokens: int | None = None, created: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid, "object": "text_completion", "created": created or int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }
    if prompt_tokens is not None and completion_tokens is not None:
        body["usage"] = usage(prompt_tokens, completion_tokens)
    return body


def models_response(agents: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": a, "object": "model", "created": created, "owned_by": "lorahive"} for a in agents]}


#: ``/metrics``: (name, type, help, stats key) in the Prometheus text format.
METRICS = (
    ("lorahive_requests_total", "counter", "Completion requests taken", "requests"),
    ("lorahive_generated_tokens_total", "counter", "Tokens decoded", "tokens"),
    ("lorahive_decode_steps_total", "counter", "Decode steps (one forward over the running rows)", "steps"),
    ("lorahive_decode_seconds_total", "counter", "Seconds spent in decode steps", "decode_seconds"),
    ("lorahive_batch_rows", "gauge", "Rows running after the last decode step", "rows"),
    ("lorahive_batch_rows_max", "gauge", "Most rows decoded together so far", "max_batch_seen"),
    ("lorahive_feedback_total", "counter", "Feedback events recorded in the ledger", "feedback"),
    ("lorahive_feedback_learned_total", "counter", "Feedback events learned (corrections, and completions rewarded above the bar)", "learned"),
    ("lorahive_learn_seconds_total", "counter", "Seconds spent learning from feedback", "learn_seconds"),
    ("lorahive_feedback_lag_seconds_total", "counter", "Seconds from feedback requests to their learning done (divide by learned for the mean lag)", "feedback_lag_seconds"),
    ("lorahive_feedback_lag_seconds_max", "gauge", "Longest feedback lag so far", "feedback_lag_max"),
    ("lorahive_feedback_replayed_total", "counter", "Acknowledged feedback events learned again at startup (no checkpoint held them)", "replayed"),
    ("lorahive_checkpoints_total", "counter", "Checkpoints written by the server", "checkpoints"),
    ("lorahive_checkpoint_seconds_total", "counter", "Seconds spent writing checkpoints (decoding waits meanwhile)", "checkpoint_seconds"),
    ("lorahive_serve_ticks_total", "counter", "Serve ticks: feedback examples aggregated into a swarm-level update", "serve_ticks"),
    ("lorahive_serve_tick_seconds_total", "counter", "Seconds spent on serve ticks", "tick_seconds"),
    ("lorahive_serve_tick_stall_seconds_max", "gauge", "Longest serve-tick unit: the most a serve tick held up one decode step", "tick_stall_max"),
)


def metrics_text(stats: dict[str, float], queued: int) -> str:
    lines = []
    for name, kind, doc, key in METRICS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {float(stats.get(key, 0)):g}"]
    lines += ["# HELP lorahive_queue_depth Jobs waiting for the decode worker", "# TYPE lorahive_queue_depth gauge", f"lorahive_queue_depth {queued}"]
    return "\n".join(lines) + "\n"
