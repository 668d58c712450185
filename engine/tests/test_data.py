"""Shards → packs → micro-batches: packing changes nothing numerically, order is seeded and epoch-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_hf_model, random_samples, write_shard
from safetensors.torch import save_file

from tuna_engine.data import collate, read_shards, take_packs
from tuna_engine.errors import EngineError
from tuna_engine.models import load_model
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import weighted_ce_sum


def test_packed_loss_and_grads_equal_unpacked(tmp_path: Path) -> None:
    make_hf_model(tmp_path / "m", "qwen3")
    spec = LoraSpec(
        r=4, alpha=8, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
    )
    model = load_model(str(tmp_path / "m"), "float32", torch.device("cpu"), spec, seed=1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    samples = random_samples(6, seed=2)
    packed = read_shards([str(write_shard(tmp_path / "p.safetensors", samples, [[0, 1, 2], [3, 4], [5]]))])
    single = read_shards([str(write_shard(tmp_path / "s.safetensors", samples))])
    assert len(packed) == 3 and len(single) == 6

    def loss_and_grads(batch):
        model.zero_grad()
        loss = weighted_ce_sum(model, batch)
        loss.backward()
        return float(loss.detach()), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    lp, gp = loss_and_grads(collate(packed))  # 3 rows, padded
    ls, gs = loss_and_grads(collate(single))  # 6 rows, padded differently
    assert lp == pytest.approx(ls, rel=1e-5)
    assert gp.keys() == gs.keys() and len(gp) > 0
    for k in gp:
        assert float((gp[k] - gs[k]).abs().max() / gs[k].abs().max()) < 1e-5, k


def test_collate_padding_is_its_own_sample() -> None:
    samples = random_samples(3, seed=0)
    packs = [collate_pack(samples[:2]), collate_pack(samples[2:])]
    b = collate(packs)
    n0 = len(samples[0][0]) + len(samples[1][0])
    n1 = len(samples[2][0])
    T = max(n0, n1)
    assert b.input_ids.shape == (2, T)
    short = 0 if n0 < n1 else 1
    n = min(n0, n1)
    assert torch.all(b.loss_weight[short, n:] == 0)
    assert int(b.sample_ids[short, n]) == int(b.sample_ids[short, n - 1]) + 1
    assert b.real_tokens == n0 + n1
    # positions restart at every sample
    assert b.position_ids[0, len(samples[0][0])] == 0


def collate_pack(group):
    from tuna_engine.data import Pack

    return Pack(
        tokens=torch.tensor(sum((s[0] for s in group), [])),
        weights=torch.tensor(sum((s[1] for s in group), [])),
        positions=torch.cat([torch.arange(len(s[0])) for s in group]),
        sample_ids=torch.cat([torch.full((len(s[0]),), j) for j, s in enumerate(group)]),
    )


def test_order_is_a_permutation_per_epoch_and_seeded(tmp_path: Path) -> None:
    packs = read_shards([str(write_shard(tmp_path / "a.safetensors", random_samples(7)))])
    ids = {id(p): i for i, p in enumerate(packs)}
    run = [ids[id(p)] for p in take_packs(packs, seed=5, position=0, count=21)]
    for e in range(3):
        assert sorted(run[7 * e : 7 * e + 7]) == list(range(7))
    assert run[:7] != run[7:14]  # each epoch reshuffled
    # any window is the same whether taken in one go or resumed from a position
    assert [ids[id(p)] for p in take_packs(packs, 5, 9, 8)] == run[9:17]
    assert [ids[id(p)] for p in take_packs(packs, 6, 0, 7)] != run[:7]


def test_bad_shard_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(
        {
            "tokens": torch.zeros(4, dtype=torch.int64),
            "loss_weight": torch.zeros(4),
            "seq_offsets": torch.tensor([0, 4]),
            "pack_offsets": torch.tensor([0, 1]),
        },
        str(path),
        metadata={"format": "tuna-shard", "version": "1", "max_length": "8"},
    )
    with pytest.raises(EngineError) as e:
        read_shards([str(path)])
    assert e.value.code == "DATA_INVALID" and "'tokens'" in e.value.message and "int32" in e.value.message
    with pytest.raises(EngineError) as e:
        read_shards([str(tmp_path / "missing.safetensors")])
    assert e.value.code == "DATA_NOT_FOUND"
