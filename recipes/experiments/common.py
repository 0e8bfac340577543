"""What the mechanism experiments share: a hive on real tasks, patterns built from those tasks, and the
shape of a recipe's run and report (``begin`` … ``finish``: the size's config, the metrics, a summary of
set-up, mean ± spread table, notes, criterion and verdict, and the figure; ``plots.py`` draws).

The data are the package's demo slice (agnews, dbpedia, yahoo: topic tasks; yelp: sentiment).
``base: tiny-random`` is a 2-block random Llama (hidden 32, init 0.1, where a pattern's
usefulness carries over to held-out examples) with a byte-level BPE trained on the slice's
text; ``embedded:smollm2-135m`` (or a local model directory) is the real base.

**Patterns from real tasks** (as in ``tests/test_vertical_resonance_planted.py``): ``g_t`` is task
t's answer-NLL gradient on every wrapped module's frozen weight, read in a rank-1
parameterisation ``ΔW_m = u_m·v_mᵀ`` (``v_m`` the top input direction of the tasks' gradients at
module m). With ``H`` the (tasks, Σ out) matrix of the ``g_t``, ``u_S = −H⁺·1_S`` lowers, to first
order, the loss of every task in S by the same amount and leaves the others': ``local[t]`` is
task-local (S = {t}), ``universal`` is shared across tasks (S = every task). ``noise`` is a real
minibatch's deviation from its task's mean gradient: what a level writes beside a pattern.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from plots import figure, lines, panels, save_figure, task_bars  # noqa: F401  (the recipes use them as c.lines, …)

from lorahive import Hive, LevelSpec, StackSpec
from lorahive.learning import answer_nll, pack_examples
from lorahive.suites.demo import load_demo_suite

TASKS = ("agnews", "dbpedia", "yahoo", "yelp")
TINY = "tiny-random"
HERE = Path(__file__).resolve().parent


#: Held-out examples per task type in the package's demo slice (its test split), the most ``eval`` can ask for.
DEMO_TEST = 32


def load_size(name: str, size: str) -> dict[str, Any]:
    """Section ``size`` of ``recipes/experiments/<name>.yaml``; ``eval`` is checked against the slice's test split."""
    tree = yaml.safe_load((HERE / f"{name}.yaml").read_text(encoding="utf-8"))
    spec = dict(tree[size])
    if not 1 <= int(spec.get("eval", 1)) <= DEMO_TEST:
        raise ValueError(f"{name}.yaml {size}.eval = {spec['eval']}: held-out examples per task must be in 1..{DEMO_TEST} (the demo slice's test split)")
    return spec


def stack(agent_rank: int = 2, context_rank: int = 2, shared_rank: int = 4) -> StackSpec:
    """The default stack's five levels (small ranks: the patterns are rank 1)."""
    return StackSpec(
        levels=(
            LevelSpec(name="foundation", rank=shared_rank, alpha=shared_rank, scope="shared", inertia=0.99, lr=1e-2, trainable=False),
            LevelSpec(name="domain", rank=shared_rank, alpha=shared_rank, scope="shared", inertia=0.9, lr=1e-2),
            LevelSpec(name="swarm", rank=shared_rank, alpha=shared_rank, scope="shared", inertia=0.7, lr=1e-2),
            LevelSpec(name="agent", rank=agent_rank, alpha=agent_rank, scope="agent", inertia=0.5, lr=2e-2),
            LevelSpec(name="context", rank=context_rank, alpha=context_rank, scope="task", inertia=0.1, lr=2e-2),
        )
    )


def _tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_model(vocab: int) -> Any:
    """The tiny random Llama (2 blocks, hidden 32, init 0.1), the same weights each time (seed 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def make_hive(base: str, agents: list[str], levels: StackSpec | None = None, seed: int = 0) -> Hive:
    """A hive over ``base`` with ``agents``; the tiny model is rebuilt identically each time."""
    levels = levels or stack()
    if base == TINY:
        suite = load_demo_suite(TASKS)
        tok = _tokenizer([p + " " + a for t in TASKS for p, a in suite[t].train])
        hive = Hive(tiny_model(len(tok)), tok, levels, seed=seed)
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        hive = Hive.load(base, levels=levels, device=device, dtype=torch.float32, seed=seed)
    hive.add_agents(agents)
    return hive


@dataclass
class World:
    """The tasks' data, the rank-1 parameterisation and the patterns built from the tasks."""

    suite: dict[str, Any]
    V: dict[str, torch.Tensor]  # module path -> (in,): the input direction of every rank-1 pattern
    H: torch.Tensor  # (tasks, Σ out): the task gradients in that parameterisation
    local: dict[str, torch.Tensor]  # task -> unit u lowering that task's loss only
    universal: torch.Tensor  # unit u lowering every task's loss alike
    sizes: list[int]  # out size per module, in the order of hive.core.layers


def gradients(hive: Hive, examples: list[tuple[str, str]], agent: str) -> dict[str, torch.Tensor]:
    """dL/dW of every wrapped module's frozen weight, every level off."""
    weights = {p: layer.base.weight for p, layer in hive.core.layers.items()}
    for w in weights.values():
        w.requires_grad_(True)
    batch = pack_examples(hive.tokenizer, examples, hive.core.max_length).to(hive.device)
    with hive.core.routing.use(hive.core.route([agent] * len(examples), levels=[])):
        total, count = answer_nll(hive.model, batch)
    grads = torch.autograd.grad((total / count).mean(), list(weights.values()))
    for w in weights.values():
        w.requires_grad_(False)
    return dict(zip(weights, grads, strict=True))


def as_u(world_v: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.float() @ world_v[p] for p, g in grads.items()])


def build_world(hive: Hive, train: int) -> World:
    """Task gradients over ``train`` examples per task, and the local and universal patterns."""
    suite = load_demo_suite(TASKS)
    agent = hive.core.agents[0]
    grads = {t: gradients(hive, suite[t].train[:train], agent) for t in TASKS}
    V = {p: torch.linalg.svd(torch.cat([grads[t][p].float() for t in TASKS]), full_matrices=False)[2][0] for p in hive.core.layers}
    H = torch.stack([as_u(V, grads[t]) for t in TASKS])
    pinv = torch.linalg.pinv(H)
    unit = lambda u: u / u.norm()  # noqa: E731
    local = {t: unit(-(pinv @ torch.tensor([float(s == t) for s in TASKS], device=H.device))) for t in TASKS}
    universal = unit(-(pinv @ torch.ones(len(TASKS), device=H.device)))
    return World(suite, V, H, local, universal, [layer.out_features for layer in hive.core.layers.values()])


def noise(hive: Hive, world: World, task: str, rng: random.Random, batch: int) -> torch.Tensor:
    """A real minibatch's gradient deviation from ``task``'s mean gradient, unit norm."""
    g = as_u(world.V, gradients(hive, rng.sample(world.suite[task].train, batch), hive.core.agents[0]))
    d = g - world.H[TASKS.index(task)]
    return d / d.norm()


def delta(world: World, hive: Hive, u: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``u`` as a ΔW-space change per module, in factor form ``(u_m, v_mᵀ)``."""
    return {p: (c[:, None], world.V[p][None, :]) for p, c in zip(hive.core.layers, u.split(world.sizes), strict=True)}


def energy(hive: Hive, level: str, slots: list[int]) -> torch.Tensor:
    """``‖(a/r)·B·A‖²_F`` summed over modules, per slot ``(len(slots),)``."""
    scale = hive.core.stack.get(level).scale
    idx = hive.core.index(slots)
    out = torch.zeros(len(slots), device=hive.device)
    with torch.no_grad():
        for bank in hive.core.banks(level):
            b, a = bank.B.index_select(0, idx).float(), bank.A.index_select(0, idx).float()
            out += (b.transpose(1, 2) @ b * (a @ a.transpose(1, 2))).sum((1, 2)) * scale**2
    return out.cpu()


@torch.no_grad()
def task_loss(hive: Hive, agents: list[str], tasks: list[str], world: World, levels: list[str], n: int) -> list[float]:
    """Held-out answer NLL of each agent on its task's first ``n`` test examples, with only ``levels`` on."""
    rows = [(a, p, ans) for a, t in zip(agents, tasks, strict=True) for p, ans in world.suite[t].test[:n]]
    nll = hive.row_nll(rows, levels=levels) if levels else _base_nll(hive, rows)
    return [float(x) for x in nll.view(len(agents), n).mean(1)]


def _base_nll(hive: Hive, rows: list[tuple[str, str, str]]) -> torch.Tensor:
    out = []
    for i in range(0, len(rows), 64):
        part = rows[i : i + 64]
        batch = pack_examples(hive.tokenizer, [(p, a) for _, p, a in part], hive.core.max_length).to(hive.device)
        with hive.core.routing.use(hive.core.route([r[0] for r in part], levels=[])):
            total, _ = answer_nll(hive.model, batch)
        out.append(total)
    return torch.cat(out).cpu()


def mean_spread(values: list[float]) -> dict[str, float]:
    """Mean and spread (sample standard deviation; 0 for one value) over seeds."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarise(runs: dict[str, dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Per key, mean ± spread over the seeds' runs where it is not None (None where it is None in every run)."""
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r[k] for r in runs.values() if r[k] is not None]
        out[k] = mean_spread(vals) if vals else None
    return out


# ---------------------------------------------------------------------- a recipe's run, report and figure
@dataclass
class Run:
    """One recipe run: the experiment, its size section (``spec``), base model, seeds and start time."""

    experiment: int
    size: str
    base: str
    seeds: list[int]
    spec: dict[str, Any]
    t0: float

    @property
    def png(self) -> str:
        return f"exp{self.experiment:02d}.png"


def begin(experiment: int, size: str, seeds: list[int], base: str | None) -> Run:
    """Read ``expNN.yaml``'s ``size`` section and pin its torch threads (``threads``; the small size pins one)."""
    spec = load_size(f"exp{experiment:02d}", size)
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    return Run(experiment, size, base or spec["base"], seeds, spec, time.perf_counter())


def each(run: Run, seeds: Sequence[int], label: str = "") -> Iterator[int]:
    """``seeds`` one by one, with a progress line on stderr as each starts and ends (a full-size run takes a while)."""
    name = f"exp{run.experiment:02d} {run.size}" + (f" {label}" if label else "")
    for i, seed in enumerate(seeds, 1):
        start = time.perf_counter()
        print(f"[{name}] seed {seed} ({i} of {len(seeds)}) …", file=sys.stderr, flush=True)
        yield seed
        print(f"[{name}] seed {seed} done in {time.perf_counter() - start:.1f} s ({time.perf_counter() - run.t0:.0f} s so far)", file=sys.stderr, flush=True)


#: What a criterion can say of a run's numbers.
VERDICTS = ("supported", "not supported", "inconclusive")

#: A recipe's criterion applied to its results: one of :data:`VERDICTS` and the measured figures that decide it.
Judge = Callable[[dict[str, Any]], tuple[str, str]]


def decide(per_seed: Sequence[bool | None]) -> str:
    """A criterion that must hold in every seed: held in all → supported, in none → not supported, else inconclusive
    (the seeds disagree, or it is undefined, ``None``, in a seed)."""
    if not per_seed:
        return "inconclusive"
    return "supported" if all(x is True for x in per_seed) else "not supported" if all(x is False for x in per_seed) else "inconclusive"


def seedwise(parts: Sequence[Sequence[bool | None]]) -> str:
    """A criterion whose parts must all hold, seed by seed: each part is its value in each seed, or one value that
    counts in every seed (e.g. a correlation over all runs). A seed holds when every part does, fails when one fails,
    is undefined otherwise; then :func:`decide` over the seeds."""
    n = max((len(p) for p in parts), default=0)
    seeds = []
    for i in range(n):
        values = [p[i] if len(p) > 1 else p[0] for p in parts]
        seeds.append(False if any(v is False for v in values) else None if any(v is None for v in values) else True)
    return decide(seeds)


def judged(parts: Sequence[tuple[str, Sequence[bool | None]]]) -> tuple[str, str]:
    """:func:`seedwise` over ``(text, value in each seed)`` parts, and why: each part's text with the seeds it held in."""
    verdict = seedwise([held for _, held in parts])
    why = "; ".join(
        f"{text} in {sum(h is True for h in held)}/{len(held)} seeds" + (f" ({sum(h is None for h in held)} undefined)" if None in held else "")
        for text, held in parts
    )
    return verdict, f"{why}; {all_parts([held for _, held in parts])}"


def all_parts(parts: Sequence[Sequence[bool | None]]) -> str:
    """``all parts in k/n seeds``: the seeds in which every part held (:func:`seedwise`'s count)."""
    n = max((len(p) for p in parts), default=0)
    held = sum(all((p[i] if len(p) > 1 else p[0]) is True for p in parts) for i in range(n))
    return f"all parts in {held}/{n} seeds"


def over_seeds(values: Sequence[float | None], digits: int = 3, none: str = "undefined") -> str:
    """Mean ± spread over the seeds where a value is defined (``none`` where it is in none, and how often it is)."""
    known = [v for v in values if v is not None]
    text = fmt(mean_spread(known), digits) if known else none
    return text + (f" ({none} in {len(values) - len(known)} seeds)" if known and len(known) < len(values) else "")


def finish(
    run: Run, out: Path, results: dict[str, Any], criterion: str, markdown: Callable[[dict[str, Any]], str], plot: Callable[[dict[str, Any], Path], None], judge: Judge
) -> dict[str, Any]:
    """The run's metrics (its set-up, ``results``, the criterion, the verdict, the time), written with its summary and figure.

    ``judge`` applies the criterion to ``results``; its reading is kept under ``reading`` at every
    size, and it is the ``verdict`` only at the full size (the small size is a machinery check on a
    tiny random model: its verdict stays "pending full-size run").
    """
    verdict, why = judge(results)
    if verdict not in VERDICTS:
        raise ValueError(f"experiment {run.experiment}: the judge returned {verdict!r}; a verdict is one of {VERDICTS}")
    metrics = {
        "experiment": run.experiment, "size": run.size, "base": run.base, "seeds": run.seeds, "config": run.spec, **results,
        "criterion": criterion, "reading": {"verdict": verdict, "why": why},
        "verdict": verdict if run.size == "full" else "pending full-size run", "seconds": time.perf_counter() - run.t0,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(markdown(metrics), encoding="utf-8")
    plot(metrics, out / run.png)
    return metrics


def fmt(ms: dict[str, float], digits: int = 3) -> str:
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def cell(ms: dict[str, float] | None, digits: int = 3, none: str = "–") -> str:
    """``mean ± std`` of a summary entry, ``none`` where it is undefined."""
    return none if ms is None else fmt(ms, digits)


def table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in body])


Column = tuple[str, str | Callable[[dict[str, Any]], str], int]  # header, summary key (or a cell of its own), digits


def summary_table(heads: Sequence[str], entries: Iterable[tuple[Sequence[str], dict[str, Any]]], columns: Sequence[Column]) -> str:
    """The mean ± spread table: one row per (labels, summary) entry, a cell per column."""
    rows = [[*heads, *(h for h, _, _ in columns)]]
    for labels, s in entries:
        rows.append([*labels, *(key(s) if callable(key) else cell(s[key], digits) for _, key, digits in columns)])
    return table(rows)


def named(summary: dict[str, Any], control: str | None = None) -> list[tuple[list[str], Any]]:
    """``summary_table`` entries, one per system, the control marked."""
    return [([f"{n} (control)" if n == control else n], s) for n, s in summary.items()]


def first(runs: dict[str, Any]) -> Any:
    """The first seed's run (what the figures' curves show)."""
    return next(iter(runs.values()))


def report(m: dict[str, Any], setup: str, *blocks: str) -> str:
    """A recipe's summary: the heading (experiment, size, base, ``setup``, seeds), the blocks, the criterion, the verdict."""
    head = f"# Experiment {m['experiment']}, size {m['size']} (base {m['base']}, {setup + ', ' if setup else ''}seeds {m['seeds']}; mean ± std over seeds)"
    reading = m["reading"]
    size_note = "" if m["size"] == "full" else " (at this size a machinery check, not a verdict)"
    tail = f"Criterion — {m['criterion']}.\nApplied to these numbers{size_note}: {reading['verdict']} — {reading['why']}.\nVerdict: {m['verdict']}."
    return "\n\n".join([head, *blocks, tail]) + "\n"


def main(doc: str | None, run: Callable[[str, Path, list[int], str | None], dict[str, Any]], markdown: Callable[[dict[str, Any]], str], argv: list[str] | None = None) -> int:
    """An experiment's command line: ``--size``, ``--out``, ``--seeds``, ``--base``; runs it, prints its table and where it wrote."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--size", choices=["small", "full"], default="small")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base", default=None, help="override the size's base model")
    args = ap.parse_args(argv)
    m = run(args.size, args.out, args.seeds, args.base)
    print(markdown(m))
    print(f"{m['seconds']:.1f} s; {args.out}/metrics.json, {args.out}/exp{m['experiment']:02d}.png")
    return 0
