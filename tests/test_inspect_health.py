"""``lorahive inspect`` with the mechanisms' events: health table, migrations, screening."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from lorahive.cli.inspect_cmd import print_mechanisms
from lorahive.cli.main import app
from lorahive.observe.health_bands import BANDS
from lorahive.observe.ledger import Ledger
from lorahive.observe.report_mechanisms import mechanism_events
from mechanism_events import record_mechanisms, synthetic_run
from test_cli import write_config


def printed(events) -> str:
    buf = io.StringIO()
    print_mechanisms(events, Console(file=buf, width=120, color_system=None))
    return buf.getvalue()


def test_the_last_ticks_health_the_migrations_and_the_screening_counts(tmp_path):
    run = synthetic_run(tmp_path / "run", ticks=5)
    with Ledger(run / "ledger.sqlite") as ledger:
        text = printed(mechanism_events(ledger))

    lines = text.splitlines()
    assert "health at tick 5: overall warning" in lines[0]
    cells = [line.split("│")[1].strip() for line in lines if line.count("│") == 4]
    rows = {line.split("│")[1].strip(): line for line in lines if line.count("│") == 4}
    assert [c for c in cells if c] == list(BANDS)  # one row per metric, in the spec's order
    assert (
        "rejection_rate" in rows
        and "2.0%" in rows["rejection_rate"]
        and "warning" in rows["rejection_rate"]
    )
    assert (
        "conflict_rate" in rows
        and "0.4%" in rows["conflict_rate"]
        and "healthy" in rows["conflict_rate"]
    )
    assert "fast_track_rate" in rows and "10.0%" in rows["fast_track_rate"]
    # per-level entries: the one out of its healthy band is marked
    assert "swarm 0.75 (warning)" in text and "agent 1.1 " in text and "agent 1.1 (" not in text
    assert "context→agent 20 (warning)" in text
    assert "migrations: agent→swarm 1, context→agent 3; 1 bypass (fast track)" in text
    assert (
        "screening at tick 5 (screened / free patterns): agent 11 / 3, context 12 / 3, swarm 10 / 3"
        in text
    )


def test_nothing_is_printed_without_mechanism_events(tmp_path):
    run = synthetic_run(tmp_path / "plain", mechanisms=False)
    with Ledger(run / "ledger.sqlite") as ledger:
        assert printed(mechanism_events(ledger)) == ""


def test_na_metrics_show_a_dash_and_na():
    detail = {
        "action": "health",
        "metrics": {"fast_track_rate": None, "entropy_ratio": {"swarm": None}},
        "status": {"fast_track_rate": "n/a", "entropy_ratio": "n/a"},
        "overall": "n/a",
    }
    text = printed([{"tick": 1, "kind": "mechanism:health", "detail": detail}])
    assert "overall n/a" in text
    fast = next(line for line in text.splitlines() if "fast_track_rate" in line)
    assert "–" in fast and "n/a" in fast


def test_lorahive_inspect_prints_them_after_the_ledger_line(base_dir, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", base_dir)
    out = tmp_path / "run"
    assert CliRunner().invoke(app, ["run", str(cfg), "--out", str(out)]).exit_code == 0
    with Ledger(out / "ledger.sqlite") as ledger:
        record_mechanisms(ledger, ticks=1)  # the run has one tick: add its mechanisms' events

    res = CliRunner().invoke(app, ["inspect", str(out)])

    assert res.exit_code == 0, res.output
    text = res.output
    assert (
        text.index("ledger: last tick 1")
        < text.index("health at tick 1")
        < text.index("screening at tick 1")
    )
    assert "overall healthy" in text and "migrations:" not in text  # tick 1: no migration yet
