"""Batching many agents' examples, the answer-only objective, per-slot optimizers."""

from lorahive.learning.batching import Batch, as_answer, pack_examples, pack_prompts
from lorahive.learning.objective import answer_nll, last_logits
from lorahive.learning.optim import SlotAdamW

__all__ = ["Batch", "SlotAdamW", "answer_nll", "as_answer", "last_logits", "pack_examples", "pack_prompts"]
