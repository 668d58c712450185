"""Token shards (docs/formats.md "Token shards") → packs → padded micro-batches.

A pack is one row of a micro-batch. Its samples are concatenated, `position_ids` restart at 0 per sample and
`sample_ids` number the samples, so attention never crosses a boundary. Rows of a micro-batch are padded to
the longest; padding has loss weight 0 and a sample id of its own, so it attends only to padding.

Order: packs are shuffled once per epoch by a generator seeded with (seed, epoch), and the data position is one
integer — the number of packs consumed so far — so any step's batch is a pure function of (seed, position)
and resuming from a checkpoint replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import EngineError

SHARD_TENSORS = {
    "tokens": torch.int32,
    "loss_weight": torch.float32,
    "seq_offsets": torch.int64,
    "pack_offsets": torch.int64,
}


@dataclass(frozen=True)
class Pack:
    tokens: torch.Tensor  # [L] int64
    weights: torch.Tensor  # [L] float32, weight of token t as a target
    positions: torch.Tensor  # [L] int64, restarting at 0 per sample
    sample_ids: torch.Tensor  # [L] int64, 0..n-1 within the pack


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    sample_ids: torch.Tensor  # [B, T]
    loss_weight: torch.Tensor  # [B, T] weight of input_ids[:, t] as the target predicted at t-1
    real_tokens: int  # tokens that are not padding

    def to(self, device: torch.device) -> Batch:
        moved = (
            t.to(device, non_blocking=True)
            for t in (self.input_ids, self.position_ids, self.sample_ids, self.loss_weight)
        )
        return Batch(*moved, real_tokens=self.real_tokens)

    @property
    def trained_tokens(self) -> float:
        return float(self.loss_weight[:, 1:].sum())


def read_shards(paths: list[str] | tuple[str, ...]) -> list[Pack]:
    packs: list[Pack] = []
    for path in paths:
        packs += _read_shard(path)
    return packs


def _read_shard(path: str) -> list[Pack]:
    if not Path(path).is_file():
        raise EngineError(
            "DATA_NOT_FOUND",
            f"{path}: token shard not found",
            hint="run `tuna data` (or `tuna train`, which writes the shards) again",
        )
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        for name in SHARD_TENSORS:
            if name not in keys:
                raise EngineError(
                    "DATA_INVALID",
                    f"{path}: tensor {name!r} missing; a token shard holds " + ", ".join(SHARD_TENSORS),
                )
        t = {name: f.get_tensor(name) for name in SHARD_TENSORS}
    if meta.get("format") != "tuna-shard":
        raise EngineError(
            "DATA_INVALID", f'{path}: __metadata__.format: expected "tuna-shard", got {meta.get("format")!r}'
        )
    for name, dtype in SHARD_TENSORS.items():
        if t[name].dtype != dtype or t[name].dim() != 1:
            raise EngineError(
                "DATA_INVALID",
                f"{path}: tensor {name!r}: expected 1-D {dtype}, got {t[name].dim()}-D {t[name].dtype}",
            )
    tokens, weights, seq, pk = t["tokens"].long(), t["loss_weight"], t["seq_offsets"], t["pack_offsets"]
    if len(weights) != len(tokens) or int(seq[-1]) != len(tokens) or int(pk[-1]) != len(seq) - 1:
        raise EngineError(
            "DATA_INVALID",
            f"{path}: offsets disagree with lengths (tokens {len(tokens)}, "
            f"loss_weight {len(weights)}, seq_offsets[-1] {int(seq[-1])}, pack_offsets[-1] "
            f"{int(pk[-1])}, samples {len(seq) - 1})",
        )
    packs = []
    for p in range(len(pk) - 1):
        s0, s1 = int(pk[p]), int(pk[p + 1])
        a, b = int(seq[s0]), int(seq[s1])
        lens = (seq[s0 + 1 : s1 + 1] - seq[s0:s1]).tolist()
        packs.append(
            Pack(
                tokens=tokens[a:b],
                weights=weights[a:b],
                positions=torch.cat([torch.arange(n) for n in lens]),
                sample_ids=torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(lens)]),
            )
        )
    return packs


def collate(packs: list[Pack]) -> Batch:
    """Pad rows to the longest pack; padding is token 0, weight 0, its own sample id (one past the last)."""
    T = max(len(p.tokens) for p in packs)
    B = len(packs)
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    sid = torch.zeros(B, T, dtype=torch.long)
    w = torch.zeros(B, T, dtype=torch.float32)
    for i, p in enumerate(packs):
        n = len(p.tokens)
        ids[i, :n], pos[i, :n], w[i, :n] = p.tokens, p.positions, p.weights
        sid[i, :n] = p.sample_ids
        sid[i, n:] = int(p.sample_ids[-1]) + 1
        pos[i, n:] = torch.arange(T - n)
    return Batch(ids, pos, sid, w, real_tokens=sum(len(p.tokens) for p in packs))


def pad_length(b: Batch, length: int) -> Batch:
    """b's rows lengthened to `length` tokens the way `collate` pads: token 0, weight 0, positions from 0, and a
    sample of their own (one past each row's last sample id), so no real token attends to them."""
    B, T = b.input_ids.shape
    extra = length - T
    if extra <= 0:
        return b
    pad_ids = b.sample_ids[:, -1:] + 1
    return Batch(
        torch.cat([b.input_ids, b.input_ids.new_zeros(B, extra)], dim=1),
        torch.cat([b.position_ids, torch.arange(extra).expand(B, extra)], dim=1),
        torch.cat([b.sample_ids, pad_ids.expand(B, extra)], dim=1),
        torch.cat([b.loss_weight, b.loss_weight.new_zeros(B, extra)], dim=1),
        real_tokens=b.real_tokens,
    )


def epoch_order(n_packs: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_packs, generator=g)


def take_packs(packs: list[Pack], seed: int, position: int, count: int) -> list[Pack]:
    """`count` packs starting at global data position `position` (epochs wrap, each freshly shuffled)."""
    n = len(packs)
    out = []
    orders: dict[int, torch.Tensor] = {}
    for g in range(position, position + count):
        epoch, i = divmod(g, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append(packs[int(orders[epoch][i])])
    return out


def micro_batches(packs: list[Pack], size: int) -> list[Batch]:
    return [collate(packs[i : i + size]) for i in range(0, len(packs), size)]
