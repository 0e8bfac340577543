"""``lorahive compare --by-seed``: runs that differ only in their seed become one row of mean ± standard deviation."""

from __future__ import annotations

import json
import statistics

import yaml
from typer.testing import CliRunner

from lorahive.cli.main import app
from lorahive.observe.compare import group_rows, seed_groups


def write_run(root, name, seed, acc, bwt=0.01, fwt=0.1, ppl=(36.0, 36.9), finished=True, **config):
    """A run directory as a finished run leaves it, as far as compare reads it: config.yaml and metrics.json."""
    d = root / name
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "agents": 8, **config}))
    metrics = {"method": config.get("method", "hive"), "ticks": 125, "finished": finished, "cl": {"ACC": acc, "BWT": bwt, "FWT": fwt}, "retention": {"ppl_before": ppl[0], "ppl_after": ppl[1]}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_runs_group_by_everything_but_the_seed(tmp_path):
    dirs = [
        write_run(tmp_path, "on-s0", 0, 0.649),
        write_run(tmp_path, "k64-s0", 0, 0.659, mechanisms={"inertia": {"k": 64}}),
        write_run(tmp_path, "on-s1", 1, 0.648),
        write_run(tmp_path, "k64-s1", 1, 0.666, mechanisms={"inertia": {"k": 64}}),
        write_run(tmp_path, "on-s2", 2, 0.651),
    ]

    groups = seed_groups(dirs)

    assert [[s.label for s, _ in g] for g in groups] == [["on-s0", "on-s1", "on-s2"], ["k64-s0", "k64-s1"]]
    assert [seed for _, seed in groups[0]] == [0, 1, 2]


def test_each_figure_is_the_mean_and_sample_standard_deviation(tmp_path):
    accs, bwts = [0.649, 0.648, 0.651], [0.004, 0.013, 0.022]
    dirs = [write_run(tmp_path, f"s{i}", i, a, bwt=b, ppl=(36.0, 36.0 * (1 + r))) for i, (a, b, r) in enumerate(zip(accs, bwts, [0.01, 0.02, 0.03], strict=True))]

    (row,) = group_rows(dirs)

    assert row[:3] == ["s0 / s1 / s2", "hive", "0,1,2"]
    assert row[3] == f"{statistics.fmean(accs):.3f} ± {statistics.stdev(accs):.3f}" == "0.649 ± 0.002"
    assert row[4] == f"+{statistics.fmean(bwts):.3f} ± {statistics.stdev(bwts):.3f}"
    assert row[6] == "+2.000 ± 1.000"  # perplexity rises of 1, 2 and 3 %


def test_an_unfinished_run_is_named_and_left_out(tmp_path):
    dirs = [write_run(tmp_path, "a", 0, 0.60), write_run(tmp_path, "b", 1, 0.10, finished=False)]

    (row,) = group_rows(dirs)

    assert row[0] == "a (b unfinished, left out)" and row[2] == "0" and row[3] == "0.600"


def test_the_cli_prints_a_markdown_table_over_seeds(tmp_path):
    dirs = [write_run(tmp_path, f"r{i}", i, acc) for i, acc in enumerate([0.60, 0.62])]
    dirs.append(write_run(tmp_path, "replay", 0, 0.67, method="replay"))

    result = CliRunner().invoke(app, ["compare", *map(str, dirs), "--by-seed", "--markdown"])

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "| runs | method | seeds | ACC | BWT | FWT | ppl rise % |"
    assert lines[2].startswith("| r0 / r1 | hive | 0,1 | 0.610 ± 0.014 |")
    assert lines[3].startswith("| replay | replay | 0 | 0.670 |")


def test_a_run_without_its_config_is_refused_naming_the_file(tmp_path):
    d = write_run(tmp_path, "a", 0, 0.6)
    (d / "config.yaml").unlink()

    result = CliRunner().invoke(app, ["compare", str(d), "--by-seed"])

    assert result.exit_code == 2
    assert "config.yaml" in result.output
