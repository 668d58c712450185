"""NF4 on CUDA: the Triton dequantizer against the PyTorch reference, and, where bitsandbytes' CUDA build is
importable, the whole quantize/dequantize path against bitsandbytes' CUDA kernels (the ones that made the
`*-bnb-4bit` checkpoints), bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuna_engine.quant import Linear4bit, nf4_weight_from_bnb, quantize_weight
from tuna_engine.quant.nf4 import decode_absmax, dequantize_nf4

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Odd sizes on purpose: an odd number of values (a spare nibble), blocks crossing rows, a partial last
# 64-block, a partial last 256-block of absmax codes, and one big enough for many Triton programs.
SHAPES = [(1, 1), (3, 5), (7, 33), (31, 97), (257, 64), (1000, 300), (4099, 129), (2048, 5120)]


def _reference(q, dtype):
    absmax = decode_absmax(q.absmax, q.nested_absmax, q.nested_quant_map, q.nested_offset, q.nested_blocksize)
    return dequantize_nf4(q.packed, absmax, q.shape, q.blocksize, dtype, q.quant_map)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("double_quant", [True, False])
def test_triton_dequant_equals_reference(shape, dtype, double_quant):
    from tuna_engine.quant.triton_nf4 import dequantize_nf4_triton

    torch.manual_seed(0)
    w = torch.randn(shape, device="cuda") * torch.rand(shape[-1], device="cuda")
    w[0, : min(shape[1], 64)] = 0  # an all-zero block
    q = quantize_weight(w.to(dtype), double_quant=double_quant)
    ref = _reference(q, dtype)
    out = dequantize_nf4_triton(
        q.packed, q.absmax, q.quant_map, q.shape, q.blocksize, dtype,
        q.nested_absmax, q.nested_quant_map,
        None if q.nested_offset is None else torch.tensor(q.nested_offset, device="cuda"),
        q.nested_blocksize,
    )  # fmt: skip
    assert out.dtype == dtype and out.shape == shape
    assert torch.equal(out, ref)
    # The same quantizer on the GPU gives the CPU's 4-bit codes (the absmax mean, a reduction, may differ in
    # its last bit between devices, as bitsandbytes' own does).
    q_cpu = quantize_weight(w.to(dtype).cpu(), double_quant=double_quant)
    assert torch.equal(q.packed.cpu(), q_cpu.packed)


def test_linear4bit_cuda_forward_backward():
    torch.manual_seed(1)
    lin = nn.Linear(320, 129, bias=True).to(torch.bfloat16)
    q_cpu = Linear4bit.from_linear(lin)
    q = Linear4bit.from_linear(lin).cuda()
    x = torch.randn(4, 7, 320, dtype=torch.bfloat16)
    xg = x.cuda().requires_grad_()
    y = q(xg)
    y.float().square().sum().backward()
    assert torch.equal(q.dequantize().cpu(), q_cpu.dequantize())
    w = q_cpu.dequantize().cuda()
    x2 = x.cuda().requires_grad_()
    y2 = torch.nn.functional.linear(x2, w, q.bias)
    y2.float().square().sum().backward()
    assert torch.equal(y, y2) and torch.equal(xg.grad, x2.grad)


def test_bitsandbytes_cuda_bit_for_bit():
    try:
        import bitsandbytes.functional as F  # noqa: N812

        F.quantize_4bit(torch.ones(64, device="cuda"), quant_type="nf4")
    except Exception as e:
        pytest.skip(f"bitsandbytes with CUDA is not available here: {e!r}")
    torch.manual_seed(2)
    for shape in SHAPES:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            w = (torch.randn(shape, device="cuda") * 0.02).to(dtype)
            packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
            q = quantize_weight(w)
            _assert_codes_equal_but_for_ties(w, q, packed, shape, dtype)
            assert torch.equal(q.absmax, state.absmax), (shape, dtype)
            assert torch.equal(q.nested_absmax, state.state2.absmax)
            assert q.nested_offset == state.offset.item()
            # Dequantizing bnb's tensors: the PyTorch reference and the Triton kernel both give bnb's values.
            theirs = nf4_weight_from_bnb({"weight": packed, **state.as_dict(packed=True)})
            want = F.dequantize_4bit(packed, state)
            assert torch.equal(theirs.dequantize(), want), (shape, dtype)
            assert torch.equal(Linear4bit.from_nf4(theirs).dequantize(dtype), want), (shape, dtype)


def _assert_codes_equal_but_for_ties(w, q, packed, shape, dtype):
    """bitsandbytes' kernel scales by `1.0f / absmax` built with fast math (an approximate reciprocal), so a
    value whose scaled float32 lands within an ulp or two of a decision threshold may round either way;
    every other 4-bit code must be equal. (Seen: 4 of 10M float32 values, none in bf16/fp16.)"""
    from tuna_engine.quant.nf4 import NF4_THRESHOLDS

    def nibbles(p):
        p = p.flatten()
        return torch.stack([p >> 4, p & 15], 1).flatten()

    n = w.numel()
    differ = (nibbles(packed)[:n] != nibbles(q.packed)[:n]).nonzero().flatten()
    blocks = w.reshape(-1).float()
    true_absmax = torch.nn.functional.pad(blocks.abs(), (0, -n % 64)).view(-1, 64).amax(1)
    scaled = blocks[differ] * (1.0 / true_absmax[differ // 64])
    th = torch.tensor(NF4_THRESHOLDS, device=w.device)
    dist = (scaled[:, None] - th[None]).abs().min(1).values
    assert torch.all(dist <= 2 * torch.finfo(torch.float32).eps), (shape, dtype, differ[:5], dist[:5])
    assert len(differ) <= max(2, n // 1_000_000), (shape, dtype, len(differ))
