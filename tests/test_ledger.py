"""The SQLite ledger: schema, WAL mode, transactions, and the query helpers."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from lorahive.mechanisms import Mean, Proposal, Validated
from lorahive.observe.ledger import SCHEMA_VERSION, Ledger, sha256_of


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as led:
        yield led


def test_ledger_is_in_wal_mode(tmp_path):
    Ledger(tmp_path / "l.sqlite").close()
    con = sqlite3.connect(tmp_path / "l.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_ledger_is_readable_with_plain_sqlite3(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as led:
        led.record_proposal(3, "ann", "swarm", "accepted", norm=0.5, cosine=0.9, weight=0.25)
    row = sqlite3.connect(tmp_path / "l.sqlite").execute("SELECT tick, agent, level, norm, cosine, weight, decision FROM proposals").fetchone()
    assert row == (3, "ann", "swarm", 0.5, 0.9, 0.25, "accepted")


def test_meta_holds_schema_version(ledger):
    assert ledger.schema_version == SCHEMA_VERSION
    assert ledger.query("SELECT value FROM meta WHERE key = 'created_at'")


def test_reopening_keeps_rows(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as led:
        led.record_event(1, "decay", {"level": "agent"})
    with Ledger(tmp_path / "l.sqlite") as led:
        assert led.events("decay") == [{"tick": 1, "kind": "decay", "detail": {"level": "agent"}}]


def test_newer_schema_version_is_refused(tmp_path):
    Ledger(tmp_path / "l.sqlite").close()
    con = sqlite3.connect(tmp_path / "l.sqlite")
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="schema version 99"):
        Ledger(tmp_path / "l.sqlite")


def test_transaction_rolls_back_the_whole_tick_on_error(ledger):
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.record_score(1, "ann", "agnews", "before", 0.25, 8)
        raise RuntimeError("tick failed")
    assert ledger.query("SELECT COUNT(*) AS n FROM scores")[0]["n"] == 0


def test_writes_inside_a_transaction_are_invisible_to_readers_until_commit(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    reader = sqlite3.connect(tmp_path / "l.sqlite")
    with led.transaction():
        led.record_score(1, "ann", "agnews", "after", 0.5, 8)
        assert reader.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 0
    assert reader.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 1
    led.close()


def test_bad_decision_and_phase_are_refused(ledger):
    with pytest.raises(ValueError, match="decision"):
        ledger.record_proposal(1, "ann", "swarm", "maybe")
    with pytest.raises(ValueError, match="phase"):
        ledger.record_score(1, "ann", "agnews", "during", 0.5, 8)


def test_non_finite_numbers_are_stored_as_null(ledger):
    ledger.record_proposal(1, "bad", "swarm", "rejected", "non-finite", norm=float("nan"), weight=float("inf"))
    row = ledger.query("SELECT norm, weight FROM proposals")[0]
    assert row == {"norm": None, "weight": None}


def test_record_aggregation_stores_each_proposal_and_the_update(ledger):
    delta = {"x": torch.ones(2)}
    ps = [Proposal("ann", "swarm", 1, delta), Proposal("bob", "swarm", 1, {"x": torch.full((2,), float("nan"))})]
    ledger.record_aggregation(1, "swarm", Validated(Mean()).aggregate(1, ps))
    assert ledger.query("SELECT agent, decision FROM proposals ORDER BY agent") == [
        {"agent": "ann", "decision": "accepted"},
        {"agent": "bob", "decision": "rejected"},
    ]
    assert ledger.query("SELECT n_proposals, n_accepted, strategy FROM updates") == [
        {"n_proposals": 2, "n_accepted": 1, "strategy": "validated(mean)"}
    ]


def test_acceptance_by_tick_counts_decisions(ledger):
    for tick, decision in [(1, "accepted"), (1, "rejected"), (2, "accepted")]:
        ledger.record_proposal(tick, "ann", "swarm", decision)
    assert ledger.acceptance_by_tick() == [
        {"tick": 1, "accepted": 1, "rejected": 1, "rate": 0.5},
        {"tick": 2, "accepted": 1, "rejected": 0, "rate": 1.0},
    ]


def test_agent_summary_gives_acceptance_rate_per_agent(ledger):
    ledger.record_proposal(1, "ann", "swarm", "accepted", quality=0.8)
    ledger.record_proposal(2, "ann", "swarm", "rejected", "norm", quality=0.4)
    ledger.record_proposal(2, "bob", "swarm", "accepted", quality=1.0)
    ann = ledger.agent_summary()[0]
    assert ann["agent"] == "ann" and ann["acceptance_rate"] == 0.5 and ann["mean_quality"] == pytest.approx(0.6)


def test_rejection_reasons_most_frequent_first(ledger):
    for reason in ["nan", "norm", "nan"]:
        ledger.record_proposal(1, "ann", "swarm", "rejected", reason)
    assert ledger.rejection_reasons() == [{"reason": "nan", "n": 2}, {"reason": "norm", "n": 1}]


def test_quality_gain_compares_before_and_after(ledger):
    ledger.record_score(1, "ann", "agnews", "before", 0.25, 8)
    ledger.record_score(1, "ann", "agnews", "after", 0.75, 8)
    assert ledger.quality_gain() == [{"agent": "ann", "task_type": "agnews", "before": 0.25, "after": 0.75, "gain": 0.5}]


def test_record_checkpoint_hashes_a_directory(ledger, tmp_path):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "swarm.safetensors").write_bytes(b"weights")
    digest = ledger.record_checkpoint(4, ckpt)
    assert digest == sha256_of(ckpt) and ledger.latest_checkpoint()["tick"] == 4


def test_sha256_of_a_directory_changes_with_any_file(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    before = sha256_of(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert sha256_of(tmp_path) != before


def test_rollback_to_drops_rows_after_the_tick(ledger):
    ledger.record_proposal(1, "ann", "swarm", "accepted")
    ledger.record_proposal(2, "ann", "swarm", "accepted")
    ledger.record_update(2, "swarm", 0.1, 1, "mean")
    assert ledger.rollback_to(1) == 2
    assert ledger.last_tick() == 1 and ledger.events("resume")[0]["detail"] == {"rows_deleted": 2}
