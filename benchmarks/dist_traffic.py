"""Communication per tick of a run over 2 gloo CPU ranks, as a function of agents and the swarm level's size.

Every point is a real ``torchrun --nproc_per_node 2 -m lorahive run`` on the tests' tiny random
Llama (2 layers, hidden 32, every projection wrapped), ``agent.quality_bar: 0`` so every
agent proposes every tick. The bytes are the collectives' payloads as
:class:`lorahive.runtime.ranks.Comm` counts them (what every rank ends up holding), read from
``metrics.json`` (``distributed.bytes_per_tick`` / ``bytes_total``); D is the swarm level's
parameter count, read from the checkpoint.

    .venv/bin/python benchmarks/dist_traffic.py [--agents 2 4 8] [--ranks 2 8] [--ticks 2] [--busy]

The default mechanisms are on (screening, emergent inertia, replay, consolidation and its
bandwidth queues, health); ``mechanisms`` is what they gather (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lorahive.config import dump_config, parse_config  # noqa: E402
from tiny_runs import LEVELS, config_tree, save_base  # noqa: E402

#: ``--busy``: consolidation checks every tick and migrates after one stable check (tests/test_distributed.py's BUSY, without consensus and the entropy budget)
BUSY = ["mechanisms.consolidation.every=1", "mechanisms.consolidation.checks=1", "mechanisms.consolidation.threshold=0.04", "mechanisms.consolidation.signature_rank=1"]


def swarm_params(run: Path) -> int:
    with safe_open(str(run / "checkpoint" / "levels" / "swarm.safetensors"), framework="pt") as f:
        return sum(f.get_slice(k).get_shape()[1] * f.get_slice(k).get_shape()[2] for k in f.keys() if not k.endswith("/A0"))  # noqa: SIM118


def point(base: Path, work: Path, agents: int, rank: int, ticks: int, overrides: list[str]) -> dict:
    levels = [dict(lv, rank=rank) if lv["name"] == "swarm" else lv for lv in LEVELS]
    tree = config_tree(base, levels=levels, agents=agents, ticks=ticks, agent={"fast_steps": 1, "quality_bar": 0.0})
    cfg = parse_config(tree, overrides)  # the default mechanisms on
    (work / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    out = work / f"a{agents}-r{rank}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lorahive", "run", str(work / "config.yaml"), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    m = json.loads((out / "metrics.json").read_text())["distributed"]
    return {"agents": agents, "swarm_rank": rank, "D": swarm_params(out), "per_tick": m["bytes_per_tick"], "total": m["bytes_total"], "ticks": ticks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--ticks", type=int, default=2)
    ap.add_argument("--busy", action="store_true", help="consolidation checks and migrates every tick (the default checks every 5 ticks)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = save_base(work / "base")
        print("| agents A | swarm rank | D (swarm params) | proposals B/tick | 4·A·D | update B/tick | 4·D | mechanisms B/tick | slots B/checkpoint | digest B/checkpoint |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for rank in args.ranks:
            for agents in args.agents:
                p = point(base, work, agents, rank, args.ticks, BUSY if args.busy else [])
                pt, tot, d = p["per_tick"], p["total"], p["D"]
                checkpoints = p["ticks"]  # one per tick (checkpoint_every: 1)
                print(
                    f"| {agents} | {rank} | {d:,} | {pt.get('proposals', 0):,} | {4 * agents * d:,} | {pt.get('update', 0):,} | {4 * d:,} | {pt.get('mechanisms', 0):,} |"
                    f" {tot.get('slots', 0) // checkpoints:,} | {tot.get('digest', 0) // p['ticks']:,} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
