"""The report's health / migrations / decay / inertia sections and ``health_summary``, on
synthetic ledgers with the mechanisms' events (no model needed)."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from PIL import Image

from lorahive.observe import report_mechanisms as rm
from lorahive.observe.ledger import Ledger
from lorahive.observe.report import SECTIONS, render_report, write_report
from mechanism_events import health_detail, migration, synthetic_run


class Page(HTMLParser):
    """Per section: its images, its text, and the classes of its paragraphs."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, list[str]] = {}
        self.text: dict[str, str] = {}
        self.classes: dict[str, list[str]] = {}
        self.current: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.images[self.current], self.text[self.current], self.classes[self.current] = (
                [],
                "",
                [],
            )
        elif self.current and tag == "img":
            self.images[self.current].append(a["src"])
        elif self.current and tag == "p":
            self.classes[self.current].append(a.get("class", ""))

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.text[self.current] += data + " "


def page_of(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
    img.load()
    return img


@pytest.fixture
def run(tmp_path):
    return synthetic_run(tmp_path / "run", ticks=5)


@pytest.fixture
def events(run):
    with Ledger(run / "ledger.sqlite") as ledger:
        return ledger.events()


def test_the_mechanism_sections_follow_acceptance_in_the_report(run):
    assert SECTIONS[-5:] == ("acceptance", "health", "migrations", "decay", "inertia")
    page = page_of(write_report(run).read_text(encoding="utf-8"))
    assert list(page.images) == list(SECTIONS)
    for sid in rm.MECHANISM_SECTIONS:
        assert len(page.images[sid]) == 1, sid
        img = decode_png(page.images[sid][0])
        assert img.format == "PNG" and img.width > 300 and img.height > 150, sid


def test_the_health_section_states_the_last_ticks_overall_status(run):
    page = page_of(render_report(run))

    text = page.text["health"]
    # tick 5: swarm entropy 0.75, queue 20, wait 7.5, rejections 2 %: warnings, nothing critical
    assert "last tick (5): overall warning" in text
    assert (
        "entropy_ratio warning" in text
        and "queue_depth warning" in text
        and "conflict_rate" not in text
    )
    assert "warning" in page.classes["health"]


def test_the_migrations_section_has_a_totals_table_per_channel(run):
    html = render_report(run)
    section = html[html.index('<section id="migrations">') : html.index('<section id="decay">')]
    cells = re.findall(r"<tr>(.*?)</tr>", section)
    rows = [re.findall(r"<t[dh]>(.*?)</t[dh]>", c) for c in cells]
    assert rows[0] == ["channel", "migrations", "bypass", "params moved", "mean wait", "truncation"]
    by_channel = {r[0]: r[1:] for r in rows[1:]}
    assert by_channel == {
        "agent→swarm": ["1", "0", "128", "3", "0.05"],
        "context→agent": ["3", "1", "384", "2", "0.05"],
    }


def test_a_run_without_mechanism_events_says_so_in_each_section(tmp_path):
    run = synthetic_run(tmp_path / "plain", mechanisms=False)

    page = page_of(render_report(run))

    assert list(page.images) == list(SECTIONS)
    assert len(page.images["acceptance"]) == 1
    for sid, word in [
        ("health", "health"),
        ("migrations", "migrations"),
        ("decay", "screening"),
        ("inertia", "inertia"),
    ]:
        assert page.images[sid] == [] and page.classes[sid] == ["empty"], sid
        assert f"no {word} events" in page.text[sid] or f"no {word} in" in page.text[sid], sid


def test_a_run_without_a_ledger_still_gets_every_section(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"method": "hive", "ticks": 0}))

    page = page_of(render_report(run))

    assert list(page.images) == list(SECTIONS) and all(
        page.images[s] == [] for s in rm.MECHANISM_SECTIONS
    )


def test_health_summary_of_a_run(events):
    summary = rm.health_summary(events)

    assert summary["ticks"] == 5 and summary["overall"] == "warning"
    assert summary["last"] == health_detail(5)["metrics"]
    assert summary["status"] == health_detail(5)["status"]
    assert summary["worst"] == {
        "entropy_ratio": "warning",
        "queue_depth": "warning",
        "wait_time": "warning",
        "rejection_rate": "warning",
        "fast_track_rate": "healthy",  # n/a on ticks 1-2, ignored
        "conflict_rate": "healthy",
    }
    assert summary["migrations"] == {"agent→swarm": 1, "context→agent": 3}
    assert summary["fast_tracked"] == 1
    assert json.loads(json.dumps(summary)) == summary  # fits in metrics.json as it is


def test_health_summary_without_events_and_with_a_critical_tick():
    assert rm.health_summary([]) == {
        "last": {},
        "status": {},
        "overall": "n/a",
        "ticks": 0,
        "worst": {},
        "migrations": {},
        "fast_tracked": 0,
    }
    bad = health_detail(1) | {
        "status": health_detail(1)["status"] | {"queue_depth": "critical"},
        "overall": "critical",
    }
    events = [
        {"tick": 1, "kind": "mechanism:health", "detail": bad},
        {
            "tick": 1,
            "kind": "mechanism:replay",
            "detail": {"action": "replay", "replayed": 1, "stored": 1, "buffer": {}},
        },
        {"tick": 2, "kind": "mechanism:health", "detail": health_detail(2)},
        {
            "tick": 2,
            "kind": "mechanism:bandwidth",
            "detail": {
                "action": "migrate",
                "migrations": [migration("agent→swarm", bypass=True)],
                "queued": {},
            },
        },
    ]
    summary = rm.health_summary(iter(events))  # any iterable, events of any kinds
    assert summary["ticks"] == 2 and summary["overall"] == "healthy"
    assert (
        summary["worst"]["queue_depth"] == "critical"
        and summary["worst"]["fast_track_rate"] == "n/a"
    )
    assert summary["migrations"] == {"agent→swarm": 1} and summary["fast_tracked"] == 1


def test_the_figures_cope_with_missing_and_null_metrics():
    sparse = {
        "action": "health",
        "metrics": {"entropy_ratio": {"swarm": None}, "fast_track_rate": None, "queue_depth": {}},
        "status": {"entropy_ratio": "n/a", "fast_track_rate": "n/a", "queue_depth": "n/a"},
        "overall": "n/a",
    }
    events = [{"tick": 1, "kind": "mechanism:health", "detail": sparse}]

    fig = rm.health_figure(events)

    assert isinstance(fig, Figure) and len([ax for ax in fig.axes if ax.axison]) == 6
    plt.close(fig)
    assert (
        rm.health_line(events)
        == "last tick (1): overall n/a (entropy_ratio n/a, queue_depth n/a, fast_track_rate n/a)"
    )
    assert rm.health_line([]) == "no health events"


def test_each_figure_reads_only_its_own_kind(events):
    assert rm.latest(events, "migrations")["tick"] == 4
    assert rm.latest(events, "decay")["detail"]["levels"]["agent"]["screened"] == 2 * 5 + 1
    for draw in (rm.health_figure, rm.migrations_figure, rm.decay_figure, rm.inertia_figure):
        fig = draw(events)
        assert isinstance(fig, Figure) and fig.axes
        plt.close(fig)
    migrations_only = [e for e in events if e["kind"] == "mechanism:bandwidth"]
    assert rm.latest(migrations_only, "health") is None
