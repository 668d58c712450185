"""Skinny GEMM for decode steps (issue 7): y = a·Wᵀ for a with M ≤ 64 rows (one per batch row) and W [N, K]
16-bit row-major, the four projections of a decoder layer. cuBLAS takes 5–6 µs for each of the 0.6B shapes at
M = 16, though reading the weights takes 0.9–2.6 µs: at this M a GEMM is a weight read, and what matters is
how many SMs read at once and how many kernels a layer launches.

    skinny_linear(x [..., K], w [N, K], residual [..., N] | None)        → x·Wᵀ (+ residual)
    skinny_silu_linear(gu [..., 2I], w [N, I])                          → (silu(gu[:I])·gu[I:])·Wᵀ
    skinny_norm_linear(x [..., K], norm_w [K], eps, w [N, K])            → (norm_w·rms_norm(x))·Wᵀ
    skinny_add_norm_linear(x, d, norm_w, eps, w)                         → ((norm_w·rms_norm(x + d))·Wᵀ, x + d)

What is notable:
  - One program per (BLOCK_N columns, K split): it reads its [BLOCK_N, K/SPLIT_K] slab of W once and all M rows of
    the input (tiny, from L2); the M rows, padded to 16, are the M side of a tl.dot. fp32 accumulation, one
    rounding to the output dtype. N = 1024 at BLOCK_N = 16 is 64 programs, half an H200: SPLIT_K cuts K so that
    there are about two programs per SM.
  - Split-K in one kernel, deterministic: each split stores its fp32 partial [M, BLOCK_N] to a workspace and bumps
    the tile's counter (an acq_rel atomic); the split that arrives last sums the partials in split order 0..S-1
    (so the result does not depend on arrival order: a CUDA graph replay equals an eager call bit for bit), writes
    the output and puts the counter back to 0 for the next call. The counters live in one zeroed buffer per
    device, allocated once (never inside a graph capture's memory).
  - Prologues (the input is computed while it is loaded, so the kernel that produced it is gone):
    SiLU(gate)·up for the down projection reads the [M, 2I] gate/up output directly, rounded as eager does
    (silu to the dtype, then the product to the dtype); RMSNorm first sums x² over the whole row (each program
    reads the whole row: M·K elements from L2), optionally of x + d (the previous layer's MLP output; program 0 of
    each row block writes x + d out, the residual stream), then scales each tile as models/llama.py's norm:
    (x·rstd) rounded, times the weight, rounded.
  - Epilogue: + residual, rounded as eager x + linear(...) is (the product rounded, then the sum).
  - Fixed configs (no autotuning at run time: `tuna chat` start-up matters): CONFIGS for measured shapes, else
    `heuristic_config`. bench/generate/skinny.py times configs against cuBLAS on the card.
  - Devices: CUDA runs the Triton kernel; other devices run the torch reference (F.linear and eager ops), which
    is also what the interpreted kernel is tested against on CPU (TRITON_INTERPRET=1, under which the ops run the
    kernel on CPU tensors too: the CPU tests decode through it).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference path needs no Triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

MAX_M = 64  # rows the kernel takes (the M side of one tl.dot); larger batches keep cuBLAS

# prologue kinds
PLAIN, SILU_MUL, NORM = 0, 1, 2


class Config(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 4


# (N, K) → config, for M ≤ 16 on an H200 (132 SMs). Qwen3-0.6B: qkv (4096, 1024), o (1024, 2048), gate_up
# (6144, 1024), down (1024, 3072); Qwen3-8B: qkv (6144, 4096), o (4096, 4096), gate_up (24576, 4096), down
# (4096, 12288). Not yet measured: these are heuristic_config's choices written out, to be replaced by the
# fastest rows of bench/generate/skinny.py.
CONFIGS: dict[tuple[int, int], Config] = {}


def heuristic_config(n: int, k: int, sms: int = 132) -> Config:
    """About two programs per SM: the widest column block that still gives ≥ sms programs, then split K (keeping
    ≥ 512 of K per split) while there are fewer than 2·sms."""
    block_n = 16
    for bn in (64, 32):
        if n // bn >= sms:
            block_n = bn
            break
    block_k = 128 if k >= 128 else max(16, triton_next_pow2(k))
    tiles = -(-n // block_n)
    split = 1
    while tiles * split < 2 * sms and k // (split * 2) >= 512 and split < 16:
        split *= 2
    return Config(block_n, block_k, split)


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def config_for(n: int, k: int, device: torch.device) -> Config:
    env = os.environ.get(
        "TUNA_SKINNY_CONFIG"
    )  # "block_n,block_k,split_k,num_warps,num_stages": for sweeps only
    if env:
        return Config(*(int(v) for v in env.split(",")))
    if (n, k) in CONFIGS:
        return CONFIGS[(n, k)]
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    return heuristic_config(n, k, sms)


# ---- references (every device but CUDA; what the kernel is tested against) --------------------------------------


def _norm_ref(s: torch.Tensor, norm_w: torch.Tensor, eps: float) -> torch.Tensor:
    """models/llama.py's RMSNorm on a 16-bit input: fp32 math, rounded, times the weight (decode._fnorm)."""
    return norm_w * F.rms_norm(s.float(), (s.shape[-1],), eps=eps).to(s.dtype)


def reference(
    x: torch.Tensor,
    w: torch.Tensor,
    prologue: int = PLAIN,
    residual: torch.Tensor | None = None,
    d: torch.Tensor | None = None,
    norm_w: torch.Tensor | None = None,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The eager ops a kernel call replaces → (output, x + d or None)."""
    s = None
    if prologue == SILU_MUL:
        inter = x.shape[-1] // 2
        a = F.silu(x[..., :inter]) * x[..., inter:]
    elif prologue == NORM:
        assert norm_w is not None
        if d is not None:
            s = x + d
        a = _norm_ref(x if s is None else s, norm_w, eps)
    else:
        a = x
    y = F.linear(a, w)
    if residual is not None:
        y = residual + y
    return y, s


# ---- the kernel ----------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _skinny_kernel(
        X,  # [M, K] (PLAIN, NORM) or [M, 2K] (SILU_MUL: gate columns 0..K-1, up columns K..2K-1)
        D,  # [M, K] added to X before the norm (HAS_D)
        NW,  # [K] norm weight (NORM)
        R,  # [M, N] residual added to the output (HAS_R)
        W,  # [N, K]
        OUT,  # [M, N]
        S_OUT,  # [M, K]: X + D written out (HAS_D)
        WS,  # [SPLIT_K, M_PAD, N] fp32 partials (SPLIT_K > 1)
        CNT,  # [tiles] int32 arrival counters, 0 between calls (SPLIT_K > 1)
        M,
        N,
        K,
        sx_m,
        sd_m,
        sr_m,
        sw_n,
        so_m,
        ss_m,
        eps,
        M_PAD: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr,
        PROLOGUE: tl.constexpr,
        HAS_D: tl.constexpr,
        HAS_R: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        m = tl.arange(0, M_PAD)
        m_ok = m < M
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        kk = tl.arange(0, BLOCK_K)
        dt = W.dtype.element_ty

        if (
            PROLOGUE == 2
        ):  # the row's rstd over all of K (every program reads the whole row), x + d written once
            sq = tl.zeros([M_PAD], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                k = k0 + kk
                mk = m_ok[:, None] & (k < K)[None, :]
                s = tl.load(X + m[:, None] * sx_m + k[None, :], mask=mk, other=0.0)
                if HAS_D:
                    s = (
                        s.to(tl.float32)
                        + tl.load(D + m[:, None] * sd_m + k[None, :], mask=mk, other=0.0).to(tl.float32)
                    ).to(dt)
                    tl.store(
                        S_OUT + m[:, None] * ss_m + k[None, :],
                        s,
                        mask=mk & ((m * 0 + pid_n + split) == 0)[:, None],
                    )
                sf = s.to(tl.float32)
                sq += tl.sum(sf * sf, 1)
            rstd = tl.rsqrt(sq / K + eps)

        chunk = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
        k_lo = split * chunk
        k_hi = tl.minimum(k_lo + chunk, K)
        acc = tl.zeros([M_PAD, BLOCK_N], dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            k = k0 + kk
            k_ok = k < k_hi
            mk = m_ok[:, None] & k_ok[None, :]
            if PROLOGUE == 1:
                g = tl.load(X + m[:, None] * sx_m + k[None, :], mask=mk, other=0.0).to(tl.float32)
                u = tl.load(X + m[:, None] * sx_m + K + k[None, :], mask=mk, other=0.0)
                a = (g / (1.0 + tl.exp(-g))).to(dt)  # F.silu, rounded
                a = (a.to(tl.float32) * u.to(tl.float32)).to(dt)  # · up, rounded
            elif PROLOGUE == 2:
                s = tl.load(X + m[:, None] * sx_m + k[None, :], mask=mk, other=0.0)
                if HAS_D:
                    s = (
                        s.to(tl.float32)
                        + tl.load(D + m[:, None] * sd_m + k[None, :], mask=mk, other=0.0).to(tl.float32)
                    ).to(dt)
                nw = tl.load(NW + k, mask=k_ok, other=0.0)
                h = (s.to(tl.float32) * rstd[:, None]).to(dt)
                a = (nw.to(tl.float32)[None, :] * h.to(tl.float32)).to(dt)
            else:
                a = tl.load(X + m[:, None] * sx_m + k[None, :], mask=mk, other=0.0)
            b = tl.load(
                W + n.to(tl.int64)[:, None] * sw_n + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0
            )
            if UPCAST:  # the interpreter's tl.dot mishandles bf16; bf16 products are exact in fp32
                a, b = a.to(tl.float32), b.to(tl.float32)
            if IEEE:
                acc += tl.dot(a, tl.trans(b), input_precision="ieee")
            else:
                acc += tl.dot(a, tl.trans(b))

        mn = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K > 1:
            ws_tile = WS + m[:, None] * N + n[None, :]
            tl.store(ws_tile + split * (M_PAD * N), acc, mask=mn)
            tl.debug_barrier()  # every thread's partial stored before the one atomic releases them
            arrived = tl.atomic_add(CNT + pid_n, 1, sem="acq_rel")
            if arrived == SPLIT_K - 1:  # the last split: every partial is visible (acquire)
                acc = tl.zeros([M_PAD, BLOCK_N], dtype=tl.float32)
                for s_i in range(SPLIT_K):
                    acc += tl.load(ws_tile + s_i * (M_PAD * N), mask=mn, other=0.0, cache_modifier=".cg")
                y = acc.to(dt)
                if HAS_R:
                    r = tl.load(R + m[:, None] * sr_m + n[None, :], mask=mn, other=0.0)
                    y = (y.to(tl.float32) + r.to(tl.float32)).to(dt)
                tl.store(OUT + m[:, None] * so_m + n[None, :], y, mask=mn)
                tl.atomic_xchg(CNT + pid_n, 0)
        else:
            y = acc.to(dt)
            if HAS_R:
                r = tl.load(R + m[:, None] * sr_m + n[None, :], mask=mn, other=0.0)
                y = (y.to(tl.float32) + r.to(tl.float32)).to(dt)
            tl.store(OUT + m[:, None] * so_m + n[None, :], y, mask=mn)


_COUNTERS: dict[torch.device, torch.Tensor] = {}
_COUNTER_SLOTS = 1 << 16  # tiles of one call at most (N / BLOCK_N); zero between calls


def _counters(device: torch.device, tiles: int) -> torch.Tensor:
    """The per-device arrival counters, zeroed once. Allocated on the first call; a call inside a CUDA graph
    capture must come after an eager call (the graph warm-ups are)."""
    if tiles > _COUNTER_SLOTS:
        raise ValueError(f"skinny GEMM: {tiles} column tiles, more than the {_COUNTER_SLOTS} counters")
    c = _COUNTERS.get(device)
    if c is None:
        c = torch.zeros(_COUNTER_SLOTS, dtype=torch.int32, device=device)
        _COUNTERS[device] = c
    return c


def skinny_triton(
    x: torch.Tensor,
    w: torch.Tensor,
    prologue: int = PLAIN,
    residual: torch.Tensor | None = None,
    d: torch.Tensor | None = None,
    norm_w: torch.Tensor | None = None,
    eps: float = 0.0,
    config: Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Triton kernel (CUDA, or any device under TRITON_INTERPRET=1), arguments as `reference`'s; x's leading
    dims flatten to M ≤ MAX_M rows. Returns (output [..., N], x + d or None)."""
    if triton is None:
        raise RuntimeError("skinny_triton needs the triton package")
    N, K = w.shape
    lead = x.shape[:-1]
    kx = x.shape[-1] // 2 if prologue == SILU_MUL else x.shape[-1]
    if kx != K:
        raise ValueError(f"skinny GEMM: input has {x.shape[-1]} columns, weight [{N}, {K}] expects {K}")
    x2 = x.reshape(-1, x.shape[-1])
    M = x2.shape[0]
    if M > MAX_M:
        raise ValueError(f"skinny GEMM: {M} rows, at most {MAX_M}")
    if x2.stride(-1) != 1 or w.stride(-1) != 1:
        x2, w = x2.contiguous(), w.contiguous()
    cfg = config or config_for(N, K, x.device)
    m_pad = max(16, triton_next_pow2(M))
    out = torch.empty(M, N, dtype=w.dtype, device=x.device)
    r2 = residual.reshape(M, N) if residual is not None else out
    d2 = d.reshape(M, K) if d is not None else x2
    s_out = torch.empty(M, K, dtype=x.dtype, device=x.device) if d is not None else x2
    tiles = -(-N // cfg.block_n)
    split = max(1, min(cfg.split_k, -(-K // cfg.block_k)))
    if split > 1:
        ws = torch.empty(split, m_pad, N, dtype=torch.float32, device=x.device)
        cnt = _counters(x.device, tiles)
    else:
        ws, cnt = out, out
    _skinny_kernel[(tiles, split)](
        x2, d2, norm_w if norm_w is not None else w, r2, w, out, s_out, ws, cnt,
        M, N, K, x2.stride(0), d2.stride(0), r2.stride(0), w.stride(0), out.stride(0), s_out.stride(0), eps,
        M_PAD=m_pad, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split, PROLOGUE=prologue,
        HAS_D=d is not None, HAS_R=residual is not None, IEEE=w.dtype == torch.float32,
        UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out.view(*lead, N), (s_out.view(*lead, K) if d is not None else None)


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the kernel takes this call: a 2-D weight and at most MAX_M rows (static shapes: decided once per
    compiled graph). Which implementation runs is the op's choice (`_triton_here`)."""
    return w.dim() == 2 and w.is_floating_point() and x.numel() // x.shape[-1] <= MAX_M


def _triton_here(x: torch.Tensor) -> bool:
    """CUDA tensors run the kernel; CPU ones too under TRITON_INTERPRET=1 (the CPU tests); else the reference."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def _run(x, w, prologue=PLAIN, residual=None, d=None, norm_w=None, eps=0.0):  # noqa: ANN001, ANN202
    if _triton_here(x) and usable(x, w):
        return skinny_triton(x, w, prologue, residual, d, norm_w, eps)
    return reference(x, w, prologue, residual, d, norm_w, eps)


# ---- the ops (what torch.compile sees inside the decode layer graph) ---------------------------------------------


@torch.library.custom_op("tuna::skinny_linear", mutates_args=())
def skinny_linear(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] · w [N, K]ᵀ (+ residual [..., N]) → [..., N] in w's dtype."""
    return _run(x, w, PLAIN, residual)[0]


@skinny_linear.register_fake
def _(x, w, residual=None):  # noqa: ANN001, ANN202
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=w.dtype)


@torch.library.custom_op("tuna::skinny_silu_linear", mutates_args=())
def skinny_silu_linear(gu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """gu [..., 2I] (gate then up) → (silu(gate)·up) · w [N, I]ᵀ → [..., N]."""
    return _run(gu, w, SILU_MUL)[0]


@skinny_silu_linear.register_fake
def _(gu, w):  # noqa: ANN001, ANN202
    return gu.new_empty((*gu.shape[:-1], w.shape[0]), dtype=w.dtype)


@torch.library.custom_op("tuna::skinny_norm_linear", mutates_args=())
def skinny_norm_linear(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor) -> torch.Tensor:
    """(norm_w · rms_norm(x)) · w [N, K]ᵀ → [..., N]."""
    return _run(x, w, NORM, None, None, norm_w, eps)[0]


@skinny_norm_linear.register_fake
def _(x, norm_w, eps, w):  # noqa: ANN001, ANN202
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=w.dtype)


@torch.library.custom_op("tuna::skinny_add_norm_linear", mutates_args=())
def skinny_add_norm_linear(
    x: torch.Tensor, d: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """((norm_w · rms_norm(x + d)) · w [N, K]ᵀ, x + d)."""
    y, s = _run(x, w, NORM, None, d, norm_w, eps)
    assert s is not None
    return y, s


@skinny_add_norm_linear.register_fake
def _(x, d, norm_w, eps, w):  # noqa: ANN001, ANN202
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=w.dtype), torch.empty_like(x)
