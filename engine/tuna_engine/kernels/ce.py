"""Cross-entropy over one chunk of logits in one Triton kernel: the body of loss.py's chunk loop on GPU (issue 5).

    loss_rows = ce_chunk_triton(z [n, V] (overwritten with w·∂CE/∂z when grad), targets [n] long, weight [n] fp32,
                                scale, softcap, grad)

The eager loop body reads and writes each chunk's [n, V] logits about ten times (cast to fp32, max, sub, exp, sum,
mul, scatter, cast back: ~6 GB of traffic for an 883 × 151,936 chunk). This kernel reads the logits twice and writes
them once, in their own dtype (bf16 on GPU: 0.8 GB for the same chunk), one program per row:

  - Sweep 1: x = z·scale (then, with a softcap c, c·tanh(x/c)) in fp32; every lane keeps a running max m and a
    running Σexp(x − m) (one exp per element: when x > m the sum is rescaled by exp(m − x) instead), combined at
    the end into lse = M + log Σ_lanes s·exp(m − M). loss[row] = w·(lse − x[target]).
  - Sweep 2 (grad): g = w·(exp(x − lse) − onehot(target))·∂x/∂z, with ∂x/∂z = scale·(1 − tanh²) under a softcap,
    written over z in z's dtype: the dtype the grad GEMMs run in, as the eager path's `g.to(hidden.dtype)` gives.

Numerics: the logits arrive as the GEMM wrote them (rounded to the model dtype, as the eager path's `.float()` of the
same tensor sees them); everything after that is fp32, lse included; the gradient is rounded once, at the store.
The kernel's exp/log/tanh are fp32 but not the same instructions as PyTorch's, so it equals the eager path to fp32
rounding, not bit for bit. A target outside [0, V) reads as NaN (the loss goes NaN, train.py's NAN_LOSS names it)
instead of reading another row's memory; loss.py maps negative targets (ignore_index) to weight 0 before this.

Devices: CUDA runs it compiled; `ce_chunk_triton` also runs on CPU tensors under TRITON_INTERPRET=1 (the CPU tests
do that). `ce_chunk_reference` is the eager body (loss.py's fallback and A/B baseline) with the same signature.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: loss.py then runs the eager body
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

# Columns per inner step and warps per row: 4096 bf16 columns are 16 per thread of 8 warps, 37 steps per row of
# Qwen3's 151,936-token vocabulary.
BLOCK_V = 4096
NUM_WARPS = 8


def available() -> bool:
    return triton is not None


def ce_chunk_reference(
    z: torch.Tensor,  # [n, V] logits in the model dtype (consumed: its buffer is reused)
    targets: torch.Tensor,  # [n] long, in [0, V)
    weight: torch.Tensor,  # [n] fp32
    scale: float,
    softcap: float | None,
    grad: bool,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The eager loop body: (per-row w·CE [n] fp32, w·∂CE/∂z [n, V] in out_dtype or None)."""
    rows = torch.arange(z.shape[0], device=z.device)
    z = z.float()
    if scale != 1.0:
        z = z * scale
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(z / softcap)
        z = softcap * tanh
    # One exp pass serves both the loss and its gradient: e = exp(z − max) in z's buffer, lse = max + log Σe,
    # softmax = e / Σe.
    picked = z[rows, targets]  # [n]
    zmax = z.amax(dim=-1)  # [n]
    e = z.sub_(zmax[:, None]).exp_()
    sum_e = e.sum(dim=-1)
    loss = (zmax + sum_e.log() - picked) * weight
    if not grad:
        return loss, None
    # ∂(w·CE)/∂z = w·(softmax(z) − onehot), in place.
    g = e.mul_((weight / sum_e)[:, None])
    g[rows, targets] -= weight
    if tanh is not None:
        g.mul_(1.0 - tanh * tanh)
    if scale != 1.0:
        g.mul_(scale)
    return loss, g.to(out_dtype)


if triton is not None:

    @triton.jit
    def _tanh(x):
        # tanh from exp (the interpreter has no libdevice): 1 − 2/(e^{2x} + 1) is ±1 at ±inf, absolute error ~1e-7.
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)

    @triton.jit
    def _bf16_rtne(x):
        # fp32 → bf16 rounded to nearest even (what torch's `.to(torch.bfloat16)` does) with integer ops: Triton's
        # interpreter truncates in its own fp32→bf16 cast, so the tested code and the GPU code are this same one.
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _ce_chunk_kernel(
        Z,  # [n, V] logits in, w·∂CE/∂z out (GRAD), unit column stride
        stride_z,
        TGT,  # [n] int64
        W,  # [n] fp32
        LOSS,  # [n] fp32 out: w·CE
        V,
        scale,
        softcap,
        HAS_SCALE: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        z_row = Z + row * stride_z
        w = tl.load(W + row)
        tgt = tl.load(TGT + row)
        offs = tl.arange(0, BLOCK)

        # Sweep 1: per-lane running max and Σexp. m starts finite so that a lane that only ever sees masked
        # columns (−inf) keeps s = 0 without an inf − inf.
        m = tl.full([BLOCK], -3.0e38, tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + offs
            x = tl.load(z_row + cols, mask=cols < V, other=0.0).to(tl.float32)
            if HAS_SCALE:
                x = x * scale
            if HAS_SOFTCAP:
                x = softcap * _tanh(x / softcap)
            x = tl.where(cols < V, x, -float("inf"))
            bigger = x > m
            e = tl.exp(tl.where(bigger, m - x, x - m))
            s = tl.where(bigger, s * e + 1.0, s + e)
            m = tl.maximum(m, x)
        m_all = tl.max(m, 0)
        lse = m_all + tl.log(tl.sum(s * tl.exp(m - m_all), 0))

        ok = (tgt >= 0) & (tgt < V)
        xt = tl.load(z_row + tgt, mask=ok, other=float("nan")).to(tl.float32)
        if HAS_SCALE:
            xt = xt * scale
        if HAS_SOFTCAP:
            xt = softcap * _tanh(xt / softcap)
        tl.store(LOSS + row, w * (lse - xt))

        if GRAD:
            for start in range(0, V, BLOCK):
                cols = start + offs
                mask = cols < V
                x = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
                if HAS_SCALE:
                    x = x * scale
                if HAS_SOFTCAP:
                    t = _tanh(x / softcap)
                    x = softcap * t
                g = w * (tl.exp(x - lse) - tl.where(cols == tgt, 1.0, 0.0))
                if HAS_SOFTCAP:
                    g = g * (1.0 - t * t)
                if HAS_SCALE:
                    g = g * scale
                if Z.dtype.element_ty == tl.bfloat16:
                    tl.store(z_row + cols, _bf16_rtne(g), mask=mask)
                else:
                    tl.store(z_row + cols, g.to(Z.dtype.element_ty), mask=mask)


def ce_chunk_triton(
    z: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    scale: float,
    softcap: float | None,
    grad: bool,
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel: (per-row w·CE [n] fp32, z itself holding w·∂CE/∂z in z's dtype, or None). z [n, V] must have
    unit column stride; it is overwritten when grad. block/num_warps: BLOCK_V/NUM_WARPS unless given (a power of
    two; the tests set BLOCK_V to run loss.py at small blocks)."""
    if triton is None:
        raise RuntimeError(
            "ce_chunk_triton needs triton (pip install triton); loss.py falls back to the eager body"
        )
    n, V = z.shape
    if z.stride(1) != 1:
        raise ValueError(f"ce_chunk_triton: logits need unit column stride, got strides {tuple(z.stride())}")
    loss = torch.empty(n, dtype=torch.float32, device=z.device)
    if n == 0:
        return loss, (z if grad else None)
    _ce_chunk_kernel[(n,)](
        z,
        z.stride(0),
        targets.contiguous(),
        weight.contiguous(),
        loss,
        V,
        float(scale),
        float(softcap) if softcap is not None else 1.0,
        HAS_SCALE=scale != 1.0,
        HAS_SOFTCAP=softcap is not None,
        GRAD=grad,
        BLOCK=block or BLOCK_V,
        num_warps=num_warps or NUM_WARPS,
    )
    return loss, (z if grad else None)


def _bench() -> None:
    """`PYTHONPATH=engine python -m tuna_engine.kernels.ce` on a GPU: one 883-row chunk of Qwen3's bf16 logits
    (loss.py's chunk on CUDA), the eager body against the kernel, with the kernel's achieved bandwidth
    (2 reads + 1 write of the chunk) against the card's."""
    dev = torch.device("cuda")
    n, V = 883, 151936
    z0 = torch.randn(n, V, device=dev).bfloat16()
    t = torch.randint(0, V, (n,), device=dev)
    w = torch.rand(n, device=dev)
    z = z0.clone()

    def timed(fn, reps: int = 20) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ms = 0.0
        for _ in range(reps):
            z.copy_(z0)  # the kernel overwrites its input; untimed
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms += start.elapsed_time(end)
        return ms / reps

    eager = timed(lambda: ce_chunk_reference(z, t, w, 1.0, None, True, torch.bfloat16))
    fused = timed(lambda: ce_chunk_triton(z, t, w, 1.0, None, True))
    fwd = timed(lambda: ce_chunk_triton(z, t, w, 1.0, None, False))
    gb = 3 * z.numel() * z.element_size() / 1e9
    print(
        f"chunk [{n}, {V}] bf16: eager {eager:.3f} ms, kernel {fused:.3f} ms ({eager / fused:.1f}x, "
        f"{gb / fused * 1e3:.0f} GB/s), loss only {fwd:.3f} ms; {torch.cuda.get_device_name(dev)}"
    )


if __name__ == "__main__":
    _bench()
