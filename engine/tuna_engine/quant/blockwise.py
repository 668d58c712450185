"""Blockwise 8-bit quantization with bitsandbytes' dynamic code tables.

Used twice: QLoRA's double quantization of the NF4 absmax values (blocks of 256, signed map) and the 8-bit
AdamW optimizer states (signed map for exp_avg, unsigned for exp_avg_sq). The tables and the rounding follow
bitsandbytes (`functional.create_dynamic_map`, the `quantize_blockwise` kernels) so that a `*-bnb-4bit`
checkpoint's `nested_quant_map` equals `dynamic_map(signed=True)` and its absmax codes decode identically.

A flat tensor of n values is cut into ceil(n / blocksize) blocks, the last one possibly short; each block is
scaled by 1/absmax into [-1, 1] and each value replaced by the index of the nearest table entry.
"""

from __future__ import annotations

import torch


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The 2**total_bits-entry dynamic-exponent code table, sorted ascending, float32.

    Dettmers, "8-Bit Approximations for Parallelism in Deep Learning" (arXiv:1511.04561): for each decade
    10^-6 .. 10^0 a linear run of fraction values, more of them in the larger decades; plus 0 and 1.0.
    Products are taken in float32 like bitsandbytes, so the table matches its bytes exactly.
    """
    values: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        exp = i + non_sign_bits - max_exponent_bits
        fraction_items = 2**exp + 1 if signed else 2 ** (exp + 1) + 1
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        values += (scale * means).tolist()
        if signed:
            values += (-scale * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)
        values += (scale * means).tolist()
        if signed:
            values += (-scale * means).tolist()
    values += [0.0, 1.0]
    if len(values) != 2**total_bits:
        raise ValueError(f"dynamic map has {len(values)} entries, expected {2**total_bits}")
    values.sort()
    return torch.tensor(values, dtype=torch.float32)


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the nearest entry of a sorted 256-entry `code` for each value of x (float32).

    Written as bitsandbytes' CUDA `dQuantize<0>` does it: a 7-step binary search from index 127, then the
    nearer of the two bracketing entries by a float32 midpoint. That equals plain nearest-value rounding
    except, rarely, where a value sits on a midpoint; following the kernel keeps those cases identical too,
    so codes match checkpoints quantized on GPUs.
    """
    if code.numel() != 256:
        raise ValueError(f"code table must have 256 entries, got {code.numel()}")
    code = code.to(x.device, torch.float32)
    x = x.float()
    pivot = torch.full_like(x, 127, dtype=torch.int64)
    upper_pivot = torch.full_like(pivot, 255)
    lower_pivot = torch.zeros_like(pivot)
    lower = torch.full_like(x, -1.0)
    upper = torch.full_like(x, 1.0)
    val = code[pivot]
    step = 64
    while step > 0:
        gt = x > val
        lower_pivot = torch.where(gt, pivot, lower_pivot)
        lower = torch.where(gt, val, lower)
        upper_pivot = torch.where(gt, upper_pivot, pivot)
        upper = torch.where(gt, upper, val)
        pivot = pivot + torch.where(gt, step, -step)
        val = code[pivot]
        step >>= 1
    upper = torch.where(upper_pivot == 255, code[255], upper)
    lower = torch.where(lower_pivot == 0, code[0], lower)
    gt = x > val
    up = torch.where(x > (upper + val) * 0.5, upper_pivot, pivot)
    down = torch.where(x < (lower + val) * 0.5, lower_pivot, pivot)
    return torch.where(gt, up, down)


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (any shape, float) -> (codes uint8 of x's shape, absmax float32 [ceil(n / blocksize)])."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.nn.functional.pad(flat, (0, blocks * blocksize - n)).view(blocks, blocksize)
    absmax = padded.abs().amax(dim=1)
    # Multiply by the reciprocal like the CUDA kernel; an all-zero block gives NaN, which the kernel's
    # binary search (and `nearest_code`) sends to index 0. It decodes to 0 either way.
    scaled = (padded * (1.0 / absmax).unsqueeze(1)).clamp(-1, 1)
    q = nearest_code(scaled.view(-1)[:n], code).to(torch.uint8)
    return q.view(x.shape), absmax


def dequantize_blockwise(
    q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """Inverse of `quantize_blockwise`: code[q] * absmax[block], float32, q's shape."""
    flat = code.to(q.device)[q.reshape(-1).long()]
    n = flat.numel()
    blocks = absmax.numel()
    if blocks * blocksize < n:
        raise ValueError(f"{blocks} absmax values cover {blocks * blocksize} values, but there are {n}")
    padded = torch.nn.functional.pad(flat, (0, blocks * blocksize - n)).view(blocks, blocksize)
    return (padded * absmax.float().unsqueeze(1)).view(-1)[:n].view(q.shape)
