"""Knowledge implants (issue 19, seed notes 001 and 003): micro-variants, drift maps, a volatility-budgeted
curriculum, layer-limited levels, CounterFact scores, the sequential implant driver and a linear probe."""

from lorahive.implant.band import layer_band, level_blocks
from lorahive.implant.curriculum import (
    Comparison,
    CurriculumLog,
    StepRecord,
    compare_with_plain,
    curriculum_order,
    curriculum_writer,
    plain_writer,
    run_curriculum,
    run_plain,
)
from lorahive.implant.drift import DriftMap, drift_map, plot_drift
from lorahive.implant.edits import Edit, EditScorer, Scores, load_edits, shipped_edits, token_scores
from lorahive.implant.measure import mean_kl, probe_logp, target_fit
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
from lorahive.implant.variants import (
    DEFAULT_MARKERS,
    KINDS,
    Variant,
    VariantSpec,
    edit_distance,
    make_variants,
)

__all__ = [
    "AGENT",
    "DEFAULT_MARKERS",
    "KINDS",
    "Comparison",
    "CurriculumLog",
    "DriftMap",
    "Edit",
    "EditScorer",
    "MethodResult",
    "PlainWriter",
    "ProbeResult",
    "Scores",
    "StepRecord",
    "Variant",
    "VariantSpec",
    "Writer",
    "compare_with_plain",
    "consolidate",
    "curriculum_order",
    "curriculum_writer",
    "drift_map",
    "edit_distance",
    "layer_band",
    "level_blocks",
    "load_edits",
    "make_variants",
    "mean_kl",
    "plain_writer",
    "plot_drift",
    "probe_implant",
    "probe_logp",
    "run_curriculum",
    "run_implant",
    "run_method",
    "run_plain",
    "shipped_edits",
    "target_fit",
    "token_scores",
]
