"""NF4 dequantization on CUDA in Triton; `nf4.dequantize_nf4` + `nf4.decode_absmax` are its reference.

One program writes BLOCK consecutive output values. Output index i reads byte i // 2 of the packed codes (high
nibble for even i, low for odd), the NF4 level of that nibble, and the absmax of 64-block i // blocksize,
which with double quantization is itself decoded as nested_code[absmax[b]] * nested_absmax[b // 256] +
offset. Everything is float32 until the final cast, in the reference's order of operations, and
multiply-add fusion is off, so the result is bit-identical to the PyTorch reference (tests/gpu).
The op is memory-bound: 0.5 byte in and 2 bytes out per value, plus 1/64 byte of absmax.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _dequant_nf4_kernel(
    packed_ptr,
    absmax_ptr,
    code_ptr,
    nested_absmax_ptr,
    nested_code_ptr,
    offset_ptr,
    out_ptr,
    n,
    BLOCKSIZE: tl.constexpr,
    NESTED_BLOCKSIZE: tl.constexpr,
    DOUBLE_QUANT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    byte = tl.load(packed_ptr + idx // 2, mask=mask, other=0).to(tl.int32)
    nibble = tl.where(idx % 2 == 0, byte >> 4, byte & 0xF)
    level = tl.load(code_ptr + nibble, mask=mask, other=0.0)
    block = idx // BLOCKSIZE
    if DOUBLE_QUANT:
        q = tl.load(absmax_ptr + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(nested_code_ptr + q, mask=mask, other=0.0) * tl.load(
            nested_absmax_ptr + block // NESTED_BLOCKSIZE, mask=mask, other=0.0
        )
        scale = scale + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    tl.store(out_ptr + idx, (level * scale).to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_nf4_triton(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    quant_map: torch.Tensor,
    shape: tuple[int, ...],
    blocksize: int,
    dtype: torch.dtype,
    nested_absmax: torch.Tensor | None = None,
    nested_quant_map: torch.Tensor | None = None,
    nested_offset: torch.Tensor | None = None,
    nested_blocksize: int = 256,
) -> torch.Tensor:
    """Same contract as `decode_absmax` + `dequantize_nf4`; all tensors on one CUDA device."""
    n = math.prod(shape)
    out = torch.empty(shape, dtype=dtype, device=packed.device)
    if n == 0:
        return out
    double = nested_absmax is not None
    if double and (nested_quant_map is None or nested_offset is None):
        raise ValueError("double quantization needs nested_quant_map and nested_offset")
    dummy = quant_map  # any float32 tensor stands in for the unused pointers
    grid = (triton.cdiv(n, _BLOCK),)
    _dequant_nf4_kernel[grid](
        packed.contiguous(),
        absmax.contiguous(),
        quant_map.float().contiguous(),
        nested_absmax.contiguous() if double else dummy,
        nested_quant_map.float().contiguous() if double else dummy,  # type: ignore[union-attr]
        nested_offset.float().reshape(1) if double else dummy,  # type: ignore[union-attr]
        out,
        n,
        BLOCKSIZE=blocksize,
        NESTED_BLOCKSIZE=nested_blocksize,
        DOUBLE_QUANT=double,
        BLOCK=_BLOCK,
        enable_fp_fusion=False,  # keep code*absmax + offset as two roundings, like the reference
    )
    return out
