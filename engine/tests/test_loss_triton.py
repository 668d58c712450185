"""The Triton cross-entropy kernel (kernels/ce.py) run by Triton's interpreter on CPU (TRITON_INTERPRET=1), against
the eager chunk body it replaces and against the unfused reference (reference_linear_cross_entropy), forward and
backward: row counts, chunk sizes and vocabularies that are not multiples of the kernel's column block (and a
vocabulary smaller than one block), weights with zeros, an ignored (−100) target, logit scale, softcap, bias, a
trainable and a frozen output weight, fp32 and bf16. (The interpreter is chosen when triton.jit runs, hence a fresh
process; the cases run there and come back as JSON.)"""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
from helpers import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# (rows N, hidden C, vocab V, chunk rows, kernel column block)
SHAPES = [
    (37, 24, 301, 10, 128),
    (5, 16, 1000, 5, 256),
    (24, 32, 517, 24, 64),
    (9, 8, 100, 4, 128),
    (1, 16, 257, 3, 32),
]
EXTRAS = {
    "plain": {},
    "softcap": {"logit_softcap": 3.0},
    "scale_bias": {"logit_scale": 0.7, "bias": True},
    "scale_softcap": {"logit_scale": 1.3, "logit_softcap": 2.0},
}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import tuna_engine.kernels.ce as ce
    from tuna_engine.loss import linear_cross_entropy, reference_linear_cross_entropy

    shapes, extras = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {"model": [], "chunk": []}

    def rel(a, b):
        return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))

    for si, (n, c, v, chunk, block) in enumerate(shapes):
        ce.BLOCK_V = block  # read at call time: every shape runs at its own column block
        for dtype in (torch.float32, torch.bfloat16):
            for name, extra in extras.items():
                g = torch.Generator().manual_seed(100 * si + len(name))
                h = torch.randn(n, c, generator=g).to(dtype)
                w = (torch.randn(v, c, generator=g) * 0.5).to(dtype)
                t = torch.randint(0, v, (n,), generator=g)
                tw = torch.rand(n, generator=g) + 0.5
                if n > 2:
                    tw[n // 2] = 0.0  # a masked row
                    t[-1] = -100  # an ignored row
                    t[0] = v - 1  # the last column (in the partial block)
                kw = dict(extra)
                b = (torch.randn(v, generator=g) * 0.3).to(dtype) if kw.pop("bias", False) else None
                # ground truth: the unfused reference on the same (rounded) inputs in float64, with the ignored
                # row dropped
                keep = t >= 0
                leaves64 = [x.detach().double().requires_grad_() for x in (h, w) + ((b,) if b is not None else ())]
                h64, w64 = leaves64[0], leaves64[1]
                ref64 = reference_linear_cross_entropy(
                    h64[keep], w64, t[keep], tw[keep], bias=leaves64[2] if b is not None else None, **kw
                )
                grads64 = torch.autograd.grad(ref64 * 0.3, leaves64)
                res = {}
                for impl in ("triton", "eager"):
                    leaves = [x.detach().clone().requires_grad_() for x in (h, w) + ((b,) if b is not None else ())]
                    bias = leaves[2] if b is not None else None
                    loss = linear_cross_entropy(
                        leaves[0], leaves[1], t, tw, chunk_rows=chunk, bias=bias, impl=impl, **kw
                    )
                    grads = torch.autograd.grad(loss * 0.3, leaves)  # a non-unit upstream gradient
                    hf = leaves[0].detach().clone().requires_grad_()
                    lf, ghf, lnog = loss.detach(), grads[0] / 0.3, loss.detach()
                    if name == "plain":  # the frozen output weight (only hidden's gradient), and no grad at all
                        lf = linear_cross_entropy(hf, w, t, tw, chunk_rows=chunk, bias=b, impl=impl, **kw)
                        (ghf,) = torch.autograd.grad(lf, (hf,))
                        with torch.no_grad():
                            lnog = linear_cross_entropy(h, w, t, tw, chunk_rows=chunk, bias=b, impl=impl, **kw)
                    res[impl] = (loss.detach(), grads, ghf, lf.detach(), lnog, [x.dtype for x in grads])
                (lt, gt, ghf_t, lf_t, lnog_t, dt), (le, ge, ghf_e, lf_e, lnog_e, _) = res["triton"], res["eager"]
                out["model"].append({
                    "case": [n, c, v, chunk, block, str(dtype), name],
                    "loss_vs_eager": float((lt - le).abs() / le.abs()),
                    "loss_vs_truth": float((lt.double() - ref64.detach()).abs() / ref64.detach().abs()),
                    "eager_loss_vs_truth": float((le.double() - ref64.detach()).abs() / ref64.detach().abs()),
                    "grads_vs_eager": [rel(a, e) for a, e in zip(gt, ge)],
                    "grads_vs_truth": [rel(a, r) for a, r in zip(gt, grads64)],
                    "eager_grads_vs_truth": [rel(e, r) for e, r in zip(ge, grads64)],
                    "frozen_gh_vs_eager": rel(ghf_t, ghf_e),
                    "frozen_loss_vs_eager": float((lf_t - lf_e).abs() / lf_e.abs()),
                    "nograd_loss_vs_eager": float((lnog_t - lnog_e).abs() / lnog_e.abs()),
                    "grad_dtypes_ok": all(d == dtype for d in dt),
                    "finite": bool(torch.isfinite(lt)) and all(bool(torch.isfinite(x).all()) for x in gt),
                })
                # the chunk body alone: the kernel's per-row loss and its gradient (written over the logits)
                # against the eager body's on the same logits
                z = torch.nn.functional.linear(h, w, b)
                tc, twc = t.clamp(min=0), tw.masked_fill(t < 0, 0.0)
                s, cap = kw.get("logit_scale", 1.0), kw.get("logit_softcap")
                lr, gr = ce.ce_chunk_reference(z.clone(), tc, twc, s, cap, True, dtype)
                zk = z.clone()
                lk, gk = ce.ce_chunk_triton(zk, tc, twc, s, cap, True, block=block)
                out["chunk"].append({
                    "case": [n, c, v, chunk, block, str(dtype), name],
                    "rows_loss": float((lk - lr).abs().max() / lr.abs().max()),
                    "in_place": gk.data_ptr() == zk.data_ptr() and gk.dtype == dtype,
                    # one rounding step: the difference of the fp32 gradients rounded to the model dtype
                    "grad_excess": float(((gk.double() - gr.double()).abs()
                                          - (torch.finfo(dtype).eps * gr.double().abs()
                                             + 2e-6 * gr.double().abs().max())).max()),
                    "differ": float((gk != gr).double().mean()),
                    "masked_row_zero": n <= 2 or bool((gk[n // 2] == 0).all()),
                })

    # A target outside [0, V) reads as NaN instead of another row's memory.
    z = torch.randn(3, 50)
    lk, _ = ce.ce_chunk_triton(z, torch.tensor([1, 50, 2]), torch.ones(3), 1.0, None, False, block=32)
    out["bad_target"] = [bool(torch.isnan(x)) for x in lk]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(SCRIPT, json.dumps(SHAPES), json.dumps(EXTRAS), env={"TUNA_CE": "auto"})


def test_every_case_ran(interpreted: dict) -> None:
    assert len(interpreted["model"]) == len(interpreted["chunk"]) == len(SHAPES) * 2 * len(EXTRAS)


def test_fp32_equals_eager_and_unfused(interpreted: dict) -> None:
    """fp32: loss and every gradient within fp32 rounding of the eager chunk loop and of the float64 truth."""
    for r in interpreted["model"]:
        if r["case"][5] != "torch.float32":
            continue
        assert r["finite"] and r["grad_dtypes_ok"], r
        assert r["loss_vs_eager"] <= 1e-6 and r["loss_vs_truth"] <= 1e-6, r
        assert max(r["grads_vs_eager"]) <= 2e-6 and max(r["grads_vs_truth"]) <= 2e-6, r
        assert r["frozen_gh_vs_eager"] <= 2e-6 and r["frozen_loss_vs_eager"] <= 1e-6, r
        assert r["nograd_loss_vs_eager"] <= 1e-6, r


def test_bf16_as_close_to_the_truth_as_eager(interpreted: dict) -> None:
    """bf16: the loss (fp32 math on the bf16 logits) equals eager's to fp32 rounding; the gradients, which the bf16
    GEMMs round, are as close to the float64 truth as eager's and within a bf16 step of eager's (the kernel rounds
    ∂CE/∂z to nearest even as torch does; a truncating cast made them twice as far from the truth)."""
    for r in interpreted["model"]:
        if r["case"][5] != "torch.bfloat16":
            continue
        assert r["finite"] and r["grad_dtypes_ok"], r
        assert r["loss_vs_eager"] <= 2e-6 and r["nograd_loss_vs_eager"] <= 2e-6, r
        assert r["frozen_loss_vs_eager"] <= 2e-6, r
        assert r["loss_vs_truth"] <= r["eager_loss_vs_truth"] + 2e-6, r
        for ours, eager in zip(r["grads_vs_truth"], r["eager_grads_vs_truth"], strict=True):
            assert ours <= eager + 2**-9, r
        assert max(r["grads_vs_eager"]) <= 2**-8 and r["frozen_gh_vs_eager"] <= 2**-8, r


def test_chunk_kernel_equals_eager_body(interpreted: dict) -> None:
    """The kernel alone on the same logits: per-row losses to fp32 rounding; the gradient, written in place in the
    logits' dtype, within one rounding step of the eager body's; a weight-0 row's gradient exactly 0."""
    for r in interpreted["chunk"]:
        assert r["rows_loss"] <= 2e-6, r
        assert r["in_place"] and r["masked_row_zero"], r
        assert r["grad_excess"] <= 0, r
        if r["case"][5] == "torch.bfloat16":  # rounded alike: only values at a rounding boundary may differ
            assert r["differ"] <= 0.01, r


def test_out_of_range_target_is_nan(interpreted: dict) -> None:
    assert interpreted["bad_target"] == [False, True, False]
