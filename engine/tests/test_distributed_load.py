"""Large-model plumbing on CPU: random model directories written tensor by tensor (models/random_dir.py) and
loading under FSDP straight into each rank's shards (meta device → fully_shard → fill from the files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    greedy_packs,
    lora_method,
    make_hf_model,
    make_plan,
    random_samples,
    run_engine,
    write_plan,
    write_shard,
)
from safetensors import safe_open
from test_distributed import losses, torchrun

from tuna_engine.models import Quant4bit, load_model
from tuna_engine.models.random_dir import planned_bytes, tensor_shapes, write_random_model
from tuna_engine.protocol import LoraSpec

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
PRESETS = json.loads((ROOT / "src/model/presets.json").read_text())

# The llama3-70b preset's architecture (llama3 rope scaling, GQA, no tie) shrunk to a few MB.
TINY_LLAMA = {
    **PRESETS["llama3-70b"]["config"],
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
TINY_QWEN2 = {
    **PRESETS["qwen2.5-72b"]["config"],
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 128,  # a multiple of 64: bitsandbytes' CPU dequantize assumes blocks within rows
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
LORA = LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False)


def _files(d: Path) -> dict[str, str]:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    return index["weight_map"]


def test_random_16bit_directory_loads_in_the_engine_and_in_transformers(tmp_path: Path) -> None:
    """A sharded bf16 directory (index + several files, each tensor once, shapes from the config) that our
    loader and transformers both load, giving the same logits; norms are 1, matrices have std ≈ 0.02."""
    from transformers import AutoModelForCausalLM

    d = tmp_path / "llama"
    stats = write_random_model(TINY_LLAMA, d, shard_bytes=40_000, device=CPU)
    weight_map = _files(d)
    assert stats["files"] == len(set(weight_map.values())) > 2
    assert sorted(weight_map) == sorted(n for n, _ in tensor_shapes(TINY_LLAMA))
    planned = planned_bytes(TINY_LLAMA)  # tensor bytes; the files add their JSON headers
    assert planned < stats["bytes"] < planned + 20_000 * stats["files"]
    with safe_open(str(d / weight_map["model.layers.1.mlp.up_proj.weight"]), "pt") as f:
        w = f.get_tensor("model.layers.1.mlp.up_proj.weight")
    assert w.dtype == torch.bfloat16 and list(w.shape) == [160, 64]
    assert abs(float(w.float().std()) - 0.02) < 0.002 and abs(float(w.float().mean())) < 0.002
    with safe_open(str(d / weight_map["model.norm.weight"]), "pt") as f:
        assert torch.equal(f.get_tensor("model.norm.weight"), torch.ones(64, dtype=torch.bfloat16))
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["torch_dtype"] == "bfloat16"

    ours = load_model(str(d), "float32", CPU).eval()
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.logits(ours(ids, torch.arange(24).expand(2, 24), torch.zeros_like(ids)))
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    # Written once: a second call with the same config reuses the directory.
    assert write_random_model(TINY_LLAMA, d, shard_bytes=40_000, device=CPU)["reused"] is True


def test_random_nf4_directory_is_the_bitsandbytes_layout(tmp_path: Path) -> None:
    """The 4-bit directory (same seed) holds exactly the quantization of the 16-bit directory's projections:
    our loader gives bit-identical models from both (pre-quantized vs quantized at load), and
    transformers + bitsandbytes load it and dequantize every projection to exactly our weights."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForCausalLM

    d16, d4 = tmp_path / "q16", tmp_path / "q4"
    write_random_model(TINY_QWEN2, d16, device=CPU)
    stats = write_random_model(TINY_QWEN2, d4, four_bit=True, shard_bytes=30_000, device=CPU)
    assert stats["files"] > 1
    keys = _files(d4)
    assert "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4" in keys
    assert "model.layers.0.self_attn.q_proj.bias" in keys and "lm_head.weight" in keys
    assert not any(
        k.startswith("lm_head.weight.") or k.startswith("model.embed_tokens.weight.") for k in keys
    )
    assert json.loads((d4 / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    planned = planned_bytes(TINY_QWEN2, four_bit=True)
    assert abs(stats["bytes"] - planned) < 20_000 * stats["files"]
    # At full size: Llama-3-70B is ~141 GB in bf16 and ~40 GB as NF4 (embeddings and lm_head stay bf16).
    big = PRESETS["llama3-70b"]["config"]
    assert 140e9 < planned_bytes(big) < 142e9
    assert 38e9 < planned_bytes(big, four_bit=True) < 41e9

    a = load_model(str(d4), "bfloat16", CPU, LORA).eval()
    b = load_model(str(d16), "bfloat16", CPU, LORA, quant=Quant4bit()).eval()
    assert a.quantization is not None and a.quantization["source"] == "prequantized"
    sa = {k: v for k, v in a.state_dict().items() if ".lora_" not in k}
    sb = {k: v for k, v in b.state_dict().items() if ".lora_" not in k}
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k

    bnb = AutoModelForCausalLM.from_pretrained(d4, device_map="cpu", dtype=torch.bfloat16)
    n4 = 0
    for name, m in bnb.named_modules():
        if type(m).__name__ == "Linear4bit":
            w = bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state)
            assert torch.equal(a.get_submodule(name).base_layer.dequantize(), w), name
            n4 += 1
    assert n4 == 14  # 7 projections × 2 layers


# ---- sharded loading under FSDP (gloo, 2 processes) ------------------------------------------------------


def _curves(tmp: Path, model_dir: Path, method: dict[str, Any] | None, dtype: str = "float32") -> dict:
    samples = random_samples(40, vocab=256, seed=5)
    shard = write_shard(tmp / "train.safetensors", samples, greedy_packs(samples, 40))
    out = {}
    for name, dist in (("one", None), ("two", {"strategy": "fsdp", "gpus": 2, "nnodes": 1})):
        plan = make_plan(tmp / name, model_dir, [shard], method=method, max_steps=3, save_every=3)
        plan["model"]["dtype"] = dtype
        if dist:
            plan["distributed"] = dist
        code, events, err = torchrun(write_plan(plan)) if dist else run_engine("train", write_plan(plan))
        assert code == 0, err[-3000:]
        out[name] = (events, err)
    return out


QLORA = lora_method("qlora")


@pytest.mark.parametrize("kind", ["16bit-qlora", "prequantized"])
def test_sharded_load_follows_single_process(tmp_path: Path, kind: str) -> None:
    """FSDP's meta-device load (each rank fills only its shards from the files) trains exactly like one process
    that loaded the whole model: same step losses in fp32 (1e-5), for QLoRA quantizing at load (a Qwen2 model:
    q/k/v biases in the 4-bit base) and for a pre-quantized bitsandbytes directory."""
    if kind == "prequantized":
        model_dir = tmp_path / "pre"
        write_random_model(TINY_LLAMA, model_dir, four_bit=True, shard_bytes=50_000, device=CPU)
        method = QLORA
    else:
        model_dir = tmp_path / "m"
        make_hf_model(model_dir, "qwen2", max_shard_size="60KB")
        method = QLORA
    runs = _curves(tmp_path, model_dir, method)
    assert "loaded into FSDP shards" in runs["two"][1]
    assert losses(runs["two"][0]) == pytest.approx(losses(runs["one"][0]), abs=1e-5)
    assert len(losses(runs["one"][0])) == 3
