"""Generation on CUDA: greedy equals transformers on the GPU, batching changes nothing, and a 4-bit model
(Triton dequantization) generates like its dequantized weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import make_hf_model
from safetensors.torch import load_file, save_file

from tuna_engine.generate import load_for_generation
from tuna_engine.protocol import GenerateRequest, parse_generate_plan
from tuna_engine.quant import Linear4bit, quantize_model

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 17, 200, 3], [9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [250, 250, 7]]


def _req(i: int, prompt: list[int], n: int) -> GenerateRequest:
    return GenerateRequest(f"r{i}", tuple(prompt), n, 0.0, 1.0, 0, 1.0, None, (), None)


def _plan(path, batch: int = 4) -> dict:
    model = {"path": str(path), "dtype": "float32"}
    return {
        "version": 1,
        "command": "generate",
        "model": model,
        "adapters": {},
        "device": "cuda",
        "max_batch_size": batch,
    }


def test_cuda_greedy_batching_and_4bit(tmp_path):
    hf = make_hf_model(tmp_path / "base", "qwen3", seed=5).cuda()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    engine = load_for_generation(parse_generate_plan(_plan(tmp_path / "base")))
    assert engine.device.type == "cuda"
    reqs = [_req(i, p, 10) for i, p in enumerate(PROMPTS)]
    batched = engine.generate(reqs)
    single = load_for_generation(parse_generate_plan(_plan(tmp_path / "base", batch=1)))
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([p], device="cuda")
        with torch.no_grad():
            want = hf.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False
            )
        assert batched[f"r{i}"] == want[0, len(p) :].tolist()
        assert single.generate([reqs[i]])[f"r{i}"] == batched[f"r{i}"]

    q = copy.deepcopy(hf).cpu()
    quantize_model(q, skip=["lm_head"])
    (tmp_path / "q4").mkdir()
    save_file(
        {k: v.contiguous() for k, v in q.state_dict().items()}, str(tmp_path / "q4" / "model.safetensors")
    )
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "float32",
    }
    (tmp_path / "q4" / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(tmp_path / "base" / "model.safetensors"))
    for name, m in q.named_modules():
        if isinstance(m, Linear4bit):
            state[f"{name}.weight"] = m.dequantize(torch.float32)
    (tmp_path / "deq").mkdir()
    save_file(state, str(tmp_path / "deq" / "model.safetensors"))
    (tmp_path / "deq" / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    e4 = load_for_generation(parse_generate_plan(_plan(tmp_path / "q4")))
    assert any(isinstance(m, Linear4bit) and m.weight.is_cuda for m in e4.model.modules())
    e16 = load_for_generation(parse_generate_plan(_plan(tmp_path / "deq")))
    assert e4.generate(reqs) == e16.generate(reqs)
