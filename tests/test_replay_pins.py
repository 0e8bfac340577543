"""Replayed rows in a real stream run reach the mode their task type took (mechanisms/replay.py →
mechanisms/context_modes.py → core/pins.py): the rows context modes pin are the rows the learning calls carry,
whatever the dataset's labels look like (the agents learn answers after one space, runtime/agent.py)."""

from __future__ import annotations

from typing import Any

from lorahive.core import pins as pins_module
from lorahive.observe.ledger import Ledger
from lorahive.runtime import hive as hive_module
from lorahive.runtime import run as runs
from tiny_runs import two_stage_stream

MODES = ["mechanisms.replay.fraction=0.5", "mechanisms.context_modes.enabled=true", "mechanisms.context_modes.modes=2",
         "mechanisms.context_modes.open_rule=cosine", "mechanisms.context_modes.open_below=0.99"]  # fmt: skip


def test_every_pinned_replayed_row_runs_its_types_mode_in_the_learning_calls(base_dir, tmp_path, monkeypatch):
    hits: list[int] = []
    armed: list[int] = []

    def spy(core: Any, routing: Any, keys: Any) -> Any:
        if core.pins is not None:
            armed.append(sum(k in core.pins.rows for k in keys))
            hits.append(sum(core.pins.rows.get(k) is not None for k in keys))
        return pins_module.pin(core, routing, keys)

    monkeypatch.setattr(hive_module, "pin", spy)
    runs.start(two_stage_stream(base_dir, MODES), tmp_path / "run")

    with Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        routes = {e["tick"]: e["detail"] for e in ledger.events("mechanism:context_modes") if e["detail"].get("action") == "route"}
        replays = {e["tick"]: e["detail"]["replayed"] for e in ledger.events("mechanism:replay")}
    assert replays[3] == replays[4] == 2 * 2  # stage 2 replays yelp's successes
    pinned = sum(int(d.get("pinned", 0)) for d in routes.values())
    assert pinned > 0, routes  # agnews took another mode than yelp, so replayed yelp rows are pinned
    assert armed and sum(hits) > 0  # the learning calls carried them
    assert all(h == a for h, a in zip(hits, armed, strict=True))
