"""Hive vs seq-lora vs replay vs multitask on one continual-learning stream config.

Runs the config once per method (same engine, data, seed and budget), each into
``OUT/<method>``, times every run, writes ``OUT/<hive>/report.html`` comparing them all,
and prints the comparison as a Markdown table (the one in docs/continual.md) with the
wall times. Usage::

    .venv/bin/python benchmarks/cl_compare.py --config configs/cl-demo.yaml --out runs/cl-demo
    .venv/bin/python benchmarks/cl_compare.py --config configs/cl-stream.yaml --out runs/cl-full
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lorahive.config import METHODS, load_config
from lorahive.observe.compare import COLUMNS, summary_rows
from lorahive.observe.report import write_report
from lorahive.runtime import run as runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every method")
    args = ap.parse_args()
    wall: dict[str, float] = {}
    start = time.time()
    for method in args.methods:
        cfg = load_config(args.config, [*args.overrides, f"stream.method={method}"])
        t = time.time()
        runs.start(cfg, args.out / method, force=True)
        wall[method] = time.time() - t
        print(f"{method}: {wall[method]:.0f} s", flush=True)
    total = time.time() - start
    dirs = [args.out / m for m in args.methods]
    write_report(dirs[0], dirs[1:])
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(dirs)]
    table = "\n".join(lines)
    print(table)
    print(f"total wall time: {total:.0f} s")
    (args.out / "compare.md").write_text(table + f"\n\ntotal wall time: {total:.0f} s\n", encoding="utf-8")
    (args.out / "wall_time.json").write_text(json.dumps({"per_method_s": wall, "total_s": total}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
