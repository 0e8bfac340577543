"""Hostile files (property-based): the config loader, the checkpoint loader and the PEFT importer
refuse truncated, mis-shaped, wrong-dtype, NaN-filled, oversized and pickle files with a clear
error naming the file; nothing is loaded, nothing is overwritten, no code runs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.config import ConfigError, RunConfig, dump_config, load_config
from lorahive.runtime import run as runs
from lorahive.store import checkpoint
from lorahive.store.checkpoint import CheckpointError
from lorahive.store.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, import_peft
from tiny_runs import tiny_config

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"weight": Payload(marker)})


def test_the_pickle_payload_really_runs_code_when_unpickled(tmp_path):
    pickle.loads(pickle_bytes(tmp_path / "ran"))  # the payload the tests below plant

    assert (tmp_path / "ran").exists()


def _hive_state(hive: Hive) -> dict[str, torch.Tensor]:
    return {f"{lv.name}:{k}": p.detach().clone() for lv in hive.levels for k, p in hive.core.level_params(lv.name).items()} | {"agents": hive.agents}  # type: ignore[dict-item]


def _unchanged(hive: Hive, before: dict) -> bool:
    after = _hive_state(hive)
    return after.keys() == before.keys() and all(
        before[k] == after[k] if k == "agents" else torch.equal(before[k], after[k]) for k in before
    )


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- config loader
def _load_or_refuse(path: Path) -> None:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(cfg, RunConfig)


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_config_loader_refuses_arbitrary_bytes_naming_the_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_bytes(data)
        _load_or_refuse(path)


@SETTINGS
@given(cut=st.floats(0.0, 1.0), junk=st.text(max_size=40))
def test_config_loader_refuses_truncated_and_garbled_configs(base_dir, cut, junk):
    text = dump_config(tiny_config(base_dir))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(text[: int(cut * len(text))] + junk, encoding="utf-8")
        _load_or_refuse(path)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)


@SETTINGS
@given(field=st.sampled_from(["agents", "ticks", "seed", "levels", "suite", "agent.fast_steps", "aggregation.trim", "attack.fraction", "suite.support", "bogus"]), value=json_values)
def test_config_loader_names_the_file_and_the_field(base_dir, field, value):
    tree = json.loads(json.dumps(tiny_config(base_dir).model_dump(mode="json")))
    node = tree
    *parents, leaf = field.split(".")
    for k in parents:
        node = node[k]
    node[leaf] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(json.dumps(tree, allow_nan=True), encoding="utf-8")  # JSON is YAML
        try:
            load_config(path)
        except ConfigError as e:
            assert str(path) in str(e) and (leaf in str(e) or "invalid YAML" in str(e) or "levels" in str(e) or "swarm_level" in str(e)), str(e)


def test_config_loader_refuses_oversized_files_and_python_tags(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("ticks: 1\n" + "#" * (2 << 20), encoding="utf-8")
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(f'ticks: !!python/object/apply:os.system ["touch {tmp_path / "ran"}"]\n', encoding="utf-8")

    with pytest.raises(ConfigError, match=f"{big}: .* too large"):
        load_config(big)
    with pytest.raises(ConfigError, match=f"{tagged}: invalid YAML"):
        load_config(tagged)
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------- checkpoint loader
@pytest.fixture(scope="module")
def good_run(base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    runs.start(tiny_config(base_dir, ticks=1), out)
    return out


@pytest.fixture(scope="module")
def fresh_hive(base_dir):
    """A hive of the run's stack, never loaded into: every refused load must leave it so."""
    return Hive.load(str(base_dir), tiny_config(base_dir).stack(), device="cpu", seed=0)


def _reseal(ckpt: Path) -> None:
    """Rewrite manifest.json to match the files, as an attacker who edits a checkpoint would."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for p in sorted(ckpt.rglob("*")):
        rel = p.relative_to(ckpt).as_posix()
        if p.is_file() and rel != "manifest.json":
            manifest[rel] = {"sha256": checkpoint._sha256(p), "bytes": p.stat().st_size}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _refused(run: Path, hive: Hive, message: str) -> None:
    """Loading ``run`` into ``hive`` fails naming a file; hive and checkpoint bytes are unchanged."""
    before, files = _hive_state(hive), _bytes_of(run / "checkpoint")
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(run, hive.core)
    assert str(run / "checkpoint") in str(err.value) and message in str(err.value), str(err.value)
    assert _unchanged(hive, before)
    assert _bytes_of(run / "checkpoint") == files


def _files(run: Path) -> list[str]:
    return sorted(p.relative_to(run / "checkpoint").as_posix() for p in (run / "checkpoint").rglob("*") if p.is_file())


@SETTINGS
@given(data=st.data(), cut=st.floats(0.0, 0.999))
def test_checkpoint_loader_refuses_truncated_files(good_run, fresh_hive, data, cut):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(good_run, run)
        rel = data.draw(st.sampled_from(_files(run)))
        raw = (run / "checkpoint" / rel).read_bytes()
        (run / "checkpoint" / rel).write_bytes(raw[: int(cut * len(raw))])
        _refused(run, fresh_hive, "" if rel == "manifest.json" else rel)


def _edit(kind: str, t: torch.Tensor) -> torch.Tensor:
    if kind == "reshape":
        return torch.cat([t, t[:1]])
    if kind == "transpose":
        return t.transpose(-1, -2).contiguous() if t.dim() > 1 else t.reshape(-1, 1)
    if kind == "float64":
        return t.double()
    if kind == "int32":
        return t.to(torch.int32)
    if kind == "nan":
        return torch.full_like(t, float("nan"))
    if kind == "inf":
        return torch.full_like(t, float("-inf"))
    assert kind == "oversized"
    return torch.zeros(4096, *t.shape[1:], dtype=t.dtype)


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["reshape", "transpose", "float64", "int32", "nan", "inf", "oversized", "extra", "drop"]))
def test_checkpoint_loader_refuses_bad_tensors_even_with_a_matching_manifest(good_run, fresh_hive, data, kind):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(good_run, run)
        ckpt = run / "checkpoint"
        rel = data.draw(st.sampled_from([f for f in _files(run) if f.startswith(("levels/", "optim/"))]))
        tensors = load_file(str(ckpt / rel))
        key = data.draw(st.sampled_from(sorted(k for k in tensors if not (kind in ("nan", "inf") and k.endswith(":step")))))
        if kind == "extra":
            tensors["planted"] = torch.zeros(2)
        elif kind == "drop":
            tensors.pop(key)
        elif kind == "transpose" and tensors[key].dim() > 1 and tensors[key].shape[-1] == tensors[key].shape[-2]:
            tensors[key] = torch.cat([tensors[key], tensors[key][:1]])
        else:
            tensors[key] = _edit(kind, tensors[key])
        save_file(tensors, str(ckpt / rel))
        _reseal(ckpt)
        _refused(run, fresh_hive, rel)


@SETTINGS
@given(data=st.data(), listed=st.booleans(), name=st.sampled_from(["levels/swarm.pt", "optim/swarm.bin", "model.pt", "pytorch_model.bin", "levels/swarm.safetensors.pkl"]))
def test_checkpoint_loader_refuses_pickles_planted_or_disguised_and_runs_no_code(good_run, fresh_hive, data, listed, name):
    with tempfile.TemporaryDirectory() as tmp:
        run, marker = Path(tmp) / "run", Path(tmp) / "ran"
        shutil.copytree(good_run, run)
        ckpt = run / "checkpoint"
        disguise = data.draw(st.booleans())
        if disguise:  # a pickle under a .safetensors name
            rel = data.draw(st.sampled_from([f for f in _files(run) if f.endswith(".safetensors")]))
            (ckpt / rel).write_bytes(pickle_bytes(marker))
            _reseal(ckpt)
        else:
            rel = name
            (ckpt / rel).write_bytes(pickle_bytes(marker))
            if listed:
                _reseal(ckpt)
        _refused(run, fresh_hive, rel)
        assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: b"\xff\xfe not json", "state.json: unreadable"),
        (lambda s: b"[1, 2]", "not a JSON object"),
        (lambda s: json.dumps(s | {"agents": ["a", "a"]}).encode(), "distinct"),
        (lambda s: json.dumps(s | {"agents": 5}).encode(), "agents must be"),
        (lambda s: json.dumps(s | {"level_states": {"swarm": s["level_states"]["swarm"] | {"mix": "x"}}}).encode(), "level_states.swarm.mix"),
        (lambda s: json.dumps(s | {"level_states": {"swarm": s["level_states"]["swarm"] | {"inertia": 1.5}}}).encode(), "level_states.swarm.inertia"),
        (lambda s: json.dumps(s | {"level_states": {"swarm": s["level_states"]["swarm"] | {"lr": float("nan")}}}).encode(), "level_states.swarm.lr"),
        (lambda s: json.dumps(s | {"level_states": {"nope": {"mix": 1.0, "inertia": 0.0, "lr": 1.0}}}).encode(), "level_states must"),
        (lambda s: json.dumps(s | {"tick": -1}).encode(), "tick must"),
        (lambda s: json.dumps(s | {"agents": s["agents"][:1]}).encode(), "levels/"),
    ],
)
def test_checkpoint_loader_refuses_a_bad_state_file(good_run, fresh_hive, tmp_path, edit, message):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    (run / "checkpoint" / "state.json").write_bytes(edit(state))
    _reseal(run / "checkpoint")

    _refused(run, fresh_hive, message)


def test_resume_of_a_refused_checkpoint_fails_cleanly_and_overwrites_nothing(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    (run / "checkpoint" / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "agents_state"}))
    _reseal(run / "checkpoint")
    files = _bytes_of(run / "checkpoint")

    with pytest.raises(CheckpointError, match="agents_state: Field required"):
        runs.resume(run, ticks=2)
    assert _bytes_of(run / "checkpoint") == files


# ---------------------------------------------------------------------- PEFT importer
@pytest.fixture(scope="module")
def adapter(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(make_model(len(tokenizer)), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(str(path))
    return path


def _peft_refused(tokenizer, ad: Path, message: str = "") -> None:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    hive.add_agents(["ann"])
    before, files = _hive_state(hive), _bytes_of(ad)
    with pytest.raises(ValueError) as err:
        import_peft(hive.core, ad, "swarm")
    assert str(ad) in str(err.value) or ADAPTER_CONFIG in str(err.value), str(err.value)
    assert message in str(err.value), str(err.value)
    assert _unchanged(hive, before)
    assert _bytes_of(ad) == files


@SETTINGS
@given(cut=st.floats(0.0, 0.999), junk=st.binary(max_size=64))
def test_peft_importer_refuses_truncated_or_garbled_weights(tokenizer, adapter, cut, junk):
    with tempfile.TemporaryDirectory() as tmp:
        ad = Path(tmp) / "ad"
        shutil.copytree(adapter, ad)
        raw = (ad / ADAPTER_WEIGHTS).read_bytes()
        (ad / ADAPTER_WEIGHTS).write_bytes(raw[: int(cut * len(raw))] + junk)
        _peft_refused(tokenizer, ad, ADAPTER_WEIGHTS)


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["reshape", "transpose", "int32", "nan", "inf", "oversized", "extra", "drop"]))
def test_peft_importer_refuses_bad_tensors(tokenizer, adapter, data, kind):
    with tempfile.TemporaryDirectory() as tmp:
        ad = Path(tmp) / "ad"
        shutil.copytree(adapter, ad)
        tensors = load_file(str(ad / ADAPTER_WEIGHTS))
        key = data.draw(st.sampled_from(sorted(tensors)))
        if kind == "extra":
            tensors["base_model.model.lm_head.weight"] = torch.zeros(2, 2)
        elif kind == "drop":
            tensors.pop(key)
        elif kind == "oversized":
            tensors[key] = torch.zeros(5000, tensors[key].shape[1]) if "lora_A" in key else torch.zeros(tensors[key].shape[0], 5000)
        else:
            tensors[key] = _edit(kind, tensors[key])
        save_file(tensors, str(ad / ADAPTER_WEIGHTS))
        _peft_refused(tokenizer, ad, ADAPTER_WEIGHTS)


@SETTINGS
@given(key=st.sampled_from(["r", "lora_alpha", "rank_pattern", "alpha_pattern", "peft_type", "use_dora", "bias", "modules_to_save"]), value=json_values)
def test_peft_importer_refuses_a_bad_config_or_imports_exactly(tokenizer, adapter, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        ad = Path(tmp) / "ad"
        shutil.copytree(adapter, ad)
        cfg = json.loads((ad / ADAPTER_CONFIG).read_text())
        cfg[key] = value
        (ad / ADAPTER_CONFIG).write_text(json.dumps(cfg, allow_nan=True))
        hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
        hive.add_agents(["ann"])
        before = _hive_state(hive)
        try:
            import_peft(hive.core, ad, "swarm")
        except ValueError as e:
            assert ADAPTER_CONFIG in str(e) or ADAPTER_WEIGHTS in str(e), str(e)
            assert _unchanged(hive, before)
        else:
            assert all(torch.isfinite(b.B).all() for b in hive.core.banks("swarm"))


@pytest.mark.parametrize("where", ["disguised", "bin only"])
def test_peft_importer_never_unpickles(tokenizer, adapter, tmp_path, where):
    ad, marker = tmp_path / "ad", tmp_path / "ran"
    shutil.copytree(adapter, ad)
    if where == "disguised":
        (ad / ADAPTER_WEIGHTS).write_bytes(pickle_bytes(marker))
    else:
        (ad / ADAPTER_WEIGHTS).unlink()
        (ad / "adapter_model.bin").write_bytes(pickle_bytes(marker))

    _peft_refused(tokenizer, ad, "safetensors" if where == "disguised" else "pickle")
    assert not marker.exists()


def test_the_cli_refuses_hostile_files_with_exit_code_2(good_run, tmp_path):
    from typer.testing import CliRunner

    from lorahive.cli.main import app

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    (run / "checkpoint" / "levels" / "swarm.pt").write_bytes(pickle_bytes(tmp_path / "ran"))

    started = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path / "new")])
    resumed = CliRunner().invoke(app, ["resume", str(run), "--ticks", "2"])

    assert started.exit_code == resumed.exit_code == 2
    assert "not UTF-8" in " ".join(started.output.split())
    assert "swarm.pt" in "".join(resumed.output.split()) and "notlistedinmanifest.json" in "".join(resumed.output.split())
    assert not (tmp_path / "ran").exists() and not (tmp_path / "new").exists()
