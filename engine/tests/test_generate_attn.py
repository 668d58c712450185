"""tuna::decode_attention (kernels/decode_attn.py): the op (its SDPA reference on CPU) and the Triton kernels (run
by Triton's interpreter on CPU, TRITON_INTERPRET=1) against attention computed row by row in float64 over each
row's own keys 0..pos[b] with the K/V heads repeated for grouped-query attention, so neither the length mask nor
the G-query-rows layout of the implementations is shared with the reference."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
import torch
from helpers import ENGINE_DIR, run_interpreted

import tuna_engine.kernels.decode_attn as da

# (rows B, KV heads, G query heads per KV head, head_dim D, capacity, slots): G = 1, 2 (Qwen3-0.6B), 8; capacities
# that are not a multiple of the 32-key block; more slots than rows (row b must read slot b).
SHAPES = [(3, 2, 2, 16, 100, 5), (4, 1, 8, 32, 70, 4), (2, 4, 1, 64, 45, 3), (5, 2, 2, 24, 33, 5)]


def per_row_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """float64 softmax(q·kᵀ/√D)·v for each row over keys 0..pos[b] of slot b, K/V repeated to H heads."""
    B, H, D = q.shape
    G = H // k_cache.shape[1]
    out = torch.empty(B, H, D, dtype=torch.float64)
    for b in range(B):
        n = int(pos[b]) + 1
        k = k_cache[b, :, :n].double().repeat_interleave(G, 0)  # [H, n, D]
        v = v_cache[b, :, :n].double().repeat_interleave(G, 0)
        w = torch.softmax((k @ q[b].double()[:, :, None])[..., 0] / D**0.5, dim=-1)  # [H, n]
        out[b] = (w[:, None, :] @ v)[:, 0]
    return out


def case(shape, seed: int, dtype: torch.dtype = torch.float32, past: float = 1e4):
    """q, caches and positions for a shape; cache entries past each row's position hold `past` (a row that read
    them would be far off) and the positions include 0 and capacity-1."""
    B, KV, G, D, cap, slots = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, KV * G, D, generator=g).to(dtype)
    k = torch.randn(slots, KV, cap, D, generator=g).to(dtype)
    v = torch.randn(slots, KV, cap, D, generator=g).to(dtype)
    pos = torch.randint(0, cap, (B,), generator=g)
    pos[0], pos[-1] = 0, cap - 1
    for b in range(slots):
        n = int(pos[b]) + 1 if b < B else 0
        k[b, :, n:] = past
        v[b, :, n:] = past
    return q, k, v, pos


@pytest.mark.parametrize("shape", SHAPES)
def test_decode_attention_op_equals_per_row_attention(shape):
    q, k, v, pos = case(shape, seed=sum(shape))
    got = torch.ops.tuna.decode_attention(q, k, v, pos, 1)
    want = per_row_reference(q, k, v, pos)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # bf16 in, bf16 out, within bf16 rounding of the float64 answer on the same bf16 inputs
    qb, kb, vb, _ = (t.bfloat16() if t.is_floating_point() else t for t in (q, k, v, pos))
    got = torch.ops.tuna.decode_attention(qb, kb, vb, pos, 1)
    torch.testing.assert_close(got.double(), per_row_reference(qb, kb, vb, pos), rtol=0, atol=3e-2)


def test_decode_attention_op_registration():
    """Schema, fake (meta) implementation and dispatch are consistent (what torch.compile relies on)."""
    q, k, v, pos = case(SHAPES[0], seed=0)
    torch.library.opcheck(torch.ops.tuna.decode_attention.default, (q, k, v, pos, 2))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fq, fk, fv, fp = (mode.from_tensor(t) for t in (q, k, v, pos))
        out = torch.ops.tuna.decode_attention(fq, fk, fv, fp, 2)
    assert out.shape == q.shape and out.dtype == q.dtype


def test_default_splits():
    assert da.default_splits(16, 8, torch.device("cpu")) == 1  # the reference path does not split


INTERPRETED = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_generate_attn import SHAPES, case, per_row_reference
    from tuna_engine.kernels.decode_attn import decode_attention_triton

    out = []
    for i, shape in enumerate(SHAPES):
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v, pos = case(shape, seed=i, dtype=dtype, past=float("nan"))
            want = per_row_reference(q, k, v, pos)
            for n_split, block_n in ((1, 32), (2, 32), (4, 32), (4, 16)):
                got = decode_attention_triton(q, k, v, pos, n_split, block_n)
                err = (got.double() - want).abs().max().item()
                out.append([list(shape), str(dtype), n_split, block_n, err, got.dtype == dtype])
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_interpreted_on_cpu_equal_per_row_attention():
    """The Triton kernels themselves (split-K and merge), interpreted on CPU: every shape, fp32 and bf16, 1, 2, 4
    splits with 32-key blocks and 4 splits with 16-key blocks. Cache entries past each row's position are NaN: a kernel that read one would
    return NaN. (The interpreter is chosen when triton.jit runs, hence a fresh process.)"""
    rows = run_interpreted(INTERPRETED, str(ENGINE_DIR / "tests"), timeout=300)
    assert len(rows) == len(SHAPES) * 2 * 4
    for shape, dtype, n_split, block_n, err, same_dtype in rows:
        limit = 1e-5 if dtype == "torch.float32" else 3e-2
        assert same_dtype and err < limit, (shape, dtype, n_split, block_n, err)
