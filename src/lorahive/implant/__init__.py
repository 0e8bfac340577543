"""Knowledge implants (issue 19): CounterFact scores, the sequential implant driver, a linear probe on hidden states."""

from lorahive.implant.edits import Edit, EditScorer, Scores, load_edits, shipped_edits, token_scores
from lorahive.implant.probe import ProbeResult, probe_implant
from lorahive.implant.sequential import (
    AGENT,
    MethodResult,
    PlainWriter,
    Writer,
    consolidate,
    run_implant,
    run_method,
)

__all__ = [
    "AGENT",
    "Edit",
    "EditScorer",
    "MethodResult",
    "PlainWriter",
    "ProbeResult",
    "Scores",
    "Writer",
    "consolidate",
    "load_edits",
    "probe_implant",
    "run_implant",
    "run_method",
    "shipped_edits",
    "token_scores",
]
