"""Recipe: the same SFT and DPO stages in three orders (SFT→DPO, DPO→SFT, SFT→DPO→SFT), compared.

    python recipes/stages/recipe.py --size small --out runs/stages-small
    python recipes/stages/recipe.py --size full --out runs/stages-full --jobs 3   # one GPU, docs/stages.md
    python recipes/stages/recipe.py --size full --out runs/stages-full --jobs 3 --resume   # after a kill: go on

``{size}.yaml`` holds a stages config without its ``stages`` (``config``), stage templates
by key (``stages``) and the orders to run (``orders``). Every order is a stages run of its own
(``OUT/<order>/``: config, ledger, weights, metrics.json) over the same data, seed and
templates; ``OUT/summary.json`` and ``OUT/summary.md`` put them side by side: behaviour,
per-stage Shapley values and drop-one KL, budgets, ΔW overlaps, and how far the two-stage
orders differ; ``OUT/report.html`` is the first order's report compared with the others
(``lorahive report``: per-stage budgets over the steps, Shapley values of every order as bars). ``base: tiny-random`` builds a 2-block random Llama with a byte-level BPE
tokenizer trained on the data's text into ``OUT/tiny-base`` (the small size, for CI).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

from lorahive.config import StagesConfig, load_stages_config, parse_stages_config
from lorahive.observe.report import render_report
from lorahive.runtime import stages as runner

HERE = Path(__file__).resolve().parent
TINY = "tiny-random"


def load_recipe(size: str) -> dict[str, Any]:
    """The recipe's YAML for ``size``, with data paths made absolute (relative to this folder)."""
    tree = yaml.safe_load((HERE / f"{size}.yaml").read_text(encoding="utf-8"))
    for spec in tree["config"]["data"].values():
        for key in ("root", "path"):
            if isinstance(spec.get(key), str) and not Path(spec[key]).is_absolute():
                spec[key] = str((HERE / spec[key]).resolve())
    return tree


def _texts(cfg: dict[str, Any]) -> list[str]:
    """Some text of every data set: what the tiny tokenizer is trained on."""
    from lorahive.suites.cl import load_cl
    from lorahive.suites.demo import load_demo

    out: list[str] = []
    for spec in cfg["data"].values():
        if spec["source"] == "cl":
            data = load_demo(spec["task_type"]) if spec.get("root") is None else load_cl(Path(spec["root"]) / spec["task_type"])
            out += [p + " " + a for p, a in data.train[:200]] + list(data.labels)
        else:
            records = json.loads(Path(spec["path"]).read_text(encoding="utf-8"))[:300]
            out += [" ".join((r["prompt"], r["rephrase_prompt"], r["target_new"], r["ground_truth"])) for r in records]
    return out


def tiny_base(path: Path, texts: list[str], seed: int = 0) -> Path:
    """A 2-block random Llama (hidden 32) and a byte-level BPE tokenizer (2048 tokens) saved as a model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (path / "config.json").is_file():
        return path
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def order_config(recipe: dict[str, Any], order: list[str], base: str, overrides: Sequence[str] = ()) -> StagesConfig:
    """The stages config of one order: the recipe's config with the templates of ``order``, in order."""
    tree = {**recipe["config"], "base": base, "stages": [dict(recipe["stages"][k]) for k in order]}
    return parse_stages_config(tree, list(overrides))


def _diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a if k in b}


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every order against the first: the change of behaviour after learning and of each shared stage's Shapley values."""
    names = list(results)
    ref = results[names[0]]
    out: dict[str, Any] = {}
    for name in names[1:]:
        other = results[name]
        out[f"{names[0]} vs {name}"] = {
            data: {
                "after": _diff(ref["data"][data]["after"], other["data"][data]["after"]),
                "shapley_logp": _diff(ref["data"][data]["shapley_logp"], other["data"][data]["shapley_logp"]),
                "shapley_margin": _diff(ref["data"][data]["shapley_margin"], other["data"][data]["shapley_margin"]),
            }
            for data in ref["data"]
        }
    return out


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def markdown(summary: dict[str, Any]) -> str:
    """The summary's tables: behaviour, attribution, budgets, overlaps."""
    results = summary["orders"]
    parts = [f"# Stages recipe, size {summary['size']} (base {summary['base']})\n"]
    rows = [["order", "data", "log p(chosen) before → after", "margin before → after", "pref. acc. before → after", "label acc. before → after"]]
    for name, r in results.items():
        for data, d in r["data"].items():
            b, a = d["before"], d["after"]
            acc = f"{b['label_accuracy']:.2f} → {a['label_accuracy']:.2f}" if "label_accuracy" in a else "–"
            rows.append([name, data, f"{b['logp_chosen']:.2f} → {a['logp_chosen']:.2f}", f"{b['margin']:+.2f} → {a['margin']:+.2f}", f"{b['pref_accuracy']:.2f} → {a['pref_accuracy']:.2f}", acc])
    parts += ["## Behaviour (held-out pairs)\n", _table(rows), ""]
    rows = [["order", "data", "stage", "Shapley log p(chosen)", "Shapley margin", "share", "drop-one KL"]]
    for name, r in results.items():
        for data, d in r["data"].items():
            for st in d["shapley_logp"]:
                rows.append([name, data, st, f"{d['shapley_logp'][st]:+.3f}", f"{d['shapley_margin'][st]:+.3f}", f"{d['shares_logp'][st]:.2f}", f"{d['kl_drop'][st]:.4f}"])
    parts += ["## Attribution (exact Shapley values, nats)\n", _table(rows), ""]
    rows = [["order", "stage", "objective", "‖ΔW‖", "cap", "steps clipped", "within budget"]]
    for name, r in results.items():
        for st in r["stages"]:
            cap = "–" if st["cap"] is None else f"{st['cap']:.3g}"
            rows.append([name, st["stage"], st["objective"], f"{st['norm']:.3g}", cap, f"{st['clipped_steps']}/{len(st['steps'])}", str(st["within_budget"])])
    parts += ["## Budgets\n", _table(rows), ""]
    rows = [["order", "stages", "modules", "out overlap (mean cos²)", "out min angle °", "in overlap", "in min angle °", "ΔW cosine"]]
    for name, r in results.items():
        for pair, o in r["overlap"].items():
            rows.append([name, pair.replace("|", " vs "), str(o["modules"]), f"{o['out_overlap']:.3f}", f"{o['out_min_angle']:.1f}", f"{o['in_overlap']:.3f}", f"{o['in_min_angle']:.1f}", f"{o['cosine']:+.3f}"])
    parts += ["## Overlap of the stages' ΔW (principal angles)\n", _table(rows), ""]
    return "\n".join(parts)


def _continued(cfg: StagesConfig, run: Path) -> dict[str, Any]:
    """The result of the order already in ``run``: read back when finished, else resumed (``--resume``)."""
    held = load_stages_config(str(run / "config.yaml"))
    if held.model_dump() != runner.absolute_paths(cfg).model_dump():
        raise SystemExit(f"{run} holds a run of another config than this recipe's order; drop --resume to start it again")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8")) if (run / "metrics.json").is_file() else {}
    return metrics if metrics.get("finished") else runner.resume(run)


def _order(cfg: StagesConfig, run: Path, resume: bool) -> dict[str, Any]:
    """One order's result: continued (``resume`` and ``run`` holds it) or run from the start."""
    if resume and (run / "config.yaml").is_file():
        return _continued(cfg, run)
    return runner.start(cfg, run, force=True)


def run(
    size: str, out: Path, base: str | None = None, overrides: Sequence[str] = (), recipe: dict[str, Any] | None = None, resume: bool = False, jobs: int = 1
) -> dict[str, Any]:
    """Run every order of the recipe (default: ``{size}.yaml``) into ``out``; returns (and writes) the summary.

    ``resume``: an order whose run directory already holds this config is read back when it
    finished and resumed from its last checkpoint when it did not (a killed recipe goes on).
    ``jobs`` > 1: the orders run in that many processes at once (each loads its own model; on
    a GPU the steps are bound by the host, so orders side by side take about the time of one).
    """
    recipe = recipe or load_recipe(size)
    out.mkdir(parents=True, exist_ok=True)
    base = base or recipe["config"]["base"]
    if base == TINY:
        base = str(tiny_base(out / "tiny-base", _texts(recipe["config"]), recipe["config"].get("seed", 0)))
    configs = {"-".join(order): order_config(recipe, order, base, overrides) for order in recipe["orders"]}
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(_order, cfg, out / name, resume) for name, cfg in configs.items()}
            results = {name: f.result() for name, f in futures.items()}
    else:
        results = {name: _order(cfg, out / name, resume) for name, cfg in configs.items()}
    summary = {"size": size, "base": base, "orders": results, "order_effect": compare(results)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    names = list(results)
    (out / "report.html").write_text(render_report(out / names[0], [out / n for n in names[1:]]), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", default=None, help="override the recipe's base model")
    parser.add_argument("--resume", action="store_true", help="go on after a kill: read back finished orders, resume an unfinished one")
    parser.add_argument("--jobs", type=int, default=1, help="orders run at once, one process each")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every order's stages config")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    summary = run(args.size, args.out, args.base, args.overrides, resume=args.resume, jobs=args.jobs)
    print(markdown(summary))
    print(f"total {sum(r['seconds'] for r in summary['orders'].values()):.1f} s; {args.out}/summary.json, {args.out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
