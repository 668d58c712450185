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
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
        self.base_layer: Linear4bit | None = None  # QLoRA: the frozen NF4 base (then weight/bias are None)
        self.lora = lora
        if lora is not None:
            self.scaling = lora_scaling(lora)
            self.lora_A = nn.Linear(in_features, lora.r, bias=False, dtype=torch.float32)
            self.lora_B = nn.Linear(lora.r, out_features, bias=False, dtype=torch.float32)
            self.lora_dropout = nn.Dropout(lora.dropout) if lora.dropout > 0 else nn.Identity()
            if lora.use_dora:
                self.lora_magnitude_vector = nn.Parameter(torch.empty(out_features, dtype=torch.float32))

    def to_4bit_base(self, compute_dtype: torch.dtype) -> None:
        """Replace the 16-bit weight (and bias) by an empty NF4 `base_layer` on the same device (the meta
        device while a model is built); the loader fills it (models/__init__.py)."""
        device = self.weight.device
        del self.weight, self.bias
        self.weight = self.bias = None  # type: ignore[assignment]
        self.base_layer = Linear4bit(
            self.in_features, self.out_features, False, compute_dtype=compute_dtype, device=device
        )

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
        result = self.base_forward(x)
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
    return spec, tuple(layers) if layers is not None else None
