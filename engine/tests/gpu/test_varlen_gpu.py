"""The flash-attention varlen path equals the SDPA block-mask reference on packed batches (forward and
backward), including rows with padding and samples of odd lengths."""

import pytest
import torch

from tuna_engine.models import llama

pytestmark = pytest.mark.gpu


def packed_sample_ids(lengths_per_row: list[list[int]], T: int) -> torch.Tensor:
    rows = []
    for lens in lengths_per_row:
        ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
        pad = T - len(ids)
        rows.append(torch.cat([ids, torch.full((pad,), len(lens))]) if pad else ids)
    return torch.stack(rows).cuda()


@pytest.mark.skipif(llama._VARLEN is None, reason="this PyTorch has no torch.nn.attention.varlen")
@pytest.mark.parametrize("H,KV,D", [(16, 8, 128), (4, 4, 64), (32, 8, 128)])
def test_varlen_matches_sdpa(H: int, KV: int, D: int) -> None:
    torch.manual_seed(0)
    T = 300
    sid = packed_sample_ids([[7, 150, 1, 100], [300], [33, 17]], T)
    B = sid.shape[0]
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, KV, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, KV, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)

    out = llama.varlen_attention(q, k, v, llama.segments(sid))
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = llama.attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2), sid
    )
    ref = ref.transpose(1, 2)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.float())

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm())

    assert rel(out, ref) < 1e-2
    for a, b in zip(grads, ref_grads, strict=True):
        assert rel(a, b) < 2e-2
