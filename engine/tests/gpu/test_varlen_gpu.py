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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("H,KV,D,T", [(32, 8, 128, 2048), (16, 8, 128, 300), (4, 4, 64, 1000)])
def test_cudnn_rows_matches_reference(H: int, KV: int, D: int, T: int) -> None:
    """cuDNN's causal attention on one-sample rows (GQA, lengths not multiples of the tile) against the fp32
    masked reference, forward and the three gradients."""
    torch.manual_seed(1)
    B = 2
    sid = torch.zeros(B, T, dtype=torch.long, device="cuda")
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, KV, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, KV, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    out = llama.cudnn_rows_attention(q, k, v)
    assert out.shape == (B, T, H, D)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = llama.attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2), sid
    )
    ref = ref.transpose(1, 2)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.float())
    assert _rel(out, ref) < 1e-2
    for a, b in zip(grads, ref_grads, strict=True):
        assert _rel(a, b) < 2e-2


def test_auto_picks_cudnn_only_for_one_sample_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    q = torch.zeros(2, 8, 4, 64, device="cuda", dtype=torch.bfloat16)
    one = llama.segments(torch.zeros(2, 8, dtype=torch.long, device="cuda"))
    packed = llama.segments(torch.tensor([[0] * 4 + [1] * 4, [0] * 8], device="cuda"))
    assert one.one_per_row and not packed.one_per_row
    hopper = torch.cuda.get_device_capability()[0] == 9
    assert llama.use_cudnn_rows(q, one) == hopper
    assert not llama.use_cudnn_rows(q, packed)
    monkeypatch.setenv("TUNA_ATTENTION", "cudnn")
    assert llama.use_cudnn_rows(q, one)
    monkeypatch.setenv("TUNA_ATTENTION", "varlen")
    assert not llama.use_cudnn_rows(q, one) and llama.use_varlen(q)
