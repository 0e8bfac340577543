"""Implantation tools (issue 19, seed notes 001 and 003): micro-variants, drift maps, a volatility-budgeted curriculum, layer-limited levels."""

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
from lorahive.implant.measure import mean_kl, probe_logp, target_fit
from lorahive.implant.variants import (
    DEFAULT_MARKERS,
    KINDS,
    Variant,
    VariantSpec,
    edit_distance,
    make_variants,
)

__all__ = [
    "DEFAULT_MARKERS",
    "KINDS",
    "Comparison",
    "CurriculumLog",
    "DriftMap",
    "StepRecord",
    "Variant",
    "VariantSpec",
    "compare_with_plain",
    "curriculum_order",
    "curriculum_writer",
    "drift_map",
    "edit_distance",
    "layer_band",
    "level_blocks",
    "make_variants",
    "mean_kl",
    "plain_writer",
    "plot_drift",
    "probe_logp",
    "run_curriculum",
    "run_plain",
    "target_fit",
]
