"""Every validated configuration of lorahive, and nothing heavy.

The level stack (:mod:`.levels`), the aggregation (:mod:`.aggregation`), simulated attacks
(:mod:`.attack`), the run config and its sections (:mod:`.run`), stages runs (:mod:`.stages`), loading YAML with
overrides (:mod:`.load`), and the defaults they share (:mod:`.defaults`). This package
imports only pydantic and PyYAML, never torch or another lorahive package, so a config can
be read and checked in a fraction of a second (``tests/test_config_import.py`` holds it to
that).
"""

from lorahive.config.aggregation import AggregationConfig, Strategy
from lorahive.config.attack import AttackConfig, AttackKind
from lorahive.config.defaults import DEFAULT_BASE, DEMO_TASK_TYPES
from lorahive.config.errors import ConfigError, format_config_error
from lorahive.config.levels import (
    DEFAULT_TARGETS,
    LevelSpec,
    Scope,
    StackSpec,
    as_stack,
    default_levels,
)
from lorahive.config.load import MAX_CONFIG_BYTES, dump_config, load_config, parse_config, read_tree
from lorahive.config.mechanisms import (
    BandwidthConfig,
    ConsensusConfig,
    ConsolidationConfig,
    ContextModesConfig,
    EntropyBudgetConfig,
    HealthConfig,
    InertiaConfig,
    MechanismsConfig,
    ReplayConfig,
    ScreeningConfig,
    TopologyConfig,
    VerticalResonanceConfig,
)
from lorahive.config.memory import MemorySpec
from lorahive.config.run import (
    METHODS,
    AgentConfig,
    Method,
    ObserveConfig,
    RunConfig,
    StreamConfig,
    SuiteConfig,
)
from lorahive.config.stages import (
    BudgetSpec,
    PairsSpec,
    ScopeSpec,
    StagesConfig,
    StageSpec,
    is_stages_tree,
    load_stages_config,
    parse_stages_config,
)

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_TARGETS",
    "DEMO_TASK_TYPES",
    "MAX_CONFIG_BYTES",
    "METHODS",
    "AgentConfig",
    "AggregationConfig",
    "AttackConfig",
    "AttackKind",
    "BandwidthConfig",
    "ConsensusConfig",
    "TopologyConfig",
    "ConsolidationConfig",
    "ContextModesConfig",
    "EntropyBudgetConfig",
    "HealthConfig",
    "InertiaConfig",
    "MechanismsConfig",
    "MemorySpec",
    "ReplayConfig",
    "ScreeningConfig",
    "ConfigError",
    "LevelSpec",
    "Method",
    "ObserveConfig",
    "RunConfig",
    "Scope",
    "StackSpec",
    "Strategy",
    "StreamConfig",
    "VerticalResonanceConfig",
    "SuiteConfig",
    "BudgetSpec",
    "PairsSpec",
    "ScopeSpec",
    "StageSpec",
    "StagesConfig",
    "is_stages_tree",
    "load_stages_config",
    "parse_stages_config",
    "read_tree",
    "as_stack",
    "default_levels",
    "dump_config",
    "format_config_error",
    "load_config",
    "parse_config",
]
