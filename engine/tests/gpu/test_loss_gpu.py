"""The Triton cross-entropy kernel (kernels/ce.py, loss.py's default on CUDA) compiled on a GPU, against the eager
chunk loop it replaces (TUNA_CE=eager) and the unfused reference: Qwen3's vocabulary in bf16 with a trainable
output weight, and the logit options (scale, softcap, bias, masked and ignored rows) at a vocabulary that is not a
multiple of the kernel's block, bf16 and fp32."""

from __future__ import annotations

import pytest
import torch

import tuna_engine.kernels.ce as ce
from tuna_engine.loss import default_chunk_rows, linear_cross_entropy, reference_linear_cross_entropy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not ce.available(), reason="triton is not installed"),
]

DEV = torch.device("cuda")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def inputs(n: int, c: int, v: int, dtype: torch.dtype, seed: int = 0, bias: bool = False):
    g = torch.Generator(DEV).manual_seed(seed)
    h = torch.randn(n, c, device=DEV, generator=g).to(dtype)
    w = (torch.randn(v, c, device=DEV, generator=g) * 0.05).to(dtype)
    b = (torch.randn(v, device=DEV, generator=g) * 0.3).to(dtype) if bias else None
    t = torch.randint(0, v, (n,), device=DEV, generator=g)
    tw = torch.rand(n, device=DEV, generator=g) + 0.5
    tw[::7] = 0.0  # masked rows
    t[5] = -100  # an ignored row
    t[1] = v - 1  # the last column (in the partial block)
    return h, w, b, t, tw


def loss_and_grads(impl: str | None, h, w, b, t, tw, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in (h, w) + ((b,) if b is not None else ())]
    bias = leaves[2] if b is not None else None
    loss = linear_cross_entropy(leaves[0], leaves[1], t, tw, bias=bias, impl=impl, **kw)
    grads = torch.autograd.grad(loss * 0.25, leaves)
    return loss.detach(), grads


def test_default_on_cuda_is_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuna_engine.loss import resolve_impl

    monkeypatch.delenv("TUNA_CE", raising=False)
    assert resolve_impl(None, DEV) == "triton"
    monkeypatch.setenv("TUNA_CE", "eager")
    assert resolve_impl(None, DEV) == "eager"


def test_qwen3_vocabulary_bf16_equals_eager_loop() -> None:
    """0.6B's output layer (V = 151,936, C = 1,024), a trainable lm_head, 2,000 rows (chunks of 883, 883, 234): loss
    to fp32 rounding of the eager loop; hidden and weight gradients within a bf16 step of eager's and as close to
    the fp32 unfused reference as eager's."""
    N, C, V = 2000, 1024, 151936
    assert default_chunk_rows(V, DEV) == 883
    h, w, _, t, tw = inputs(N, C, V, torch.bfloat16)
    lk, gk = loss_and_grads("triton", h, w, None, t, tw)
    le, ge = loss_and_grads("eager", h, w, None, t, tw)
    keep = t >= 0
    h32, w32 = h.float().requires_grad_(), w.float().requires_grad_()
    ref = reference_linear_cross_entropy(h32[keep], w32, t[keep], tw[keep])
    gr = torch.autograd.grad(ref * 0.25, (h32, w32))
    assert float((lk - le).abs() / le.abs()) < 1e-5
    assert float((lk - ref).abs() / ref.abs()) < 1e-3  # the bf16 logits' rounding, as eager
    for a, e, r in zip(gk, ge, gr, strict=True):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all()
        assert rel(a, e) <= 2**-8, rel(a, e)
        assert rel(a, r) <= rel(e, r) + 2**-9, (rel(a, r), rel(e, r))
        # masked and ignored rows get no hidden-state gradient
    assert (gk[0][tw == 0] == 0).all() and (gk[0][5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "extra",
    [{"logit_softcap": 30.0}, {"logit_scale": 0.5, "bias": True}, {"logit_scale": 1.7, "logit_softcap": 5.0}],
    ids=["softcap", "scale_bias", "scale_softcap"],
)
def test_logit_options_equal_eager_loop(dtype: torch.dtype, extra: dict) -> None:
    """V = 50,007 (not a multiple of the 4,096-column block), 700 rows at 300-row chunks."""
    kw = dict(extra)
    h, w, b, t, tw = inputs(700, 256, 50007, dtype, seed=3, bias=kw.pop("bias", False))
    lk, gk = loss_and_grads("triton", h, w, b, t, tw, chunk_rows=300, **kw)
    le, ge = loss_and_grads("eager", h, w, b, t, tw, chunk_rows=300, **kw)
    assert float((lk - le).abs() / le.abs()) < 1e-5
    tol = 2**-8 if dtype == torch.bfloat16 else 1e-5
    for a, e in zip(gk, ge, strict=True):
        assert a.dtype == dtype and rel(a, e) <= tol, rel(a, e)


def test_chunk_kernel_equals_eager_body_on_qwen3_chunk() -> None:
    """One 883-row chunk of bf16 logits at Qwen3's vocabulary: per-row losses to fp32 rounding, and the gradient the
    kernel writes over the logits equal to the eager body's bf16 gradient but for values at a rounding boundary."""
    n, V = 883, 151936
    g = torch.Generator(DEV).manual_seed(7)
    z = (torch.randn(n, V, device=DEV, generator=g) * 3).bfloat16()
    t = torch.randint(0, V, (n,), device=DEV, generator=g)
    tw = torch.rand(n, device=DEV, generator=g)
    lr, gr = ce.ce_chunk_reference(z.clone(), t, tw, 1.0, None, True, torch.bfloat16)
    zk = z.clone()
    lk, gk = ce.ce_chunk_triton(zk, t, tw, 1.0, None, True)
    assert gk is not None and gk.data_ptr() == zk.data_ptr()
    assert rel(lk, lr) < 1e-5
    d = (gk.double() - gr.double()).abs()
    assert float((d - 2**-7 * gr.double().abs() - 1e-9).max()) <= 0  # at most one bf16 step apart
    assert float((gk != gr).double().mean()) < 0.01


def test_kernel_path_needs_less_memory_than_eager() -> None:
    """No fp32 copy of a chunk's logits: the kernel path's peak is below the eager loop's."""
    N, C, V = 1800, 1024, 151936
    h, w, _, t, tw = inputs(N, C, V, torch.bfloat16, seed=1)
    peaks = {}
    for impl in ("triton", "eager"):
        hh = h.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        linear_cross_entropy(hh, w, t, tw, impl=impl).backward()
        torch.cuda.synchronize()
        peaks[impl] = torch.cuda.max_memory_allocated() - base
    # eager holds a chunk's bf16 logits, their fp32 copy and the bf16 gradient; the kernel only the bf16 logits
    assert peaks["triton"] < 0.6 * peaks["eager"], {k: v / 2**20 for k, v in peaks.items()}
