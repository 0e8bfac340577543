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
    read_tree,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates(path):
    if is_stages_tree(read_tree(path)):  # a stages run (docs/stages.md)
        stages = load_stages_config(str(path))
        assert stages.stages and all(Path(d.path).is_absolute() for d in stages.data.values() if d.path)
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
