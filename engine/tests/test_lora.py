"""LoRA / rsLoRA / DoRA: one training step's loss and gradients against transformers + peft (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import make_hf_model, random_samples

from tuna_engine.data import Pack, collate
from tuna_engine.export import adapter_tensors_for_model
from tuna_engine.models import load_model
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import weighted_ce_sum

VARIANTS = {
    "lora-all-linear": dict(target_modules=["all-linear"], use_rslora=False, use_dora=False),
    "lora-qv": dict(target_modules=["q_proj", "v_proj"], use_rslora=False, use_dora=False),
    "rslora": dict(target_modules=["all-linear"], use_rslora=True, use_dora=False),
    "dora": dict(target_modules=["all-linear"], use_rslora=False, use_dora=True),
    "dora-rslora-qwen2-bias": dict(
        target_modules=["q_proj", "k_proj", "o_proj", "down_proj"],
        use_rslora=True,
        use_dora=True,
        family="qwen2",
    ),
}


def peft_model(tmp: Path, family: str, r: int, alpha: float, variant: dict, seed: int = 0):
    """A peft model on a tiny HF model, with every adapter tensor randomised (B ≠ 0, magnitudes ≠ ||W||)."""
    from peft import LoraConfig, get_peft_model

    hf = make_hf_model(tmp, family, seed=seed)
    targets = variant["target_modules"]
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        use_rslora=variant["use_rslora"],
        use_dora=variant["use_dora"],
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    pm = get_peft_model(hf, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                scale = 0.2 if "magnitude" not in name else 0.0
                p.add_(
                    scale * torch.randn(p.shape, generator=g)
                    + (0.1 * torch.rand(p.shape, generator=g) if "magnitude" in name else 0)
                )
    return pm


def copy_peft_into_ours(pm, ours) -> None:
    tensors = {k: v.detach().clone() for k, v in pm.named_parameters() if "lora_" in k}
    params = dict(ours.named_parameters())
    mapped = adapter_tensors_for_model(tensors, "peft")
    assert set(mapped) == {n for n in params if ".lora_" in n}
    with torch.no_grad():
        for k, v in mapped.items():
            params[k].copy_(v)


def reference_loss(pm, samples) -> torch.Tensor:
    """Σ w·CE / Σ w with each sample run on its own through peft (no packing)."""
    total = torch.zeros(())
    weight = 0.0
    for toks, w in samples:
        ids = torch.tensor(toks)[None]
        logits = pm(input_ids=ids).logits[0, :-1].float()
        wt = torch.tensor(w[1:])
        total = total + (F.cross_entropy(logits, ids[0, 1:], reduction="none") * wt).sum()
        weight += float(wt.sum())
    return total / weight


def packed_batch(samples, per_row: int):
    """Pack `per_row` consecutive samples per row (rows of unequal length → padding)."""
    packs = []
    for i in range(0, len(samples), per_row):
        group = samples[i : i + per_row]
        packs.append(
            Pack(
                tokens=torch.tensor(sum((s[0] for s in group), [])),
                weights=torch.tensor(sum((s[1] for s in group), [])),
                positions=torch.cat([torch.arange(len(s[0])) for s in group]),
                sample_ids=torch.cat([torch.full((len(s[0]),), j) for j, s in enumerate(group)]),
            )
        )
    return collate(packs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_step_loss_and_grads_match_peft(tmp_path: Path, name: str) -> None:
    variant = dict(VARIANTS[name])
    family = variant.pop("family", "qwen3")
    r, alpha = 4, 8.0
    pm = peft_model(tmp_path, family, r, alpha, variant)
    pm.train()
    spec = LoraSpec(
        r=r,
        alpha=alpha,
        dropout=0.0,
        use_rslora=variant["use_rslora"],
        use_dora=variant["use_dora"],
        target_modules=tuple(variant["target_modules"]),
    )
    ours = load_model(str(tmp_path), "float32", torch.device("cpu"), spec)
    for n, p in ours.named_parameters():
        p.requires_grad_(".lora_" in n)
    copy_peft_into_ours(pm, ours)
    ours.train()

    samples = random_samples(5, seed=3)
    ref = reference_loss(pm, samples)
    ref.backward()
    batch = packed_batch(samples, per_row=2)
    got = weighted_ce_sum(ours, batch) / batch.loss_weight[:, 1:].sum()
    got.backward()
    assert abs(float(got) - float(ref)) / float(ref) < 1e-5

    ref_grads = adapter_tensors_for_model(
        {k: p.grad for k, p in pm.named_parameters() if "lora_" in k}, "peft"
    )
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if ".lora_" in n}
    assert set(ref_grads) == set(ours_grads)
    for k, g in ref_grads.items():
        assert ours_grads[k] is not None, k
        err = float((ours_grads[k] - g).abs().max() / g.abs().max().clamp_min(1e-12))
        assert err < 1e-5, (k, err)
    if variant["use_dora"]:
        assert any(k.endswith("lora_magnitude_vector") for k in ours_grads)


def test_init_like_peft(tmp_path: Path) -> None:
    """B starts at zero (so the model starts as the base model); A is kaiming-uniform(a=√5) bounded by 1/√in."""
    make_hf_model(tmp_path, "qwen3")
    spec = LoraSpec(
        r=8, alpha=16, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=True
    )
    ours = load_model(str(tmp_path), "float32", torch.device("cpu"), spec, seed=3)
    q = ours.model.layers[0].self_attn.q_proj
    assert torch.all(q.lora_B.weight == 0)
    bound = 1 / 64**0.5  # kaiming_uniform(a=√5) on fan_in 64
    assert float(q.lora_A.weight.abs().max()) <= bound and float(q.lora_A.weight.abs().max()) > 0.8 * bound
    assert torch.allclose(q.lora_magnitude_vector, torch.linalg.norm(q.weight, dim=1))
    again = load_model(str(tmp_path), "float32", torch.device("cpu"), spec, seed=3)
    assert torch.equal(again.model.layers[0].self_attn.q_proj.lora_A.weight, q.lora_A.weight)


def test_lora_on_chosen_layers_only(tmp_path: Path) -> None:
    make_hf_model(tmp_path, "qwen3")
    spec = LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=("q_proj",), use_rslora=False, use_dora=False)
    ours = load_model(str(tmp_path), "float32", torch.device("cpu"), spec, lora_layers=(1,))
    names = [n for n, _ in ours.named_parameters() if ".lora_" in n]
    assert names == [
        "model.layers.1.self_attn.q_proj.lora_A.weight",
        "model.layers.1.self_attn.q_proj.lora_B.weight",
    ]
