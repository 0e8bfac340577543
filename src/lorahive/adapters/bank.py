"""Adapter banks: the LoRA weights of one level in one wrapped Linear, one slot per row owner."""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Sequence

import torch
from torch import nn

from lorahive.tensors import to_device


class InitMismatch(ValueError):
    """A regenerated init snapshot differs from the one the bank was made with (another RNG: torch version, machine)."""


def _init_a(n: int, rank: int, in_features: int, seed_key: str) -> torch.Tensor:
    """Kaiming-uniform(a=√5) init, as PEFT's LoRA A, reproducible from a text key.

    The CPU generator draws one number per element in order, so the first ``k`` rows of a
    chunk of ``n`` are those of a chunk of ``k``: any prefix regenerates alone.
    """
    gen = torch.Generator().manual_seed(zlib.crc32(seed_key.encode()))
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(n, rank, in_features, generator=gen) * 2.0 - 1.0) * bound


def init_checksum(rows: torch.Tensor) -> int:
    """crc32 of float32 init rows' bytes: what a regenerated init is checked against."""
    return zlib.crc32(rows.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


class LevelBank(nn.Module):
    """``A[slots, r, in]`` and ``B[slots, out, r]`` plus their init snapshot (decay pulls to it).

    ``B`` starts at zero, so a fresh bank adds exactly nothing to the base layer; its init
    snapshot is that zero, so only ``A``'s is kept. ``A``'s init is drawn in *chunks*, one per
    growth (slots ``[start, next start)`` from the key ``f"{key}/{start}"``); ``chunks`` lists
    each chunk's first slot and the crc32 of that slot's init. With ``store_init`` (the
    default) the snapshot ``A0`` is stored beside ``A``; without it, the rows a caller asks
    for (:meth:`init_rows`) are regenerated from their chunk's key on the CPU, which costs a
    draw of the chunk up to the row instead of a float per parameter resident, and the
    checksums (:meth:`verify_init`) guard that the regeneration still matches bit for bit.
    With ``slot_grads`` a learn step's gradient of a bank with more than one slot holds only the
    rows its slots used (adapters/slot_rows.py), not the whole bank.
    """

    _a0: torch.Tensor | None

    def __init__(self, n_slots: int, rank: int, in_features: int, out_features: int, key: str, store_init: bool = True, slot_grads: bool = False) -> None:
        super().__init__()
        self.rank, self.in_features, self.out_features, self.key = rank, in_features, out_features, key
        self.slot_grads = slot_grads  # row-sparse gradients on the fused path (MemorySpec.slot_grads)
        a = _init_a(n_slots, rank, in_features, f"{key}/0")
        self.A = nn.Parameter(a)  # (S, r, in)
        self.B = nn.Parameter(torch.zeros(n_slots, out_features, rank))  # (S, out, r)
        self.chunks: list[tuple[int, int]] = [(0, init_checksum(a[:1]))]  # (first slot, crc32 of its init)
        self.register_buffer("_a0", a.clone() if store_init else None, persistent=False)

    @property
    def store_init(self) -> bool:
        """Whether ``A0`` is stored (else regenerated on demand)."""
        return self._a0 is not None

    def use_memory(self, store_init: bool, slot_grads: bool) -> None:
        """Take a core's memory layout (:class:`~lorahive.config.MemorySpec`): the init stored or not, row-sparse gradients or not."""
        self.keep_init(store_init)
        self.slot_grads = slot_grads

    @torch.no_grad()
    def keep_init(self, store: bool) -> None:
        """Store the init snapshot (``True``) or drop it and regenerate rows on demand (``False``)."""
        if store and self._a0 is None:
            self._a0 = self._regenerate(list(range(self.n_slots))).to(self.A.device, self.A.dtype)
        elif not store:
            self._a0 = None

    @property
    def A0(self) -> torch.Tensor:
        """The whole init snapshot of ``A`` (S, r, in): stored, or regenerated (all of it: a full draw)."""
        if self._a0 is not None:
            return self._a0
        return self.init_rows(list(range(self.n_slots)))

    @property
    def B0(self) -> torch.Tensor:
        """The init snapshot of ``B``: zeros, made on demand rather than stored."""
        return torch.zeros_like(self.B.detach())

    @property
    def n_slots(self) -> int:
        return self.A.shape[0]

    def init_rows(self, slots: Sequence[int], index: torch.Tensor | None = None) -> torch.Tensor:
        """``A0`` of ``slots`` (n, r, in), on ``A``'s device and dtype; ``index``: the same slots on that device."""
        if self._a0 is not None:
            idx = index if index is not None else to_device(torch.tensor(list(slots), dtype=torch.long), self._a0.device)
            return self._a0.index_select(0, idx)
        return self._regenerate(list(slots)).to(self.A.device, self.A.dtype)

    def init_row(self, slot: int) -> torch.Tensor:
        """``A0`` of one slot (r, in), on ``A``'s device and dtype: a view of the stored snapshot, or regenerated."""
        if self._a0 is not None:
            return self._a0[slot]
        return self._regenerate([slot])[0].to(self.A.device, self.A.dtype)

    def _regenerate(self, slots: list[int]) -> torch.Tensor:
        """Float32 CPU init rows of ``slots``: each chunk touched drawn once, up to its last row asked for."""
        starts = [c for c, _ in self.chunks]
        out = torch.empty(len(slots), self.rank, self.in_features)
        by_chunk: dict[int, list[int]] = {}
        for i, s in enumerate(slots):
            if not 0 <= s < self.n_slots:
                raise IndexError(f"slot {s} out of range for a bank of {self.n_slots} slots")
            by_chunk.setdefault(starts[bisect.bisect_right(starts, s) - 1], []).append(i)
        for start, pos in by_chunk.items():
            rows = [slots[i] - start for i in pos]
            drawn = _init_a(max(rows) + 1, self.rank, self.in_features, f"{self.key}/{start}")  # (k, r, in)
            out[pos] = drawn[rows]
        return out

    def verify_init(self) -> None:
        """Regenerate each chunk's first row and check it against its checksum; :class:`InitMismatch` if not."""
        check_chunks(self.key, self.rank, self.in_features, self.n_slots, self.chunks)

    def set_chunks(self, chunks: Sequence[tuple[int, int]]) -> None:
        """Take the chunk table of a bank saved elsewhere (a checkpoint's), checked by :func:`check_chunks` first."""
        table = [(int(s), int(c)) for s, c in chunks]
        check_chunks(self.key, self.rank, self.in_features, self.n_slots, table)
        self.chunks = table

    @torch.no_grad()
    def load_init(self, slots: Sequence[int], rows: torch.Tensor) -> None:
        """Take init rows from elsewhere (a checkpoint, another core): stored, or checked equal to the regenerated ones."""
        if self._a0 is not None:
            self._a0.index_copy_(0, to_device(torch.tensor(list(slots), dtype=torch.long), self._a0.device), rows.to(self._a0.device, self._a0.dtype))
            return
        mine = self._regenerate(list(slots))
        if not torch.equal(mine, rows.to("cpu", torch.float32)):
            bad = next(s for i, s in enumerate(slots) if not torch.equal(mine[i], rows[i].to("cpu", torch.float32)))
            raise InitMismatch(f"bank {self.key!r}: the init row of slot {bad} handed in differs from the one regenerated here (a slot moved between banks made differently?)")

    @torch.no_grad()
    def grow(self, n_slots: int) -> None:
        """Extend to ``n_slots`` slots; new slots get a fresh A (one new chunk) and B = 0.

        The new factors are written straight into the grown tensors, so a grow holds the old
        bank and the new one, never a third copy of the new slots.
        """
        old = self.n_slots
        if n_slots <= old:
            return
        dev, dt = self.A.device, self.A.dtype
        a_new = _init_a(n_slots - old, self.rank, self.in_features, f"{self.key}/{old}")  # (n, r, in) on the CPU
        self.chunks.append((old, init_checksum(a_new[:1])))
        self.A = nn.Parameter(_extended(self.A.data, a_new), requires_grad=self.A.requires_grad)
        b = torch.empty(n_slots, self.out_features, self.rank, device=dev, dtype=dt)
        b[:old] = self.B.data
        b[old:] = 0.0
        self.B = nn.Parameter(b, requires_grad=self.B.requires_grad)
        if self._a0 is not None:
            self._a0 = _extended(self._a0, a_new)

    @torch.no_grad()
    def reset(self, slots: torch.Tensor, ids: Sequence[int] | None = None) -> None:
        """Put the given slots back to their init snapshot; ``ids``: the same slots on the host."""
        init = self.init_rows(ids if ids is not None else slots.tolist(), slots)
        self.A.index_copy_(0, slots, init)
        self.B.index_fill_(0, slots, 0.0)

    def delta(self, x: torch.Tensor, slots: torch.Tensor | None, host: tuple[int, ...] | None = None) -> torch.Tensor:
        """``B[s(row)] · A[s(row)] · x`` for each row; ``slots=None`` means slot 0 for all rows."""
        return routed_delta(x, self.A, self.B, slots, host)


def check_chunks(key: str, rank: int, in_features: int, n_slots: int, chunks: Sequence[tuple[int, int]]) -> None:
    """A chunk table (first slot, crc32) of a bank of ``n_slots``: well formed (``ValueError``) and regenerating to its checksums (:class:`InitMismatch`)."""
    starts = [s for s, _ in chunks]
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:], strict=False)) or starts[-1] >= n_slots:
        raise ValueError(f"bank {key!r}: a chunk table needs increasing first slots from 0 below {n_slots}, got {list(chunks)[:4]}")
    for start, crc in chunks:
        got = init_checksum(_init_a(1, rank, in_features, f"{key}/{start}"))
        if got != crc:
            raise InitMismatch(
                f"bank {key!r}: the init of slot {start} regenerates with crc32 {got:#010x}, not {crc:#010x} as when it was made; "
                "this torch's CPU generator draws differently (another version or platform), or the table was altered, so A0 "
                "cannot be regenerated here: load a checkpoint saved with store_init=True instead"
            )


def _extended(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``cat([t, new])`` in ``t``'s device and dtype, ``new`` copied straight into place."""
    out = torch.empty(t.shape[0] + new.shape[0], *t.shape[1:], device=t.device, dtype=t.dtype)
    out[: t.shape[0]] = t
    out[t.shape[0] :] = new
    return out


def routed_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor | None, host: tuple[int, ...] | None = None) -> torch.Tensor:
    """Reference LoRA product with per-row slots: ``a (S, r, in)``, ``b (S, out, r)``.

    ``host`` is the same slots as a host tuple, when the caller knows them: rows are then
    grouped by slot when that saves gathers (:func:`_grouped_delta`), without reading the device.
    """
    a, b = a.to(x.dtype), b.to(x.dtype)
    if slots is None:
        return (x @ a[0].transpose(0, 1)) @ b[0].transpose(0, 1)
    squeeze = x.dim() == 2
    if squeeze:  # (B, in) -> (B, 1, in)
        x = x.unsqueeze(1)
    if host is not None and 2 * len(set(host)) <= len(host):
        out = _grouped_delta(x, a, b, host)
    else:
        h = torch.bmm(x, a[slots].transpose(1, 2))  # (B, T, r)
        out = torch.bmm(h, b[slots].transpose(1, 2))  # (B, T, out)
    return out.squeeze(1) if squeeze else out


def _grouped_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """The per-row product with rows grouped by slot: two matmuls per distinct slot, no per-row copies.

    Scoring repeats each prompt once per label option (hundreds of rows, a handful of agents);
    gathering every row's ``A`` and ``B`` would copy the banks hundreds of times per module.
    """
    distinct = sorted(set(ids))
    rows = [[i for i, s in enumerate(ids) if s == d] for d in distinct]
    parts = []
    for d, r in zip(distinct, rows, strict=True):
        xs = x[r[0] : r[-1] + 1] if r[-1] - r[0] + 1 == len(r) else x[r]  # (n, T, in)
        parts.append((xs @ a[d].t()) @ b[d].t())  # (n, T, out)
    order = [i for r in rows for i in r]
    out = torch.cat(parts)
    if order == list(range(len(ids))):
        return out
    inverse = [0] * len(order)
    for pos, i in enumerate(order):
        inverse[i] = pos
    return out.index_select(0, to_device(torch.tensor(inverse), out.device))
