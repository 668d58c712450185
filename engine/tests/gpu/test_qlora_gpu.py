"""QLoRA on a GPU with the real Qwen3-0.6B config (random bf16 weights): a QLoRA step equals a LoRA step on the
dequantized weights, loading never holds the 16-bit decoder on the GPU, and `tuna_engine train` runs qlora.

Run on a CUDA machine:  PYTHONPATH=engine .venv/bin/python -m pytest engine/tests/gpu/test_qlora_gpu.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import QWEN3_0_6B, make_plan, random_samples, run_engine, write_plan, write_shard
from safetensors.torch import load_file, save_file

from tuna_engine.data import Pack, collate
from tuna_engine.lora import adapter_parameters
from tuna_engine.models import Quant4bit, load_model
from tuna_engine.protocol import LORA_PROJECTIONS, LoraSpec
from tuna_engine.quant import Linear4bit, quantize_weight
from tuna_engine.train import weighted_ce_sum

pytestmark = pytest.mark.gpu

SPEC = LoraSpec(r=16, alpha=32, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(random 0.6B bf16 model, the same with every projection replaced by dequant(quant(W)))."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    src = tmp_path_factory.mktemp("qwen3-0.6b")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen3Config(**QWEN3_0_6B), dtype=torch.bfloat16).save_pretrained(src)
    deq = tmp_path_factory.mktemp("qwen3-0.6b-deq")
    state = load_file(str(src / "model.safetensors"))
    for k, w in state.items():
        if k.endswith(".weight") and k.split(".")[-2] in LORA_PROJECTIONS:
            state[k] = quantize_weight(w.cuda()).dequantize(torch.bfloat16).cpu()
    save_file(state, str(deq / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(src / "config.json", deq / "config.json")
    return src, deq


def test_loading_never_holds_the_16bit_decoder(dirs: tuple[Path, Path]) -> None:
    src, _ = dirs
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = load_model(str(src), "bfloat16", torch.device("cuda"), SPEC, quant=Quant4bit())
    peak = torch.cuda.max_memory_allocated() - before
    n16 = sum(p.numel() * 2 for p in load_file(str(src / "model.safetensors")).values())
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 28 * 7
    # embeddings (311 MB) + 4-bit projections (~250 MB) + adapters + one projection in bf16, well under bf16's 1.2 GB
    assert peak < 0.6 * n16, (peak / 2**20, n16 / 2**20)


def test_qlora_step_equals_lora_on_dequantized_weights(dirs: tuple[Path, Path]) -> None:
    src, deq = dirs
    dev = torch.device("cuda")
    q = load_model(str(src), "bfloat16", dev, SPEC, seed=1, quant=Quant4bit())
    lo = load_model(str(deq), "bfloat16", dev, SPEC, seed=1)
    g = torch.Generator(device=dev).manual_seed(2)
    pq, pl = adapter_parameters(q), adapter_parameters(lo)
    assert set(pq) == set(pl)
    with torch.no_grad():
        for k in pq:
            pl[k].copy_(pq[k])
            if ".lora_B." in k:
                v = 0.01 * torch.randn(pq[k].shape, generator=g, device=dev)
                pq[k].copy_(v)
                pl[k].copy_(v)
    for m in (q, lo):
        for n, p in m.named_parameters():
            p.requires_grad_(".lora_" in n)
        m.train()
        m.gradient_checkpointing = True
    samples = random_samples(4, vocab=151936, min_len=64, max_len=300, seed=2)
    pack = Pack(
        tokens=torch.tensor(sum((s[0] for s in samples), [])),
        weights=torch.tensor(sum((s[1] for s in samples), [])),
        positions=torch.cat([torch.arange(len(s[0])) for s in samples]),
        sample_ids=torch.cat([torch.full((len(s[0]),), i) for i, s in enumerate(samples)]),
    )
    batch = collate([pack]).to(dev)
    losses = []
    for m in (q, lo):
        loss = weighted_ce_sum(m, batch) / batch.trained_tokens
        loss.backward()
        losses.append(float(loss))
    assert abs(losses[0] - losses[1]) / losses[1] < 1e-3, losses
    for k, p in pl.items():
        c = torch.nn.functional.cosine_similarity(
            pq[k].grad.flatten().float(), p.grad.flatten().float(), dim=0
        )
        assert float(c) > 0.999, (k, float(c))


def test_cli_qlora_on_gpu(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = dirs
    samples = random_samples(16, vocab=151936, min_len=64, max_len=256, seed=3)
    shard = write_shard(tmp_path / "t.safetensors", samples)
    method = {
        "type": "qlora",
        "keep_16bit": ["layers.27.mlp.down_proj"],
        "lora": {
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": ["all-linear"],
            "use_rslora": False,
            "use_dora": False,
        },
    }
    plan = make_plan(tmp_path, src, [shard], method=method, max_steps=3, gradient_checkpointing=True)
    plan["model"]["dtype"] = "bfloat16"
    plan["device"] = "cuda"
    code, events, err = run_engine("train", write_plan(plan), timeout=600)
    assert code == 0, err
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 3 and all(e["memory_gib"] is not None for e in steps)
    adapter = Path(plan["output"]["adapter_dir"])
    assert json.loads((adapter / "tuna_quantization.json").read_text())["keep_16bit"] == [
        "layers.27.mlp.down_proj"
    ]
