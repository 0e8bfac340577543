"""Per-tick phase seconds of runs in progress: each run's last ``tick_seconds`` ledger event, largest phases first.

    python3 benchmarks/gpu/tick_times.py OUT/NAME [OUT/NAME ...]
"""

import json
import sqlite3
import sys

for run in sys.argv[1:]:
    try:
        rows = sqlite3.connect(f"file:{run}/ledger.sqlite?mode=ro", uri=True).execute("select tick, detail from events where kind='tick_seconds' order by id").fetchall()
    except sqlite3.Error as e:
        print(run, "no ledger yet:", e)
        continue
    for tick, detail in rows[-3:]:
        top = sorted(json.loads(detail).items(), key=lambda kv: -kv[1])[:6]
        print(run, f"tick {tick}:", ", ".join(f"{k} {v:.2f}" for k, v in top))
