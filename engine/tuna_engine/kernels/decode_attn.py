"""Decode attention: one query token per row against decode.py's static KV cache, as the custom op
`tuna::decode_attention` so that torch.compile traces a whole decoder layer around it (issue 7).

    out = decode_attention(q [B, H, D], k_cache [slots, KV, capacity, D], v_cache, pos [B] long, n_split)

Row b attends to keys 0..pos[b] of cache slot b (its own key, written at pos[b] before the call, included), so no
mask tensor and no key bucket: each row reads exactly its own length, read from `pos` on the device (a CUDA
graph replays it for any lengths). Softmax scale 1/sqrt(D), as SDPA's default.

What is notable:
  - Grouped-query attention: one program per (row, KV head, split) computes all G = H/KV query heads of that KV
    head, so every K/V block is read once, not G times. The G heads are the M side of a tl.dot (padded to 16).
  - Split over the key axis (flash-decoding): batch 16 × 8 KV heads is 128 programs, about one per SM; with
    n_split > 1 each row's keys 0..pos[b] are cut into n_split equal chunks (rounded to the block), each program
    keeps its own running max m, sum l and output acc (fp32), and a second kernel merges them:
    out = Σ_s e^(m_s − m)·acc_s / Σ_s e^(m_s − m)·l_s with m = max_s m_s. A chunk past the row's length is empty
    (m = −inf, l = 0, acc = 0: weight 0). Split 0 always holds key 0, so m is finite.
  - Numerics: q·kᵀ from the cache dtype with fp32 accumulation, softmax in fp32, the probabilities rounded to the
    cache dtype for p·v (as flash attention does), fp32 accumulation, one rounding at the end. fp32 caches use
    IEEE fp32 dots (no TF32).
  - Devices: CUDA runs the Triton kernels; every other device runs `decode_attention_reference` (SDPA with a
    length mask, the numerical reference the kernels are tested against). `decode_attention_triton` can also be
    called directly, e.g. on CPU tensors under TRITON_INTERPRET=1 (the CPU test does that).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference path needs no Triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

BLOCK_N = 32  # keys per inner step


def decode_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """SDPA over keys 0..max(pos) of slots 0..B-1 with an additive mask hiding keys past each row's pos.
    q [B, H, D] → [B, H, D]. The G query heads of a KV head are G query rows of that head (no repeated K/V).
    Syncs with the host (the longest row): a reference, not for CUDA graphs."""
    B, H, D = q.shape
    KV = k_cache.shape[1]
    S = int(pos.max().item()) + 1
    keys = torch.arange(S, device=q.device)
    mask = torch.zeros(B, 1, 1, S, dtype=q.dtype, device=q.device)
    mask.masked_fill_((keys[None, :] > pos[:, None])[:, None, None], -math.inf)
    y = F.scaled_dot_product_attention(
        q.reshape(B, KV, H // KV, D), k_cache[:B, :, :S], v_cache[:B, :, :S], attn_mask=mask
    )
    return y.reshape(B, H, D)


def default_splits(rows: int, kv_heads: int, device: torch.device) -> int:
    """Key-axis splits for a step of `rows` rows: enough programs for about 4 per SM (a power of two, 1..16)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, (4 * sms) // (rows * kv_heads))
    return min(16, 1 << (want.bit_length() - 1))


if triton is not None:

    @triton.jit
    def _decode_attn_kernel(
        Q,
        K,
        V,
        POS,
        OUT,  # [B, H, D] out (N_SPLIT == 1) or [B, H, N_SPLIT, D] fp32 partial acc
        M,  # [B, H, N_SPLIT] fp32 running max (log2 domain); unused when N_SPLIT == 1
        L,  # [B, H, N_SPLIT] fp32 running sum
        sq_b,
        sq_h,
        sq_d,
        sk_b,
        sk_h,
        sk_n,
        sk_d,
        sv_b,
        sv_h,
        sv_n,
        sv_d,
        so_b,
        so_h,
        so_s,
        so_d,
        qk_scale,  # 1/sqrt(D) · log2(e): exp2 instead of exp
        KV: tl.constexpr,
        G: tl.constexpr,
        D: tl.constexpr,
        G_PAD: tl.constexpr,
        D_PAD: tl.constexpr,
        BLOCK: tl.constexpr,
        N_SPLIT: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = pid // KV
        kvh = pid % KV
        length = tl.load(POS + b).to(tl.int32) + 1
        chunk = tl.cdiv(tl.cdiv(length, N_SPLIT), BLOCK) * BLOCK
        start = split * chunk
        end = tl.minimum(start + chunk, length)

        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D_PAD)
        gd_mask = (g < G)[:, None] & (d < D)[None, :]
        heads = kvh * G + g
        q = tl.load(
            Q + b.to(tl.int64) * sq_b + heads[:, None] * sq_h + d[None, :] * sq_d, mask=gd_mask, other=0.0
        )
        if UPCAST:
            q = q.to(tl.float32)
        k_base = K + b.to(tl.int64) * sk_b + kvh.to(tl.int64) * sk_h
        v_base = V + b.to(tl.int64) * sv_b + kvh.to(tl.int64) * sv_h

        m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([G_PAD], dtype=tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
        for n0 in range(start, end, BLOCK):
            n = n0 + tl.arange(0, BLOCK)
            nd_mask = (n < end)[:, None] & (d < D)[None, :]
            k = tl.load(k_base + n[:, None] * sk_n + d[None, :] * sk_d, mask=nd_mask, other=0.0)
            if UPCAST:  # the interpreter's tl.dot mishandles bf16; bf16 products are exact in fp32
                k = k.to(tl.float32)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where((n < end)[None, :], s * qk_scale, float("-inf"))  # [G_PAD, BLOCK]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + n[:, None] * sv_n + d[None, :] * sv_d, mask=nd_mask, other=0.0)
            p_v = p.to(v.dtype)  # rounded to the cache dtype, as flash attention does
            if UPCAST:
                p_v, v = p_v.to(tl.float32), v.to(tl.float32)
            if IEEE:
                pv = tl.dot(p_v, v, input_precision="ieee")
            else:
                pv = tl.dot(p_v, v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

        o_rows = OUT + b.to(tl.int64) * so_b + heads[:, None] * so_h + d[None, :] * so_d
        if N_SPLIT == 1:
            tl.store(o_rows, (acc / l_i[:, None]).to(OUT.dtype.element_ty), mask=gd_mask)
        else:
            tl.store(o_rows + split * so_s, acc, mask=gd_mask)
            ml = (b * (KV * G) + heads) * N_SPLIT + split
            tl.store(M + ml, m_i, mask=g < G)
            tl.store(L + ml, l_i, mask=g < G)

    @triton.jit
    def _decode_attn_merge_kernel(
        ACC,  # [B·H, N_SPLIT, D] fp32
        M,  # [B·H, N_SPLIT]
        L,
        OUT,  # [B, H, D]
        so_b,
        so_h,
        so_d,
        H: tl.constexpr,
        D: tl.constexpr,
        D_PAD: tl.constexpr,
        N_SPLIT: tl.constexpr,
    ):
        row = tl.program_id(0)  # b·H + h
        s = tl.arange(0, N_SPLIT)
        d = tl.arange(0, D_PAD)
        m = tl.load(M + row * N_SPLIT + s)
        l_s = tl.load(L + row * N_SPLIT + s)
        w = tl.exp2(m - tl.max(m, 0))  # 0 for an empty split (m = -inf)
        acc = tl.load(ACC + (row * N_SPLIT + s)[:, None] * D + d[None, :], mask=(d < D)[None, :], other=0.0)
        out = tl.sum(acc * w[:, None], 0) / tl.sum(l_s * w, 0)
        b = row // H
        h = row % H
        tl.store(OUT + b * so_b + h * so_h + d * so_d, out.to(OUT.dtype.element_ty), mask=d < D)


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    n_split: int = 1,
    block_n: int = BLOCK_N,
) -> torch.Tensor:
    """The Triton kernels (CUDA, or any device under TRITON_INTERPRET=1). Shapes as the op's; n_split a power
    of two."""
    if triton is None:
        raise RuntimeError("decode_attention_triton needs the triton package")
    B, H, D = q.shape
    KV = k_cache.shape[1]
    G = H // KV
    if n_split < 1 or n_split & (n_split - 1):
        raise ValueError(f"n_split must be a power of two, got {n_split}")
    out = torch.empty_like(q)
    common = dict(
        KV=KV,
        G=G,
        D=D,
        G_PAD=max(16, triton.next_power_of_2(G)),
        D_PAD=max(16, triton.next_power_of_2(D)),
        BLOCK=block_n,
        N_SPLIT=n_split,
        IEEE=q.dtype == torch.float32,
        UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
    )
    qk_scale = (1.0 / math.sqrt(D)) * 1.4426950408889634
    args = (*q.stride(), *k_cache.stride()[:2], *k_cache.stride()[2:], *v_cache.stride())
    if n_split == 1:
        _decode_attn_kernel[(B * KV, 1)](
            q, k_cache, v_cache, pos, out, out, out, *args, *out.stride()[:2], 0, out.stride(2),
            qk_scale, **common,
        )  # fmt: skip
        return out
    acc = torch.empty(B, H, n_split, D, dtype=torch.float32, device=q.device)
    m = torch.empty(B, H, n_split, dtype=torch.float32, device=q.device)
    l_sum = torch.empty_like(m)
    _decode_attn_kernel[(B * KV, n_split)](
        q, k_cache, v_cache, pos, acc, m, l_sum, *args, *acc.stride(), qk_scale, **common
    )
    _decode_attn_merge_kernel[(B * H,)](
        acc, m, l_sum, out, *out.stride(), H=H, D=D, D_PAD=common["D_PAD"], N_SPLIT=n_split
    )
    return out


@torch.library.custom_op("tuna::decode_attention", mutates_args=())
def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor, n_split: int
) -> torch.Tensor:
    """q [B, H, D] (after rotary), caches [slots ≥ B, KV, capacity, D] already holding each row's key at pos,
    pos [B] long → [B, H, D]. CPU and other devices: the SDPA reference; CUDA: the Triton kernels."""
    return decode_attention_reference(q, k_cache, v_cache, pos)


@decode_attention.register_kernel("cuda")
def _(q, k_cache, v_cache, pos, n_split):  # noqa: ANN001, ANN202
    return decode_attention_triton(q, k_cache, v_cache, pos, n_split)


@decode_attention.register_fake
def _(q, k_cache, v_cache, pos, n_split):  # noqa: ANN001, ANN202
    return torch.empty_like(q)
