"""A run's ledger in brief, small enough to bring back from the GPU machine with its metrics.

    python3 benchmarks/gpu/run_events.py OUT/NAME > OUT/NAME.events.json

Writes JSON: how many events of each kind (and, for mechanism events, of each action) the run recorded, and the
payloads of the rarer mechanism actions in full (``eval_route``: the context mode each task type took at each
evaluation; topology's splits and merges), capped at ``LIMIT`` per action, and the migrations per channel (moved,
bypassed, rejected).
"""

import json
import sqlite3
import sys
from collections import Counter

LIMIT = 40  # payloads kept per (kind, action), the latest ones
FULL = {"eval_route", "split", "merge"}

run = sys.argv[1]
rows = sqlite3.connect(f"file:{run}/ledger.sqlite?mode=ro", uri=True).execute("select tick, kind, detail from events order by id").fetchall()
counts: Counter[str] = Counter()
channels: Counter[str] = Counter()
kept: dict[str, list[dict]] = {}
for tick, kind, detail in rows:
    payload = json.loads(detail)
    action = payload.get("action") if isinstance(payload, dict) else None
    key = f"{kind}/{action}" if action else kind
    counts[key] += 1
    if action in FULL:
        kept.setdefault(key, []).append({"tick": tick, **payload})
    if action == "migrate":
        for m in payload.get("migrations", []):
            channels[f"{m['channel']} {'accepted' if m.get('accepted', True) else 'rejected'}{' (bypass)' if m.get('bypass') else ''}"] += 1
out = {"counts": dict(sorted(counts.items())), "migrations": dict(sorted(channels.items())), "events": {k: v[-LIMIT:] for k, v in kept.items()}}
json.dump(out, sys.stdout, indent=1)
print()
