"""Turn a model's linears into NF4 `Linear4bit`s: by quantizing its 16-bit weights (`quantize_model`) or by
loading a pre-quantized `*-bnb-4bit` checkpoint unchanged (`load_prequantized`).

Which linears stay in 16 bit: `skip` names modules as transformers' `llm_int8_skip_modules` does; a name
matches a module when it is a run of whole dotted components of the module's path ("lm_head",
"model.layers.2.mlp", "mlp.down_proj"). The output layer is always worth keeping (QLoRA quantizes the
decoder's linears only). For a pre-quantized checkpoint the tensors decide: a linear is 4-bit exactly when
the checkpoint has its `<name>.weight.quant_state.bitsandbytes__nf4` entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .linear4bit import Linear4bit
from .nf4 import DEFAULT_BLOCKSIZE, QUANT_STATE_KEY, nf4_weight_from_bnb, parse_dtype

DEFAULT_SKIP: tuple[str, ...] = ("lm_head", "embed_tokens")


def matches_module(name: str, key: str) -> bool:
    """True when `key` is a run of whole dotted components of module path `name`."""
    return f".{key}." in f".{name}."


def should_skip(name: str, skip: Iterable[str]) -> bool:
    return any(matches_module(name, k) for k in skip)


def _linears(model: nn.Module, types: tuple[type[nn.Module], ...]) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, types):
            yield name, module


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(
    model: nn.Module,
    skip: Iterable[str] = DEFAULT_SKIP,
    *,
    compute_dtype: torch.dtype | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    double_quant: bool = True,
    types: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> list[str]:
    """Replace every linear not matched by `skip` by its NF4 quantization, in place; returns the names
    replaced. Each weight is quantized as bitsandbytes would, so the model's state_dict is a bnb checkpoint."""
    skip = tuple(skip)
    replaced = []
    for name, linear in list(_linears(model, types)):
        if should_skip(name, skip):
            continue
        q = Linear4bit.from_linear(
            linear,  # type: ignore[arg-type]
            compute_dtype=compute_dtype or linear.weight.dtype,  # type: ignore[union-attr]
            blocksize=blocksize,
            double_quant=double_quant,
        )
        _set_module(model, name, q)
        replaced.append(name)
    return replaced


# ---- pre-quantized checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BnbQuantConfig:
    """config.json `quantization_config` of a bitsandbytes 4-bit checkpoint."""

    compute_dtype: torch.dtype
    double_quant: bool
    skip_modules: tuple[str, ...]
    quant_storage: torch.dtype


def read_quantization_config(model_dir: str | Path) -> BnbQuantConfig | None:
    """None for an unquantized model; raises ValueError (naming config.json and the field) for a
    quantization this engine cannot load."""
    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    q = cfg.get("quantization_config")
    if q is None:
        return None
    where = f"{path}: quantization_config"
    if q.get("quant_method") != "bitsandbytes":
        raise ValueError(
            f"{where}.quant_method: {q.get('quant_method')!r} is not supported; expected 'bitsandbytes'"
        )
    if not q.get("load_in_4bit", False):
        raise ValueError(
            f"{where}.load_in_4bit: expected true (8-bit LLM.int8 checkpoints are not supported)"
        )
    if q.get("bnb_4bit_quant_type", "fp4") != "nf4":
        raise ValueError(
            f"{where}.bnb_4bit_quant_type: {q.get('bnb_4bit_quant_type')!r} is not supported; expected 'nf4'"
        )
    compute = q.get("bnb_4bit_compute_dtype") or "float32"
    storage = q.get("bnb_4bit_quant_storage") or "uint8"
    return BnbQuantConfig(
        compute_dtype=parse_dtype(str(compute).removeprefix("torch.")),
        double_quant=bool(q.get("bnb_4bit_use_double_quant", False)),
        skip_modules=tuple(q.get("llm_int8_skip_modules") or ()),
        quant_storage=getattr(torch, str(storage).removeprefix("torch.")),
    )


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [d / n for n in names]
    single = d / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{d}: no model.safetensors or model.safetensors.index.json")
    return [single]


def quantized_module_names(files: Iterable[Path]) -> set[str]:
    """Module paths whose weight is stored 4-bit (they have a `.weight.quant_state.bitsandbytes__nf4` key)."""
    suffix = f".weight.{QUANT_STATE_KEY}"
    names = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            names.update(k[: -len(suffix)] for k in st.keys() if k.endswith(suffix))
    return names


def prepare_for_prequantized(
    model: nn.Module,
    quantized: set[str],
    cfg: BnbQuantConfig,
    *,
    compute_dtype: torch.dtype | None = None,
    types: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> list[str]:
    """Swap the linears named in `quantized` for empty Linear4bits shaped like them (filled by
    load_state_dict). A name in `quantized` that is no linear of the model is an error."""
    linears = dict(_linears(model, types))
    missing = sorted(quantized - set(linears))
    if missing:
        raise ValueError(
            f"checkpoint has 4-bit weights for {missing[:5]} ({len(missing)}), which are not linears of the model"
        )
    for name in sorted(quantized):
        lin = linears[name]
        q = Linear4bit(
            lin.in_features,  # type: ignore[arg-type]
            lin.out_features,  # type: ignore[arg-type]
            lin.bias is not None,
            compute_dtype=compute_dtype or cfg.compute_dtype,
            double_quant=cfg.double_quant,
            device=lin.weight.device if lin.weight.device.type != "meta" else "cpu",  # type: ignore[union-attr]
        )
        _set_module(model, name, q)
    return sorted(quantized)


def load_prequantized(
    model: nn.Module,
    model_dir: str | Path,
    *,
    compute_dtype: torch.dtype | None = None,
    strict: bool = True,
    types: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> tuple[list[str], list[str]]:
    """Load a bitsandbytes NF4 checkpoint directory into `model` (built with plain linears, Hugging Face
    parameter names), in place. Returns (missing_keys, unexpected_keys) as load_state_dict does."""
    cfg = read_quantization_config(model_dir)
    if cfg is None:
        raise ValueError(
            f"{Path(model_dir) / 'config.json'}: no quantization_config; this is not a 4-bit checkpoint"
        )
    files = checkpoint_files(model_dir)
    prepare_for_prequantized(
        model, quantized_module_names(files), cfg, compute_dtype=compute_dtype, types=types
    )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                state[k] = st.get_tensor(k)
    result = model.load_state_dict(state, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)


def linear4bit_from_checkpoint(
    tensors: dict[str, torch.Tensor], name: str, *, compute_dtype: torch.dtype | None = None
) -> Linear4bit:
    """One Linear4bit from a checkpoint's tensors (full keys, e.g. `model.layers.0.mlp.up_proj.weight...`)."""
    prefix = f"{name}.weight"
    own = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    if prefix not in tensors:
        raise ValueError(f"{name}: no `{prefix}` tensor in the checkpoint")
    own["weight"] = tensors[prefix]
    if own["weight"].dtype != torch.uint8:  # bnb_4bit_quant_storage other than uint8: same bytes
        own["weight"] = own["weight"].reshape(-1).view(torch.uint8)
    return Linear4bit.from_nf4(
        nf4_weight_from_bnb(own, where=prefix), tensors.get(f"{name}.bias"), compute_dtype=compute_dtype
    )
