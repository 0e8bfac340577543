"""Memory options (config.MemorySpec): the init regenerated instead of stored, AdamW moments on the host.

Each option must change where bytes live and nothing else: the same weights, moments and
checkpoints, bit for bit, as the resident layout.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_model, small_stack
from lorahive import Hive
from lorahive.adapters import InitMismatch, LevelBank
from lorahive.config import MemorySpec
from lorahive.core import footprint
from lorahive.learning import SlotAdamW
from lorahive.store import checkpoint
from lorahive.store.checkpoint import CheckpointError
from lorahive.store.files import sha256_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["ann", "bob", "cyd", "dee", "eve"]


def grown_bank(store_init: bool) -> LevelBank:
    """A bank grown in uneven chunks: slots [0,1), [1,2), [2,5), [5,8), [8,13)."""
    bank = LevelBank(1, 3, 11, 7, key="0/agent/m", store_init=store_init)
    for n in (2, 5, 8, 13):
        bank.grow(n)
    return bank


def make_hive(tokenizer, memory: MemorySpec | None = None, names: list[str] = NAMES) -> Hive:
    hive = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0, memory=memory)
    hive.add_agents(names)
    return hive


def examples(agents: list[str]) -> dict[str, list[tuple[str, str]]]:
    texts = [("The capital of France is", " Paris."), ("Question: what colour is the sky? Answer:", " blue")]
    return {a: [texts[i % 2], texts[(i + 1) % 2]] for i, a in enumerate(agents)}


def exercise(hive: Hive) -> None:
    """Learning steps on overlapping agent sets, decay toward init (whole slots and per pattern), a reset, an add_delta."""
    core = hive.core
    hive.learn(examples(["ann", "bob", "cyd"]), steps=2)
    hive.learn(examples(["bob", "dee"]), steps=1)
    core.decay_toward_init("agent", [0, 1, 3], 0.3)
    rate = torch.linspace(0.05, 0.5, 3 * 2).view(3, 2)
    core.decay_toward_init("agent", [1, 2, 3], rate)
    hive.learn(examples(["ann", "dee", "eve"]), steps=2)
    core.reset("context", [1])
    path, bank = next(iter(core.named_banks("agent")))
    u, v = torch.randn(bank.out_features, 1, generator=torch.Generator().manual_seed(3)), torch.randn(1, bank.in_features, generator=torch.Generator().manual_seed(4))
    core.add_delta("agent", 2, {path: (u * 0.01, v)})
    hive.learn(examples(["cyd", "eve"]), steps=1)


def assert_same_state(a: Hive, b: Hive) -> None:
    for lv in a.levels:
        for (path, x), (_, y) in zip(a.core.named_banks(lv.name), b.core.named_banks(lv.name), strict=True):
            assert torch.equal(x.A, y.A) and torch.equal(x.B, y.B), f"{lv.name} {path}"
            assert torch.equal(x.A0, y.A0), f"{lv.name} {path} A0"
        sa, sb = a.core.optimizers[lv.name].state_dict(), b.core.optimizers[lv.name].state_dict()
        assert set(sa) == set(sb), lv.name
        for k in sa:
            n = min(sa[k].shape[0], sb[k].shape[0])  # host moments stop at the last slot that trained
            assert torch.equal(sa[k][:n], sb[k][:n]), f"{lv.name} {k}"
            assert not sa[k][n:].any() and not sb[k][n:].any(), f"{lv.name} {k}"


# ---------------------------------------------------------------------------- the init regenerated
def test_regenerated_init_rows_equal_the_stored_snapshot_bit_for_bit():
    stored, regen = grown_bank(True), grown_bank(False)
    assert torch.equal(stored.A, regen.A) and regen.chunks == stored.chunks
    assert [c for c, _ in regen.chunks] == [0, 1, 2, 5, 8]
    assert torch.equal(regen.A0, stored.A0)
    slots = [12, 0, 6, 6, 2, 9]  # out of order, repeated, across chunks
    assert torch.equal(regen.init_rows(slots), stored.init_rows(slots))
    assert torch.equal(regen.A0, regen.A.detach())  # nothing trained yet: A is its init


def test_a_corrupted_checksum_fails_naming_the_slot():
    bank = grown_bank(False)
    bank.verify_init()
    table = list(bank.chunks)
    table[2] = (table[2][0], table[2][1] ^ 1)
    with pytest.raises(InitMismatch, match="init of slot 2 regenerates with crc32"):
        bank.set_chunks(table)
    assert bank.chunks[2] != table[2]  # a refused table is not taken
    with pytest.raises(ValueError, match="increasing first slots"):
        bank.set_chunks([(0, table[0][1]), (13, 0)])


def test_a_regenerating_core_computes_what_a_storing_core_does(tokenizer):
    stored, regen = make_hive(tokenizer), make_hive(tokenizer, MemorySpec(store_init=False))
    exercise(stored)
    exercise(regen)
    assert_same_state(stored, regen)
    assert all(not b.store_init for lv in regen.levels for b in regen.core.banks(lv.name))


def test_a_slot_with_an_init_from_elsewhere_is_refused(tokenizer):
    hive = make_hive(tokenizer, MemorySpec(store_init=False))
    rows = hive.core.slot_rows("agent", [1])
    hive.core.load_slot_rows("agent", [1], rows)  # its own init: accepted
    with pytest.raises(InitMismatch, match="slot 2"):
        hive.core.load_slot_rows("agent", [2], rows)  # slot 1's init handed to slot 2


# ---------------------------------------------------------------------------- moments on the host
def test_host_moments_update_exactly_as_resident_ones():
    shapes = {"q.A": (6, 3, 5), "q.B": (6, 7, 3)}
    gen = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    resident, host = (({k: torch.nn.Parameter(v.clone()) for k, v in init.items()}, SlotAdamW(lr=0.1, weight_decay=0.01, host=h)) for h in (False, True))
    skip = torch.ones(1)
    for i, slots in enumerate([[0, 1, 2, 3], [1, 3, 5], [4], [0, 0, 2, 5], [0, 1, 2, 3, 4, 5], [5, 2]]):
        grads = {k: torch.randn(s, generator=torch.Generator().manual_seed(10 + i)) for k, s in shapes.items()}
        for params, opt in (resident, host):
            for k, p in params.items():
                p.grad = grads[k].clone()
            opt.step(params, slots, found_inf=skip if i == 2 else None)
            if i == 3:
                opt.reset([3])
    (pr, r), (ph, h) = resident, host
    for k in shapes:
        assert torch.equal(pr[k], ph[k])
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(r.moment(k, m), h.moment(k, m))
        assert r.host_steps[k] == h.host_steps[k]
    assert {k: torch.equal(v, h.state_dict()[k]) for k, v in r.state_dict().items()} == dict.fromkeys(r.state_dict(), True)
    assert h.nbytes() == {"device": 0, "host": 2 * 64 * sum(torch.Size(s[1:]).numel() for s in shapes.values()) * 4}


def test_a_hive_with_host_moments_learns_what_a_resident_one_does(tokenizer):
    resident, paged = make_hive(tokenizer), make_hive(tokenizer, MemorySpec(host_moments=True, store_init=False))
    exercise(resident)
    exercise(paged)
    assert_same_state(resident, paged)
    assert paged.core.optimizers["agent"].host and not paged.core.optimizers["swarm"].host


def test_host_moments_state_round_trips_and_slots_move_between_cores(tokenizer):
    src = make_hive(tokenizer, MemorySpec(host_moments=True))
    exercise(src)
    opt = src.core.optimizers["agent"]
    again = SlotAdamW(lr=opt.lr, host=True)
    again.load_state_dict(opt.state_dict())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in opt.state_dict().items())
    dst = make_hive(tokenizer)  # resident moments: the rows carry over either way
    rows = src.core.slot_rows("agent", [0, 3])
    dst.core.load_slot_rows("agent", [0, 3], rows)
    for k in opt.names():
        assert torch.equal(dst.core.optimizers["agent"].moment_rows(k, "exp_avg_sq", [0, 3]), opt.moment_rows(k, "exp_avg_sq", [0, 3]))


# ---------------------------------------------------------------------------- checkpoints
def save_run(hive: Hive, run) -> None:
    checkpoint.save(run, hive.core, {"tick": 1}, {})


def test_checkpoint_of_a_regenerating_core_resumes_exactly_whatever_the_growth_history(tokenizer, tmp_path):
    memory = MemorySpec(store_init=False, host_moments=True)
    trained = make_hive(tokenizer, memory)
    exercise(trained)
    save_run(trained, tmp_path)
    header = load_file(str(tmp_path / "checkpoint/levels/agent.safetensors"))
    assert not any(k.endswith("/A0") for k in header) and any(k.endswith("/A0_chunks") for k in header)
    fresh = make_hive(tokenizer, memory, names=[])
    for name in NAMES:  # grown one agent at a time: other chunk boundaries than the saved core's
        fresh.add_agents([name])
    checkpoint.load(tmp_path, fresh.core)
    assert_same_state(trained, fresh)
    trained.learn(examples(["ann", "eve"]), steps=2)
    fresh.learn(examples(["ann", "eve"]), steps=2)
    assert_same_state(trained, fresh)


def test_a_checkpoint_whose_init_checksum_was_altered_is_refused(tokenizer, tmp_path):
    hive = make_hive(tokenizer, MemorySpec(store_init=False))
    exercise(hive)
    save_run(hive, tmp_path)
    file = tmp_path / "checkpoint/levels/agent.safetensors"
    tensors = load_file(str(file))
    key = next(k for k in tensors if k.endswith("/A0_chunks"))
    tensors[key][0, 1] ^= 1
    save_file(tensors, str(file))
    manifest_file = tmp_path / "checkpoint/manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["levels/agent.safetensors"] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    manifest_file.write_text(json.dumps(manifest))
    other = make_hive(tokenizer, MemorySpec(store_init=False))
    before = [b.A.detach().clone() for b in other.core.banks("agent")]
    with pytest.raises(CheckpointError, match=r"agent\.safetensors: .*init of slot 0 regenerates with crc32"):
        checkpoint.load(tmp_path, other.core)
    assert all(torch.equal(x, b.A) for x, b in zip(before, other.core.banks("agent"), strict=True))


def test_a_checkpoint_loads_only_into_a_core_with_the_same_store_init(tokenizer, tmp_path):
    save_run(make_hive(tokenizer), tmp_path)
    with pytest.raises(CheckpointError, match="same store_init"):
        checkpoint.load(tmp_path, make_hive(tokenizer, MemorySpec(store_init=False)).core)


# ---------------------------------------------------------------------------- bytes per agent
def test_bytes_per_agent_fall_as_each_option_takes_its_share_off_the_device(tokenizer):
    agents = [f"a{i}" for i in range(8)]
    hives = {k: make_hive(tokenizer, m, agents) for k, m in {
        "resident": MemorySpec(), "no_init": MemorySpec(store_init=False), "both": MemorySpec(store_init=False, host_moments=True),
    }.items()}  # fmt: skip
    for hive in hives.values():
        hive.learn(examples(agents[:2]), steps=1)
    per_agent_levels = [lv for lv in small_stack().levels if lv.scope != "shared"]
    a = sum(lv.rank * b.in_features for lv in per_agent_levels for b in hives["resident"].core.banks(lv.name))
    ab = sum(lv.rank * (b.in_features + b.out_features) for lv in per_agent_levels for b in hives["resident"].core.banks(lv.name))
    got = {k: footprint(h.core) for k, h in hives.items()}
    assert all(f.slots == 8 for f in got.values())
    steps = sum(8 * 8 for lv in per_agent_levels for _ in hives["resident"].core.banks(lv.name)) * 2  # one long count per slot, A and B
    assert got["resident"].per_slot()["device"] == 4 * ab + 4 * a + 8 * ab + steps / 8
    assert got["no_init"].per_slot()["device"] == 4 * ab + 8 * ab + steps / 8
    assert got["both"].per_slot()["device"] == 4 * ab
    assert got["both"].moments_host == 64 * 8 * ab  # 64 rows allocated, two float32 moments each
    assert all(f.gradient == f.weights for f in got.values())


# ---------------------------------------------------------------------------- bfloat16 host moments
def test_bfloat16_host_moments_halve_the_host_bytes_and_stay_within_a_stated_tolerance(tokenizer):
    """Not bit-identical: each step rounds the moments to bfloat16 (8 bits of mantissa). Every parameter's movement
    stays within 1 % (Frobenius) of the float32 one after the exercise's 6 steps (measured: ≤ 0.1 % on the tiny model)."""
    fp32, bf16 = make_hive(tokenizer, MemorySpec(host_moments=True)), make_hive(tokenizer, MemorySpec(host_moments=True, host_moments_dtype="bfloat16"))
    start = {lv.name: {k: p.detach().clone() for k, p in fp32.core.level_params(lv.name).items()} for lv in fp32.levels}
    exercise(fp32)
    exercise(bf16)
    for lv in fp32.levels:
        want, got = fp32.core.level_params(lv.name), bf16.core.level_params(lv.name)
        for k, p in want.items():
            moved = (p - start[lv.name][k]).norm()
            assert (got[k] - p).norm() <= 0.01 * moved, f"{lv.name} {k}"
    opt = bf16.core.optimizers["agent"]
    assert opt.pages.stores[opt.names()[0]][0].dtype == torch.bfloat16
    assert opt.nbytes()["host"] * 2 == fp32.core.optimizers["agent"].nbytes()["host"]
    assert all(v.dtype in (torch.float32, torch.long) for v in opt.state_dict().values())  # checkpoints see float32 moments


def test_bfloat16_moments_need_the_host_layout():
    with pytest.raises(ValueError, match="host_moments_dtype"):
        MemorySpec(host_moments_dtype="bfloat16")
