"""The HTML report and ``lorahive compare`` / ``report`` on real (tiny-model) stream runs."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import pytest
from PIL import Image
from typer.testing import CliRunner

from lorahive.cli.main import app
from lorahive.config import parse_config
from lorahive.observe.report import SECTIONS, write_report
from lorahive.observe.report_mechanisms import MECHANISM_SECTIONS
from lorahive.runtime import run as runs
from tiny_runs import save_base

LEVELS = [
    {"name": "swarm", "rank": 2, "alpha": 4, "scope": "shared", "inertia": 0.5, "lr": 1e-2},
    {"name": "agent", "rank": 2, "alpha": 4, "scope": "agent", "inertia": 0.5, "lr": 2e-2},
    {"name": "context", "rank": 2, "alpha": 4, "scope": "task", "inertia": 0.1, "lr": 2e-2},
]


class Page(HTMLParser):
    """Section ids, and the images inside each section."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.current: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = []
        elif tag == "img" and self.current is not None:
            self.sections[self.current].append(a["src"])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = save_base(tmp_path_factory.mktemp("tiny-base"))
    root = tmp_path_factory.mktemp("runs")
    tree = {
        "base": str(base),
        "levels": LEVELS,
        "agents": 2,
        "threads": 1,
        "suite": {"support": 2, "query": 2, "eval_query": 3, "max_prompt_tokens": 300},
        "agent": {"fast_steps": 1, "quality_bar": 0.0},
        "aggregation": {"strategy": "mean"},
        "stream": {"order": ["yelp", "agnews"], "ticks_per_stage": 1},
        "observe": {"influence_examples": 2, "retention_tokens": 64, "retention_window": 32},
    }
    for method in ("hive", "seq-lora"):
        runs.start(parse_config(tree, [f"stream.method={method}"]), root / method)
    return root / "hive", root / "seq-lora"


def test_the_report_has_every_section_and_every_image_decodes(two_runs):
    hive, baseline = two_runs

    path = write_report(hive, [baseline])

    page = Page()
    page.feed(path.read_text())
    assert list(page.sections) == list(SECTIONS)
    for sid in SECTIONS[1:]:
        # a mechanism's section has its plot only if the run has that mechanism
        # (tests/test_report_mechanisms.py checks them on synthetic ledgers)
        expected = (0, 1) if sid in MECHANISM_SECTIONS else (1,)
        assert len(page.sections[sid]) in expected, sid
    for sid, images in page.sections.items():
        for src in images:
            prefix = "data:image/png;base64,"
            assert src.startswith(prefix), sid
            img = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
            img.load()
            assert img.format == "PNG" and img.width > 100 and img.height > 100, sid
    text = path.read_text()
    assert "seq-lora" in text and "hive" in text  # both runs in the summary table


def test_a_baseline_report_says_what_it_lacks(two_runs):
    _, baseline = two_runs

    page = Page()
    page.feed(write_report(baseline).read_text())

    assert page.sections["agent-influence"] == [] and page.sections["acceptance"] == []
    assert len(page.sections["accuracy-matrix"]) == 1


def test_compare_prints_each_runs_method_and_metrics(two_runs):
    hive, baseline = two_runs

    result = CliRunner().invoke(app, ["compare", str(hive), str(baseline), "--markdown"])

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("| run | method | ticks | ACC | BWT | FWT | ppl before | ppl after")
    rows = {
        line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]
    }
    assert set(rows) == {"hive", "seq-lora"}
    for r in rows.values():
        assert r[2] == "2" and all(c != "–" for c in r[3:8])
        assert float(r[6]) > 1 and float(r[7]) > 1


def test_compare_and_report_refuse_a_directory_without_a_run(tmp_path):
    for cmd in (["compare", str(tmp_path)], ["report", str(tmp_path)]):
        result = CliRunner().invoke(app, cmd)
        assert result.exit_code == 2
        assert "metrics.json" in result.output


def test_the_report_command_writes_report_html(two_runs):
    hive, baseline = two_runs

    result = CliRunner().invoke(app, ["report", str(hive), str(baseline)])

    assert result.exit_code == 0, result.output
    assert (hive / "report.html").is_file()


def test_lorahive_run_writes_the_report_at_the_end(two_runs, tmp_path):
    hive, _ = two_runs
    config = tmp_path / "run.yaml"
    config.write_text((hive / "config.yaml").read_text())

    result = CliRunner().invoke(
        app,
        ["run", str(config), "--out", str(tmp_path / "out"), "stream.order=[agnews]", "ticks=1"],
    )

    assert result.exit_code == 0, result.output
    page = Page()
    page.feed((tmp_path / "out" / "report.html").read_text())
    assert list(page.sections) == list(SECTIONS) and page.sections["accuracy-matrix"]
