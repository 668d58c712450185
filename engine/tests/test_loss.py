"""The chunked linear cross-entropy (loss.py) against the unfused computation: value and gradients."""

from __future__ import annotations

import pytest
import torch

from tuna_engine.loss import default_chunk_rows, linear_cross_entropy, reference_linear_cross_entropy


def case(dtype: torch.dtype, n: int = 37, c: int = 24, v: int = 301, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, c, generator=g)).to(dtype).requires_grad_()
    w = (torch.randn(v, c, generator=g) * 0.5).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    tw = torch.rand(n, generator=g) + 0.5
    return h, w, t, tw


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 100])
@pytest.mark.parametrize(
    "extra", [{}, {"logit_softcap": 3.0}, {"logit_scale": 0.7}], ids=["plain", "softcap", "scale"]
)
def test_matches_unfused_fp32(chunk: int, extra: dict) -> None:
    h, w, t, tw = case(torch.float32)
    ref = reference_linear_cross_entropy(h, w, t, tw, **extra)
    gh_ref, gw_ref = torch.autograd.grad(ref * 0.3, (h, w))
    got = linear_cross_entropy(h, w, t, tw, chunk_rows=chunk, **extra)
    gh, gw = torch.autograd.grad(got * 0.3, (h, w))  # a non-unit upstream gradient, as loss/Σw gives
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float((got - ref).detach().abs()) <= 1e-6 * float(ref.detach().abs())
    assert float((gh - gh_ref).abs().max()) <= 1e-6 * float(gh_ref.abs().max())
    assert float((gw - gw_ref).abs().max()) <= 1e-6 * float(gw_ref.abs().max())


def test_bf16_matches_unfused_within_rounding() -> None:
    """bf16 hidden/weight: the matmuls run in bf16 as in the unfused path; W's gradient is summed over chunks
    in fp32, so it is at least as close to the fp32 result as the unfused bf16 one."""
    h, w, t, tw = case(torch.bfloat16, n=64)
    ref = reference_linear_cross_entropy(h, w, t, tw)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    got = linear_cross_entropy(h, w, t, tw, chunk_rows=8)
    gh, gw = torch.autograd.grad(got, (h, w))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    assert float((got - ref).detach().abs()) <= 1e-5 * float(ref.detach().abs())
    assert float((gh.float() - gh_ref.float()).abs().max()) <= 1e-2 * float(gh_ref.float().abs().max())
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    gw32 = torch.autograd.grad(reference_linear_cross_entropy(h32, w32, t, tw), w32)[0]
    ours_err = float((gw.float() - gw32).abs().max())
    assert ours_err <= float((gw_ref.float() - gw32).abs().max()) + 1e-3 * float(gw32.abs().max())


def test_only_requested_gradients_and_no_grad_mode() -> None:
    h, w, t, tw = case(torch.float32)
    w_frozen = w.detach()
    got = linear_cross_entropy(h, w_frozen, t, tw, chunk_rows=7)
    (gh,) = torch.autograd.grad(got, (h,))
    gh_ref = torch.autograd.grad(reference_linear_cross_entropy(h, w_frozen, t, tw), h)[0]
    assert float((gh - gh_ref).abs().max()) <= 1e-6 * float(gh_ref.abs().max())
    with torch.no_grad():
        v = linear_cross_entropy(h, w, t, tw, chunk_rows=7)
    assert not v.requires_grad
    assert float(v) == pytest.approx(float(reference_linear_cross_entropy(h, w, t, tw)), rel=1e-6)


def test_default_chunk_keeps_logits_small() -> None:
    assert default_chunk_rows(151936) * 151936 * 4 <= 64 * 2**20
    assert default_chunk_rows(151936, "cuda") * 151936 * 4 <= 512 * 2**20
    assert default_chunk_rows(256) == 4096


def test_output_bias_gets_its_gradient() -> None:
    """Some architectures (Phi) have a bias on lm_head; the generic backend passes it in."""
    h, w, t, tw = case(torch.float32)
    b = (torch.randn(w.shape[0]) * 0.3).requires_grad_()
    ref = reference_linear_cross_entropy(h, w, t, tw, bias=b)
    refs = torch.autograd.grad(ref, (h, w, b))
    got = linear_cross_entropy(h, w, t, tw, chunk_rows=6, bias=b)
    gots = torch.autograd.grad(got, (h, w, b))
    assert float((got - ref).detach().abs()) <= 1e-6 * float(ref.detach().abs())
    for g, r in zip(gots, refs, strict=True):
        assert float((g - r).abs().max()) <= 1e-6 * float(r.abs().max())


def test_ignored_targets_count_as_weight_zero() -> None:
    """Targets < 0 (an ignore_index, −100) add nothing to the loss or the gradients: as if the rows were dropped."""
    h, w, t, tw = case(torch.float32)
    t = t.clone()
    t[[2, 9, 30]] = -100
    keep = t >= 0
    ref = reference_linear_cross_entropy(h[keep], w, t[keep], tw[keep])
    refs = torch.autograd.grad(ref, (h, w))
    got = linear_cross_entropy(h, w, t, tw, chunk_rows=8)
    gots = torch.autograd.grad(got, (h, w))
    assert float((got - ref).detach().abs()) <= 1e-6 * float(ref.detach().abs())
    for g, r in zip(gots, refs, strict=True):
        assert float((g - r).abs().max()) <= 1e-6 * float(r.abs().max())
    assert (gots[0][~keep] == 0).all()


def test_implementation_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """TUNA_CE / impl= pick the chunk body: auto is the eager loop off CUDA; an unknown name is a PLAN_INVALID
    error naming the variable and the choices."""
    from tuna_engine.errors import EngineError
    from tuna_engine.loss import resolve_impl

    cpu = torch.device("cpu")
    monkeypatch.delenv("TUNA_CE", raising=False)
    assert resolve_impl(None, cpu) == "eager"
    monkeypatch.setenv("TUNA_CE", "eager")
    assert resolve_impl(None, cpu) == "eager"
    assert resolve_impl("auto", cpu) == "eager"  # impl= wins over the environment
    monkeypatch.setenv("TUNA_CE", "fused")
    with pytest.raises(EngineError) as e:
        resolve_impl(None, cpu)
    assert e.value.code == "PLAN_INVALID" and "TUNA_CE" in e.value.message and "'fused'" in e.value.message
    assert "auto, eager, triton" in e.value.message
    h, w, t, tw = case(torch.float32)
    with pytest.raises(EngineError):
        linear_cross_entropy(h, w, t, tw)
