"""Row argmax of the decode head's logits (issue 7): torch.argmax(x, -1) for x [B, V] with few rows and a wide
vocabulary. Inductor's reduction runs one program per row (16 programs over 151,936 columns: 35 µs on an H200,
a few SMs busy); here the columns are cut into chunks so that B × chunks programs share the card.

    argmax_rows(x [B, V]) → long [B]: exactly torch.argmax(x, -1): the first index of the maximum (ties), and
    the first NaN where a row has one (torch counts NaN as the maximum).

Two kernels: (1) one program per (row, chunk of CHUNK columns) stores the chunk's maximum, the first column
holding it and the first NaN column (V if none); (2) one program per row reduces its chunks in order: the first
NaN if any, else the greatest maximum, the earliest chunk on ties (its column is the smallest). Other devices:
torch.argmax (the reference); under TRITON_INTERPRET=1 the op runs the kernels on CPU tensors too.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

CHUNK = 2048  # columns per program: Qwen3's 151,936 → 75 chunks, 1,200 programs at 16 rows


if triton is not None:

    @triton.jit
    def _argmax_chunk_kernel(X, VAL, IDX, NAN, V, sx_b, n_chunks, CHUNK: tl.constexpr):
        b = tl.program_id(0)
        c = tl.program_id(1)
        cols = c * CHUNK + tl.arange(0, CHUNK)
        ok = cols < V
        x = tl.load(X + b.to(tl.int64) * sx_b + cols, mask=ok, other=float("-inf")).to(tl.float32)
        is_nan = x != x
        first_nan = tl.min(tl.where(is_nan & ok, cols, V), 0)
        x = tl.where(is_nan, float("-inf"), x)
        best = tl.max(x, 0)
        # the first column holding the maximum (an all -inf chunk: its first column; past V: never chosen)
        first = tl.min(tl.where((x == best) & ok, cols, V), 0)
        out = b * n_chunks + c
        tl.store(VAL + out, best)
        tl.store(IDX + out, first)
        tl.store(NAN + out, first_nan)

    @triton.jit
    def _argmax_merge_kernel(VAL, IDX, NAN, OUT, V, n_chunks, C_PAD: tl.constexpr):
        b = tl.program_id(0)
        c = tl.arange(0, C_PAD)
        ok = c < n_chunks
        val = tl.load(VAL + b * n_chunks + c, mask=ok, other=float("-inf"))
        idx = tl.load(IDX + b * n_chunks + c, mask=ok, other=V)
        nan = tl.min(tl.load(NAN + b * n_chunks + c, mask=ok, other=V), 0)
        best = tl.max(val, 0)
        first = tl.min(tl.where((val == best) & ok, idx, V), 0)
        tl.store(OUT + b, tl.where(nan < V, nan, first).to(tl.int64))


def argmax_triton(x: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """The Triton kernels (CUDA, or any device under TRITON_INTERPRET=1): x [B, V] → long [B]."""
    if triton is None:
        raise RuntimeError("argmax_triton needs the triton package")
    B, V = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    n_chunks = -(-V // chunk)
    val = torch.empty(B, n_chunks, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, n_chunks, dtype=torch.int32, device=x.device)
    nan = torch.empty_like(idx)
    out = torch.empty(B, dtype=torch.long, device=x.device)
    _argmax_chunk_kernel[(B, n_chunks)](x, val, idx, nan, V, x.stride(0), n_chunks, CHUNK=chunk)
    _argmax_merge_kernel[(B,)](
        val, idx, nan, out, V, n_chunks, C_PAD=max(16, triton.next_power_of_2(n_chunks))
    )
    return out


@torch.library.custom_op("tuna::argmax_rows", mutates_args=())
def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x [B, V] → long [B], torch.argmax(x, -1)."""
    if triton is not None and x.dim() == 2 and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return argmax_triton(x)
    return x.argmax(-1)


@argmax_rows.register_fake
def _(x):  # noqa: ANN001, ANN202
    return x.new_empty(x.shape[:-1], dtype=torch.long)
