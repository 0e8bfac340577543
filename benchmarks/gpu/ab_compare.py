"""Two run directories of the same config and seed: the same decisions and numbers? And their seconds per tick.

    python benchmarks/gpu/ab_compare.py RUN_A RUN_B
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

DECISIONS = {"proposals": "tick, agent, level, decision, reason", "scores": "tick, agent, task_type, phase, quality"}


def rows(run: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(run / "ledger.sqlite")
    out = {t: sorted(db.execute(f"SELECT {cols} FROM {t}").fetchall()) for t, cols in DECISIONS.items()}
    db.close()
    return out


def tick_seconds(run: Path) -> list[float]:
    db = sqlite3.connect(run / "ledger.sqlite")
    out = [sum(json.loads(d).values()) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'tick_seconds' ORDER BY tick")]
    db.close()
    return out


def main(a: str, b: str) -> int:
    ra, rb = Path(a), Path(b)
    same = rows(ra) == rows(rb)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ra, rb))
    for name, m in (("A", ma), ("B", mb)):
        print(name, {k: v for k, v in m.items() if not isinstance(v, dict | list)})
    ta, tb = tick_seconds(ra), tick_seconds(rb)
    skip = 1  # the first tick warms the GPU up
    mean_a, mean_b = (sum(t[skip:]) / max(len(t) - skip, 1) for t in (ta, tb))
    print(f"same decisions and scores: {same}")
    print(f"seconds per tick (ticks 2..): A {mean_a:.3f}, B {mean_b:.3f}, B/A {mean_b / mean_a:.3f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
