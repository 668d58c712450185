"""Qwen3-0.6B-sized models (the real config, random weights) in bf16 on a GPU against transformers + peft.

bf16 results are compared by how far each side lands from an fp32 reference: ours may not be worse than
transformers' own bf16 run by more than a small margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import QWEN3_0_6B, make_plan, random_samples, run_engine, write_plan, write_shard

from tuna_engine.models import load_model
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import weighted_ce_sum

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM, Qwen3Config

    path = tmp_path_factory.mktemp("qwen3-0.6b-random")
    torch.manual_seed(0)
    cfg = Qwen3Config(**QWEN3_0_6B)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(path)
    return path


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def test_bf16_logits_match_transformers(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    dev = torch.device("cuda")
    ids = torch.randint(0, 151936, (2, 256), device=dev, generator=torch.Generator(dev).manual_seed(0))
    with torch.no_grad():
        ref32 = (
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev).eval()(ids).logits
        )
        hf16 = (
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(dev).eval()(ids).logits
        )
        ours = load_model(str(model_dir), "bfloat16", dev).eval()
        pos = torch.arange(256, device=dev).expand(2, 256)
        got = ours.logits(ours(ids, pos, torch.zeros_like(ids)))
    hf_err, our_err = rel(hf16, ref32), rel(got, ref32)
    assert our_err < 1.5 * hf_err + 1e-3, (our_err, hf_err)
    assert rel(got, hf16) < 5e-2


@pytest.mark.parametrize("dora", [False, True])
def test_bf16_lora_step_matches_peft(model_dir: Path, dora: bool) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dev = torch.device("cuda")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(dev)
    pm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", use_dora=dora))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    pm.train()
    spec = LoraSpec(
        r=16, alpha=32, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=dora
    )
    ours = load_model(str(model_dir), "bfloat16", dev, spec)
    from tuna_engine.export import adapter_tensors_for_model
    from tuna_engine.lora import set_lora_compute

    set_lora_compute(
        ours, "exact"
    )  # peft parity: peft's fp32 adapter math (the fast path: test_fastpath_gpu)

    mapped = adapter_tensors_for_model({k: v for k, v in pm.named_parameters() if "lora_" in k}, "peft")
    params = dict(ours.named_parameters())
    with torch.no_grad():
        for k, v in mapped.items():
            params[k].copy_(v)
    for n, p in ours.named_parameters():
        p.requires_grad_(".lora_" in n)
    ours.train()

    samples = random_samples(4, vocab=151936, min_len=64, max_len=200, seed=2)
    ids = [torch.tensor(s[0], device=dev) for s in samples]
    ws = [torch.tensor(s[1], device=dev) for s in samples]
    total, weight = 0.0, 0.0
    for x, w in zip(ids, ws, strict=True):
        logits = pm(input_ids=x[None]).logits[0, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits, x[1:], reduction="none")
        total = total + (ce * w[1:]).sum()
        weight += float(w[1:].sum())
    ref = total / weight
    ref.backward()

    from tuna_engine.data import Pack, collate

    pack = Pack(
        tokens=torch.cat(ids).cpu(),
        weights=torch.cat(ws).cpu(),
        positions=torch.cat([torch.arange(len(x)) for x in ids]),
        sample_ids=torch.cat([torch.full((len(x),), i) for i, x in enumerate(ids)]),
    )
    got = weighted_ce_sum(ours, collate([pack]).to(dev)) / weight
    got.backward()
    assert abs(float(got) - float(ref)) / float(ref) < 2e-2
    ref_g = adapter_tensors_for_model({k: p.grad for k, p in pm.named_parameters() if "lora_" in k}, "peft")
    our_g = {n: p.grad for n, p in ours.named_parameters() if ".lora_" in n}
    cos = [
        torch.nn.functional.cosine_similarity(our_g[k].flatten().float(), g.flatten().float(), dim=0)
        for k, g in ref_g.items()
        if g.abs().max() > 0
    ]
    assert min(float(c) for c in cos) > 0.95


def test_cli_train_on_gpu(model_dir: Path, tmp_path: Path) -> None:
    samples = random_samples(16, vocab=151936, min_len=64, max_len=256, seed=3)
    shard = write_shard(tmp_path / "t.safetensors", samples)
    plan = make_plan(tmp_path, model_dir, [shard], max_steps=3, save_every=3, gradient_checkpointing=True)
    plan["model"]["dtype"] = "bfloat16"
    plan["device"] = "cuda"
    code, events, err = run_engine("train", write_plan(plan), timeout=600)
    assert code == 0, err
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 3 and all(e["memory_gib"] is not None and e["memory_gib"] > 0 for e in steps)
    assert events[0]["device"].startswith("cuda")
    cfg = json.loads((Path(plan["output"]["adapter_dir"]) / "adapter_config.json").read_text())
    assert cfg["r"] == 4


def test_chunked_loss_on_gpu_matches_unfused_and_saves_memory() -> None:
    """loss.py on CUDA at Qwen3's vocabulary: same loss and hidden-state gradient as the unfused
    F.cross_entropy path in bf16, with a fraction of its peak memory."""
    from tuna_engine.loss import linear_cross_entropy, reference_linear_cross_entropy

    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    N, C, V = 4096, 1024, 151936
    w = (torch.randn(V, C, device=dev, generator=g) * 0.02).bfloat16()
    t = torch.randint(0, V, (N,), device=dev, generator=g)
    tw = torch.ones(N, device=dev)
    results = []
    for fn in (reference_linear_cross_entropy, linear_cross_entropy):
        h = torch.randn(N, C, device=dev, generator=torch.Generator(dev).manual_seed(1)).bfloat16()
        h.requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = fn(h, w, t, tw)
        loss.backward()
        torch.cuda.synchronize()
        results.append((float(loss), h.grad.float(), torch.cuda.max_memory_allocated() - base))
    (ref, ref_g, ref_mem), (got, got_g, got_mem) = results
    assert abs(got - ref) / ref < 1e-4
    assert rel(got_g, ref_g) < 2e-2
    assert got_mem < 0.35 * ref_mem, (got_mem / 2**20, ref_mem / 2**20)
