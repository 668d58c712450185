"""LoRA (Hu et al. 2021), rsLoRA (Kalajdzievski 2023) and DoRA (Liu et al. 2024), built into the model's linears.

`Linear` is an `nn.Linear` look-alike whose base parameters keep their names (`weight`, `bias`), so a Hugging
Face checkpoint loads unchanged, and whose adapter parameters use peft's names (`lora_A.weight`,
`lora_B.weight`, `lora_magnitude_vector`), so the saved adapter is peft's layout with a `base_model.model.`
prefix. The math follows peft 0.21 `tuners/lora/layer.py` + `dora.py` line by line, including:
  - adapter weights in fp32 while the frozen base is bf16/fp16 (peft's `autocast_adapter_dtype`), the input
    cast to fp32 for the adapter path and the sum cast back to the base dtype;
  - DoRA's weight norm ||W + s·BA||_row computed from a detached BA and itself detached (DoRA paper §4.3:
    treating the norm as a constant saves memory and barely changes the gradient).
QLoRA: `Linear.to_4bit_base()` swaps the 16-bit `weight`/`bias` for a `base_layer` (quant/Linear4bit, NF4,
every piece of state a registered tensor, so FSDP2 can shard it), as peft wraps a bitsandbytes layer; the
adapter math is unchanged and sees the dequantized weight where it needs W (DoRA's norm, merging).
`train.base_precision: "fp8"`: `Linear.to_fp8_base()` does the same with an FP8 base (fp8.Fp8Linear) after
loading; the adapter branch still reads x in the activations' dtype, only the base GEMMs change.

Two ways to compute the adapter branch (`Linear.lora_compute`, the plan's `train.lora_compute`):
  - "exact": peft's math above, bit for bit: x cast to fp32 for every adapted projection (q, k and v each make
    their own fp32 copy of the same x, kept for backward), fp32 GEMMs.
  - "auto": `LoraFunction`, a custom autograd Function: s·(x Aᵀ)Bᵀ in x's dtype with A, B cast per call
    (tiny), added to the base output by the GEMM itself (addmm); saves only x (the very tensor the base GEMM
    saves) and xA [N, r]. Projections that read the same x (q/k/v; gate/up) share one x·[A_q; A_k; A_v]ᵀ GEMM
    and one dx GEMM (`lora_forward`). DoRA and dropout > 0 in training take the exact path. In fp32 it is the
    same math as "exact" up to summation order.
    How the product reaches the base output (`set_lora_add`, TUNA_LORA_ADD):
      "auto" (default): "epilogue" for groups reading ≥ EPILOGUE_MIN_IN_FEATURES (4096) input features, "inplace"
        for narrower ones (measured: the comment at EPILOGUE_MIN_IN_FEATURES).
      "epilogue": for a group of plain frozen 16-bit projections without bias, `LoraLinearFunction`
        computes base and adapter together: the adapter product first, then the base GEMM adds it as cuBLAS's C
        (read in the epilogue of a compute-bound GEMM) through tuna::lora_addmm_, in place; the backward's dx
        likewise. Other groups (NF4, FP8, biased, DoRA, "exact") take the paths below as "inplace" does.
      "augmented": each group's frozen weights stored in one buffer with room for the adapters (`FusedGroup`,
        set up by the trainer in one-process runs: `fuse_projection_groups`), so that the forward is one GEMM a
        group with no C to read, [x | x·Aᵀ]·[W | s·B]ᵀ, and dx one frozen GEMM a group adding into g·A
        (`LoraFusedFunction`). Groups it cannot hold take "inplace". Not the default: a first version (dx as
        [dy | g]·[W; A], for which the compiler copied each group's whole gradient) ran 2% slower than "auto" on
        Qwen3-8B with 0.8 GiB more; this one is CPU-tested, not measured (session 13, docs/performance.md).
      "inplace": added into the base output's own memory by the custom op tuna::lora_addmm_ (the same
        cuBLAS call as "gemm": the same numbers), which Inductor runs in place on the base GEMM's buffer — no copy
        (CPU test on the generated code). Measured on an H200 (session 10, docs/benchmarks.md) against "gemm" in
        the same runs: +2.9% and +4.0% tokens/s for Qwen3-0.6B (defaults; elementwise speed setting), +2.4% and
        +3.0% for 8B; the 200-step fast-path loss curve passed with it. Plain 16-bit bases without bias only;
        the others (NF4, FP8, biased) take "separate".
      "gemm": as addmm's C. cuBLAS writes C in place, so an addmm into a new tensor (Inductor's, in compiled
        layers) makes ATen copy the base output first: 7 device-to-device copies a Qwen3 layer and pass.
      "separate": the product as its own GEMM, added elementwise (one more rounding to 16 bits, as peft's own path
        has). In compiled layers Inductor folds the add back into addmm wherever a user of the sum is not
        pointwise, so only o and down lose their copy: measured on an H200 (session 9, docs/benchmarks.md) 394 →
        282 copies a 0.6B step, +0.4–2.1%, within run-to-run spread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import EngineError
from .fp8 import Fp8Linear
from .protocol import LORA_PROJECTIONS, LoraSpec
from .quant import Linear4bit

PEFT_PREFIX = "base_model.model."


def lora_scaling(spec: LoraSpec) -> float:
    return spec.alpha / math.sqrt(spec.r) if spec.use_rslora else spec.alpha / spec.r


def resolve_targets(spec: LoraSpec) -> tuple[str, ...]:
    """ "all-linear" means every projection of the decoder, never the output layer (as in peft)."""
    if "all-linear" in spec.target_modules:
        return LORA_PROJECTIONS
    return tuple(t for t in LORA_PROJECTIONS if t in spec.target_modules)


class Linear(nn.Module):
    """y = x Wᵀ + b [+ LoRA/DoRA delta]. Shapes: x [..., in_features] → y [..., out_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool, lora: LoraSpec | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        # QLoRA: the frozen NF4 base; base_precision fp8: the FP8 base (fp8.py). Then weight/bias are None.
        self.base_layer: Linear4bit | Fp8Linear | None = None
        self.lora = lora
        if lora is not None:
            self.scaling = lora_scaling(lora)
            self.lora_A = nn.Linear(in_features, lora.r, bias=False, dtype=torch.float32)
            self.lora_B = nn.Linear(lora.r, out_features, bias=False, dtype=torch.float32)
            self.lora_dropout = nn.Dropout(lora.dropout) if lora.dropout > 0 else nn.Identity()
            if lora.use_dora:
                self.lora_magnitude_vector = nn.Parameter(torch.empty(out_features, dtype=torch.float32))
        # "exact" (peft's fp32 adapter math) unless the trainer asks for "auto" (set_lora_compute).
        self.lora_compute = "exact"
        # TUNA_LORA_ADD=augmented: (the FusedGroup holding this weight, this projection's place in it)
        self.fused: tuple[FusedGroup, int] | None = None

    def to_4bit_base(self, compute_dtype: torch.dtype) -> None:
        """Replace the 16-bit weight (and bias) by an empty NF4 `base_layer` on the same device (the meta
        device while a model is built); the loader fills it (models/__init__.py)."""
        device = self.weight.device
        del self.weight, self.bias
        self.weight = self.bias = None  # type: ignore[assignment]
        self.base_layer = Linear4bit(
            self.in_features, self.out_features, False, compute_dtype=compute_dtype, device=device
        )

    @torch.no_grad()
    def to_fp8_base(self, grad_dtype: torch.dtype = torch.float8_e4m3fn) -> None:
        """Replace the loaded 16-bit weight (and bias) by an FP8 `base_layer` (fp8.Fp8Linear, per-channel
        scales) on the same device; the 16-bit tensors are dropped (`train.base_precision: "fp8"`)."""
        base = Fp8Linear.from_weight(self.weight, self.bias, grad_dtype)
        del self.weight, self.bias
        self.weight = self.bias = None  # type: ignore[assignment]
        self.base_layer = base

    def base_weight(self) -> torch.Tensor:
        """The frozen [out, in] base weight: the parameter, or the NF4 base dequantized (no grad)."""
        return self.weight if self.base_layer is None else self.base_layer.dequantize()

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.base_layer is not None:
            return self.base_layer(x)
        return F.linear(x, self.weight, self.bias)

    def base_bias(self) -> torch.Tensor | None:
        return self.bias if self.base_layer is None else self.base_layer.bias

    @torch.no_grad()
    def reset_lora(self) -> None:
        """peft's default init: A ~ kaiming-uniform(a=√5), B = 0 (so the adapter starts as a no-op); DoRA's
        magnitude = ||W + s·BA||_row = ||W||_row."""
        if self.lora is None:
            return
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        if self.lora.use_dora:
            self.lora_magnitude_vector.copy_(self.dora_weight_norm(self.base_weight().float()))

    def dora_weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """||W + s·BA|| over each output row, shape [out_features]; BA enters detached (peft `get_weight_norm`)."""
        lora_weight = (self.lora_B.weight @ self.lora_A.weight).to(weight.dtype).detach()
        return torch.linalg.norm(weight + self.scaling * lora_weight, dim=1).to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lora_forward((self,), x)[0]

    def fast_path(self, x: torch.Tensor, base: torch.Tensor) -> bool:
        """Whether the adapter branch goes through `LoraFunction` for this call."""
        return (
            self.lora is not None
            and self.lora_compute == "auto"
            and not self.lora.use_dora
            and (self.lora.dropout == 0 or not self.training)
            and base.dtype == x.dtype
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        )

    def exact_forward(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """peft's adapter math on top of the base output `result` (the "exact" path)."""
        if self.lora is None:
            return result
        out_dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype)
        if not self.lora.use_dora:
            result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        else:
            # peft DoraLinearLayer.forward: (m/||W+sBA|| - 1)·(xWᵀ) + (m/||W+sBA||)·s·B(A(x)), norm detached.
            weight = self.base_weight().to(x.dtype)
            norm = self.dora_weight_norm(weight).detach()
            mag_norm_scale = (self.lora_magnitude_vector / norm).view(1, -1)
            bias = self.base_bias()
            if isinstance(self.lora_dropout, nn.Identity) or not self.training:
                base_result = result if bias is None else result - bias
            else:
                x = self.lora_dropout(x)
                base_result = F.linear(x, weight)
            lora_result = self.lora_B(self.lora_A(x))
            result = result + (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * self.scaling
        return result.to(out_dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight with the adapter folded in, computed in fp32 (peft `merge` / DoRA `merge_safe`)."""
        w = self.base_weight().float()
        if self.lora is None:
            return w
        delta = self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        if not self.lora.use_dora:
            return w + delta
        norm = torch.linalg.norm(w + delta, dim=1)
        return (self.lora_magnitude_vector.float() / norm).view(-1, 1) * (w + delta)

    def extra_repr(self) -> str:
        lora = "" if self.lora is None else f", lora_r={self.lora.r}, dora={self.lora.use_dora}"
        return f"in={self.in_features}, out={self.out_features}, bias={self.base_bias() is not None}{lora}"


def lora_forward(linears: Sequence[Linear], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of `linears`, which all read the same x [..., in]: base GEMMs, then the adapters. Those on
    the fast path with one scaling go through ONE `LoraFunction` (q/k/v: x·[A_q; A_k; A_v]ᵀ is one GEMM of
    width 3r, and dx one GEMM); the others (DoRA, dropout, "exact") each take peft's path. With
    TUNA_LORA_ADD=epilogue a group of plain frozen 16-bit projections without bias, all on the fast path, goes
    through `LoraLinearFunction` instead: base and adapter in one Function ("auto", the default: when x is at
    least EPILOGUE_MIN_IN_FEATURES wide)."""
    group = _fused_group(linears, x)
    if group is not None:  # TUNA_LORA_ADD=augmented
        params: list[torch.Tensor] = []
        for lin in linears:
            params += [lin.lora_A.weight, lin.lora_B.weight]
        return list(
            LoraFusedFunction.apply(
                x, group.weight, tuple(group.outs), tuple(group.ranks), group.scaling, *params
            )
        )
    if _epilogue_group(linears, x):
        args: list[torch.Tensor] = []
        for lin in linears:
            args += [lin.weight, lin.lora_A.weight, lin.lora_B.weight]
        return list(LoraLinearFunction.apply(x, linears[0].scaling, *args))
    ys = [lin.base_forward(x) for lin in linears]
    fast = [i for i, (lin, y) in enumerate(zip(linears, ys, strict=True)) if lin.fast_path(x, y)]
    if fast and len({linears[i].scaling for i in fast}) > 1:
        # Different scalings (impossible with one LoraSpec per model): the others take the exact path.
        fast = fast[:1]
    for i, lin in enumerate(linears):
        if i not in fast:
            ys[i] = lin.exact_forward(x, ys[i])
    if fast:
        args: list[torch.Tensor] = []
        for i in fast:
            args += [ys[i], linears[i].lora_A.weight, linears[i].lora_B.weight]
        # "inplace" only into outputs of plain 16-bit GEMMs without bias: those own their memory (a biased
        # F.linear on 3-D input returns a view, which autograd will not let a Function of several outputs write
        # into); NF4 / FP8 bases take "separate" (LoraFunction.forward).
        inplace = _lora_add not in ("gemm", "separate") and all(
            linears[i].bias is None and linears[i].weight is not None and ys[i].is_contiguous() for i in fast
        )  # contiguous: the reshape in LoraFunction must be a view of y, or the add would land in a copy
        outs = LoraFunction.apply(x, linears[fast[0]].scaling, inplace, *args)
        for i, y in zip(fast, outs, strict=True):
            ys[i] = y
    return ys


LORA_ADDS = ("auto", "epilogue", "augmented", "inplace", "gemm", "separate")
_lora_add = "auto"
# "auto" takes "epilogue" for groups reading at least this many input features, "inplace" below. Measured on an H200
# (session 13, docs/benchmarks.md; epilogue against inplace in the same runs): Qwen3-8B (every group reads 4096 or
# 12288) +2.3% tokens/s; Qwen3-0.6B (1024 to 3072) −1.9%: the base GEMM's read of C in its epilogue is not hidden
# (an 8B gate/up GEMM takes 59 µs more with it, ~5%), and what it saves is worth less on small GEMMs.
# Wider models (Qwen3-14B/32B in bf16, 5120) take epilogue by the same rule: not measured.
EPILOGUE_MIN_IN_FEATURES = 4096


def lora_add_mode() -> str:
    """TUNA_LORA_ADD as set (set_lora_add)."""
    return _lora_add


def _plain_adapted(lin: Linear) -> bool:
    """A frozen plain base (no NF4/FP8 layer, no bias) in 16 bits or fp32, with a LoRA adapter on the fast path
    ("auto", not DoRA): what LoraLinearFunction and FusedGroup can compute (dropout: each checks its own case)."""
    return (
        lin.lora is not None
        and lin.lora_compute == "auto"
        and not lin.lora.use_dora
        and lin.base_layer is None
        and lin.bias is None
        and not lin.weight.requires_grad
        and lin.weight.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


def _epilogue_group(linears: Sequence[Linear], x: torch.Tensor) -> bool:
    """Whether `linears` (reading x) go through LoraLinearFunction: TUNA_LORA_ADD "epilogue", or "auto" with x at
    least EPILOGUE_MIN_IN_FEATURES wide; every one `_plain_adapted` with a weight of x's dtype and no dropout
    while training, all of one scaling."""
    wide = x.shape[-1] >= EPILOGUE_MIN_IN_FEATURES
    return (
        (_lora_add == "epilogue" or (_lora_add == "auto" and wide))
        and all(
            _plain_adapted(lin)
            and lin.weight.dtype == x.dtype
            and (lin.lora.dropout == 0 or not lin.training)  # type: ignore[union-attr]
            for lin in linears
        )
        and len({lin.scaling for lin in linears}) == 1
    )


@torch.library.custom_op("tuna::lora_addmm_", mutates_args=("y",))
def lora_addmm_(y: torch.Tensor, xa: torch.Tensor, bt: torch.Tensor, alpha: float) -> None:
    """y += alpha·(xa @ bt), in y's own memory (TUNA_LORA_ADD inplace and epilogue; augmented's dx). The same cuBLAS
    call as addmm with y as C, so the same numbers; but opaque to Inductor, whose reinplace pass then runs it on the
    buffer of the GEMM that made y — where Inductor's own addmm gets a new output buffer that ATen first fills with
    a copy of y."""
    y.addmm_(xa, bt, alpha=alpha)


@lora_addmm_.register_fake
def _lora_addmm_fake(y: torch.Tensor, xa: torch.Tensor, bt: torch.Tensor, alpha: float) -> None:
    return None


def set_lora_add(mode: str | None) -> None:
    """TUNA_LORA_ADD (module docstring): "auto" (None: the default), "epilogue", "augmented", "inplace", "gemm" or
    "separate"; anything else names the variable."""
    global _lora_add
    mode = mode or "auto"
    if mode not in LORA_ADDS:
        raise EngineError(
            "PLAN_INVALID",
            f"environment variable TUNA_LORA_ADD: {mode!r} is not one of {', '.join(LORA_ADDS)}",
            hint="unset it for the default (auto)",
        )
    _lora_add = mode


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result. On CUDA a 16-bit GEMM writes fp32 directly (cuBLAS accumulates in fp32;
    `out_dtype` skips the rounding to 16 bits); elsewhere the product is cast once."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).float()


def _x_times_a(
    x: torch.Tensor, As: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x2 = x as [N, in] (a view), a = [A_1;…;A_k] in x's dtype [Σr, in], xa = x2·aᵀ [N, Σr]): x read once for all."""
    x2 = x.reshape(-1, x.shape[-1])
    a = torch.cat(list(As)).to(x.dtype) if len(As) > 1 else As[0].to(x.dtype)
    return x2, a, x2 @ a.t()


def _g(dy2: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor], s: float) -> torch.Tensor:
    """g = [s·dy_1 B_1 … s·dy_k B_k] [N, Σr], s·B_i rounded to dy's dtype once."""
    gs = [dy @ (B * s).to(dy.dtype) for dy, B in zip(dy2, Bs, strict=True)]
    return torch.cat(gs, dim=1) if len(gs) > 1 else gs[0]


def _adapter_grads(
    g: torch.Tensor,
    x2: torch.Tensor,
    xa: torch.Tensor,
    dy2: Sequence[torch.Tensor],
    ranks: Sequence[int],
    s: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(dA_i, dB_i) for each adapter: dA = gᵀ x (one GEMM for all, fp32 out), dB_i = s·dy_iᵀ xa_i (fp32 out)."""
    dA_all = _mm_f32(g.t(), x2)  # [Σr, in]
    out, col = [], 0
    for dy, r in zip(dy2, ranks, strict=True):
        out.append((dA_all[col : col + r], _mm_f32(dy.t(), xa[:, col : col + r]).mul_(s)))
        col += r
    return out


class LoraFunction(torch.autograd.Function):
    """k ≥ 1 adapters reading the same input: out_i = y_i + s·(x A_iᵀ) B_iᵀ, in x's dtype.

    forward(x [..., in], s, inplace, y_1, A_1, B_1, …, y_k, A_k, B_k): y_i [..., out_i] the base outputs (x's dtype,
    written in place and returned when `inplace`: TUNA_LORA_ADD=inplace),
    A_i [r_i, in] and B_i [out_i, r_i] the fp32 adapter parameters, cast to x's dtype per call.
    Saved for backward: x itself (the tensor the base GEMMs keep anyway: no copy), xa = x·[A_1;…;A_k]ᵀ
    [N, Σr_i], and the parameters (no copy). Backward, with g_i = s·dy_i B_i [N, r_i] and g = [g_1 … g_k]:
      dx = g·[A_1;…;A_k]   (one GEMM)      dA = gᵀ x  (one GEMM, fp32 out)      dB_i = s·dy_iᵀ xa_i  (fp32 out)
    and dy_i passes through to y_i unchanged (the base GEMM's own backward adds its part of dx).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scaling: float, inplace: bool, *args: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        ys, As, Bs = args[0::3], args[1::3], args[2::3]
        dt = x.dtype
        _, _, xa = _x_times_a(x, As)  # [N, Σr]: x is read once for all k adapters
        outs, start = [], 0
        for y, A, B in zip(ys, As, Bs, strict=True):
            r = A.shape[0]
            y2 = y.reshape(-1, y.shape[-1])
            if inplace:  # TUNA_LORA_ADD=inplace, where lora_forward allows it: y itself becomes the output
                torch.ops.tuna.lora_addmm_(y2, xa[:, start : start + r], B.to(dt).t(), scaling)
                out = y
            elif _lora_add == "gemm":
                out = torch.addmm(y2, xa[:, start : start + r], B.to(dt).t(), alpha=scaling).view(y.shape)
            else:
                out = torch.add(y2, xa[:, start : start + r] @ B.to(dt).t(), alpha=scaling).view(y.shape)
            outs.append(out)
            start += r
        if inplace:
            ctx.mark_dirty(*ys)  # the base outputs, written in place, are this Function's outputs
        ctx.save_for_backward(x, xa, *As, *Bs)
        ctx.scaling = scaling
        ctx.k = len(As)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *dys: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, xa, *params = ctx.saved_tensors
        k, s = ctx.k, ctx.scaling
        As, Bs = params[:k], params[k:]
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = [dy.reshape(-1, dy.shape[-1]).to(x.dtype) for dy in dys]
        g = _g(dy2, Bs, s)  # [N, Σr]
        dx = None
        if ctx.needs_input_grad[0]:
            a = torch.cat(As).to(x.dtype) if k > 1 else As[0].to(x.dtype)
            dx = (g @ a).view(x.shape)
        grads: list[torch.Tensor | None] = [dx, None, None]
        for i, (dA, dB) in enumerate(_adapter_grads(g, x2, xa, dy2, [A.shape[0] for A in As], s)):
            grads += [dys[i] if ctx.needs_input_grad[3 + 3 * i] else None, dA, dB]
        return tuple(grads)


class LoraLinearFunction(torch.autograd.Function):
    """k ≥ 1 frozen projections with their adapters, all reading the same input (TUNA_LORA_ADD=epilogue):
    out_i = x W_iᵀ + s·(x A_iᵀ) B_iᵀ, in x's dtype, the adapter product computed FIRST and the base GEMM adding it
    in its epilogue (cuBLAS's C: on an H200 ~5% more time for an 8B gate/up GEMM, less than "inplace"'s separate
    kernel, which reads and writes the whole output again to add the product). The backward does the
    same for dx: dx = g·[A_1;…;A_k] first, then each dy_i W_i added into it by its GEMM, where autograd would write
    each base GEMM's dx separately and sum them elementwise.

    forward(x [..., in], s, W_1, A_1, B_1, …, W_k, A_k, B_k): W_i [out_i, in] the frozen base weight (x's dtype),
    A_i [r_i, in] and B_i [out_i, r_i] the fp32 adapter parameters, cast to x's dtype per call (s·B_i rounded
    once, as LoraFunction's backward does). Saved: x, xa = x·[A_1;…;A_k]ᵀ [N, Σr] and the parameters (no copies):
    what the base GEMMs and LoraFunction saved between them. Backward, with g_i = s·dy_i B_i and g = [g_1 … g_k]:
      dx = g·[A_1;…;A_k] + Σ dy_i W_i      dA = gᵀ x (fp32 out)      dB_i = s·dy_iᵀ xa_i (fp32 out)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scaling: float, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        Ws, As, Bs = args[0::3], args[1::3], args[2::3]
        dt = x.dtype
        x2, _, xa = _x_times_a(x, As)  # [N, in], [N, Σr]
        outs, start = [], 0
        for W, A, B in zip(Ws, As, Bs, strict=True):
            r = A.shape[0]
            # [N, out]: the adapter product, written once; then += x Wᵀ, the product read as the GEMM's C
            out = xa[:, start : start + r] @ (B * scaling).to(dt).t()
            torch.ops.tuna.lora_addmm_(out, x2, W.t(), 1.0)
            outs.append(out.view(*x.shape[:-1], W.shape[0]))
            start += r
        ctx.save_for_backward(x, xa, *Ws, *As, *Bs)
        ctx.scaling = scaling
        ctx.k = len(As)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *dys: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, xa, *params = ctx.saved_tensors
        k, s = ctx.k, ctx.scaling
        Ws, As, Bs = params[:k], params[k : 2 * k], params[2 * k :]
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = [dy.reshape(-1, dy.shape[-1]).to(x.dtype) for dy in dys]
        g = _g(dy2, Bs, s)  # [N, Σr]
        dx = None
        if ctx.needs_input_grad[0]:
            a = torch.cat(As).to(x.dtype) if k > 1 else As[0].to(x.dtype)
            dx2 = g @ a  # [N, in]
            for dy, W in zip(dy2, Ws, strict=True):
                torch.ops.tuna.lora_addmm_(dx2, dy, W, 1.0)  # += dy_i W_i, in the GEMM's epilogue
            dx = dx2.view(x.shape)
        grads: list[torch.Tensor | None] = [dx, None]
        for dA, dB in _adapter_grads(g, x2, xa, dy2, [A.shape[0] for A in As], s):
            grads += [None, dA, dB]
        return tuple(grads)


# ---- TUNA_LORA_ADD=augmented: frozen weights stored with room for their adapters ------------------------------

# The projections read by one input, fused into one buffer each (`fuse_projection_groups`).
PROJECTION_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


class FusedGroup:
    """The frozen weights of projections reading the same input (q/k/v; o; gate/up; down) in ONE buffer with room for
    their adapters (TUNA_LORA_ADD=augmented), so that each pass through them is one GEMM with no C to read:

        buffer [Σout + Σr, in + Σr], in the weights' dtype:
          [:Σout, :in]   W_1; …; W_k               each Linear's `weight` is a view of its rows (names, loading and
                                                   saving unchanged)
          [:Σout, in:]   blockdiag(s·B_1, …, s·B_k)
          [Σout:, :in]   A_1; …; A_k
          [Σout:, in:]   zeros, never read
      forward   y = [x | x·Aᵀ] · buffer[:Σout]ᵀ            (= x Wᵀ + s·(x Aᵀ) Bᵀ for every projection at once)
      backward  g = dy · buffer[:Σout, in:]   (= s·dy B)    dx = g · buffer[Σout:, :in] + dy · buffer[:Σout, :in]
                                                                 (= g A + dy W; the second GEMM adds into the first)

    The adapter slots are 16-bit copies of the fp32 parameters (what LoraFunction casts per call): `refresh_fused`
    after anything changes them — every optimizer step, a resume, an init."""

    def __init__(self, linears: Sequence[Linear]) -> None:
        w0 = linears[0].weight
        self.linears = list(linears)
        self.in_features = linears[0].in_features
        self.outs = [lin.out_features for lin in linears]
        self.ranks = [lin.lora.r for lin in linears]  # type: ignore[union-attr]
        self.scaling = linears[0].scaling
        n_in, n_out, n_r = self.in_features, sum(self.outs), sum(self.ranks)
        buffer = torch.zeros(n_out + n_r, n_in + n_r, dtype=w0.dtype, device=w0.device)
        row = 0
        with torch.no_grad():
            for i, lin in enumerate(linears):
                rows = buffer[row : row + lin.out_features, : self.in_features]
                rows.copy_(lin.weight)
                lin.weight = nn.Parameter(rows, requires_grad=False)  # the old tensor is freed
                lin.fused = (self, i)
                row += lin.out_features
        # A Parameter (frozen) so that what saves it for backward treats it as a weight (the activation offload
        # copies plain tensors to the host); held here, not registered: state_dict stays the projections' own.
        self.weight = nn.Parameter(buffer, requires_grad=False)
        # (slot, its fp32 parameter, whether it holds s·parameter) for every adapter slot: views made once (the
        # optimizer updates the parameters in place, so these stay the ones to copy from)
        self.slots: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        row = col = 0
        for lin, o, r in zip(self.linears, self.outs, self.ranks, strict=True):
            self.slots.append((buffer[row : row + o, n_in + col : n_in + col + r], lin.lora_B.weight, True))
            self.slots.append((buffer[n_out + col : n_out + col + r, :n_in], lin.lora_A.weight, False))
            row, col = row + o, col + r
        refresh_fused([self])


def _fusable(linears: Sequence[Linear]) -> bool:
    """Projections whose weights FusedGroup can hold: each `_plain_adapted` without dropout (the buffer serves
    training and evaluation alike) and not in a group yet, of one dtype, device, input width and scaling."""
    return (
        all(
            isinstance(lin, Linear) and _plain_adapted(lin) and lin.lora.dropout == 0 and lin.fused is None  # type: ignore[union-attr]
            for lin in linears
        )
        and len({(lin.in_features, lin.weight.dtype, lin.weight.device, lin.scaling) for lin in linears}) == 1
    )


def fuse_projection_groups(model: nn.Module) -> list[FusedGroup]:
    """TUNA_LORA_ADD=augmented: store every fusable group of PROJECTION_GROUPS (a module holding all of one group's
    names) in a FusedGroup; returns them (`refresh_fused(groups)` after the adapters change)."""
    groups = []
    for module in model.modules():
        for names in PROJECTION_GROUPS:
            linears = [getattr(module, n, None) for n in names]
            if all(isinstance(lin, Linear) for lin in linears) and _fusable(linears):  # type: ignore[arg-type]
                groups.append(FusedGroup(linears))  # type: ignore[arg-type]
    return groups


@torch.no_grad()
def refresh_fused(groups: Sequence[FusedGroup]) -> None:
    """Copy every group's s·B_i and A_i (fp32 parameters) into their slots, rounded to the weights' dtype: after
    anything changes the adapters (each optimizer step: a few multi-tensor kernels for the whole model)."""
    for scaling in {group.scaling for group in groups}:  # one LoraSpec a model: one scaling
        slots = [slot for group in groups if group.scaling == scaling for slot in group.slots]
        scaled = torch._foreach_mul([p for _, p, sc in slots if sc], scaling)
        torch._foreach_copy_([t for t, _, sc in slots if sc], scaled)
        torch._foreach_copy_([t for t, _, sc in slots if not sc], [p for _, p, sc in slots if not sc])


def _fused_group(linears: Sequence[Linear], x: torch.Tensor) -> FusedGroup | None:
    """The FusedGroup that `linears` are, in its order, when the fused path applies to this call (x of the weights'
    dtype, the projections still "auto"; FusedGroup never holds DoRA or dropout)."""
    fused = linears[0].fused
    if fused is None or _lora_add != "augmented":
        return None
    group = fused[0]
    if group.linears != list(linears) or x.dtype != group.weight.dtype:
        return None
    # "exact" set after fusing: peft's path, on the weights' views
    if any(lin.lora_compute != "auto" for lin in linears):
        return None
    return group


class LoraFusedFunction(torch.autograd.Function):
    """A FusedGroup's projections with their adapters, one GEMM a pass (FusedGroup's docstring has the layout).

    forward(x [..., in], group buffer, outs, ranks, s, A_1, B_1, …, A_k, B_k) → (y_1 [..., out_1], …): the outputs
    are column blocks of one [N, Σout] result (views). The A_i/B_i parameters are taken for their gradients only:
    their values come from the buffer's slots. Saved: x, xa = x·[A_1;…;A_k]ᵀ [N, Σr] and the buffer (a weight).
    Backward, with dy = [dy_1 … dy_k] and g = dy·blockdiag(s·B_i) [N, Σr]:
      dx = g·A + dy·W      dA = gᵀ x (fp32 out)      dB_i = s·dy_iᵀ xa_i (fp32 out)
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        buffer: torch.Tensor,
        outs: list[int],
        ranks: list[int],
        scaling: float,
        *params: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        n_in, n_out = x.shape[-1], sum(outs)
        x2 = x.reshape(-1, n_in)
        xa = x2 @ buffer[n_out:, :n_in].t()  # [N, Σr]
        y = torch.cat([x2, xa], dim=1) @ buffer[:n_out].t()  # [N, Σout]: base and adapters in one GEMM
        ctx.save_for_backward(x, xa, buffer)
        ctx.outs, ctx.ranks, ctx.scaling = outs, ranks, scaling
        lead = x.shape[:-1]
        return tuple(part.view(*lead, part.shape[-1]) for part in y.split(outs, dim=1))

    @staticmethod
    def backward(ctx: Any, *dys: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, xa, buffer = ctx.saved_tensors
        outs, ranks, s = ctx.outs, ctx.ranks, ctx.scaling
        n_in, n_out = x.shape[-1], sum(outs)
        x2 = x.reshape(-1, n_in)
        # One [N, Σout] gradient, which the compiled backward's producers write in place (each dy_i a block of it);
        # everything below reads its blocks, so no dy_i is stored twice.
        blocks = [d.reshape(-1, o) for d, o in zip(dys, outs, strict=True)]
        dy = (torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]).to(x.dtype)
        g = dy @ buffer[:n_out, n_in:]  # [N, Σr]: s·dy_i B_i, block by block
        dx = None
        if ctx.needs_input_grad[0]:
            # dx = g·A + dy·W: the small product first, then the group's one frozen GEMM adding into it (its C).
            # ([dy | g]·[W; A] as ONE GEMM needs g written beside dy, which the compiler does by copying all of
            # dy into a wider buffer: the first version did, and ran slower, docs/performance.md.)
            dx2 = g @ buffer[n_out:, :n_in]
            torch.ops.tuna.lora_addmm_(dx2, dy, buffer[:n_out, :n_in], 1.0)
            dx = dx2.view(x.shape)
        grads: list[torch.Tensor | None] = [dx, None, None, None, None]
        for dA, dB in _adapter_grads(g, x2, xa, dy.split(list(outs), dim=1), ranks, s):
            grads += [dA, dB]
        return tuple(grads)


def set_lora_compute(model: nn.Module, mode: str) -> int:
    """Set every adapted `Linear` of `model` to "auto" or "exact"; returns how many were set (0 for the
    generic transformers backend, whose peft layers always compute exactly)."""
    if mode not in ("auto", "exact"):
        raise ValueError(f"lora_compute: expected 'auto' or 'exact', got {mode!r}")
    n = 0
    for m in model.modules():
        if isinstance(m, Linear) and m.lora is not None:
            m.lora_compute = mode
            n += 1
    return n


# ---- PEFT adapter layout ----------------------------------------------------------------------------------


def is_adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or name.endswith(".lora_magnitude_vector")


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Adapter parameters by their peft name less the `base_model.model.` prefix. Our models name them so
    already; the generic backend (peft layers, `.default.` in the names) maps its own."""
    own = getattr(model, "adapter_parameters", None)
    if callable(own):
        return own()
    return {name: p for name, p in model.named_parameters() if is_adapter_param(name)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors under peft's key names (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`)."""
    return {PEFT_PREFIX + name: p.detach().contiguous() for name, p in adapter_parameters(model).items()}


def adapter_config(
    spec: LoraSpec,
    base_model_name: str,
    layers_to_transform: tuple[int, ...] | None,
    target_modules: list[str] | None = None,
) -> dict[str, Any]:
    """adapter_config.json as peft 0.21 writes it for a LoRA on a causal LM (fields peft and vLLM read)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": target_modules or sorted(resolve_targets(spec)),
        "use_rslora": spec.use_rslora,
        "use_dora": spec.use_dora,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_to_transform": list(layers_to_transform) if layers_to_transform is not None else None,
        "layers_pattern": None,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
        "peft_version": "0.21.0",
    }


def _projection_targets(targets: list[str]) -> tuple[list[str], list[int] | None]:
    """peft may write `target_modules` as full module paths ("model.layers.3.mlp.up_proj", as some versions
    do for "all-linear"): reduce them to projection names, and to the layers they name when every named layer
    has the same projections (anything else stays as given and is reported as unsupported)."""
    paths = [t for t in targets if "." in t]
    if not paths or len(paths) != len(targets):
        # no paths; or names (every layer) mixed with paths (some layers): not expressible
        return targets, None
    per_layer: dict[int, set[str]] = {}
    for t in paths:
        parts = t.split(".")
        idx = next(
            (int(parts[i + 1]) for i, p in enumerate(parts[:-1]) if p == "layers" and parts[i + 1].isdigit()),
            None,
        )
        if idx is None or parts[-1] not in LORA_PROJECTIONS:
            return targets, None
        per_layer.setdefault(idx, set()).add(parts[-1])
    projections = set(next(iter(per_layer.values())))
    if any(v != projections for v in per_layer.values()):
        return targets, None
    return sorted(projections), sorted(per_layer)


def read_adapter_config(adapter_dir: str) -> tuple[LoraSpec, tuple[int, ...] | None]:
    from .errors import EngineError

    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise EngineError(
            "ADAPTER_NOT_FOUND", f"{path}: not found", hint="point adapter_dir at a PEFT adapter"
        )
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise EngineError(
            "ADAPTER_UNSUPPORTED", f'{path}: peft_type: expected "LORA", got {cfg.get("peft_type")!r}'
        )
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        targets = ["all-linear"] if targets == "all-linear" else [targets]
    targets, path_layers = _projection_targets(targets)
    unknown = [t for t in targets if t not in LORA_PROJECTIONS and t != "all-linear"]
    if unknown or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise EngineError(
            "ADAPTER_UNSUPPORTED",
            f"{path}: target_modules {unknown} / rank_pattern / alpha_pattern are not supported",
            hint=f"supported target modules: {', '.join(LORA_PROJECTIONS)}",
        )
    spec = LoraSpec(
        r=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout", 0.0)),
        target_modules=tuple(targets),
        use_rslora=bool(cfg.get("use_rslora", False)),
        use_dora=bool(cfg.get("use_dora", False)),
    )
    layers = cfg.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    if layers is None and path_layers is not None:
        layers = path_layers
    return spec, tuple(layers) if layers is not None else None
