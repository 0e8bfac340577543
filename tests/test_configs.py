"""The example configs in configs/ validate, and a relative suite.root is read from the file's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorahive.config import (
    ConfigError,
    is_stages_tree,
    load_config,
    load_stages_config,
    parse_config,
    parse_stages_config,
    read_tree,
)
from lorahive.config.implant import parse_implant

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates(path):
    if is_stages_tree(read_tree(path)):  # a stages run (docs/stages.md)
        stages = load_stages_config(str(path))
        assert stages.stages and all(Path(d.path).is_absolute() for d in stages.data.values() if d.path)
        return
    if path.name.startswith("implant"):  # a `lorahive implant` config (docs/implantation.md)
        implant = parse_implant(read_tree(path))
        assert implant.edits >= 1 and implant.methods
        return
    cfg = load_config(path)
    assert cfg.ticks >= 1 and cfg.agents >= 1
    if cfg.suite.source == "cl":
        assert Path(cfg.suite.root).is_absolute()


def test_demo_config_is_the_demo_defaults():
    shipped = load_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert shipped == parse_config({})


def test_relative_suite_root_is_read_from_the_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg_file = tmp_path / "sub" / "run.yaml"
    cfg_file.write_text("suite:\n  source: cl\n  root: ../data/cl\n")
    cfg = load_config(cfg_file)
    assert cfg.suite.root == str((tmp_path / "data" / "cl").resolve())


def test_override_wins_over_the_file(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("ticks: 4\n")
    assert load_config(cfg_file, ["ticks=7"]).ticks == 7
    with pytest.raises(ConfigError, match="ticks"):
        load_config(cfg_file, ["ticks=0"])


def test_an_override_reaches_a_list_item_by_its_index_and_leaves_the_tree_as_it_was():
    sft = {"objective": "sft", "data": "d", "levels": ["swarm"]}
    tree = {"data": {"d": {"source": "cl", "task_type": "agnews"}}, "stages": [sft, {**sft, "scope": {"targets": ["q_proj"]}}]}
    cfg = parse_stages_config(tree, ["stages.1.steps=5", "stages.1.scope.blocks=[1]", "stages.0.budget={max_norm: 0.5}"])
    assert (cfg.stages[1].steps, cfg.stages[1].scope.blocks, cfg.cap(0)) == (5, [1], 0.5)
    assert tree["stages"][1] == {**sft, "scope": {"targets": ["q_proj"]}}  # the caller's tree is untouched
    with pytest.raises(ConfigError, match=r"override 'stages\.2\.steps': stages is a list of 2 items; '2' is not one of its indices 0–1"):
        parse_stages_config(tree, ["stages.2.steps=5"])
    with pytest.raises(ConfigError, match=r"override 'stages\.x\.steps'"):
        parse_stages_config(tree, ["stages.x.steps=5"])


def test_an_override_edits_one_level_by_its_name_even_when_the_file_has_no_levels():
    from lorahive.config import default_levels

    tree = {"ticks": 2}
    cfg = parse_config(tree, ["levels.swarm.lr=1e-3", "levels.context.rank=8"])
    got = {lv.name: lv for lv in cfg.levels}
    assert (got["swarm"].lr, got["context"].rank) == (1e-3, 8)
    assert tree == {"ticks": 2}  # the caller's tree is untouched
    # every other field of every level is the default's
    edited = {"swarm": {"lr"}, "context": {"rank"}}
    for lv in default_levels().levels:
        for field, value in lv.model_dump().items():
            if field not in edited.get(lv.name, set()):
                assert getattr(got[lv.name], field) == value, (lv.name, field)
    # the default stack written out validates to the default stack
    assert tuple(parse_config(tree, ["levels.swarm.lr=5e-4"]).levels) == default_levels().levels
    # a file's own levels are edited in place, by name or index
    own = {"ticks": 2, "levels": [{**lv.model_dump(mode="json"), "lr": 0.01} for lv in default_levels().levels]}
    cfg = parse_config(own, ["levels.agent.lr=0.02", "levels.0.rank=8"])
    assert [lv.lr for lv in cfg.levels] == [0.01, 0.01, 0.01, 0.02, 0.01] and cfg.levels[0].rank == 8
    with pytest.raises(ConfigError, match=r"override 'levels\.swam\.lr': levels has no entry named 'swam'; its names are \['foundation'"):
        parse_config(tree, ["levels.swam.lr=1e-3"])
    with pytest.raises(ConfigError, match=r"levels\.2\.rank"):
        parse_config(tree, ["levels.swarm.rank=0"])
