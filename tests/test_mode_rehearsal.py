"""Mode rehearsal (``mechanisms.context_modes.rehearse``): a past task type's mode learns from the tick's replayed
examples of that type, exactly as a context slot holding it would, over the levels as they are now; the current
modes, the agents' own slots and every other level are left as they were; off, past modes stay as they were left."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.cli.main import app
from lorahive.config import ContextModesConfig
from lorahive.mechanisms.base import TickView
from lorahive.mechanisms.context_modes import ContextModes
from tiny_runs import assert_same_checkpoints, two_stage_stream

OWN = ("Sports: the team won the match.", " Sports")
PAST = ("World: the summit ended.", " World")
TYPES = {"ann": "sports", "bob": "sports"}


def _hive(tokenizer) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann", "bob"])
    return hive


def _view(hive: Hive, phase: str, support: dict, shared: dict, quality: dict | None = None) -> TickView:
    def learn(examples, steps, levels):
        hive.learn({a: list(exs) for a, exs in examples.items()}, steps, levels)

    return TickView(
        2, phase, [], (), {}, hive.core.states, hive.core, support=support, task_types=TYPES, quality=quality or {},
        quality_bar=0.5, shared=shared, learn=learn,
    )  # fmt: skip


def _past_mode(hive: Hive, cm: ContextModes) -> tuple[int, int]:
    """After one tick on sports: a second mode holding non-zero factors, last taken by 'world'; (sports's mode, world's)."""
    first = cm.run(_view(hive, "draw", {"ann": [OWN], "bob": [OWN]}, {}))
    assert first is not None
    mode = first.detail["modes"]["ann"]
    cm.run(_view(hive, "decay", {}, {}, quality={"ann": 1.0, "bob": 1.0}))
    past = 1 - mode
    gen = torch.Generator().manual_seed(5)
    for a, b in cm.factors.values():
        a[past] = torch.randn(a.shape[1:], generator=gen) * 0.3
        b[past] = torch.randn(b.shape[1:], generator=gen) * 0.3
    cm.opened[:] = True
    cm.type_modes["world"] = past
    return mode, past


def _tick_with_replay(hive: Hive, cm: ContextModes):
    support = {"ann": [OWN, PAST], "bob": [OWN]}
    cm.run(_view(hive, "draw", support, {"replayed": {"ann": {PAST: "world"}}}))
    slots = {p: (bank.A.detach().clone(), bank.B.detach().clone()) for p, bank in hive.core.named_banks("context")}
    others = {lv: [t.detach().clone() for t in hive.core.level_params(lv).values()] for lv in ("swarm", "agent")}
    action = cm.run(_view(hive, "decay", support, {}, quality={"ann": 1.0, "bob": 1.0}))
    return action, slots, others


def test_a_past_mode_learns_from_its_replayed_rows_as_a_slot_holding_it_would(tokenizer):
    hive = _hive(tokenizer)
    cm = ContextModes(ContextModesConfig(enabled=True, modes=2, rehearse=2), "context")
    mode, past = _past_mode(hive, cm)
    before = {p: (a[past].clone(), b[past].clone()) for p, (a, b) in cm.factors.items()}

    twin = _hive(tokenizer)  # the same levels, the past mode in ann's context slot, two steps of the context level on the row
    slot = twin.core.slot_of("context", "ann")
    twin.core.load_slots("context", [slot], {p: (a[None], b[None]) for p, (a, b) in before.items()})
    twin.learn({"ann": [PAST]}, 2, ["context"])

    current = {p: (a[mode].clone(), b[mode].clone()) for p, (a, b) in cm.factors.items()}
    action, slots, others = _tick_with_replay(hive, cm)
    assert action is not None and action.detail["rehearsed"] == {str(past): 1}
    for path, bank in twin.core.named_banks("context"):
        a, b = cm.factors[path]
        torch.testing.assert_close(a[past], bank.A.detach()[slot], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b[past], bank.B.detach()[slot], rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(cm.factors[p][1][past], before[p][1]) for p in before)  # it did learn
    for path, bank in hive.core.named_banks("context"):  # the agents' own slots are back as the tick left them
        assert torch.equal(bank.A.detach(), slots[path][0]) and torch.equal(bank.B.detach(), slots[path][1])
    for lv, ts in others.items():  # only the mode learned
        for x, y in zip(ts, hive.core.level_params(lv).values(), strict=True):
            assert torch.equal(x, y.detach()), lv
    users = hive.core.slots_of("context", ["ann", "bob"])
    for path, (a, b) in cm.factors.items():  # the current mode took its agents' slots (reinforce), nothing of the rehearsal
        torch.testing.assert_close(a[mode], slots[path][0][users].mean(0))
        torch.testing.assert_close(b[mode], slots[path][1][users].mean(0))
        torch.testing.assert_close(a[mode], current[path][0])  # no agent learned this tick: the mode is what it was


def test_off_or_without_replayed_rows_past_modes_stay_as_they_were_left(tokenizer):
    for rehearse, replayed in ((0, {"ann": {PAST: "world"}}), (2, {})):
        hive = _hive(tokenizer)
        cm = ContextModes(ContextModesConfig(enabled=True, modes=2, rehearse=rehearse), "context")
        _, past = _past_mode(hive, cm)
        before = {p: (a[past].clone(), b[past].clone()) for p, (a, b) in cm.factors.items()}
        support = {"ann": [OWN, PAST], "bob": [OWN]}
        cm.run(_view(hive, "draw", support, {"replayed": replayed}))
        action = cm.run(_view(hive, "decay", support, {}, quality={"ann": 1.0, "bob": 1.0}))
        assert action is not None and "rehearsed" not in action.detail
        for p, (a, b) in cm.factors.items():
            assert torch.equal(a[past], before[p][0]) and torch.equal(b[past], before[p][1])


ON = ["mechanisms.replay.fraction=0.5", "mechanisms.context_modes.enabled=true", "mechanisms.context_modes.open_below=0.0", "mechanisms.context_modes.rehearse=1"]


def _norms(run_dir) -> dict[int, dict[str, float]]:
    from lorahive.observe.ledger import Ledger

    with Ledger(run_dir / "ledger.sqlite") as ledger:
        return {e["tick"]: e["detail"] for e in ledger.events("mechanism:context_modes") if e["detail"]["action"] == "reinforce"}


def test_in_a_stream_the_first_stages_mode_moves_in_the_second_only_with_rehearsal(base_dir, tmp_path):
    from lorahive.runtime import run as runs

    for name, over in (("on", ON), ("off", [*ON[:-1], "mechanisms.context_modes.rehearse=0"])):
        runs.start(two_stage_stream(base_dir, over), tmp_path / name)
    on, off = _norms(tmp_path / "on"), _norms(tmp_path / "off")
    yelp = next(iter(on[2]["reinforced"]))  # the mode the first stage (yelp) reinforced
    assert all(yelp not in on[t]["reinforced"] for t in (3, 4)) and all(yelp not in off[t]["reinforced"] for t in (3, 4))
    assert off[2]["norm"][yelp] == off[3]["norm"][yelp] == off[4]["norm"][yelp]  # left as it was
    rehearsed = [t for t in (3, 4) if yelp in on[t].get("rehearsed", {})]
    assert rehearsed and on[rehearsed[0]]["norm"][yelp] != on[rehearsed[0] - 1]["norm"][yelp]
    rows = sum(int(n) for t in (3, 4) for n in on[t].get("rehearsed", {}).values())
    printed = CliRunner().invoke(app, ["inspect", str(tmp_path / "on")])
    assert printed.exit_code == 0 and f"past modes rehearsed in {len(rehearsed)} ticks on {rows} replayed rows" in " ".join(printed.output.split())
    assert "rehearsed" not in CliRunner().invoke(app, ["inspect", str(tmp_path / "off")]).output


def test_resume_with_rehearsal_on_continues_exactly(base_dir, tmp_path):
    from lorahive.runtime import run as runs

    class Crash(Exception):
        pass

    def crash_after_3(done, total, ctx):
        if ctx is not None and done == 3:  # after a tick that rehearsed the first stage's mode
            raise Crash

    runs.start(two_stage_stream(base_dir, ON), tmp_path / "straight")
    with pytest.raises(Crash):
        runs.start(two_stage_stream(base_dir, ON), tmp_path / "split", progress=crash_after_3)
    runs.resume(tmp_path / "split")
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "split")
    sa, sb = (json.loads((tmp_path / d / "checkpoint" / "state.json").read_text()) for d in ("straight", "split"))
    assert sa["mechanisms"]["context_modes"] == sb["mechanisms"]["context_modes"]


def test_rehearse_rate_moves_the_mode_that_share_of_the_way(tokenizer):
    full, part = _hive(tokenizer), _hive(tokenizer)
    cms = [ContextModes(ContextModesConfig(enabled=True, modes=2, rehearse=1, rehearse_rate=w), "context") for w in (1.0, 0.25)]
    pasts = [_past_mode(h, cm)[1] for h, cm in zip((full, part), cms, strict=True)]
    assert pasts[0] == pasts[1]
    past = pasts[0]
    before = {p: (a[past].clone(), b[past].clone()) for p, (a, b) in cms[1].factors.items()}
    for h, cm in zip((full, part), cms, strict=True):
        _tick_with_replay(h, cm)
    for p, (a, b) in cms[1].factors.items():
        torch.testing.assert_close(a[past], before[p][0].lerp(cms[0].factors[p][0][past], 0.25))
        torch.testing.assert_close(b[past], before[p][1].lerp(cms[0].factors[p][1][past], 0.25))
