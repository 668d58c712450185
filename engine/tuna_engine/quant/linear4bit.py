"""`Linear4bit`: a frozen linear layer whose weight is NF4 (quant/nf4.py), for QLoRA.

Every piece of quantization state is a registered tensor, so FSDP2 can shard it and `.to(device)` moves it:

| name                | kind      | dtype / shape                                   | bnb checkpoint key                 |
|---------------------|-----------|-------------------------------------------------|------------------------------------|
| `weight`            | parameter | uint8 [ceil(out*in/2), 1] packed codes          | `weight`                           |
| `absmax`            | parameter | uint8 [blocks] (double quant) / float32 [blocks]| `weight.absmax`                    |
| `nested_absmax`     | parameter | float32 [ceil(blocks/256)] (double quant only)  | `weight.nested_absmax`             |
| `quant_map`         | buffer    | float32 [16] NF4 levels                         | `weight.quant_map`                 |
| `nested_quant_map`  | buffer    | float32 [256] signed dynamic map                | `weight.nested_quant_map`          |
| `nested_offset`     | buffer    | float32 [] mean of the absmax values            | in the quant-state JSON            |
| `bias`              | parameter | compute dtype [out] (optional, frozen)          | `bias`                             |

Parameters have requires_grad=False. `state_dict()` and `load_state_dict()` use the bitsandbytes key names
(right column, plus `weight.quant_state.bitsandbytes__nf4`), so a `*-bnb-4bit` checkpoint loads unchanged
and a saved model is one that transformers + bitsandbytes can load.

forward(x) dequantizes the weight (Triton kernel on CUDA, the PyTorch reference elsewhere) and multiplies in
the compute dtype; backward dequantizes again instead of keeping the 16-bit weight alive between the passes,
which is the point of 4-bit storage (QLoRA section 3). A LoRA layer built around it uses `in_features`,
`out_features`, `forward(x)` and `dequantize()` (the [out, in] weight) like a plain linear's `.weight`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blockwise import dynamic_map
from .nf4 import (
    DEFAULT_BLOCKSIZE,
    DEFAULT_NESTED_BLOCKSIZE,
    QUANT_STATE_KEY,
    NF4Weight,
    decode_absmax,
    dequantize_nf4,
    dtype_name,
    nf4_code,
    pack_quant_state,
    parse_dtype,
    quantize_weight,
    unpack_quant_state,
)

# Module tensor name -> suffix after "<prefix>weight." in a bitsandbytes checkpoint.
_BNB_NAMES = {
    "absmax": "absmax",
    "quant_map": "quant_map",
    "nested_absmax": "nested_absmax",
    "nested_quant_map": "nested_quant_map",
}
# Float quant-state tensors that must keep float32 through `model.to(dtype)`.
_FP32_STATE = ("absmax", "nested_absmax", "quant_map", "nested_quant_map", "nested_offset")


class _NF4Linear(torch.autograd.Function):
    """y = x Wᵀ + b with W dequantized on the fly; only the input gets a gradient (the base is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: Linear4bit) -> torch.Tensor:  # type: ignore[override]
        w = module.dequantize(x.dtype)
        ctx.module = module
        return F.linear(x, w, None if module.bias is None else module.bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        w = ctx.module.dequantize(grad_out.dtype)  # [out, in]
        return grad_out @ w, None


class Linear4bit(nn.Module):
    """Frozen NF4 linear. Shapes: x [..., in_features] -> y [..., out_features]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        compute_dtype: torch.dtype = torch.bfloat16,
        quant_dtype: torch.dtype | None = None,
        blocksize: int = DEFAULT_BLOCKSIZE,
        double_quant: bool = True,
        nested_blocksize: int = DEFAULT_NESTED_BLOCKSIZE,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.quant_dtype = quant_dtype or compute_dtype  # what the weight dequantizes to (the JSON "dtype")
        self.blocksize, self.nested_blocksize, self.double_quant = blocksize, nested_blocksize, double_quant
        n = in_features * out_features
        blocks = -(-n // blocksize)

        def frozen(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t, requires_grad=False)

        self.weight = frozen(torch.zeros(-(-n // 2), 1, dtype=torch.uint8, device=device))
        self.absmax = frozen(
            torch.zeros(blocks, dtype=torch.uint8 if double_quant else torch.float32, device=device)
        )
        self.register_buffer("quant_map", nf4_code(device))
        if double_quant:
            self.nested_absmax = frozen(torch.zeros(-(-blocks // nested_blocksize), device=device))
            self.register_buffer("nested_quant_map", dynamic_map(signed=True).to(device))
            self.register_buffer("nested_offset", torch.zeros((), device=device))
        else:
            self.register_parameter("nested_absmax", None)
            self.register_buffer("nested_quant_map", None)
            self.register_buffer("nested_offset", None)
        self.bias = frozen(torch.zeros(out_features, dtype=compute_dtype, device=device)) if bias else None
        self.register_state_dict_post_hook(_to_bnb_keys)
        self.register_load_state_dict_pre_hook(_from_bnb_keys)

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        compute_dtype: torch.dtype | None = None,
        blocksize: int = DEFAULT_BLOCKSIZE,
        double_quant: bool = True,
    ) -> Linear4bit:
        """Quantize an nn.Linear (or anything with `weight` [out, in] and `bias`) as bitsandbytes would."""
        w = linear.weight.detach()
        q = quantize_weight(w, blocksize, double_quant)
        return cls.from_nf4(
            q, None if linear.bias is None else linear.bias.detach(), compute_dtype=compute_dtype
        )

    @classmethod
    def from_nf4(
        cls, q: NF4Weight, bias: torch.Tensor | None = None, *, compute_dtype: torch.dtype | None = None
    ) -> Linear4bit:
        if len(q.shape) != 2:
            raise ValueError(f"a linear weight is 2-D [out, in]; got shape {list(q.shape)}")
        out_f, in_f = q.shape
        m = cls(
            in_f,
            out_f,
            bias is not None,
            compute_dtype=compute_dtype or q.dtype,
            quant_dtype=q.dtype,
            blocksize=q.blocksize,
            double_quant=q.double_quant,
            nested_blocksize=q.nested_blocksize,
            device=q.packed.device,
        )
        with torch.no_grad():
            m.weight.copy_(q.packed.view(-1, 1))
            m.absmax.copy_(q.absmax)
            m.quant_map.copy_(q.quant_map)
            if q.double_quant:
                assert q.nested_absmax is not None and q.nested_quant_map is not None
                m.nested_absmax.copy_(q.nested_absmax)
                m.nested_quant_map.copy_(q.nested_quant_map)
                m.nested_offset.fill_(float(q.nested_offset or 0.0))
            if bias is not None:
                m.bias.copy_(bias)
        return m

    # ---- code storage: uint8, or a float view of the same bytes (for FSDP2) -------------------------------

    def use_float_storage(self, dtype: torch.dtype = torch.bfloat16) -> None:
        """Hold the uint8 codes (`weight`, and `absmax` under double quantization) as `dtype` views of the
        same bytes, as bitsandbytes' `bnb_4bit_quant_storage` does for FSDP: FSDP2 in torch 2.11 wraps every
        sharded tensor in a requires-grad Parameter, which a uint8 tensor cannot be. The bytes are only ever
        moved (sharded, all-gathered), never computed on; `codes()` / `absmax_codes()` view them back."""
        width = torch.empty((), dtype=dtype).element_size()
        for name in ("weight", "absmax"):
            t = getattr(self, name)
            if t.dtype == torch.uint8 and t.numel() % width == 0:
                setattr(
                    self,
                    name,
                    nn.Parameter(
                        t.data.reshape(-1).view(dtype).reshape(-1, 1)
                        if name == "weight"
                        else t.data.view(dtype),
                        requires_grad=False,
                    ),
                )

    def codes(self) -> torch.Tensor:
        """The packed NF4 codes, uint8 [ceil(out*in/2), 1], whatever the storage dtype."""
        w = self.weight.detach()
        return w if w.dtype == torch.uint8 else w.reshape(-1).view(torch.uint8).reshape(-1, 1)

    def absmax_codes(self) -> torch.Tensor:
        """Block scales: uint8 codes (double quant) or float32, whatever the storage dtype."""
        a = self.absmax.detach()
        if self.double_quant and a.dtype != torch.uint8:
            return a.reshape(-1).view(torch.uint8)
        return a

    def nf4_weight(self) -> NF4Weight:
        """This layer's quantized weight as an NF4Weight (shares storage with the module)."""
        return NF4Weight(
            packed=self.codes(),
            absmax=self.absmax_codes(),
            quant_map=self.quant_map,
            shape=(self.out_features, self.in_features),
            dtype=self.quant_dtype,
            blocksize=self.blocksize,
            nested_absmax=None if self.nested_absmax is None else self.nested_absmax.detach(),
            nested_quant_map=self.nested_quant_map,
            nested_offset=None if self.nested_offset is None else float(self.nested_offset),
            nested_blocksize=self.nested_blocksize,
        )

    # ---- math ---------------------------------------------------------------------------------------------

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The [out_features, in_features] weight in `dtype` (default: the compute dtype). No grad."""
        dtype = dtype or self.compute_dtype
        with torch.no_grad():
            if self.weight.is_cuda:
                from .triton_nf4 import dequantize_nf4_triton

                w = dequantize_nf4_triton(
                    self.codes(),
                    self.absmax_codes(),
                    self.quant_map,
                    (self.out_features, self.in_features),
                    self.blocksize,
                    self.quant_dtype,
                    self.nested_absmax,
                    self.nested_quant_map,
                    self.nested_offset,
                    self.nested_blocksize,
                )
            else:
                absmax = decode_absmax(
                    self.absmax_codes(),
                    self.nested_absmax,
                    self.nested_quant_map,
                    self.nested_offset,
                    self.nested_blocksize,
                )
                w = dequantize_nf4(
                    self.codes(),
                    absmax,
                    (self.out_features, self.in_features),
                    self.blocksize,
                    self.quant_dtype,
                    self.quant_map,
                )
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return _NF4Linear.apply(x, self)
        w = self.dequantize(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    # ---- keep quant state in float32 through model.to(dtype) --------------------------------------------

    def _apply(self, fn: Any, recurse: bool = True) -> Linear4bit:
        kept = {name: getattr(self, name) for name in _FP32_STATE if getattr(self, name) is not None}
        # Parameters are converted in place (param.data = ...), so keep a copy of their float32 values.
        kept = {k: v.detach().clone() for k, v in kept.items() if v.dtype == torch.float32}
        # Codes held as a float view (use_float_storage) are bytes: a dtype cast must not touch them.
        code_views = {
            name: getattr(self, name).detach().clone()
            for name in ("weight", "absmax")
            if getattr(self, name).dtype not in (torch.uint8, torch.float32)
        }
        super()._apply(fn, recurse)
        for name, before in code_views.items():
            now = getattr(self, name)
            if now.dtype != before.dtype:
                self._parameters[name] = nn.Parameter(before.to(now.device), requires_grad=False)
        for name, before in kept.items():
            now = getattr(self, name)
            if now.dtype != torch.float32:
                restored = before.detach().to(now.device)
                if name in self._parameters:
                    self._parameters[name] = nn.Parameter(restored, requires_grad=False)
                else:
                    self._buffers[name] = restored
        return self

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, nf4 "
            f"blocksize={self.blocksize}, double_quant={self.double_quant}, compute={self.compute_dtype}"
        )


# ---- bitsandbytes key layout in state_dict / load_state_dict ----------------------------------------------


def _to_bnb_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    assert isinstance(module, Linear4bit)
    if module.double_quant and prefix + "absmax" in state_dict:
        state_dict[prefix + "absmax"] = module.absmax_codes()  # uint8 codes, whatever the storage dtype
    for name, bnb in _BNB_NAMES.items():
        if prefix + name in state_dict:
            state_dict[f"{prefix}weight.{bnb}"] = state_dict.pop(prefix + name)
    meta: dict[str, object] = {
        "quant_type": "nf4",
        "blocksize": module.blocksize,
        "dtype": dtype_name(module.quant_dtype),
        "shape": [module.out_features, module.in_features],
    }
    if module.double_quant:
        offset = state_dict.pop(prefix + "nested_offset", module.nested_offset)
        meta.update(
            nested_blocksize=module.nested_blocksize, nested_dtype="float32", nested_offset=float(offset)
        )
    state_dict[f"{prefix}weight.{QUANT_STATE_KEY}"] = pack_quant_state(meta)


def _from_bnb_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    assert isinstance(module, Linear4bit)
    qs_key = f"{prefix}weight.{QUANT_STATE_KEY}"
    if qs_key not in state_dict:
        return  # missing keys are reported by load_state_dict itself
    meta = unpack_quant_state(state_dict.pop(qs_key))
    want_shape = [module.out_features, module.in_features]
    problems = []
    if meta.get("quant_type") != "nf4":
        problems.append(f"quant_type {meta.get('quant_type')!r}, expected 'nf4'")
    if list(meta.get("shape", [])) != want_shape:  # type: ignore[call-overload]
        problems.append(f"shape {meta.get('shape')}, expected {want_shape}")
    if meta.get("blocksize") != module.blocksize:
        problems.append(f"blocksize {meta.get('blocksize')}, expected {module.blocksize}")
    if ("nested_offset" in meta) != module.double_quant:
        problems.append(
            f"double quantization {'on' if 'nested_offset' in meta else 'off'} in the checkpoint, "
            f"{'on' if module.double_quant else 'off'} in the layer (bnb_4bit_use_double_quant)"
        )
    elif module.double_quant and meta.get("nested_blocksize") != module.nested_blocksize:
        problems.append(
            f"nested_blocksize {meta.get('nested_blocksize')}, expected {module.nested_blocksize}"
        )
    if problems:
        error_msgs.append(f"{qs_key}: " + "; ".join(problems))
        return
    module.quant_dtype = parse_dtype(str(meta["dtype"]))
    for name, bnb in _BNB_NAMES.items():
        key = f"{prefix}weight.{bnb}"
        if key in state_dict:
            v = state_dict.pop(key)
            state_dict[prefix + name] = v.float() if name != "absmax" or not module.double_quant else v
    if module.double_quant:
        state_dict[prefix + "nested_offset"] = torch.tensor(float(meta["nested_offset"]), dtype=torch.float32)  # type: ignore[arg-type]
    w = state_dict.get(prefix + "weight")
    if isinstance(w, torch.Tensor) and w.dtype != torch.uint8:  # bnb_4bit_quant_storage != uint8: same bytes
        w = w.reshape(-1).view(torch.uint8)
    if isinstance(w, torch.Tensor) and w.numel() == module.weight.numel():
        state_dict[prefix + "weight"] = w.reshape(-1, 1)


def nbytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (for memory checks and logs)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


__all__ = ["Linear4bit", "nbytes"]
