"""The standard continual-learning table (issue 13): hive, seq-lora, replay and multitask over the three
O-LoRA task orders of the 4-task stream and the 5-task stream of the Standard CL Benchmark.

    python recipes/experiments/cl_table.py --size small --out runs/cl-table-small    # CI: tiny random Llama, in-process
    python recipes/experiments/cl_table.py --size full --out runs/cl-table-full      # embedded model, one run after another
    bash benchmarks/gpu/cl_table.sh SETUP OUT                                        # full size, many processes on one GPU
    python recipes/experiments/cl_table.py --collect OUT/runs --out OUT/table          # the table from finished run directories

Every run is the library's stream run, ``configs/cl-stream.yaml`` (``lorahive run``: R after every
stage, ACC/BWT/FWT, retention perplexity on held-out WikiText-2) with the stream's ``order``, the
method (``stream.method``), the seed and the size's overrides (``cl_table.yaml``). The orders are
O-LoRA's (its ``scripts/order_{1,2,3}.sh``) over dbpedia, amazon, yahoo and agnews; the 5-task
stream is ``configs/cl-stream.yaml``'s own. The table gives mean ± spread over the seeds per
stream and method, and the mean over orders 1–3, the figure O-LoRA's papers report. Beside it, the
published T5-large figures on the 4-task orders, marked not comparable run for run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402
import yaml  # noqa: E402

from lorahive.config import parse_config  # noqa: E402
from lorahive.config.load import apply_overrides, read_tree  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "cl-stream.yaml"
SHARED_CL = ROOT.parent / "shared" / "data" / "cl" / "standard"  # ../shared beside the checkout
STREAMS = {
    "order 1": ("dbpedia", "amazon", "yahoo", "agnews"),
    "order 2": ("dbpedia", "amazon", "agnews", "yahoo"),
    "order 3": ("yahoo", "amazon", "agnews", "dbpedia"),
    "5-task": ("agnews", "amazon", "dbpedia", "yahoo", "yelp"),
}
ORDERS = ("order 1", "order 2", "order 3")
METHODS = ("hive", "seq-lora", "replay", "multitask")
KEYS = ("ACC", "BWT", "FWT", "ppl_after", "ppl_change")
#: ACC × 100, mean over orders 1–3 of the 4-task stream, T5-large (O-LoRA's and MIGU's papers; ../shared/BASELINES.md).
PUBLISHED = {"O-LoRA": 75.8, "MIGU + FT": 78.8, "multitask": 80.0}


def slug(stream: str) -> str:
    return stream.replace(" ", "").replace("-task", "task")


def plan(spec: dict[str, Any], seeds: list[int], base: str, root: str | None) -> dict[str, list[str]]:
    """Every run of the table: name → its overrides of ``configs/cl-stream.yaml``."""
    common = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in spec["overrides"].items()]
    common += [f"base={base}"] + ([f"suite.root={root}"] if root else [])
    return {
        f"{slug(stream)}-{method}-s{seed}": [*common, f"stream.order=[{', '.join(order)}]", f"stream.method={method}", f"seed={seed}"]
        for seed in seeds
        for stream, order in STREAMS.items()
        for method in METHODS
    }


def tiny_base(path: Path, root: str) -> str:
    """The tiny random Llama with a BPE trained on the streams' text, saved as a model directory."""
    from lorahive.suites.cl import load_cl_suite

    if not (path / "config.json").is_file():
        suite = load_cl_suite(root, sorted({t for order in STREAMS.values() for t in order}))
        tok = c._tokenizer([p + " " + a for d in suite.values() for p, a in d.train[:200]])
        c.tiny_model(len(tok)).save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)


def run(size: str, out: Path, seeds: list[int], base: str | None = None, root: str | None = None) -> dict[str, Any]:
    """Every run of the table in this process, one after another (``out/runs/NAME``), then the table."""
    from lorahive.runtime import run as runs

    t0 = time.perf_counter()
    spec = c.load_size("cl_table", size)
    root = root or str(SHARED_CL)
    base = base or spec["base"]
    if base == c.TINY:
        base = tiny_base(out / "base", root)
    for name, overrides in plan(spec, seeds, base, root).items():
        runs.start(parse_config(read_tree(CONFIG), overrides), out / "runs" / name, force=True)
    return collect(out / "runs", out, size, time.perf_counter() - t0)


def write_plan(spec: dict[str, Any], seeds: list[int], folder: Path) -> list[str]:
    """Each run's whole config as ``folder/NAME.yaml``; ``NAME@CONFIG`` for benchmarks/gpu/cl_variants.sh."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, overrides in plan(spec, seeds, spec["base"], None).items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(apply_overrides(read_tree(CONFIG), overrides), sort_keys=False), encoding="utf-8")
        out.append(f"{name}@{folder.resolve() / name}.yaml")
    return out


def read_run(folder: Path) -> tuple[str, str, int, dict[str, Any]] | None:
    """A finished run directory as (stream, method, seed, its figures); None when unfinished or not of the table."""
    if not (folder / "metrics.json").is_file() or not (folder / "config.yaml").is_file():
        return None
    cfg, m = read_tree(folder / "config.yaml"), json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    order = tuple(cfg.get("stream", {}).get("order", ()))
    stream = next((s for s, o in STREAMS.items() if o == order), None)
    if stream is None or not m.get("finished") or "ACC" not in m.get("cl", {}):
        return None
    ret = m.get("retention", {})
    before, after = ret.get("ppl_before"), ret.get("ppl_after")
    figures = {k: m["cl"][k] for k in ("ACC", "BWT", "FWT")} | {"R": m["cl"]["R"], "ppl_before": before, "ppl_after": after, "wall_time_s": m.get("wall_time_s")}
    figures["ppl_change"] = after / before - 1.0 if before and after else None
    return stream, cfg["stream"]["method"], int(cfg.get("seed", 0)), figures


def collect(folder: Path, out: Path, size: str | None = None, seconds: float | None = None) -> dict[str, Any]:
    """The table from the finished run directories under ``folder``: metrics.json, summary.md, cl_table.png in ``out``."""
    t0 = time.perf_counter()
    per: dict[str, dict[str, dict[str, Any]]] = {s: {m: {} for m in METHODS} for s in STREAMS}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        got = read_run(d)
        if got is not None:
            stream, method, seed, figures = got
            per[stream][method][str(seed)] = figures
    summary = {s: {m: c.summarise(runs, KEYS) | {"runs": len(runs)} if runs else None for m, runs in by_m.items()} for s, by_m in per.items()}
    orders_mean = {}
    for method in METHODS:  # per seed, ACC averaged over the three orders (the seeds that finished all three)
        seeds = set.intersection(*(set(per[o][method]) for o in ORDERS))
        accs = [statistics.fmean(per[o][method][s]["ACC"] for o in ORDERS) for s in sorted(seeds)]
        orders_mean[method] = c.mean_spread(accs) if accs else None
    seeds_seen = sorted({int(s) for by_m in per.values() for runs in by_m.values() for s in runs})
    metrics = {
        "size": size, "seeds": seeds_seen, "streams": {s: list(o) for s, o in STREAMS.items()}, "methods": list(METHODS),
        "runs": per, "summary": summary, "orders_mean_acc": orders_mean, "published_t5_large": PUBLISHED,
        "missing": [f"{s}/{m}" for s, by_m in per.items() for m, runs in by_m.items() if not runs],
        "seconds": seconds if seconds is not None else time.perf_counter() - t0,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(markdown(metrics), encoding="utf-8")
    plot(metrics, out / "cl_table.png")
    return metrics


def markdown(m: dict[str, Any]) -> str:
    def ppl(s: dict[str, Any]) -> str:
        return "–" if s["ppl_after"] is None else f"{c.fmt(s['ppl_after'], 2)} ({100 * s['ppl_change']['mean']:+.1f} %)"

    columns = [("ACC", "ACC", 3), ("BWT", "BWT", 3), ("FWT", "FWT", 3), ("retention perplexity after (change)", ppl, 2), ("seeds", lambda s: str(s["runs"]), 0)]
    entries = [([stream, method], s) for stream, by_m in m["summary"].items() for method, s in by_m.items() if s is not None]
    means = [["method", "ACC, mean over orders 1–3"]] + [[k, c.cell(v)] for k, v in m["orders_mean_acc"].items()]
    published = ", ".join(f"{k} {v}" for k, v in m["published_t5_large"].items())
    return "\n\n".join([
        f"# The standard CL table, size {m['size']} (seeds {m['seeds']}; mean ± std over seeds)",
        c.summary_table(["stream", "method"], entries, columns), c.table(means),
        "ACC / BWT / FWT: from R, each task type's accuracy on its held-out test examples (suite.eval_query of them) before "
        "and after each stage (fractions); retention perplexity: held-out WikiText-2 with every agent's levels on, after the "
        "stream (its change against before).",
        f"**Published, T5-large — not comparable run for run** (another model, about 5.7× the parameters, other training budgets; "
        f"ACC × 100, mean over orders 1–3 of the 4-task stream): {published}.",
        "Missing (no finished run): " + (", ".join(m["missing"]) or "none") + ".",
    ]) + "\n"  # fmt: skip


def plot(m: dict[str, Any], path: Path) -> None:
    fig, ax = c.panels(1, (8, 4))
    streams = [s for s in m["summary"] if any(m["summary"][s].values())]

    def acc(stream: str, method: str) -> float:
        s = m["summary"][stream][method]
        return float("nan") if s is None else s["ACC"]["mean"]

    c.task_bars(ax, streams, m["methods"], acc, "ACC (mean over seeds)")
    c.save_figure(fig, path, f"The standard CL table ({m['size']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", choices=["small", "full"], default="small")
    ap.add_argument("--out", type=Path, help="where the table (and, run here, the runs) go")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base", default=None, help="override the size's base model")
    ap.add_argument("--root", default=None, help="the CL benchmark folder (default: ../shared/data/cl/standard beside the checkout)")
    ap.add_argument("--plan", type=Path, default=None, help="only write every run's config into this folder; print NAME@CONFIG per run")
    ap.add_argument("--collect", type=Path, default=None, help="only build the table from the run directories under this folder")
    args = ap.parse_args(argv)
    if args.plan is not None:
        print("\n".join(write_plan(c.load_size("cl_table", args.size), args.seeds, args.plan)))
        return 0
    if args.out is None:
        ap.error("--out is required")
    m = collect(args.collect, args.out, args.size) if args.collect is not None else run(args.size, args.out, args.seeds, args.base, args.root)
    print(markdown(m))
    print(f"{m['seconds']:.1f} s; {args.out}/metrics.json, {args.out}/cl_table.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
