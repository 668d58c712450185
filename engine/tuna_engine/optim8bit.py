"""AdamW with 8-bit optimizer states (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization",
arXiv:2110.02861), like bitsandbytes' `AdamW8bit`.

Each step, per parameter:
  m, v  = dequantize(state)                      # float32, blockwise: code[q] * absmax[block]
  m     = β1·m + (1-β1)·g ;  v = β2·v + (1-β2)·g²
  p     = p·(1 - lr·wd) - lr/(1-β1ᵗ) · m / (√v/√(1-β2ᵗ) + ε)    # torch.optim.AdamW's update, decoupled decay
  state = quantize(m), quantize(v)               # new absmax per block = max |m| (|v|) in the block
m uses bitsandbytes' signed dynamic map, v (never negative) the unsigned one, which spends all 256 codes
on [0, 1]; the dynamic maps keep relative precision for small values, which is what Adam's states need.
Blocks (default 2048 values) bound the damage an outlier does to its neighbours' precision.

State per parameter, all tensors (so `state_dict()` checkpoints it and `load_state_dict()` restores it):
`step` (float32 scalar), `exp_avg_codes` / `exp_avg_sq_codes` (uint8, the parameter's shape),
`exp_avg_absmax` / `exp_avg_sq_absmax` (float32 [blocks]): 2 bytes per parameter plus 8 bytes per block.
Parameters smaller than `min_8bit_size` keep float32 `exp_avg` / `exp_avg_sq` instead (bitsandbytes does
the same: for biases and norms the saving is nil and the precision matters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .quant.blockwise import dequantize_blockwise, dynamic_map, quantize_blockwise

_FLOAT32_KEYS = ("step", "exp_avg_absmax", "exp_avg_sq_absmax", "exp_avg", "exp_avg_sq")


class AdamW8bit(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        blocksize: int = 2048,
        min_8bit_size: int = 4096,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0; got {lr}, {eps}, {weight_decay}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1); got {betas}")
        if blocksize <= 0:
            raise ValueError(f"blocksize must be positive; got {blocksize}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.blocksize, self.min_8bit_size = blocksize, min_8bit_size
        self._signed = dynamic_map(signed=True)
        self._unsigned = dynamic_map(signed=False)

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32)
        if p.numel() < self.min_8bit_size:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(
                p, dtype=torch.float32, memory_format=torch.preserve_format
            )
        else:
            blocks = -(-p.numel() // self.blocksize)
            for name in ("exp_avg", "exp_avg_sq"):
                # Code of 0.0 in each map (the signed map's 0 sits mid-table, the unsigned map's at index 0).
                zero = int((dynamic_map(signed=name == "exp_avg") == 0).nonzero()[0])
                state[f"{name}_codes"] = torch.full(p.shape, zero, dtype=torch.uint8, device=p.device)
                state[f"{name}_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                state = self.state[p] if len(self.state[p]) else self._init_state(p)
                state["step"] += 1
                t = float(state["step"])
                g = p.grad.float()
                quantized = "exp_avg_codes" in state
                if quantized:
                    m = self._dequant(state, "exp_avg", self._signed)
                    v = self._dequant(state, "exp_avg_sq", self._unsigned)
                else:
                    m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                p32 = p.float()
                if wd != 0:
                    p32.mul_(1 - lr * wd)
                p32.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                p.copy_(p32)
                if quantized:
                    self._quant(state, "exp_avg", m, self._signed)
                    self._quant(state, "exp_avg_sq", v, self._unsigned)
        return loss

    def _dequant(self, state: dict[str, torch.Tensor], name: str, code: torch.Tensor) -> torch.Tensor:
        code = code.to(state[f"{name}_codes"].device)
        return dequantize_blockwise(state[f"{name}_codes"], state[f"{name}_absmax"], code, self.blocksize)

    def _quant(self, state: dict[str, torch.Tensor], name: str, x: torch.Tensor, code: torch.Tensor) -> None:
        q, absmax = quantize_blockwise(x, code.to(x.device), self.blocksize)
        state[f"{name}_codes"].copy_(q)
        state[f"{name}_absmax"].copy_(absmax)

    def state_bytes(self) -> int:
        """Bytes of optimizer state held for all parameters."""
        return sum(
            t.numel() * t.element_size()
            for s in self.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader casts floating state to each parameter's dtype (bf16 for a bf16 parameter); the
        absmax values and float32 moments must stay float32, so they are restored from the saved tensors."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            for key in _FLOAT32_KEYS:
                if key in saved:
                    device = p.device if key != "step" else torch.device("cpu")
                    self.state[p][key] = saved[key].detach().to(device=device, dtype=torch.float32).clone()
