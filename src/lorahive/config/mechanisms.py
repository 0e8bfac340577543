"""Configuration of the tick's mechanisms (DESIGN.md §3, seed 004): one section per mechanism.

Every section has ``enabled``; a disabled mechanism is not run (an ablation compares a run
against the same run with one switched off). The rules these numbers feed are documented in
``docs/mechanisms.md`` and in each mechanism's module under ``lorahive.mechanisms``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BandwidthConfig",
    "ConsensusConfig",
    "ConsolidationConfig",
    "ContextModesConfig",
    "EntropyBudgetConfig",
    "VerticalResonanceConfig",
    "HealthConfig",
    "InertiaConfig",
    "MechanismsConfig",
    "ReplayConfig",
    "ScreeningConfig",
    "TopologyConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(default=True, description="run this mechanism")


class ScreeningConfig(_Section):
    """Screening / free dispersion (seed 004 §1, §A): per pattern, an activity EMA with hysteresis.

    A pattern is a rank-1 component of a level slot. Its activity is how strongly it fires
    on the rows that use the slot, relative to the strongest pattern of its level; it is
    *screened* once its activity EMA rises above ``up`` and *free* once it falls below
    ``down`` (between the two it keeps its mode). Screened patterns decay by
    ``screened_decay`` per tick toward their init snapshot, free ones by ``free_decay``
    (times ``1 − inertia`` of the level with ``by_inertia``).
    """

    levels: list[str] | None = Field(default=None, description="levels screened; null = every trainable level that is not task-scoped")
    ema: float = Field(default=0.8, ge=0.0, lt=1.0, description="activity EMA: a ← ema·a + (1−ema)·activity")
    up: float = Field(default=0.1, gt=0.0, le=1.0, description="relative activity above which a free pattern becomes screened")
    down: float = Field(default=0.03, ge=0.0, lt=1.0, description="relative activity below which a screened pattern becomes free (< up)")
    screened_decay: float = Field(default=1e-4, ge=0.0, le=1.0, description="decay per tick of a screened pattern toward its init")
    free_decay: float = Field(default=1e-2, ge=0.0, le=1.0, description="decay per tick of a free pattern toward its init")
    by_inertia: bool = Field(default=True, description="scale both decay rates by 1 − the level's current inertia: heavier levels forget slower, as they learn slower")

    @model_validator(mode="after")
    def _order(self) -> ScreeningConfig:
        if self.down >= self.up:
            raise ValueError(f"mechanisms.screening: down ({self.down}) must be below up ({self.up}) — the gap is the hysteresis")
        if self.screened_decay > self.free_decay:
            raise ValueError(f"mechanisms.screening: screened_decay ({self.screened_decay}) must not exceed free_decay ({self.free_decay})")
        return self


class InertiaConfig(_Section):
    """Emergent inertia (seed 004 §2): ``inertia_l = β_l + (1−β_l)·tanh(density_l / k)``.

    density = agents sharing the level's weights × activation frequency (EMA of the ticks the
    level was used and non-zero) × gradient magnitude (its optimizer's RMS gradient over
    the largest seen so far, in [0, 1]). β_l is the level's configured inertia.
    """

    k: float = Field(default=16.0, gt=0.0, description="density at which inertia has moved tanh(1) ≈ 76 % of the way from β_l to 1")
    ema: float = Field(default=0.8, ge=0.0, lt=1.0, description="EMA of the activation frequency")
    levels: list[str] | None = Field(default=None, description="levels whose inertia emerges; null = every trainable level")


class ReplayConfig(_Section):
    """Replay of past successes (seed 004 §B) into the fast steps and the proposals.

    After every tick the support examples of each agent that cleared ``agent.quality_bar``
    join its own buffer and the swarm's (reservoir sampling, bounded). With probability
    ``probability`` per agent and tick, ``fraction`` of the agent's support examples are
    replaced by past examples of other task types: a share ``swarm_share`` from the swarm's
    buffer (what any agent succeeded at), the rest from the agent's own. ``mode: add`` keeps every
    support example and appends the replayed ones instead (``round(fraction × support)`` more rows
    per replaying agent), so replay never takes the current task's examples away.
    """

    mode: Literal["replace", "add"] = Field(default="replace", description="'replace' = the last round(fraction × support) support examples give way to replayed ones; 'add' = they are appended, the support keeps all its own examples (more rows per tick)")
    probability: float = Field(default=1.0, ge=0.0, le=1.0, description="chance an agent replays at a tick")
    fraction: float = Field(default=0.25, ge=0.0, le=1.0, description="share of the support examples replaced by replayed ones")
    swarm_share: float = Field(default=0.5, ge=0.0, le=1.0, description="share of replayed examples drawn from the swarm's buffer")
    agent_capacity: int = Field(default=64, ge=1, description="examples kept per agent")
    swarm_capacity: int = Field(default=256, ge=1, description="examples kept for the swarm")


class ConsolidationConfig(_Section):
    """Consolidation (seed 004 §3): stable patterns migrate to the next slower level.

    Every ``every`` ticks each slot of a source level gets a signature: the dominant
    ``signature_rank``-dimensional left singular subspace of its ΔW per module (through QR of
    the factors). Its autocorrelation is the mean subspace overlap with the previous
    signature; above ``threshold`` for ``checks`` checks in a row, that dominant part
    migrates along its channel (context → agent → swarm → domain) through the bandwidth queue.
    ``trigger: timer`` is the control of seed 004's experiment 6: every check with a previous
    signature counts, stable or not, so a written slot is ready on the same schedule
    (``every · (checks + 1)`` ticks after it is first written) whatever its autocorrelation.
    """

    every: int = Field(default=5, ge=1, description="ticks between signature checks (τ)")
    threshold: float = Field(default=0.8, gt=0.0, le=1.0, description="autocorrelation above which a check counts as stable")
    checks: int = Field(default=2, ge=1, description="consecutive stable checks before a pattern migrates (N)")
    signature_rank: int = Field(default=2, ge=1, description="rank of the signature and of the part that migrates")
    channels: list[str] | None = Field(default=None, description="migration channels as source>target level names; null = each level to the next slower trainable one (context>agent, agent>swarm, swarm>domain in the default stack), leaving out context>agent when mechanisms.context_modes is on (the context level's patterns stay in its modes)")
    min_norm: float = Field(default=1e-6, ge=0.0, description="slots whose ΔW is smaller than this (Frobenius, all modules) have no pattern")
    trigger: Literal["autocorrelation", "timer"] = Field(default="autocorrelation", description="what makes a check count: autocorrelation above threshold, or (timer, the control) every check")

    @model_validator(mode="after")
    def _channels(self) -> ConsolidationConfig:
        for ch in self.channels or []:
            src, sep, dst = ch.partition(">")
            if not sep or not src or not dst or src == dst:
                raise ValueError(f"mechanisms.consolidation.channels: {ch!r} must read source>target with two different level names")
        return self


class BandwidthConfig(_Section):
    """Bandwidth-limited migration (seed 004 §F): per channel a queue and a transfer budget.

    A channel may move ``fraction / inertia_target`` of its target level's parameters per tick
    (narrower toward slower levels); what moved is remembered as load that recovers by
    ``recovery`` per tick; patterns wait in a queue ordered by autocorrelation, and a pattern
    whose autocorrelation is at least ``critical`` bypasses the budget at once.
    """

    fraction: float = Field(default=0.25, gt=0.0, le=1.0, description="share of the target level's parameters a channel moves per tick, times 1/inertia of the target")
    recovery: float = Field(default=0.25, gt=0.0, le=1.0, description="share of a channel's load that recovers each tick")
    critical: float = Field(default=0.995, gt=0.0, le=1.0, description="autocorrelation at which a pattern bypasses the queue")
    max_wait: int = Field(default=20, ge=1, description="ticks a pattern may wait before it is dropped as stale (counted as rejected)")


class EntropyBudgetConfig(_Section):
    """Entropy budget (seed 004 §E): each screened level kept between crystallisation and amnesia.

    Every tick, before the proposals are composed, a level's dispersion entropy ratio (the
    health metric: ``Σ decay rate × pattern energy`` over the same sum at
    ``observe.health.free_target`` free patterns) is compared with ``[low, high]``: below
    ``low`` (crystallised: almost every pattern screened) the activity a pattern needs to be
    screened — both hysteresis thresholds of screening — is multiplied by ``raise_by``, so the
    least active patterns are freed; above ``high`` (amnesic) by ``lower_by``. The factor
    lives in the level state (``thresholds["screening"]``, checkpointed), within
    ``[min_scale, max_scale]``. Off by default: not yet measured at full size.
    """

    enabled: bool = Field(default=False, description="run this mechanism (off by default until the full-size ablation shows it helps)")
    low: float = Field(default=0.8, gt=0.0, description="entropy ratio below which the screening thresholds rise (the seed's healthy band starts at 0.8)")
    high: float = Field(default=1.2, gt=0.0, description="entropy ratio above which the screening thresholds fall (the healthy band ends at 1.2)")
    raise_by: float = Field(default=1.1, gt=1.0, description="factor on the screening thresholds of a crystallised level, per tick")
    lower_by: float = Field(default=0.9, gt=0.0, lt=1.0, description="factor on the screening thresholds of an amnesic level, per tick")
    min_scale: float = Field(default=0.01, gt=0.0, description="smallest factor the thresholds may reach")
    max_scale: float = Field(default=10.0, gt=0.0, description="largest factor (10 × the default up = 0.1 is the strongest pattern's own activity)")

    @model_validator(mode="after")
    def _order(self) -> EntropyBudgetConfig:
        if self.low >= self.high:
            raise ValueError(f"mechanisms.entropy_budget: low ({self.low}) must be below high ({self.high})")
        if self.min_scale > 1.0 or self.max_scale < 1.0:
            raise ValueError(f"mechanisms.entropy_budget: min_scale ({self.min_scale}) ≤ 1 ≤ max_scale ({self.max_scale}) is needed (the thresholds start at factor 1)")
        return self


class VerticalResonanceConfig(_Section):
    """Vertical resonance (seed 004 §4): levels whose learning agrees are sped up, levels at odds slowed.

    Each level's update of a tick (what the fast steps and the swarm step wrote, migrations and
    decay excluded) is sketched in ΔW space — ``gⱼᵀ·ΔW·hⱼ`` for ``sketch`` fixed random vector
    pairs per module, the same for every level, so levels of any rank compare — and folded into
    a running direction (EMA ``ema`` of unit updates, started at the first; its length says how
    steadily the level keeps one direction). When the mean pairwise dot product of the levels'
    directions is above ``threshold`` every compared level's learning rate is boosted (up to
    ×``boost`` at 1) and the tick's ready migrations bypass the queues; below
    ``−threshold`` the faster levels' learning rates are multiplied by ``damp``, the slowest is
    kept. Off by default: not yet measured at full size.
    """

    enabled: bool = Field(default=False, description="run this mechanism (off by default until the full-size ablation shows it helps)")
    levels: list[str] | None = Field(default=None, description="levels compared; null = every trainable level that is not task-scoped")
    sketch: int = Field(default=16, ge=1, le=1024, description="random vector pairs per module in the ΔW sketch")
    ema: float = Field(default=0.8, ge=0.0, lt=1.0, description="running direction: d ← ema·d + (1−ema)·this tick's unit update (the first update starts it)")
    threshold: float = Field(default=0.3, gt=0.0, lt=1.0, description="mean pairwise d_a·d_b above which levels resonate (and below whose negative they are at odds)")
    boost: float = Field(default=2.0, ge=1.0, le=2.0, description="learning-rate factor at cosine 1 (linear from 1 at the threshold; the seed caps it at ×2)")
    damp: float = Field(default=0.5, gt=0.0, le=1.0, description="learning-rate factor of the faster levels when they are at odds with the slower ones")


class ConsensusConfig(_Section):
    """Consensus detector (seed 004 §5): agents whose proposals agree hand their common pattern to the swarm.

    Each tick the agents' swarm proposals are compared by angle (cosine of the flattened
    gradients); the largest group of agents within ``threshold`` of one of them is the
    dominant cluster. When it holds at least ``fraction`` of the proposing agents, the mean of
    its members' dominant rank-``rank`` per-agent patterns is added to the swarm level and
    subtracted from each member's own slot (their views keep their function up to the
    truncation recorded in the ledger; the other agents gain the pattern). A consensus held
    ``hold`` ticks in a row asks for a swarm → next-slower-level migration through the
    bandwidth queue. Off by default: not yet measured at full size.
    """

    enabled: bool = Field(default=False, description="run this mechanism (off by default until the full-size ablation shows it helps)")
    threshold: float = Field(default=0.5, gt=-1.0, lt=1.0, description="cosine between two proposals at or above which the agents agree")
    fraction: float = Field(default=0.6, gt=0.0, le=1.0, description="share of the proposing agents the dominant cluster must hold")
    min_agents: int = Field(default=2, ge=2, description="fewest agents a consensus takes")
    rank: int = Field(default=2, ge=1, description="rank of each member's dominant pattern that joins the mean")
    hold: int = Field(default=5, ge=1, description="consecutive consensus ticks after which the swarm's pattern migrates to the next slower level")


class ContextModesConfig(_Section):
    """Context modes (seed 004 §5, "collapse"): the context level holds ``modes`` modes, one per kind of input.

    At the start of a tick a router reads each agent's task — the mean over its support
    prompts of the frozen base model's final hidden state, pooled over the prompt's tokens
    (one extra forward, prompts only, every level off) — and picks one mode (hard routing):
    the nearest key by cosine after the running mean of all inputs is subtracted, or a
    free mode when the nearest is below ``open_below``. The agent's context slot starts from
    that mode instead of its init snapshot; at the end of the tick (``decay``) the mode takes
    what the slot became (``rate``), if the agent cleared ``agent.quality_bar``; the modes no
    agent used shrink by ``forget``. With ``at_inference`` the held-out evaluation routes
    each task type's prompts the same way (the nearest opened mode, nothing opened or moved)
    and scores with the context level holding that mode. With it on, the context level has no
    migration channel unless one is configured (its patterns stay in its modes), and replayed
    examples run their own type's mode. On in ``configs/cl-stream.yaml``, the standard stream: at
    full size over three seeds ACC 0.668 ± 0.006 against 0.649 ± 0.002 without it
    (docs/mechanisms.md, eleventh and twelfth batches). Off in the library's defaults: it needs a
    per-task context level, and runs over several ranks do not support it yet.
    """

    enabled: bool = Field(default=False, description="run this mechanism (off unless set: it needs a per-task agent.context_level and one rank; configs/cl-stream.yaml sets it, docs/mechanisms.md)")
    modes: int = Field(default=4, ge=1, le=64, description="modes the context level holds (K)")
    open_rule: Literal["spread", "cosine"] = Field(default="spread", description="when an input opens a free mode: 'spread' = its squared distance to the nearest key exceeds open_spread × that mode's spread (the running mean squared distance of its inputs to its key; for a mode of one input, the tick's inputs' median squared distance to their mean), so a stream whose first stage has one kind of input opens one mode for it; 'cosine' = the centred cosine to the nearest key is below open_below (which splits a single kind on noise while the centre sits on it)")
    open_spread: float = Field(default=4.0, gt=1.0, description="spread rule: how many times a mode's spread an input's squared distance must exceed to open a new mode")
    open_below: float = Field(default=0.3, gt=-1.0, lt=1.0, description="centred cosine to the nearest key below which an input opens a free mode (the embedded model measured ≥ 0.45 within a task type, ≤ 0.19 between types)")
    key_ema: float = Field(default=0.9, ge=0.0, lt=1.0, description="a mode's key follows its inputs: key ← key_ema·key + (1−key_ema)·input")
    rate: float = Field(default=1.0, gt=0.0, le=1.0, description="reinforcement: mode ← (1−rate)·mode + rate·mean of the context slots that used it this tick")
    forget: float = Field(default=0.0, ge=0.0, le=1.0, description="per tick, an opened mode no agent used has its ΔW multiplied by 1 − forget (the seed's 'unused patterns weaken')")
    replay_own_mode: bool = Field(default=True, description="replayed examples (mechanisms.replay) run the mode their task type was last routed to, not the current task's: a past task is rehearsed with the context it is evaluated with")
    rehearse: int = Field(default=0, ge=0, le=16, description="steps per tick a past task type's mode learns from this tick's replayed examples of that type (mechanisms.replay), on the current levels below it, at the context level's step size: a mode no agent is routed to follows what the slower levels became since it was trained; 0 = off (past modes stay as they were left)")
    rehearse_rate: float = Field(default=1.0, gt=0.0, le=1.0, description="rehearsal: mode ← (1−rehearse_rate)·mode + rehearse_rate·what the rehearsing slot became (its steps start from an empty optimizer state, each a full step of the context level's size)")
    at_inference: bool = Field(default=True, description="held-out evaluation routes each task type's prompts to the nearest opened mode (no mode opened, no key moved) and scores with the context level holding it; false = the context level is left out of evaluation, as without modes")


class TopologyConfig(_Section):
    """Topology (seed 004 "Meta-архитектура"): the number of levels follows the work.

    Each tick every watched level's update (what the fast steps and the swarm step wrote, less
    what the optimizer's momentum from earlier ticks carried into it) is sketched in ΔW space
    with fixed random probes and kept for ``window`` ticks. A level whose updates show two
    time scales — the normalised autocorrelation at lag 2 above the square of the one at lag 1
    by ``split_excess`` (``C(2) − C(1)² ≥ split_excess``; one time scale gives
    ``C(2) = C(1)²``) — for ``checks`` ticks in a row is split: its dominant singular part moves
    into a new, slower level just above it (per-task → per-agent), function preserved. Two
    neighbours of the same scope and targets, one of them grown, whose updates keep a windowed
    cosine of at least ``merge_threshold`` for ``checks`` ticks are merged into one. Off by
    default: not yet measured at full size.
    """

    enabled: bool = Field(default=False, description="run this mechanism (off by default until the full-size ablation shows it helps)")
    levels: list[str] | None = Field(default=None, description="configured levels that may split (and their grown descendants); null = every trainable level")
    window: int = Field(default=6, ge=3, le=64, description="ticks of update sketches the autocorrelations are measured over")
    sketch: int = Field(default=8, ge=1, le=64, description="random probes per side and module: the sketch of ΔW is G·ΔW·X with G (sketch, out), X (in, sketch)")
    split_excess: float = Field(default=0.1, gt=0.0, le=1.0, description="C(2) − C(1)² at or above which a level shows two time scales (at most 0.25 for white noise plus a constant drift, at its share 1/2)")
    merge_threshold: float = Field(default=0.9, gt=0.0, le=1.0, description="windowed cosine of two neighbours' updates at or above which they are redundant")
    checks: int = Field(default=2, ge=1, description="consecutive ticks a split or merge signal must hold")
    split_rank: int | None = Field(default=None, ge=1, description="rank of a grown level (the part that moves); null = half the source's rank, at least 1")
    max_levels: int = Field(default=8, ge=1, description="most levels the stack may grow to")
    max_rank: int = Field(default=64, ge=1, description="largest rank a merged grown level may take (beyond, the merge truncates, recorded)")
    cooldown: int = Field(default=6, ge=0, description="ticks after a split or merge before the next one")


class MechanismsConfig(BaseModel):
    """The mechanisms of a run, one section each (``mechanisms.<name>.enabled: false`` switches one off)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    screening: ScreeningConfig = Field(default_factory=ScreeningConfig, description="screening / free dispersion of patterns")
    inertia: InertiaConfig = Field(default_factory=InertiaConfig, description="emergent inertia of levels")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="replay of past successes")
    consolidation: ConsolidationConfig = Field(default_factory=ConsolidationConfig, description="stable patterns migrate to slower levels")
    bandwidth: BandwidthConfig = Field(default_factory=BandwidthConfig, description="bandwidth-limited migration queues")
    consensus: ConsensusConfig = Field(default_factory=ConsensusConfig, description="agreeing agents hand their common pattern to the swarm")
    vertical_resonance: VerticalResonanceConfig = Field(default_factory=VerticalResonanceConfig, description="levels whose updates agree learn faster")
    entropy_budget: EntropyBudgetConfig = Field(default_factory=EntropyBudgetConfig, description="screening thresholds kept in the healthy entropy band")
    context_modes: ContextModesConfig = Field(default_factory=ContextModesConfig, description="the context level collapses onto one mode per kind of input")
    topology: TopologyConfig = Field(default_factory=TopologyConfig, description="levels split when their updates show two time scales, merge when redundant")


class HealthConfig(BaseModel):
    """Health metrics of the seed (§ Health Metrics), per tick in the ledger and in ``metrics.json``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(default=True, description="compute health metrics every tick")
    free_target: float = Field(default=0.5, ge=0.0, le=1.0, description="share of free patterns at which a level's dispersion entropy is 'optimal' (entropy ratio 1)")
