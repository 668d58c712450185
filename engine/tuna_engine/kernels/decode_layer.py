"""A whole decoder layer of a decode step in ONE kernel launch: a persistent Triton kernel (issue 7, prototype).

    x2, mlp_out = decode_layer_persistent(x, d, w, ck, cv, pos, cos_t, sin_t, perm, heads, eps, state)

The same inputs and outputs as decode.py's `_decode_layer` without adapters (sel all None, no bias, no
hand-written kernels): x and d [B, 1, C] (d, the previous layer's MLP output, is added here), w the layer's
weights as decode._LayerW (ln1, ln2, qk_norm [H+KV, D] | None, qkv/o/gate_up/down groups; only `.weight` of a
group is read), the caches [slots, KV, capacity, D] (row b is slot b, its k/v written at pos[b]), the cos/sin±
tables [capacity, D] and perm as decode.Decoder builds them, eps. Returns (x + d + attention, MLP output).

Why (issue 7): Qwen3-0.6B at batch 16 is ~12 kernels a layer, each 16-row GEMM latency-bound (5–6 µs for 1–2.6 µs of
weights) and ~1 µs of gap between kernels. Here one launch of P programs (P = the SM count: all co-resident) runs
five phases separated by grid-wide barriers, so no phase waits for a launch:
  A  h = ln1·rmsnorm(x + d) (each program recomputes the 16 rows' rstd: 16·C elements from L2), qkv = h·Wqkvᵀ
  B  per (row, KV head, key split): q/k norm, rotary, k/v written to the caches at pos[b], attention of the G query
     heads over keys 0..pos[b] (decode_attn.py's kernel: the G heads are the M side of a tl.dot)
  C  x2 = (x + d) + y·Woᵀ
  D  a = silu(gate)·up with [gate | up] = ln2·rmsnorm(x2)·Wguᵀ (a tile holds gate and up columns interleaved, so
     the SiLU·up product is its epilogue)
  E  out = a·Wdownᵀ
Every GEMM phase is a list of work items (column tile × K split) handed out by a grid-stride loop; the batch rows,
padded to 16, are the M side of tl.dot. Small-N phases split K so that every SM has work.

What is notable:
  - Split-K and key splits are deterministic without float atomics: each split stores its fp32 partial to a
    scratch buffer and bumps the tile's int32 arrival counter (acq_rel); the split that arrives last sums the
    partials in split order 0..S-1 (its result does not depend on arrival order: a CUDA-graph replay equals an
    eager call bit for bit, and one launch equals the phase-per-launch form), runs the phase's epilogue and puts
    the counter back to 0. No phase needs an extra barrier for its reduction.
  - Grid barrier: one int64 counter that only ever increases (never reset, so graph replays need no memset).
    Each program, after tl.debug_barrier() (its threads' stores issued), adds 1 with release semantics at GPU
    scope, then polls with acquire atomics until the count reaches the barrier's target. Targets are base + j·P,
    base = (count read at kernel start // (BARRIERS·P))·(BARRIERS·P): every launch adds exactly BARRIERS·P, and no
    program passes the first barrier before all have read the start count, so that read lies in
    [base, base + P − 1]. Data written by other programs in this launch is read with cache_modifier=".cg" (L2;
    L1 is not coherent across SMs). The poll is bounded (MAX_SPIN polls): a program that gives up sets the
    state's error flag and goes on, so a grid that is not co-resident returns wrong numbers and a set flag, never
    a hung GPU.
  - Triton's interpreter runs programs one after another, where a barrier cannot be passed: there (and on demand)
    the wrapper launches each phase as its own call (PHASE_LO = PHASE_HI = phase, no barriers); the phase code is
    the same in both forms. With one program the one-launch form runs under the interpreter too (its barriers pass
    trivially), which is how the CPU tests check the barrier arithmetic.
  - Rounding as eager `_decode_layer` does in 16-bit: x + d, the norms (x·rstd rounded, times the weight,
    rounded), each projection's output, q/k norm, q·cos and q[perm]·sin± and their sum, silu(gate), silu·up, each
    rounded to the dtype. Attention as decode_attn.py (probabilities rounded to the cache dtype for p·v).
  - fp32 runs IEEE dots (no TF32), for the tests.
  - Measured on an H200 (session 10, docs/benchmarks.md): correct, but no faster than the compiled layer — every
    phase is latency-bound (Qwen3-0.6B: 6.5–12 µs a phase for 1–4.5 µs of bytes, 1.6 µs a barrier). L2 prefetch
    hints for all of a layer's weights and K/V issued at the launch's start made it slower (the hints queue ahead
    of phase A's own loads) and were removed; `Config.prefetch` now hints only the NEXT phase's weights at each
    phase's start (B → C, C → D, D → E, and E → the next layer's qkv when `next_qkv` is given), an experiment not
    yet measured.
  - Where the sm_90 code (Triton 3.9: PTX, SASS) waits a memory latency more often than it must, and the Config
    options that change it (off by default, not measured yet; bench/generate/persistent.py --configs tries them):
    the rms statistic of phases A and D is a plain loop, two LDG.128 a thread per 16×block_k chunk, one round trip
    each (rstd_block, rstd_stages); a split tile's last arriver waits for its acq_rel counter reset before the
    epilogue's loads (relaxed_reset) and phase C's x + d loads follow the reduction (early_residual). The GEMM K
    loops are pipelined already: weights and activations (.cg included) are cp.async in the same stages.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

M_PAD = 16  # batch rows, padded: the M side of every tl.dot
PHASES = 5  # A qkv, B attention, C o, D gate/up, E down
BARRIERS = PHASES - 1  # grid barriers per launch: the barrier counter grows by BARRIERS·P per launch
MAX_TILES = 4096  # arrival counters per phase (column tiles, or (row, KV head) pairs for attention)
MAX_SPIN = (
    1 << 20
)  # barrier polls before a program gives up (two L2 atomics each: ~0.5–1 s; a real wait is µs)


class Config(NamedTuple):
    """Block sizes and splits. A GEMM phase's (block_n, split): column tile width and K splits (phase D's tile is
    block_n gate columns + block_n up columns). attn: (key split, keys per block)."""

    qkv: tuple[int, int]
    o: tuple[int, int]
    gate_up: tuple[int, int]
    down: tuple[int, int]
    attn: tuple[int, int]
    block_k: int = 128
    num_warps: int = 8  # 4 spills registers in the norm-prologue phases (A, D: 255 regs + stack, sm_90)
    num_stages: int = 4  # 3: 47.5 → 45.3 µs a 0.6B layer, 217 → 194 for 8B (H200, docs/benchmarks.md)
    prefetch: bool = False  # L2 hints one phase ahead: an experiment, not measured yet (module doc)
    # Latency experiments, not measured yet (each off by default: the defaults are what was measured).
    # The rms statistic (phases A, D) is a plain loop: sm_90 code waits one memory round trip per chunk (8 for
    # C = 1024 at block_k 128, 32 for 4096). rstd_block: its chunk width (0: block_k); rstd_stages > 0: a cp.async
    # pipeline (tl.range) with rstd_stages − 1 chunks in flight (0: the plain loop).
    rstd_block: int = 0
    rstd_stages: int = 0
    # phase C loads x + d (launch inputs) before its K loop, not after its split reduction
    early_residual: bool = False
    # split counters reset with a relaxed xchg: the last arriver's epilogue loads do not wait for it
    relaxed_reset: bool = False


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def gemm_split(n: int, k: int, programs: int, block_k: int, width: int = 1) -> tuple[int, int]:
    """(block_n, split) for an [n, k] weight over `programs` programs: the fewest rounds of the grid-stride loop
    times the slab an item reads plus a fixed cost per item (its first loads' latency, ~32 KB of weight at one
    SM's share of the bandwidth), ties to fewer splits, then to fewer items. `width`: weight rows per output
    column (2 for gate/up)."""
    per_item = 16384
    best: tuple[Any, ...] | None = None
    for bn in (16, 32, 64):
        tiles = _cdiv(n, bn)
        for split in (1, 2, 3, 4, 6, 8, 12, 16):
            if split > 1 and _cdiv(k, split) < block_k:
                break
            rounds = _cdiv(tiles * split, programs)
            cost = rounds * (width * bn * _cdiv(k, split) + per_item)
            key = (cost, split, tiles * split)
            if best is None or key < best[0]:
                best = (key, (bn, split))
    assert best is not None
    return best[1]


def default_config(rows: int, c: int, heads: tuple[int, int, int], inter: int, programs: int) -> Config:
    """A heuristic config for a layer of hidden size c, (H, KV, D) heads and intermediate size `inter`."""
    H, KV, D = heads
    block_k = 128 if c >= 128 else max(16, triton_next_pow2(c))
    attn_split = max(1, min(16, programs // max(1, rows * KV)))
    return Config(
        qkv=gemm_split((H + 2 * KV) * D, c, programs, block_k),
        o=gemm_split(c, H * D, programs, block_k),
        gate_up=gemm_split(inter, c, programs, block_k, width=2),
        down=gemm_split(c, inter, programs, block_k),
        attn=(attn_split, 32),
        block_k=block_k,
    )


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class PersistentState:
    """What the kernel keeps between calls on one device: the grid-barrier counter (only increases), the split
    arrival counters (0 between calls), and the error flag (set by a program whose barrier wait gave up; it
    stays set until `clear_error`). Create it outside CUDA-graph capture; every call with it uses `programs`
    programs (the barrier arithmetic assumes one P per counter)."""

    def __init__(self, device: torch.device | str, programs: int | None = None) -> None:
        self.barrier = torch.zeros(1, dtype=torch.int64, device=device)
        # the device as tensors report it ("cuda" → "cuda:0"): the wrapper compares it with the inputs' device
        device = self.barrier.device
        if programs is None:
            programs = (
                torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
            )
        self.device, self.programs = device, programs
        self.error = torch.zeros(1, dtype=torch.int32, device=device)
        self.arrivals = torch.zeros(PHASES * MAX_TILES, dtype=torch.int32, device=device)

    def error_count(self) -> int:
        """Nonzero when a barrier wait gave up since the last clear (a host sync)."""
        return int(self.error.item())

    def clear_error(self) -> None:
        self.error.zero_()


# ---- the kernel --------------------------------------------------------------------------------------------------

if triton is not None:
    _BARRIERS = tl.constexpr(BARRIERS)  # a jit function reads only constexpr globals

    @triton.jit
    def _grid_barrier(BAR, ERR, target, MAX_SPIN_: tl.constexpr):
        """Arrive (release), then poll (acquire) until the counter reaches target, at most MAX_SPIN_ polls — and
        not at all once the error flag is set (by any program, in this launch or an earlier one): after the first
        timeout a broken grid runs through instead of waiting MAX_SPIN_ polls at each of its barriers."""
        tl.debug_barrier()  # every thread's stores issued before the one release below
        tl.atomic_add(BAR, 1, sem="release", scope="gpu")
        cur = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
        failed = tl.atomic_add(ERR, 0, sem="relaxed", scope="gpu")  # an atomic: never hoisted out of the loop
        spins = tl.full([], 0, tl.int32)
        while (cur < target) & (spins < MAX_SPIN_) & (failed == 0):
            cur = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
            failed = tl.atomic_add(ERR, 0, sem="relaxed", scope="gpu")
            spins += 1
        if cur < target:
            tl.store(ERR, 1)
        tl.debug_barrier()

    @triton.jit
    def _prefetch_lines(PTR, sr, r0, r1, c0, c1):
        """L2 prefetch hints for PTR[r, c], r in [r0, r1), c in [c0, c1) (row stride sr): one per 64 elements (a
        128-byte line of a 16-bit tensor), spread over 256 lanes. Fire and forget: nothing waits for them."""
        per_row = tl.cdiv(c1 - c0, 64)
        total = (r1 - r0) * per_row
        for i0 in range(0, total, 256):
            i = tl.minimum(i0 + tl.arange(0, 256), total - 1)
            ptr = PTR + (r0 + i // per_row).to(tl.int64) * sr + c0 + (i % per_row) * 64
            tl.inline_asm_elementwise(
                "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;",
                "=r,l",
                [ptr],
                dtype=tl.int32,
                is_pure=False,
                pack=1,
            )

    @triton.jit
    def _prefetch_gemm(
        W, N, K, pid, P, BN: tl.constexpr, SPLIT: tl.constexpr, BLOCK_K: tl.constexpr, GU: tl.constexpr
    ):
        """Prefetch the weight slabs of this program's work items of a GEMM phase, as its loop hands them out (GU:
        gate/up, whose tile reads rows n and N + n)."""
        tiles = tl.cdiv(N, BN)
        chunk = tl.cdiv(tl.cdiv(K, SPLIT), BLOCK_K) * BLOCK_K
        for item in range(pid, tiles * SPLIT, P):
            k_lo = (item % SPLIT) * chunk
            k_hi = tl.minimum(k_lo + chunk, K)
            r0 = (item // SPLIT) * BN
            r1 = tl.minimum(r0 + BN, N)
            _prefetch_lines(W, K, r0, r1, k_lo, k_hi)
            if GU:
                _prefetch_lines(W, K, N + r0, N + r1, k_lo, k_hi)

    @triton.jit
    def _rnd(x, dt: tl.constexpr, INTERP: tl.constexpr):
        """fp32 → dt, round to nearest even. The interpreter truncates fp32 → bf16 casts (Triton 3.x), so there
        the rounding is done on the bits first (the cast is then exact)."""
        if INTERP:
            if dt == tl.bfloat16:
                bits = x.to(tl.uint32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
                x = bits.to(tl.float32, bitcast=True)
        return x.to(dt)

    @triton.jit
    def _r(x, dt: tl.constexpr, INTERP: tl.constexpr):
        """x (fp32) rounded to dt, back in fp32: one eager 16-bit op's result."""
        return _rnd(x, dt, INTERP).to(tl.float32)

    @triton.jit
    def _load(ptr, mask, CG: tl.constexpr):
        if CG:  # written by another program of this launch: read from L2
            v = tl.load(ptr, mask=mask, other=0.0, cache_modifier=".cg")
        else:
            v = tl.load(ptr, mask=mask, other=0.0)
        return v

    @triton.jit
    def _rows_in(X, XD, sx, m, m_ok, k, k_ok, HAS_D: tl.constexpr, CG: tl.constexpr, INTERP: tl.constexpr):
        """Rows m, columns k of X (+ XD, the sum rounded to X's dtype): [M_PAD, BLOCK_K]."""
        mk = m_ok[:, None] & k_ok[None, :]
        s = _load(X + m[:, None] * sx + k[None, :], mk, CG)
        if HAS_D:
            t = _load(XD + m[:, None] * sx + k[None, :], mk, CG)
            s = _rnd(s.to(tl.float32) + t.to(tl.float32), X.dtype.element_ty, INTERP)
        return s

    @triton.jit
    def _rstd(
        X,
        XD,
        sx,
        M,
        K,
        eps,
        HAS_D: tl.constexpr,
        CG: tl.constexpr,
        BLOCK_K: tl.constexpr,
        STAGES: tl.constexpr,
        INTERP: tl.constexpr,
    ):
        """1/rms of each row of X (+ XD) over K columns: [M_PAD] fp32 (F.rms_norm's statistic)."""
        m = tl.arange(0, 16)
        m_ok = m < M
        sq = tl.zeros([16], dtype=tl.float32)
        if STAGES == 0:  # loads not feeding a tl.dot are not pipelined: one round trip per chunk
            for k0 in range(0, K, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                sf = _rows_in(X, XD, sx, m, m_ok, k, k < K, HAS_D, CG, INTERP).to(tl.float32)
                sq += tl.sum(sf * sf, 1)
        else:  # cp.async (.cg: L2, so phase D's x2 is read coherently) with STAGES − 1 chunks in flight
            for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
                k = k0 + tl.arange(0, BLOCK_K)
                sf = _rows_in(X, XD, sx, m, m_ok, k, k < K, HAS_D, CG, INTERP).to(tl.float32)
                sq += tl.sum(sf * sf, 1)
        return tl.rsqrt(sq / K + eps)

    @triton.jit
    def _gemm(
        X,
        XD,
        NW,
        rstd,
        W,
        sx,
        sw,
        M,
        K,
        wrow,
        wrow_ok,
        split,
        SPLIT: tl.constexpr,
        NORM: tl.constexpr,
        HAS_D: tl.constexpr,
        CG: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        IEEE: tl.constexpr,
        INTERP: tl.constexpr,
    ):
        """acc [M_PAD, BLOCK_N] fp32 = A[:, k-split]·W[wrow, k-split]ᵀ where A is X (NORM = False) or
        NW·rmsnorm(X + XD) with the rows' rstd (rounded as decode._fnorm: x·rstd, then ·weight)."""
        dt = W.dtype.element_ty
        m = tl.arange(0, 16)
        m_ok = m < M
        chunk = tl.cdiv(tl.cdiv(K, SPLIT), BLOCK_K) * BLOCK_K
        k_lo = split * chunk
        k_hi = tl.minimum(k_lo + chunk, K)
        acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < k_hi
            a = _rows_in(X, XD, sx, m, m_ok, k, k_ok, HAS_D, CG, INTERP)
            if NORM:
                nw = tl.load(NW + k, mask=k_ok, other=0.0)
                h = _r(a.to(tl.float32) * rstd[:, None], dt, INTERP)
                a = _rnd(nw.to(tl.float32)[None, :] * h, dt, INTERP)
            b = tl.load(
                W + wrow.to(tl.int64)[:, None] * sw + k[None, :],
                mask=wrow_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            if INTERP:  # the interpreter's tl.dot mishandles bf16; bf16 products are exact in fp32
                a, b = a.to(tl.float32), b.to(tl.float32)
            if IEEE:
                acc += tl.dot(a, tl.trans(b), input_precision="ieee")
            else:
                acc += tl.dot(a, tl.trans(b))
        return acc

    @triton.jit
    def _reset(CTR, RELAXED: tl.constexpr):
        """A split counter back to 0. Nothing in this launch reads it again (the next launch sees it through the
        kernel boundary), so it needs no ordering; the default acq_rel xchg makes every later load of the
        epilogue wait for its L2 round trip, a relaxed one does not."""
        if RELAXED:
            tl.atomic_xchg(CTR, 0, sem="relaxed")
        else:
            tl.atomic_xchg(CTR, 0)

    @triton.jit
    def _split_sum(
        acc, WS, ws_split, ws_row, col, col_ok, ARR, tile, split, SPLIT: tl.constexpr, RELAXED: tl.constexpr
    ):
        """Deterministic split-K: (is_last, Σ partials in split order) for this tile; acc itself if SPLIT == 1.
        The last arriving split gets the sum and puts the tile's counter back to 0 (RELAXED: see _reset)."""
        if SPLIT == 1:
            last = tl.full([], 1, tl.int1)
            total = acc
        else:
            m = tl.arange(0, 16)
            ptrs = WS + m[:, None] * ws_row + col[None, :]
            tl.store(ptrs + split * ws_split, acc, mask=col_ok[None, :])
            tl.debug_barrier()  # every thread's partial stored before the one release below
            arrived = tl.atomic_add(ARR + tile, 1, sem="acq_rel", scope="gpu")
            last = arrived == SPLIT - 1
            total = tl.zeros_like(acc)
            if last:
                for s in range(SPLIT):
                    total += tl.load(
                        ptrs + s * ws_split, mask=col_ok[None, :], other=0.0, cache_modifier=".cg"
                    )
                _reset(ARR + tile, RELAXED)
        return last, total

    @triton.jit
    def _decode_layer_kernel(
        X,  # [B, C] residual stream before d is added
        XD,  # [B, C] previous layer's MLP output
        LN1,  # [C]
        WQKV,  # [(H + 2KV)·D, C]
        QKN,  # [H + KV, D] q_norm rows then k_norm rows (HAS_QKN)
        WO,  # [C, H·D]
        LN2,  # [C]
        WGU,  # [2I, C] gate rows then up rows
        WDN,  # [C, NI]
        NEXT_QKV,  # the next layer's WQKV (HAS_NEXT): prefetched into L2 during phase E
        CK,  # [slots, KV, capacity, D]
        CV,
        POS,  # [B] int64
        COS,  # [capacity, D]
        SIN,  # [capacity, D] sin± (rotate_half folded in)
        PERM,  # [D] int64
        QKV,  # scratch [B, (H + 2KV)·D]
        Y,  # scratch [B, H·D] attention output
        A,  # scratch [B, NI] silu(gate)·up
        X2,  # out [B, C]: x + d + attention
        OUT,  # out [B, C]: MLP output
        WS_QKV,  # fp32 split partials [SPLIT, 16, N] per GEMM phase (unused where SPLIT == 1)
        WS_O,
        WS_GU,  # [SPLIT, 16, 2I]: gate and up columns interleaved, as the tile computes them
        WS_DN,
        WS_ACC,  # [ATT_SPLIT, B, H, D] fp32 attention partials (unused where ATT_SPLIT == 1)
        WS_M,  # [ATT_SPLIT, B, H] running max (log2 domain)
        WS_L,  # [ATT_SPLIT, B, H] running sum
        ARR,  # [PHASES · MAX_TILES] int32 arrival counters
        BAR,  # [1] int64 grid barrier counter
        ERR,  # [1] int32 error flag
        B,
        C,
        NI,
        sck_b,
        sck_h,
        sck_n,
        scv_b,
        scv_h,
        scv_n,
        s_cos,
        eps,
        qk_scale,  # 1/sqrt(D)·log2(e)
        H: tl.constexpr,
        KV: tl.constexpr,
        D: tl.constexpr,
        G_PAD: tl.constexpr,
        D_PAD: tl.constexpr,
        HAS_QKN: tl.constexpr,
        HAS_NEXT: tl.constexpr,
        BN_QKV: tl.constexpr,
        SPLIT_QKV: tl.constexpr,
        BN_O: tl.constexpr,
        SPLIT_O: tl.constexpr,
        BN_GU: tl.constexpr,
        SPLIT_GU: tl.constexpr,
        BN_DN: tl.constexpr,
        SPLIT_DN: tl.constexpr,
        ATT_SPLIT: tl.constexpr,
        ATT_BLOCK: tl.constexpr,
        BLOCK_K: tl.constexpr,
        RSTD_BLOCK: tl.constexpr,
        RSTD_STAGES: tl.constexpr,
        EARLY_RESIDUAL: tl.constexpr,
        RELAXED_RESET: tl.constexpr,
        PHASE_LO: tl.constexpr,
        PHASE_HI: tl.constexpr,
        BARRIER: tl.constexpr,  # one launch of all phases with grid barriers between them
        PREFETCH: tl.constexpr,  # L2 prefetch hints one phase ahead (not under the interpreter: no inline asm)
        MAX_SPIN_: tl.constexpr,
        MAX_TILES_: tl.constexpr,
        IEEE: tl.constexpr,
        INTERP: tl.constexpr,
    ):
        pid = tl.program_id(0)
        P = tl.num_programs(0)
        dt = WQKV.dtype.element_ty
        G: tl.constexpr = H // KV
        NQKV: tl.constexpr = (H + 2 * KV) * D
        HD: tl.constexpr = H * D
        m = tl.arange(0, 16)
        m_ok = m < B
        if BARRIER:
            start = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
            base = (start // (_BARRIERS * P)) * (_BARRIERS * P)

        PF: tl.constexpr = PREFETCH and not INTERP

        # ---- A: qkv = ln1·rmsnorm(x + d) · Wqkvᵀ ----------------------------------------------------------
        if PHASE_LO <= 0 and 0 <= PHASE_HI:
            rstd1 = _rstd(X, XD, C, B, C, eps, True, False, RSTD_BLOCK, RSTD_STAGES, INTERP)
            tiles = tl.cdiv(NQKV, BN_QKV)
            for item in range(pid, tiles * SPLIT_QKV, P):
                tile = item // SPLIT_QKV
                split = item % SPLIT_QKV
                n = tile * BN_QKV + tl.arange(0, BN_QKV)
                n_ok = n < NQKV
                acc = _gemm(
                    X, XD, LN1, rstd1, WQKV, C, C, B, C, n, n_ok, split, SPLIT_QKV, True, True, False,
                    BN_QKV, BLOCK_K, IEEE, INTERP,
                )  # fmt: skip
                last, total = _split_sum(
                    acc, WS_QKV, 16 * NQKV, NQKV, n, n_ok, ARR, tile, split, SPLIT_QKV, RELAXED_RESET
                )
                if last:
                    tl.store(
                        QKV + m[:, None] * NQKV + n[None, :],
                        _rnd(total, dt, INTERP),
                        mask=m_ok[:, None] & n_ok[None, :],
                    )
        if BARRIER:
            _grid_barrier(BAR, ERR, base + P, MAX_SPIN_)

        # ---- B: q/k norm, rotary, cache write, attention per (row, KV head, key split) -------------------
        if PHASE_LO <= 1 and 1 <= PHASE_HI:
            if PF and 2 <= PHASE_HI:  # the next phase's weights into L2 while this one runs
                _prefetch_gemm(WO, C, HD, pid, P, BN_O, SPLIT_O, BLOCK_K, False)
            g = tl.arange(0, G_PAD)
            dd = tl.arange(0, D_PAD)
            g_ok = g < G
            d_ok = dd < D
            gd_ok = g_ok[:, None] & d_ok[None, :]
            perm = tl.load(PERM + dd, mask=d_ok, other=0)
            for item in range(pid, B * KV * ATT_SPLIT, P):
                split = item % ATT_SPLIT
                bh = item // ATT_SPLIT
                b = bh // KV
                kvh = bh % KV
                p = tl.load(POS + b).to(tl.int32)
                cos = tl.load(COS + p * s_cos + dd, mask=d_ok, other=0.0).to(tl.float32)
                sin = tl.load(SIN + p * s_cos + dd, mask=d_ok, other=0.0).to(tl.float32)
                row = QKV + b * NQKV
                # q [G_PAD, D_PAD] of heads kvh·G .. kvh·G + G−1, k [D_PAD] of KV head kvh (qk head H + kvh)
                heads = kvh * G + g
                q = tl.load(
                    row + heads[:, None] * D + dd[None, :], mask=gd_ok, other=0.0, cache_modifier=".cg"
                )
                qp = tl.load(
                    row + heads[:, None] * D + perm[None, :], mask=gd_ok, other=0.0, cache_modifier=".cg"
                )
                kh = H + kvh
                k = tl.load(row + kh * D + dd, mask=d_ok, other=0.0, cache_modifier=".cg")
                kp = tl.load(row + kh * D + perm, mask=d_ok, other=0.0, cache_modifier=".cg")
                v = tl.load(row + (H + KV + kvh) * D + dd, mask=d_ok, other=0.0, cache_modifier=".cg")
                if HAS_QKN:  # decode._fnorm per head: (x·rstd) rounded, ·weight, rounded
                    qf = q.to(tl.float32)
                    q_rstd = tl.rsqrt(tl.sum(qf * qf, 1) / D + eps)
                    wq = tl.load(QKN + heads[:, None] * D + dd[None, :], mask=gd_ok, other=0.0).to(tl.float32)
                    wqp = tl.load(QKN + heads[:, None] * D + perm[None, :], mask=gd_ok, other=0.0).to(
                        tl.float32
                    )
                    q = _rnd(wq * _r(qf * q_rstd[:, None], dt, INTERP), dt, INTERP)
                    qp = _rnd(wqp * _r(qp.to(tl.float32) * q_rstd[:, None], dt, INTERP), dt, INTERP)
                    kf = k.to(tl.float32)
                    k_rstd = tl.rsqrt(tl.sum(kf * kf, 0) / D + eps)
                    wk = tl.load(QKN + kh * D + dd, mask=d_ok, other=0.0).to(tl.float32)
                    wkp = tl.load(QKN + kh * D + perm, mask=d_ok, other=0.0).to(tl.float32)
                    k = _rnd(wk * _r(kf * k_rstd, dt, INTERP), dt, INTERP)
                    kp = _rnd(wkp * _r(kp.to(tl.float32) * k_rstd, dt, INTERP), dt, INTERP)
                # rotary: x·cos + x[perm]·sin±, each product rounded, then the sum (eager's three ops)
                q = _rnd(
                    _r(q.to(tl.float32) * cos[None, :], dt, INTERP)
                    + _r(qp.to(tl.float32) * sin[None, :], dt, INTERP),
                    dt,
                    INTERP,
                )
                k = _rnd(
                    _r(k.to(tl.float32) * cos, dt, INTERP) + _r(kp.to(tl.float32) * sin, dt, INTERP),
                    dt,
                    INTERP,
                )
                length = p + 1
                chunk = tl.cdiv(tl.cdiv(length, ATT_SPLIT), ATT_BLOCK) * ATT_BLOCK
                lo = split * chunk
                hi = tl.minimum(lo + chunk, length)
                k_base = CK + b.to(tl.int64) * sck_b + kvh.to(tl.int64) * sck_h
                v_base = CV + b.to(tl.int64) * scv_b + kvh.to(tl.int64) * scv_h
                if p // chunk == split:  # the split holding key pos[b] writes it (and reads it back below)
                    tl.store(k_base + p * sck_n + dd, k, mask=d_ok)
                    tl.store(v_base + p * scv_n + dd, v, mask=d_ok)
                tl.debug_barrier()  # the cache writes visible to the whole program before its reads
                qa = q
                if INTERP:
                    qa = qa.to(tl.float32)
                m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
                l_i = tl.zeros([G_PAD], dtype=tl.float32)
                acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
                for n0 in range(lo, hi, ATT_BLOCK):
                    nn = n0 + tl.arange(0, ATT_BLOCK)
                    nd_ok = (nn < hi)[:, None] & d_ok[None, :]
                    kb = tl.load(
                        k_base + nn[:, None] * sck_n + dd[None, :],
                        mask=nd_ok,
                        other=0.0,
                        cache_modifier=".cg",
                    )
                    if INTERP:
                        kb = kb.to(tl.float32)
                    if IEEE:
                        s = tl.dot(qa, tl.trans(kb), input_precision="ieee")
                    else:
                        s = tl.dot(qa, tl.trans(kb))
                    s = tl.where((nn < hi)[None, :], s * qk_scale, float("-inf"))  # [G_PAD, ATT_BLOCK]
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    alpha = tl.exp2(m_i - m_new)
                    pr = tl.exp2(s - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(pr, 1)
                    vb = tl.load(
                        v_base + nn[:, None] * scv_n + dd[None, :],
                        mask=nd_ok,
                        other=0.0,
                        cache_modifier=".cg",
                    )
                    p_v = _rnd(pr, dt, INTERP)  # rounded to the cache dtype, as flash attention does
                    if INTERP:
                        p_v, vb = p_v.to(tl.float32), vb.to(tl.float32)
                    if IEEE:
                        pv = tl.dot(p_v, vb, input_precision="ieee")
                    else:
                        pv = tl.dot(p_v, vb)
                    acc = acc * alpha[:, None] + pv
                    m_i = m_new
                y_ptrs = Y + b * HD + heads[:, None] * D + dd[None, :]
                if ATT_SPLIT == 1:
                    tl.store(y_ptrs, _rnd(acc / l_i[:, None], dt, INTERP), mask=gd_ok)
                else:
                    # partials of split s at [s, b, head, :]; the last arriving split merges in split order
                    ml = b * H + heads
                    tl.store(WS_ACC + (split * B * H + ml)[:, None] * D + dd[None, :], acc, mask=gd_ok)
                    tl.store(WS_M + split * B * H + ml, m_i, mask=g_ok)
                    tl.store(WS_L + split * B * H + ml, l_i, mask=g_ok)
                    tl.debug_barrier()
                    arrived = tl.atomic_add(ARR + MAX_TILES_ + bh, 1, sem="acq_rel", scope="gpu")
                    if arrived == ATT_SPLIT - 1:
                        mx = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
                        for s_i in range(ATT_SPLIT):
                            ms = tl.load(WS_M + s_i * B * H + ml, mask=g_ok, other=0.0, cache_modifier=".cg")
                            mx = tl.maximum(mx, ms)
                        num = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
                        den = tl.zeros([G_PAD], dtype=tl.float32)
                        for s_i in range(ATT_SPLIT):
                            ms = tl.load(WS_M + s_i * B * H + ml, mask=g_ok, other=0.0, cache_modifier=".cg")
                            ls = tl.load(WS_L + s_i * B * H + ml, mask=g_ok, other=0.0, cache_modifier=".cg")
                            a_s = tl.load(
                                WS_ACC + (s_i * B * H + ml)[:, None] * D + dd[None, :],
                                mask=gd_ok,
                                other=0.0,
                                cache_modifier=".cg",
                            )
                            wgt = tl.exp2(ms - mx)  # 0 for an empty split (m = −inf); split 0 holds key 0
                            num += a_s * wgt[:, None]
                            den += ls * wgt
                        tl.store(y_ptrs, _rnd(num / den[:, None], dt, INTERP), mask=gd_ok)
                        _reset(ARR + MAX_TILES_ + bh, RELAXED_RESET)
        if BARRIER:
            _grid_barrier(BAR, ERR, base + 2 * P, MAX_SPIN_)

        # ---- C: x2 = (x + d) + y·Woᵀ -------------------------------------------------------------------
        if PHASE_LO <= 2 and 2 <= PHASE_HI:
            if PF and 3 <= PHASE_HI:  # the next phase's weights into L2 while this one runs
                _prefetch_gemm(WGU, NI, C, pid, P, BN_GU, SPLIT_GU, BLOCK_K, True)
            tiles = tl.cdiv(C, BN_O)
            for item in range(pid, tiles * SPLIT_O, P):
                tile = item // SPLIT_O
                split = item % SPLIT_O
                n = tile * BN_O + tl.arange(0, BN_O)
                n_ok = n < C
                # launch inputs: their loads overlap the K loop (only the last split uses them)
                if EARLY_RESIDUAL:
                    xs_early = _rows_in(X, XD, C, m, m_ok, n, n_ok, True, False, INTERP).to(tl.float32)
                acc = _gemm(
                    Y, Y, LN1, m, WO, HD, HD, B, HD, n, n_ok, split, SPLIT_O, False, False, True,
                    BN_O, BLOCK_K, IEEE, INTERP,
                )  # fmt: skip
                last, total = _split_sum(
                    acc, WS_O, 16 * C, C, n, n_ok, ARR, 2 * MAX_TILES_ + tile, split, SPLIT_O, RELAXED_RESET
                )
                if last:
                    mn = m_ok[:, None] & n_ok[None, :]
                    if EARLY_RESIDUAL:
                        xs = xs_early
                    else:
                        xs = _rows_in(X, XD, C, m, m_ok, n, n_ok, True, False, INTERP).to(tl.float32)
                    x2 = _rnd(xs + _r(total, dt, INTERP), dt, INTERP)
                    tl.store(X2 + m[:, None] * C + n[None, :], x2, mask=mn)
        if BARRIER:
            _grid_barrier(BAR, ERR, base + 3 * P, MAX_SPIN_)

        # ---- D: a = silu(gate)·up, [gate | up] = ln2·rmsnorm(x2)·Wguᵀ ----------------------------------
        if PHASE_LO <= 3 and 3 <= PHASE_HI:
            if PF and 4 <= PHASE_HI:  # the next phase's weights into L2 while this one runs
                _prefetch_gemm(WDN, C, NI, pid, P, BN_DN, SPLIT_DN, BLOCK_K, False)
            rstd2 = _rstd(X2, X2, C, B, C, eps, False, True, RSTD_BLOCK, RSTD_STAGES, INTERP)
            tiles = tl.cdiv(NI, BN_GU)
            # tile column j (of 2·BN_GU): gate row n0 + j/2 for even j, up row NI + n0 + j/2 for odd j
            j = tl.arange(0, 2 * BN_GU)
            for item in range(pid, tiles * SPLIT_GU, P):
                tile = item // SPLIT_GU
                split = item % SPLIT_GU
                col = tile * BN_GU + j // 2
                col_ok = col < NI
                wrow = col + (j % 2) * NI
                acc = _gemm(
                    X2, X2, LN2, rstd2, WGU, C, C, B, C, wrow, col_ok, split, SPLIT_GU, True, False, True,
                    2 * BN_GU, BLOCK_K, IEEE, INTERP,
                )  # fmt: skip
                last, total = _split_sum(
                    acc, WS_GU, 16 * 2 * NI, 2 * NI, tile * 2 * BN_GU + j, col_ok, ARR, 3 * MAX_TILES_ + tile, split,
                    SPLIT_GU, RELAXED_RESET,
                )  # fmt: skip
                if last:
                    gate, up = tl.split(tl.reshape(_r(total, dt, INTERP), [16, BN_GU, 2]))
                    silu = _r(gate / (1.0 + tl.exp(-gate)), dt, INTERP)  # F.silu, rounded
                    n = tile * BN_GU + tl.arange(0, BN_GU)
                    tl.store(
                        A + m[:, None] * NI + n[None, :],
                        _rnd(silu * up, dt, INTERP),
                        mask=m_ok[:, None] & (n < NI)[None, :],
                    )
        if BARRIER:
            _grid_barrier(BAR, ERR, base + 4 * P, MAX_SPIN_)

        # ---- E: out = a·Wdownᵀ ------------------------------------------------------------------------
        if PHASE_LO <= 4 and 4 <= PHASE_HI:
            if PF and HAS_NEXT and BARRIER:  # the next layer's first weights, while this layer ends
                _prefetch_gemm(NEXT_QKV, NQKV, C, pid, P, BN_QKV, SPLIT_QKV, BLOCK_K, False)
            tiles = tl.cdiv(C, BN_DN)
            for item in range(pid, tiles * SPLIT_DN, P):
                tile = item // SPLIT_DN
                split = item % SPLIT_DN
                n = tile * BN_DN + tl.arange(0, BN_DN)
                n_ok = n < C
                acc = _gemm(
                    A, A, LN1, m, WDN, NI, NI, B, NI, n, n_ok, split, SPLIT_DN, False, False, True,
                    BN_DN, BLOCK_K, IEEE, INTERP,
                )  # fmt: skip
                last, total = _split_sum(
                    acc, WS_DN, 16 * C, C, n, n_ok, ARR, 4 * MAX_TILES_ + tile, split, SPLIT_DN, RELAXED_RESET
                )
                if last:
                    tl.store(
                        OUT + m[:, None] * C + n[None, :],
                        _rnd(total, dt, INTERP),
                        mask=m_ok[:, None] & n_ok[None, :],
                    )


# ---- the wrapper ---------------------------------------------------------------------------------------------------


def _weight(group: Any, name: str) -> torch.Tensor:
    """A _Group's weight (bias rejected: the kernel has none), or a plain tensor."""
    if isinstance(group, torch.Tensor):
        return group
    if getattr(group, "bias", None) is not None:
        raise ValueError(f"decode_layer_persistent: the {name} projection has a bias; the kernel takes none")
    return group.weight


def decode_layer_persistent(
    x: torch.Tensor,
    d: torch.Tensor,
    w: Any,
    ck: torch.Tensor,
    cv: torch.Tensor,
    pos: torch.Tensor,
    cos_t: torch.Tensor,
    sin_t: torch.Tensor,
    perm: torch.Tensor,
    heads: tuple[int, int, int],
    eps: float,
    state: PersistentState,
    config: Config | None = None,
    one_launch: bool | None = None,
    max_spin: int = MAX_SPIN,
    part: tuple[int, int, bool] | None = None,
    next_qkv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """decode._decode_layer (no adapter rows, no bias) as one persistent kernel launch → (x + d + attention
    [B, 1, C], MLP output [B, 1, C]). `w`: a decode._LayerW (or anything with its fields; a group may be a bare
    weight tensor). `one_launch`: all phases in one launch with grid barriers (default on CUDA), else one launch
    per phase (default under TRITON_INTERPRET=1). Runs on CUDA, or on CPU tensors under TRITON_INTERPRET=1.
    `part`: (first phase, last phase, barriers) of ONE launch, for timing parts of the kernel
    (bench/generate/persistent.py --phases); the outputs are then incomplete. (5, 4, True): the barriers alone.
    `next_qkv`: the next layer's qkv weight, which `config.prefetch` hints into L2 during phase E."""
    if triton is None:
        raise RuntimeError("decode_layer_persistent needs the triton package")
    H, KV, D = heads
    B, T, C = x.shape
    if T != 1 or d.shape != x.shape:
        raise ValueError(
            f"decode_layer_persistent: x and d must be [B, 1, C], got {tuple(x.shape)}, {tuple(d.shape)}"
        )
    if B > M_PAD:
        raise ValueError(
            f"decode_layer_persistent: {B} rows, at most {M_PAD}; larger batches keep _decode_layer"
        )
    if H % KV:
        raise ValueError(f"decode_layer_persistent: {H} query heads are not a multiple of {KV} KV heads")
    if D % 2:
        raise ValueError(f"decode_layer_persistent: head_dim {D} is odd (rotary needs halves)")
    w_qkv, w_o = _weight(w.qkv, "qkv"), _weight(w.o, "o")
    w_gu, w_dn = _weight(w.gate_up, "gate_up"), _weight(w.down, "down")
    inter = w_dn.shape[1]
    expect = {
        "qkv": (w_qkv, ((H + 2 * KV) * D, C)),
        "o": (w_o, (C, H * D)),
        "gate_up": (w_gu, (2 * inter, C)),
        "down": (w_dn, (C, inter)),
    }
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape or not t.is_contiguous() or t.dtype != x.dtype:
            raise ValueError(
                f"decode_layer_persistent: {name} weight {tuple(t.shape)} {t.dtype} (contiguous: "
                f"{t.is_contiguous()}); expected contiguous {shape} {x.dtype}"
            )
    if next_qkv is not None and (
        next_qkv.shape != w_qkv.shape
        or next_qkv.dtype != w_qkv.dtype
        or next_qkv.device != w_qkv.device
        or not next_qkv.is_contiguous()
    ):
        raise ValueError(
            f"decode_layer_persistent: next_qkv {tuple(next_qkv.shape)} {next_qkv.dtype} on {next_qkv.device}; "
            f"expected the next layer's qkv weight, like this one's {tuple(w_qkv.shape)} {w_qkv.dtype}"
        )
    if (
        ck.dtype != x.dtype
        or ck.stride(-1) != 1
        or cv.stride(-1) != 1
        or ck.shape[1] != KV
        or ck.shape[3] != D
    ):
        raise ValueError(
            f"decode_layer_persistent: caches {tuple(ck.shape)} {ck.dtype}; expected [slots, {KV}, capacity, {D}] {x.dtype}"
        )
    if ck.shape[0] < B:
        raise ValueError(f"decode_layer_persistent: {B} rows but only {ck.shape[0]} cache slots")
    if cos_t.stride() != sin_t.stride() or cos_t.stride(-1) != 1:
        raise ValueError(
            "decode_layer_persistent: cos and sin± tables must be [capacity, D] with equal strides"
        )
    if state.device != x.device:
        raise ValueError(f"decode_layer_persistent: state on {state.device}, tensors on {x.device}")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if one_launch is None:
        one_launch = not interpreted
    P = state.programs
    cfg = config or default_config(B, C, heads, inter, P)
    dev, dt = x.device, x.dtype
    nqkv = (H + 2 * KV) * D
    for name, (bn, split), n in (
        ("qkv", cfg.qkv, nqkv),
        ("o", cfg.o, C),
        ("gate_up", cfg.gate_up, inter),
        ("down", cfg.down, C),
    ):
        if _cdiv(n, bn) > MAX_TILES and split > 1:
            raise ValueError(
                f"decode_layer_persistent: {name}: {_cdiv(n, bn)} tiles of {bn}, more than {MAX_TILES}"
            )
    if cfg.rstd_block and (cfg.rstd_block < 16 or cfg.rstd_block & (cfg.rstd_block - 1)):
        raise ValueError(
            f"decode_layer_persistent: rstd_block {cfg.rstd_block}; expected 0 or a power of 2 ≥ 16"
        )
    if cfg.rstd_stages < 0:
        raise ValueError(
            f"decode_layer_persistent: rstd_stages {cfg.rstd_stages}; expected 0 (a plain loop) or ≥ 1"
        )
    if B * KV > MAX_TILES:
        raise ValueError(f"decode_layer_persistent: {B}·{KV} (row, KV head) pairs, more than {MAX_TILES}")

    x2d, d2d = x.reshape(B, C).contiguous(), d.reshape(B, C).contiguous()
    qkv = torch.empty(B, nqkv, dtype=dt, device=dev)
    y = torch.empty(B, H * D, dtype=dt, device=dev)
    a = torch.empty(B, inter, dtype=dt, device=dev)
    x2 = torch.empty(B, C, dtype=dt, device=dev)
    out = torch.empty(B, C, dtype=dt, device=dev)

    def ws(split: int, n: int) -> torch.Tensor:
        return torch.empty(split, M_PAD, n, dtype=torch.float32, device=dev) if split > 1 else state.error

    s_att = cfg.attn[0]
    if s_att > 1:
        ws_acc = torch.empty(s_att, B, H, D, dtype=torch.float32, device=dev)
        ws_m = torch.empty(s_att, B, H, dtype=torch.float32, device=dev)
        ws_l = torch.empty_like(ws_m)
    else:
        ws_acc = ws_m = ws_l = state.error
    qkn = w.qk_norm
    args = (
        x2d, d2d, w.ln1, w_qkv, qkn if qkn is not None else w.ln1, w_o, w.ln2, w_gu, w_dn,
        next_qkv if next_qkv is not None else w_qkv, ck, cv, pos, cos_t,
        sin_t, perm, qkv, y, a, x2, out, ws(cfg.qkv[1], nqkv), ws(cfg.o[1], C), ws(cfg.gate_up[1], 2 * inter),
        ws(cfg.down[1], C), ws_acc, ws_m, ws_l, state.arrivals, state.barrier, state.error,
        B, C, inter, ck.stride(0), ck.stride(1), ck.stride(2), cv.stride(0), cv.stride(1), cv.stride(2),
        cos_t.stride(0), eps, (1.0 / math.sqrt(D)) * 1.4426950408889634,
    )  # fmt: skip
    consts = dict(
        H=H, KV=KV, D=D, G_PAD=max(16, triton.next_power_of_2(H // KV)), D_PAD=max(16, triton.next_power_of_2(D)),
        HAS_QKN=qkn is not None, HAS_NEXT=next_qkv is not None and cfg.prefetch, BN_QKV=cfg.qkv[0],
        SPLIT_QKV=cfg.qkv[1], BN_O=cfg.o[0], SPLIT_O=cfg.o[1], BN_GU=cfg.gate_up[0], SPLIT_GU=cfg.gate_up[1],
        BN_DN=cfg.down[0], SPLIT_DN=cfg.down[1], ATT_SPLIT=s_att, ATT_BLOCK=cfg.attn[1], BLOCK_K=cfg.block_k,
        RSTD_BLOCK=cfg.rstd_block or cfg.block_k, RSTD_STAGES=cfg.rstd_stages, EARLY_RESIDUAL=cfg.early_residual,
        RELAXED_RESET=cfg.relaxed_reset, PREFETCH=cfg.prefetch, MAX_SPIN_=max_spin, MAX_TILES_=MAX_TILES,
        IEEE=dt == torch.float32, INTERP=interpreted, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if part is not None:
        lo, hi, barrier = part
        _decode_layer_kernel[(P,)](*args, PHASE_LO=lo, PHASE_HI=hi, BARRIER=barrier, **consts)
    elif one_launch:
        _decode_layer_kernel[(P,)](*args, PHASE_LO=0, PHASE_HI=PHASES - 1, BARRIER=True, **consts)
    else:
        for phase in range(PHASES):
            _decode_layer_kernel[(P,)](*args, PHASE_LO=phase, PHASE_HI=phase, BARRIER=False, **consts)
    return x2.view(B, 1, C), out.view(B, 1, C)
