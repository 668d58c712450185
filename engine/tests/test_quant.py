"""NF4 quantization (tuna_engine.quant) against its definition and against bitsandbytes, bit for bit.

bitsandbytes is the reference: its CPU build (0.49+) quantizes, dequantizes and, through transformers, writes
real `*-bnb-4bit` checkpoints, which must load unchanged. Two places where its native CPU kernels are not the
reference (the CUDA kernels are; tests/gpu/test_quant_gpu.py checks those):
  - `dequantize_4bit` on CPU assumes blocks never cross rows (wrong when in_features % 64 != 0); its pure
    PyTorch `_dequantize_4bit_compute` is the layout every other backend implements, so we compare with that;
  - `quantize_blockwise` on CPU occasionally picks the farther of two 8-bit codes; we check that at every
    such spot ours is the nearer one, as the CUDA kernel's is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tuna_engine.quant import (
    NF4_LEVELS,
    Linear4bit,
    dequantize_nf4,
    dynamic_map,
    linear4bit_from_checkpoint,
    load_prequantized,
    nf4_weight_from_bnb,
    quantize_model,
    quantize_nf4,
    quantize_weight,
    read_quantization_config,
)
from tuna_engine.quant.blockwise import dequantize_blockwise, nearest_code, quantize_blockwise
from tuna_engine.quant.nf4 import NF4_THRESHOLDS

SHAPES = [(128, 96), (257, 64), (3, 5, 7), (64, 320), (1, 1), (31, 33)]


def _bnb():
    try:
        import bitsandbytes.functional as F  # noqa: N812
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(
            f"bitsandbytes does not import here ({e!r}); pip install bitsandbytes>=0.49 for the CPU backend"
        )
    return F


# ---- the tables -------------------------------------------------------------------------------------------


def test_nf4_levels_and_thresholds_are_consistent():
    levels = torch.tensor(NF4_LEVELS)
    assert levels.numel() == 16 and torch.all(levels[1:] > levels[:-1])
    assert (levels[0], levels[7], levels[15]) == (-1.0, 0.0, 1.0)
    midpoints = (levels[1:].double() + levels[:-1].double()) / 2
    torch.testing.assert_close(
        torch.tensor(NF4_THRESHOLDS, dtype=torch.float64), midpoints, atol=1e-7, rtol=0
    )


def test_code_tables_equal_bitsandbytes():
    F = _bnb()
    assert torch.equal(torch.tensor(NF4_LEVELS), F.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_map(signed=True), F.create_dynamic_map(signed=True))
    assert torch.equal(dynamic_map(signed=False), F.create_dynamic_map(signed=False))


def test_dynamic_map_shape():
    for signed in (True, False):
        m = dynamic_map(signed)
        assert m.shape == (256,) and m.dtype == torch.float32
        assert torch.all(m[1:] >= m[:-1]) and m[-1] == 1.0
    assert dynamic_map(False).min() == 0.0 and dynamic_map(True).min() < -0.99


def test_nearest_code_is_nearest():
    torch.manual_seed(0)
    code = dynamic_map(True)
    x = torch.cat([torch.rand(50_000) * 2 - 1, (torch.rand(5000) * 2 - 1) * 1e-4, code])
    q = nearest_code(x, code)
    dist = (x - code[q]).abs()
    best = (x[:, None] - code[None, :]).abs().min(dim=1).values
    # Equal to brute-force nearest except where two codes are equidistant within float32 rounding.
    assert torch.all(dist <= best + 1e-7)
    assert torch.equal(q[-256:], torch.arange(256))  # each code value maps to itself


# ---- layout -------------------------------------------------------------------------------------------------


def test_packing_puts_first_value_in_high_nibble_and_pads_with_zero_code():
    levels = torch.tensor(NF4_LEVELS)
    # One block whose absmax is 2: values 2*level[i] quantize exactly to code i.
    idx = torch.tensor([15, 0, 7, 3, 12])
    w = 2 * levels[idx]
    packed, absmax = quantize_nf4(w, blocksize=64)
    assert absmax.tolist() == [2.0]
    assert packed.shape == (3, 1) and packed.dtype == torch.uint8
    assert packed.flatten().tolist() == [15 << 4 | 0, 7 << 4 | 3, 12 << 4 | 7]  # spare nibble = code of 0.0
    assert torch.equal(dequantize_nf4(packed, absmax, (5,), 64, torch.float32), w)


def test_blocks_run_over_the_flattened_weight_across_rows():
    w = torch.zeros(3, 40)
    w[1, 30] = 5.0  # flat index 70: block 1 (64..127)
    w[0, 0] = -1.0  # block 0
    packed, absmax = quantize_nf4(w, blocksize=64)
    assert absmax.tolist() == [1.0, 5.0]
    out = dequantize_nf4(packed, absmax, w.shape, 64, torch.float32)
    assert torch.equal(out, w)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_error_is_bounded_by_half_the_level_gap(shape, dtype):
    torch.manual_seed(1)
    w = torch.randn(shape).to(dtype)
    for double_quant in (False, True):
        q = quantize_weight(w, double_quant=double_quant)
        out = q.dequantize(torch.float32)
        n = math.prod(shape)
        blocks = -(-n // 64)
        absmax = (
            torch.nn.functional.pad(w.reshape(-1).float(), (0, blocks * 64 - n))
            .view(blocks, 64)
            .abs()
            .amax(1)
        )
        half_gap = (torch.tensor(NF4_LEVELS).diff().max() / 2).item()  # 0.1385, between 0.723 and 1.0
        bound = (absmax * half_gap).repeat_interleave(64)[:n].view(shape)
        if double_quant:
            # The absmax itself is off by at most half a step of the 8-bit map, scaled by the nested absmax.
            abs_err = (q.absmax_float() - absmax).abs().repeat_interleave(64)[:n].view(shape)
            assert torch.all(q.absmax_float() - absmax <= absmax * 0.02 + 1e-6)
            bound = bound + abs_err
        err = (out - w.float()).abs()
        slack = 1e-6 + (0 if dtype == torch.float32 else float(w.float().abs().max()) * 2**-7)
        assert torch.all(err <= bound + slack), f"max excess {(err - bound).max()}"
        assert err.mean() < 0.1 * w.float().abs().mean()  # and it is far below the bound on average


def test_double_quant_state():
    torch.manual_seed(2)
    w = torch.randn(300, 256) * torch.linspace(0.01, 3, 256)  # absmax varies a lot between blocks
    q = quantize_weight(w, double_quant=True)
    _, absmax = quantize_nf4(w)
    assert q.absmax.dtype == torch.uint8 and q.absmax.shape == absmax.shape
    assert q.nested_offset == pytest.approx(absmax.mean().item(), rel=0, abs=0)
    centred = absmax - absmax.mean()
    blocks = -(-absmax.numel() // 256)
    assert q.nested_absmax.shape == (blocks,)
    for b in range(blocks):
        assert q.nested_absmax[b] == centred[b * 256 : (b + 1) * 256].abs().max()
    # Decoding: dynamic_map[code] * nested_absmax[b // 256] + offset, nearest code per value.
    code = dynamic_map(True)
    scale = q.nested_absmax.repeat_interleave(256)[: absmax.numel()]
    assert torch.equal(q.absmax_float(), code[q.absmax.long()] * scale + absmax.mean())
    best = (centred[:, None] / scale[:, None] - code[None]).abs().min(1).values
    assert torch.all((centred / scale - code[q.absmax.long()]).abs() <= best + 1e-7)
    assert (q.absmax_float() - absmax).abs().max() < 0.01 * absmax.max()


def test_blockwise_round_trip_partial_last_block():
    torch.manual_seed(3)
    x = torch.randn(1000)
    code = dynamic_map(True)
    q, absmax = quantize_blockwise(x, code, 256)
    assert absmax.shape == (4,) and absmax[3] == x[768:].abs().max()
    y = dequantize_blockwise(q, absmax, code, 256)
    assert (y - x).abs().max() < 0.02 * x.abs().max()


# ---- bit for bit with bitsandbytes ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_matches_bitsandbytes(shape, dtype):
    F = _bnb()
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    torch.manual_seed(4)
    w = (torch.randn(shape) * 0.05).to(dtype)
    ref_packed, ref_state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    q = quantize_weight(w)
    assert torch.equal(q.packed, ref_packed)
    assert q.nested_offset == ref_state.offset.item()
    assert torch.equal(q.nested_absmax, ref_state.state2.absmax)
    assert torch.equal(q.quant_map, ref_state.code) and torch.equal(q.nested_quant_map, ref_state.state2.code)
    differ = (q.absmax != ref_state.absmax).nonzero().flatten()
    assert len(differ) <= max(1, q.absmax.numel() // 100)
    code = ref_state.state2.code
    raw = quantize_nf4(w)[1] - ref_state.offset
    for i in differ.tolist():  # bnb's CPU kernel rounded to the farther code here; ours is the nearer
        s = raw[i] * (1.0 / ref_state.state2.absmax[i // 256])
        if s.isnan():  # an all-zero block: any code decodes to 0 (the CUDA kernel writes code 0)
            assert q.absmax[i] == 0
            continue
        assert (s - code[q.absmax[i].long()]).abs() < (s - code[ref_state.absmax[i].long()]).abs(), i
    # Dequantizing bnb's own tensors gives bnb's values exactly.
    ref_absmax = F.dequantize_blockwise(ref_state.absmax, ref_state.state2) + ref_state.offset
    ours = nf4_weight_from_bnb({"weight": ref_packed, **ref_state.as_dict(packed=True)})
    assert torch.equal(ours.absmax_float(), ref_absmax)
    want = _dequantize_4bit_compute(ref_packed.reshape(-1), ref_absmax, ref_state.code, 64, shape, dtype)
    assert torch.equal(ours.dequantize(), want)
    if shape[-1] % 64 == 0:  # the public CPU entry point is right for these shapes
        assert torch.equal(ours.dequantize(), F.dequantize_4bit(ref_packed, ref_state))


def test_quantize_without_double_quant_matches_bitsandbytes():
    F = _bnb()
    torch.manual_seed(5)
    w = torch.randn(192, 128, dtype=torch.bfloat16)
    ref_packed, ref_state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    q = quantize_weight(w, double_quant=False)
    assert torch.equal(q.packed, ref_packed) and torch.equal(q.absmax, ref_state.absmax)
    assert torch.equal(q.dequantize(), F.dequantize_4bit(ref_packed, ref_state))
    assert q.to_bnb_tensors().keys() == {"weight", *ref_state.as_dict(packed=True).keys()}


# ---- Linear4bit ---------------------------------------------------------------------------------------------


def test_linear4bit_forward_backward_match_dequantized_linear():
    torch.manual_seed(6)
    lin = nn.Linear(96, 40, bias=True).to(torch.bfloat16)
    q = Linear4bit.from_linear(lin)
    assert (q.in_features, q.out_features) == (96, 40)
    x = torch.randn(2, 3, 96, dtype=torch.bfloat16, requires_grad=True)
    y = q(x)
    g = torch.randn_like(y)
    y.backward(g)
    w = q.dequantize()
    assert w.shape == (40, 96) and w.dtype == torch.bfloat16
    x2 = x.detach().clone().requires_grad_()
    y2 = torch.nn.functional.linear(x2, w, q.bias)
    y2.backward(g)
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)
    assert all(not p.requires_grad for p in q.parameters())
    assert (w.float() - lin.weight.float()).abs().max() < 0.2 * lin.weight.float().abs().max()


def test_linear4bit_keeps_no_state_outside_parameters_and_buffers():
    torch.manual_seed(7)
    q = Linear4bit.from_linear(nn.Linear(64, 48, bias=False))
    tensors = dict(q.named_parameters()) | dict(q.named_buffers())
    assert set(tensors) == {
        "weight",
        "absmax",
        "nested_absmax",
        "quant_map",
        "nested_quant_map",
        "nested_offset",
    }
    # A fresh, zero-initialised layer that receives only the registered tensors computes the same weight.
    fresh = Linear4bit(64, 48, bias=False, compute_dtype=torch.float32)
    with torch.no_grad():
        for name, t in tensors.items():
            getattr(fresh, name).copy_(t)
    assert torch.equal(fresh.dequantize(), q.dequantize())


def test_linear4bit_quant_state_survives_dtype_casts():
    torch.manual_seed(8)
    for double_quant in (True, False):
        q = Linear4bit.from_linear(nn.Linear(64, 40, bias=True), double_quant=double_quant)
        before = q.dequantize(torch.float32)
        q.to(torch.float16)
        assert q.weight.dtype == torch.uint8 and q.quant_map.dtype == torch.float32
        assert q.absmax.dtype == (torch.uint8 if double_quant else torch.float32)
        assert torch.equal(q.dequantize(torch.float32), before)
        assert q.bias.dtype == torch.float16


def test_state_dict_is_bitsandbytes_layout_and_round_trips():
    torch.manual_seed(9)
    q = Linear4bit.from_linear(nn.Linear(128, 72, bias=True).to(torch.bfloat16))
    sd = q.state_dict()
    assert set(sd) == {
        "weight",
        "bias",
        "weight.absmax",
        "weight.quant_map",
        "weight.nested_absmax",
        "weight.nested_quant_map",
        "weight.quant_state.bitsandbytes__nf4",
    }
    meta = json.loads(bytes(sd["weight.quant_state.bitsandbytes__nf4"].tolist()))
    assert meta == {
        "quant_type": "nf4",
        "blocksize": 64,
        "dtype": "bfloat16",
        "shape": [72, 128],
        "nested_blocksize": 256,
        "nested_dtype": "float32",
        "nested_offset": float(q.nested_offset),
    }
    fresh = Linear4bit(128, 72, bias=True)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.dequantize(), q.dequantize()) and torch.equal(fresh.bias, q.bias)

    wrong = Linear4bit(128, 64, bias=True)
    with pytest.raises(
        RuntimeError, match=r"weight.quant_state.bitsandbytes__nf4: shape \[72, 128\], expected \[64, 128\]"
    ):
        wrong.load_state_dict(sd)
    no_dq = Linear4bit(128, 72, bias=True, double_quant=False)
    with pytest.raises(RuntimeError, match="double quantization on in the checkpoint, off in the layer"):
        no_dq.load_state_dict(sd)


def test_quantize_model_skips_by_dotted_name():
    torch.manual_seed(10)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(64, 64)
            self.down_proj = nn.Linear(64, 64)

    model = nn.Module()
    model.layers = nn.ModuleList([Block(), Block()])
    model.lm_head = nn.Linear(64, 32, bias=False)
    model.q_proj_extra = nn.Linear(64, 64)  # "q_proj" must not match "q_proj_extra"
    x = torch.randn(4, 64)
    ref = model.lm_head(model.layers[1].down_proj(model.layers[0].q_proj(x)))
    replaced = quantize_model(model, skip=["lm_head", "layers.1.down_proj"])
    assert replaced == ["layers.0.q_proj", "layers.0.down_proj", "layers.1.q_proj", "q_proj_extra"]
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.layers[1].down_proj, nn.Linear)
    out = model.lm_head(model.layers[1].down_proj(model.layers[0].q_proj(x)))
    assert (out - ref).abs().max() < 0.15 * ref.abs().max()


# ---- pre-quantized checkpoints ----------------------------------------------------------------------------


def _tiny_qwen3_config():
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="module")
def bnb_checkpoint(tmp_path_factory):
    """A tiny Qwen3 quantized by transformers + bitsandbytes and saved with save_pretrained: the same code
    path that produced the `*-bnb-4bit` checkpoints on the Hub."""
    _bnb()
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen3ForCausalLM

    d = tmp_path_factory.mktemp("bnb")
    torch.manual_seed(11)
    Qwen3ForCausalLM(_tiny_qwen3_config()).to(torch.bfloat16).save_pretrained(d / "base")
    cfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["lm_head", "model.layers.1.mlp.down_proj"],
    )
    model = AutoModelForCausalLM.from_pretrained(
        d / "base", quantization_config=cfg, device_map="cpu", dtype=torch.bfloat16
    )
    model.save_pretrained(d / "q4")
    return d / "q4", model


def test_read_quantization_config(bnb_checkpoint):
    path, _ = bnb_checkpoint
    cfg = read_quantization_config(path)
    assert cfg is not None and cfg.double_quant and cfg.compute_dtype == torch.bfloat16
    assert cfg.skip_modules == ("lm_head", "model.layers.1.mlp.down_proj")


def test_prequantized_checkpoint_loads_unchanged(bnb_checkpoint):
    F = _bnb()
    from safetensors.torch import load_file
    from transformers import Qwen3ForCausalLM

    path, bnb_model = bnb_checkpoint
    model = Qwen3ForCausalLM(_tiny_qwen3_config()).to(torch.bfloat16)
    missing, unexpected = load_prequantized(model, path)
    assert missing == [] and unexpected == []
    names = {n for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert len(names) == 13 and "model.layers.1.mlp.down_proj" not in names and "lm_head" not in names
    ckpt = load_file(str(path / "model.safetensors"))
    for name in names:
        ours = model.get_submodule(name)
        theirs = bnb_model.get_submodule(name).weight
        assert torch.equal(ours.dequantize(), F.dequantize_4bit(theirs.data, theirs.quant_state)), name
        one = linear4bit_from_checkpoint(ckpt, name)
        assert torch.equal(one.dequantize(), ours.dequantize())
    # Saving writes back the very checkpoint it loaded.
    sd = model.state_dict()
    assert sd.keys() == ckpt.keys()
    for k, v in ckpt.items():
        assert torch.equal(sd[k], v), k
    # And the model computes what transformers + bitsandbytes compute.
    ids = torch.tensor([[1, 5, 9, 200, 3, 77]])
    with torch.no_grad():
        ours_logits = model(ids).logits.float()
        ref_logits = bnb_model(ids).logits.float()
    assert (ours_logits - ref_logits).abs().max() < 2e-2 * ref_logits.abs().max()


def test_handwritten_bnb_layout_checkpoint_loads(tmp_path: Path):
    """A checkpoint written key by key from bitsandbytes' QuantState.as_dict(packed=True), sharded."""
    F = _bnb()
    torch.manual_seed(12)

    def build() -> nn.Module:
        m = nn.Module()
        m.up = nn.Linear(64, 96, bias=True)
        m.head = nn.Linear(96, 10, bias=False)
        return m

    src = build().to(torch.bfloat16)
    packed, state = F.quantize_4bit(
        src.up.weight.data, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    shard1 = {"up.weight": packed, "up.bias": src.up.bias.data}
    shard1 |= {f"up.weight.{k}": v for k, v in state.as_dict(packed=True).items()}
    save_file(shard1, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"head.weight": src.head.weight.data}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in shard1}}
    index["weight_map"]["head.weight"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "quantization_config": {
                    "quant_method": "bitsandbytes",
                    "load_in_4bit": True,
                    "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": True,
                    "bnb_4bit_compute_dtype": "bfloat16",
                    "llm_int8_skip_modules": ["head"],
                }
            }
        )
    )
    model = build().to(torch.bfloat16)
    assert load_prequantized(model, tmp_path) == ([], [])
    assert isinstance(model.up, Linear4bit) and isinstance(model.head, nn.Linear)
    assert torch.equal(model.up.dequantize(), F.dequantize_4bit(packed, state))
    assert torch.equal(model.head.weight, src.head.weight)


def test_unsupported_quantization_config_names_the_field(tmp_path: Path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "quantization_config": {
                    "quant_method": "bitsandbytes",
                    "load_in_4bit": True,
                    "bnb_4bit_quant_type": "fp4",
                }
            }
        )
    )
    with pytest.raises(ValueError, match=r"config.json: quantization_config.bnb_4bit_quant_type: 'fp4'"):
        read_quantization_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert read_quantization_config(tmp_path) is None
