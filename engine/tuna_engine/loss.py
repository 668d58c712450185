"""Σ w·CE of the output layer, computed in row chunks so the [N, vocab] fp32 logits never exist at once.

With a 151,936-token vocabulary the logits dominate a small model's memory and time: 1,000 trained targets
are 600 MB of fp32 logits, plus as much again for their gradient. `linear_cross_entropy` is a "fused linear
cross-entropy" (as in Liger-Kernel / Apple's Cut Cross-Entropy, done chunk-wise in PyTorch): for each chunk
of rows it computes the logits, their log-sum-exp and, when a gradient is needed, the gradient of the loss
with respect to the chunk's hidden states (and the output weight, when it trains) right away, then drops the
chunk's logits. Backward only scales the stored gradients by the incoming scalar, so the vocabulary matmul
runs once forward and twice for the gradients, never a third time for a recomputation, and the peak holds
one chunk of logits.

The math is the unfused path's, written out: logits = h Wᵀ in the model dtype, cast to fp32 (then, for
models that have them, × logit_scale and soft-capped c·tanh(z/c)); CE = logsumexp(z) − z[target];
∂CE/∂z = softmax(z) − onehot(target) (what F.cross_entropy's backward computes); the gradient of z enters
the two matmuls in the model dtype, as autograd's backward of `.float()` gives it. The output-weight
gradient is summed over chunks in fp32.

The loop body between the logits GEMM and the gradient GEMMs has two implementations (kernels/ce.py), chosen by
`impl=` or the TUNA_CE environment variable (auto | eager | triton):
  - triton (auto's choice on CUDA where triton imports): one kernel reads each row's logits twice in the model
    dtype (online max/log-sum-exp in fp32, then the gradient) and writes w·∂CE/∂z over them, in place, in the
    dtype of the gradient GEMMs: ~0.8 GB of traffic for an 883-row chunk of Qwen3's vocabulary instead of ~6 GB;
  - eager (auto's choice elsewhere; the A/B baseline on GPU with TUNA_CE=eager): the PyTorch passes above.
Targets < 0 (an ignore_index such as −100) count as weight 0 in both.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from .errors import EngineError
from .kernels import ce

# Rows per chunk: about 64 MiB of fp32 logits per chunk on CPU (110 rows for Qwen3's 151,936-token
# vocabulary; measured there, bigger chunks are not faster, docs/engine.md), 512 MiB on a GPU (883 rows: each
# chunk's matmuls stay large enough to fill the card), 4096 rows at most.
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 512 * 2**20}
MAX_CHUNK_ROWS = 4096


def default_chunk_rows(vocab: int, device: torch.device | str = "cpu") -> int:
    budget = CHUNK_BYTES.get(torch.device(device).type, CHUNK_BYTES["cpu"])
    return max(1, min(MAX_CHUNK_ROWS, budget // (4 * vocab)))


IMPLS = ("auto", "eager", "triton")


def resolve_impl(impl: str | None, device: torch.device) -> str:
    """`impl`, else TUNA_CE, else auto → "eager" or "triton". auto is triton on CUDA where triton imports."""
    choice = impl or os.environ.get("TUNA_CE") or "auto"
    if choice not in IMPLS:
        where = "impl" if impl else "environment variable TUNA_CE"
        raise EngineError(
            "PLAN_INVALID",
            f"{where}: {choice!r} is not a cross-entropy implementation; expected one of {', '.join(IMPLS)}",
            hint="unset TUNA_CE for the default (triton on CUDA, eager elsewhere)",
        )
    if choice == "auto":
        return "triton" if device.type == "cuda" and ce.available() else "eager"
    if choice == "triton" and not ce.available():
        raise EngineError(
            "PLAN_INVALID",
            "TUNA_CE=triton: triton is not installed",
            hint="pip install triton, or set TUNA_CE=eager (the PyTorch loop)",
        )
    return choice


def _chunk_triton(
    z: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    scale: float,
    softcap: float | None,
    grad: bool,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ce.ce_chunk_reference's signature over the kernel. z is F.linear's output, in the model dtype
    (= out_dtype): the kernel writes the gradient over it."""
    loss, g = ce.ce_chunk_triton(z, targets, weight, scale, softcap, grad)
    return loss, (g.to(out_dtype) if g is not None else None)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,  # [N, C]
        weight: torch.Tensor,  # [V, C]
        bias: torch.Tensor | None,  # [V] (a few architectures' lm_head has one)
        targets: torch.Tensor,  # [N] int64
        token_weight: torch.Tensor,  # [N] fp32
        chunk: int,
        scale: float,
        softcap: float | None,
        impl: str,
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        need_grad = need_h or need_w or need_b
        N = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        run_chunk = _chunk_triton if impl == "triton" else ce.ce_chunk_reference
        for s in range(0, N, chunk):
            h = hidden[s : s + chunk]
            z = F.linear(h, weight, bias)  # [n, V] in the model dtype
            tgt, w = targets[s : s + chunk], token_weight[s : s + chunk]
            loss_rows, g = run_chunk(z, tgt, w, scale, softcap, need_grad, hidden.dtype)
            total += loss_rows.sum()
            if g is not None:
                # g = w·∂CE/∂z [n, V] in the model dtype: the two gradient GEMMs run in it, as autograd's backward
                # of the unfused path's `.float()` gives them.
                if grad_h is not None:
                    torch.matmul(g, weight, out=grad_h[s : s + chunk])
                if grad_w is not None:
                    grad_w += (g.t() @ h).float()
                if grad_b is not None:
                    grad_b += g.float().sum(0)
            del z, g  # before the next chunk's logits are allocated: the peak holds one chunk's
        # Intermediates (not inputs or outputs), so kept on ctx rather than through save_for_backward.
        ctx.grad_h, ctx.grad_w, ctx.grad_b, ctx.weight_dtype = grad_h, grad_w, grad_b, weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.grad_h, ctx.grad_w, ctx.grad_b
        ctx.grad_h = ctx.grad_w = ctx.grad_b = None
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        gb = (grad_b * grad_out).to(ctx.weight_dtype) if grad_b is not None else None
        return gh, gw, gb, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    *,
    chunk_rows: int | None = None,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
    bias: torch.Tensor | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Σ_i token_weight[i]·CE(hidden[i] Wᵀ + b, targets[i]) as a 0-dim fp32 tensor, differentiable in hidden and W.

    hidden [N, C] (model dtype), weight [V, C], targets [N] int (< 0: ignored, as weight 0), token_weight [N]
    float. Rows with weight 0 cost as much as the others: drop them before calling. impl: "auto" | "eager" |
    "triton" (None: the TUNA_CE environment variable, else auto; module docstring).
    """
    chunk = chunk_rows or default_chunk_rows(weight.shape[0], weight.device)
    targets = targets.long()
    token_weight = token_weight.float()
    ignored = targets < 0
    targets = targets.clamp(min=0)
    token_weight = token_weight.masked_fill(ignored, 0.0)
    impl = resolve_impl(impl, hidden.device)
    if impl == "triton" and any(type(x) not in (torch.Tensor, torch.nn.Parameter) for x in (hidden, weight)):
        impl = "eager"  # a tensor subclass (FSDP's DTensor, a quantized weight) goes through PyTorch's ops
    return _LinearCrossEntropy.apply(
        hidden,
        weight,
        bias,
        targets,
        token_weight,
        chunk,
        float(logit_scale),
        logit_softcap,
        impl,
    )


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    *,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unfused computation (all logits at once), the reference `linear_cross_entropy` is tested against."""
    z = F.linear(hidden, weight, bias).float() * logit_scale
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    return (F.cross_entropy(z, targets.long(), reduction="none") * token_weight.float()).sum()
