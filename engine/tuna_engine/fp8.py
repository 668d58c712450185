"""FP8 GEMMs for the frozen base weights (`train.base_precision: "fp8"`): `Fp8Linear`, `can_use_fp8`.

The base of a LoRA layer never trains, so its weight is quantized once, at load, to float8_e4m3fn with one fp32
scale per output channel (W ≈ diag(s_w)·W_q), and every GEMM that reads it runs on FP8 tensor cores through
`torch._scaled_mm` (Hopper: ~2× the bf16 rate; the same op runs on CPU, which the tests use):

  forward (and the recomputed forward):  y = x Wᵀ + b
      x [N, K] is quantized per row (per token) to e4m3 on the fly, s_x [N, 1];
      y = _scaled_mm(x_q, W_qᵀ, s_x, s_wᵀ) in the activations' dtype (bf16 out; fp32 accumulation).
  activation gradient:                   dx = dy W = (dy·diag(s_w)) W_q
      the per-output-channel weight scale lies along the contraction dimension of this GEMM, so it cannot be an
      epilogue scale: it is folded into dy (one multiply, fused with dy's own quantization pass), then
      g = dy·diag(s_w) is quantized per row, s_g [N, 1], and dx = _scaled_mm(g_q, W_q, s_g, 1).
  no weight gradient: the base is frozen. Saved for backward: the FP8 weight (a parameter, no copy) and its
      scale; not x (the bf16 path's F.linear saves nothing more either; LoRA keeps its own x).

The GEMM wants mat1 row-major and mat2 column-major (cuBLASLt FP8 is "TN" only), so dx needs W_q in the other
orientation: W_q [out, in] row-major is transposed into a transient contiguous [in, out] copy inside backward
(1 byte per weight element of ONE projection at a time, freed right after: 48 MiB for Qwen3-8B's gate/up;
the whole model's weights, ~7 GB, are read and written once per backward pass: a few ms of HBM time per step). The alternatives, measured on CPU by `engine/tests/test_fp8.py` and in
docs/engine.md: a second, persistent transposed FP8 copy (+1 byte per weight: the base would take 2 bytes per
weight again, as bf16 does, giving up the memory half of the point); a per-tensor weight scale (one scale
serves both orientations but the transpose is still needed, and accuracy is worse on rows with outliers); or dx
in bf16 from a dequantized transient (no FP8 speed-up for a third of the base GEMMs under full recompute).

`_scaled_mm` on CUDA also needs K and N divisible by 16 (M is free). Projections of real models are (Qwen3:
1024/2048/3072/4096/12288...); other shapes (tiny test models) are zero-padded per call (`_pad_to`), which
leaves the product unchanged. `check_layout` asserts the CUDA layout rules on every device, so the CPU tests
exercise the same orientation the GPU runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_MAX = {E4M3: torch.finfo(E4M3).max, E5M2: torch.finfo(E5M2).max}  # 448, 57344
_EPS = 1e-12  # an all-zero row gets a tiny scale instead of a division by zero


def quantize_rows(
    x: torch.Tensor, dtype: torch.dtype = E4M3, col_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, K] (times `col_scale` [K] per column, if given) → (q [N, K] fp8, s [N, 1] fp32) with x ≈ s·q: each
    row scaled so its largest |value| is the format's maximum (448 for e4m3). Computed in fp32 with ONE fp32
    temporary (eager; compiled, the passes fuse): for Qwen3-8B's [8192, 12288] gradients that is 400 MB, not
    three times that. The result is contiguous (row-major)."""
    xf = x.to(torch.float32, copy=True)
    if col_scale is not None:
        xf.mul_(col_scale)
    lo, hi = torch.aminmax(xf, dim=1, keepdim=True)
    scale = torch.maximum(hi, -lo).clamp_min_(_EPS).div_(FP8_MAX[dtype])
    q = xf.div_(scale).clamp_(-FP8_MAX[dtype], FP8_MAX[dtype]).to(dtype)
    return q, scale


def quantize_weight(w: torch.Tensor, dtype: torch.dtype = E4M3) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] → (W_q [out, in] fp8 row-major, s_w [out] fp32): one scale per output channel."""
    q, s = quantize_rows(w, dtype)
    return q, s.view(-1)


def check_layout(a: torch.Tensor, b: torch.Tensor) -> None:
    """The CUDA rules of `_scaled_mm(a, b)`, asserted on every device (CPU accepts more): a [M, K] row-major,
    b [K, N] column-major, K and N multiples of 16."""
    M, K = a.shape
    N = b.shape[1]
    if a.stride(1) != 1 or b.stride(0) != 1 or K % 16 or N % 16:
        raise AssertionError(
            f"_scaled_mm layout: a {list(a.shape)} strides {a.stride()}, b {list(b.shape)} strides "
            f"{b.stride()}: needs a row-major, b column-major, K and N multiples of 16"
        )


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad a 2-D tensor (fp8 included: padded as bytes, fp8 0x00 is 0.0) to [rows, cols]."""
    r, c = t.shape
    if (r, c) == (rows, cols):
        return t
    if t.dtype in (E4M3, E5M2):
        return F.pad(t.view(torch.uint8), (0, cols - c, 0, rows - r)).view(t.dtype)
    return F.pad(t, (0, cols - c, 0, rows - r))


def _up16(n: int) -> int:
    return -(-n // 16) * 16


def scaled_mm(
    a: torch.Tensor,
    scale_a: torch.Tensor,
    b: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    fast_accum: bool,
) -> torch.Tensor:
    """(diag(scale_a)·a) @ (b·diag(scale_b)): a [M, K] fp8 row-major, b [K, N] fp8 column-major, scale_a [M, 1],
    scale_b [1, N] fp32 → [M, N] in out_dtype. K or N not a multiple of 16: zero-padded (same product)."""
    M, K = a.shape
    N = b.shape[1]
    Kp, Np = _up16(K), _up16(N)
    if (Kp, Np) != (K, N):
        a = _pad_to(a, M, Kp)
        b = _pad_to(b.t(), Np, Kp).t()  # pad [N, K] row-major = [K, N] column-major
        scale_b = _pad_to(scale_b, 1, Np)
    check_layout(a, b)
    out = torch._scaled_mm(
        a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, use_fast_accum=fast_accum
    )
    return out if Np == N else out[:, :N]


class _Fp8LinearFn(torch.autograd.Function):
    """y = x Wᵀ + b with W = diag(s_w)·W_q (FP8); only x gets a gradient (module docstring has the math)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w_q: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor | None,
        grad_dtype: torch.dtype,
    ) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # [N, in]
        xq, xs = quantize_rows(x2, E4M3)
        # use_fast_accum in the forward only (torchao's recipe): Hopper's faster FP8 accumulation, promoted to
        # fp32 periodically; the gradient GEMM keeps full accumulation.
        y = scaled_mm(xq, xs, w_q.t(), w_scale.view(1, -1), x.dtype, fast_accum=True)  # [N, out]
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(w_q, w_scale)
        ctx.grad_dtype = grad_dtype
        return y.view(*x.shape[:-1], w_q.shape[0])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        w_q, w_scale = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # [N, out]
        # dx = dy·diag(s_w)·W_q: the weight scale runs along the contraction, so it goes into dy first.
        gq, gs = quantize_rows(dy2, ctx.grad_dtype, col_scale=w_scale)
        w_t = w_q.t().contiguous()  # [in, out] row-major: transient, the column-major [out, in] operand
        ones = torch.ones(1, w_q.shape[1], device=dy.device, dtype=torch.float32)
        dx = scaled_mm(gq, gs, w_t.t(), ones, dy.dtype, fast_accum=False)  # [N, in]
        return dx.view(*dy.shape[:-1], w_q.shape[1]), None, None, None, None


class Fp8Linear(nn.Module):
    """A frozen linear whose weight is FP8 (e4m3) with one fp32 scale per output channel.

    Shapes: x [..., in_features] → y [..., out_features] in x's dtype. State: `weight` float8_e4m3fn [out, in]
    (a frozen parameter: counted, moved by `.to`, never offloaded), `weight_scale` fp32 [out] (a buffer),
    `bias` (frozen, compute dtype, optional). `grad_dtype` is the FP8 format of the gradient operand of dx
    (e4m3 by default: measured as accurate as e5m2 here because dy is scaled per row; docs/engine.md).
    A LoRA `Linear` uses it as its `base_layer` exactly as it uses the NF4 one: `forward`, `dequantize`, `bias`.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        grad_dtype: torch.dtype = E4M3,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.grad_dtype = grad_dtype

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, grad_dtype: torch.dtype = E4M3
    ) -> Fp8Linear:
        """Quantize a 16/32-bit [out, in] weight (on its device)."""
        q, s = quantize_weight(weight.detach())
        return cls(q, s, None if bias is None else bias.detach().clone(), grad_dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The [out, in] weight the GEMMs use, s_w·W_q (DoRA's norm, merging); no grad."""
        w = self.weight.float() * self.weight_scale[:, None]
        return w.to(dtype or (self.bias.dtype if self.bias is not None else torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8LinearFn.apply(x, self.weight, self.weight_scale, self.bias, self.grad_dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fp8=e4m3, grad={self.grad_dtype}"


def fp8_unsupported_reason(device: torch.device) -> str | None:
    """None when this device runs `torch._scaled_mm` (rowwise scales, bf16 out); else why not, for the error."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 9):
            name = torch.cuda.get_device_name(device)
            return f"{name} (compute capability {cap[0]}.{cap[1]}) has no FP8 tensor cores (needs 8.9+: Ada, Hopper)"
    try:
        a = torch.zeros(16, 16, device=device, dtype=E4M3)
        one = torch.ones(16, 1, device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one.t(), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, AttributeError, TypeError) as e:
        return f"torch {torch.__version__} cannot run FP8 GEMMs on {device.type}: {str(e).splitlines()[0]}"
    return None


@torch.no_grad()
def convert_to_fp8(model: nn.Module, grad_dtype: torch.dtype = E4M3) -> int:
    """Give every LoRA-layer `Linear` with a 16-bit base an FP8 base (lora.Linear.to_fp8_base), one projection
    at a time (each 16-bit weight is freed as its FP8 copy is made). Returns how many were converted."""
    from .lora import Linear

    n = 0
    for m in model.modules():
        if isinstance(m, Linear) and m.base_layer is None:
            m.to_fp8_base(grad_dtype)
            n += 1
    return n
