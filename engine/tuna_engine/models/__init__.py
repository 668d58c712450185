"""Build a model from a Hugging Face model directory (config.json + safetensors) and load its weights.

`load_model` picks the family from config.json's `model_type`, builds the model on the meta device (so an 8B
model never exists twice in memory), materialises it on the target device, and copies each checkpoint tensor
in, checking names and shapes: a missing, unexpected or mis-shaped tensor is an error naming the tensor and
the file. LoRA parameters are initialised like peft's.

QLoRA (`quant=Quant4bit(...)`): the decoder's projections get an NF4 base (quant/Linear4bit) under LoRA.
From a 16-bit directory each projection's weight is read, cast, quantized on the target device and dropped
one at a time, so the whole 16-bit model never exists there; embeddings, norms and lm_head stay 16-bit, as
do the projections named in `keep_16bit`. A pre-quantized bitsandbytes directory (config.json
`quantization_config`) loads as is: a projection is 4-bit exactly when the checkpoint holds its
`weight.quant_state.bitsandbytes__nf4` (so `llm_int8_skip_modules` is honoured by what was saved).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import EngineError
from ..lora import Linear
from ..protocol import LoraSpec, log
from ..quant import Linear4bit, quantize_weight, read_quantization_config
from ..quant.convert import QUANT_STATE_KEY, linear4bit_from_checkpoint, should_skip
from ..quant.nf4 import parse_dtype
from . import llama

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Keys some checkpoints carry that are not weights (old Llama files saved the rotary table).
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(model_dir: str) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise EngineError(
            "MODEL_NOT_FOUND",
            f"{model_dir}: model directory not found",
            hint="model.path must be a Hugging Face model directory (config.json + *.safetensors)",
        )
    if not path.is_file():
        raise EngineError(
            "MODEL_FILE_MISSING",
            f"{path}: not found",
            hint="a Hugging Face model directory holds config.json beside its *.safetensors",
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EngineError("MODEL_CONFIG_INVALID", f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e


def model_config(model_dir: str) -> llama.Config:
    """Parse and check config.json; unsupported architectures and options are errors naming the field."""
    cfg = read_config(model_dir)
    path = Path(model_dir) / "config.json"
    supported = ", ".join(f"{k} ({v})" for k, v in llama.SUPPORTED.items())
    mt = cfg.get("model_type")
    if mt not in llama.SUPPORTED:
        raise EngineError(
            "UNSUPPORTED_ARCHITECTURE",
            f"{path}: model_type: {mt!r} (architectures {cfg.get('architectures')}) is not supported; "
            f"supported: {supported}",
            hint="use a Qwen3, Qwen2/2.5 or Llama 3.x model directory",
            field="model_type",
        )
    arch = cfg.get("architectures") or [llama.SUPPORTED[mt]]
    if arch != [llama.SUPPORTED[mt]]:
        raise EngineError(
            "UNSUPPORTED_ARCHITECTURE",
            f"{path}: architectures: {arch} is not supported for model_type {mt!r}; expected "
            f"[{llama.SUPPORTED[mt]!r}]",
            hint="only causal language models of the supported families can be fine-tuned",
            field="architectures",
        )
    if cfg.get("use_sliding_window"):
        raise EngineError(
            "UNSUPPORTED_ARCHITECTURE", f"{path}: use_sliding_window: true is not supported (expected false)"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise EngineError(
            "UNSUPPORTED_ARCHITECTURE",
            f'{path}: hidden_act: {cfg.get("hidden_act")!r} is not supported (expected "silu")',
        )
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise EngineError(
            "UNSUPPORTED_ARCHITECTURE",
            f"{path}: rope_scaling.rope_type: {rope_type!r} is not supported; supported: "
            + ", ".join(ROPE_TYPES),
        )
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise EngineError(
            "UNSUPPORTED_ARCHITECTURE",
            f"{path}: partial_rotary_factor: {cfg['partial_rotary_factor']!r} is not supported (expected 1.0: "
            "rotary over the whole head)",
        )
    try:
        config = llama.Config.from_hf(cfg)
    except KeyError as e:
        raise EngineError("MODEL_CONFIG_INVALID", f"{path}: required field {e.args[0]!r} missing") from e
    if config.head_dim % 2:
        raise EngineError(
            "MODEL_CONFIG_INVALID",
            f"{path}: head_dim: {config.head_dim} is odd (rotary pairs the two halves of a head; expected even)",
            field="head_dim",
        )
    return config


def weight_files(model_dir: str) -> dict[str, str]:
    """Tensor name → safetensors file, from model.safetensors or model.safetensors.index.json."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        for f in sorted(set(weight_map.values())):
            if not (d / f).is_file():
                raise EngineError(
                    "MODEL_FILE_MISSING",
                    f"{d / f}: listed in {index.name} but not found",
                    hint="the download may be incomplete; fetch the model directory again",
                )
        return {k: str(d / f) for k, f in weight_map.items()}
    single = d / "model.safetensors"
    if not single.is_file():
        raise EngineError(
            "MODEL_FILE_MISSING",
            f"{d}: no model.safetensors or model.safetensors.index.json",
            hint="Tuna loads safetensors weights only (convert *.bin with transformers first)",
        )
    with safe_open(str(single), "pt") as f:
        return {k: str(single) for k in f.keys()}  # noqa: SIM118


@dataclass(frozen=True)
class Quant4bit:
    """QLoRA: which decoder projections keep 16-bit weights (module-path fragments, as
    llm_int8_skip_modules: "layers.0.mlp.down_proj", "mlp", "self_attn.o_proj")."""

    keep_16bit: tuple[str, ...] = ()
    # dtype the 16-bit weight is cast to before quantizing, and that dequantization returns (bitsandbytes'
    # quant-state "dtype"); None = the model dtype. A merge sets the training dtype here to rebuild the
    # exact base the adapter was trained on while folding in fp32.
    dtype: str | None = None


def build_model(
    c: llama.Config,
    device: torch.device,
    dtype: torch.dtype,
    lora: LoraSpec | None,
    lora_layers: tuple[int, ...] | None,
    four_bit: set[str] | None = None,
) -> llama.CausalLM:
    """The model with uninitialised base weights in `dtype` (LoRA parameters stay fp32) on `device`; the
    linears named in `four_bit` get an empty NF4 base for the loader to fill."""
    with torch.device("meta"):
        model = llama.CausalLM(c, lora, lora_layers)
    for name in sorted(four_bit or ()):  # outside the meta context: Linear4bit computes its code tables
        model.get_submodule(name).to_4bit_base(dtype)
    for name, p in model.named_parameters():
        if not _is_lora(name) and ".base_layer." not in name:
            p.data = p.data.to(dtype)
    model.to_empty(device=device)
    model.reset_buffers()
    return model


def projection_names(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, Linear)]


def count_params(model: torch.nn.Module) -> int:
    """Parameters as the 16-bit model counts them (a 4-bit weight of [out, in] counts out·in, not its bytes)."""
    n, seen = 0, set()
    for m in model.modules():
        if isinstance(m, Linear4bit):
            n += m.in_features * m.out_features + (m.bias.numel() if m.bias is not None else 0)
            continue
        for p in m.parameters(recurse=False):
            if id(p) not in seen:  # tied embeddings count once
                seen.add(id(p))
                n += p.numel()
    return n


def is_own_architecture(model_dir: str) -> bool:
    return read_config(model_dir).get("model_type") in llama.SUPPORTED


def load_for_training(
    model_dir: str,
    dtype: str,
    device: torch.device,
    method: str,
    lora: LoraSpec | None,
    lora_layers: tuple[int, ...] | None,
    seed: int,
    quant: Quant4bit | None,
    shard: Callable[[torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Our model code for the families we have (models/llama.py), else the generic transformers + peft backend
    (models/generic.py; LoRA only). An architecture neither can load is UNSUPPORTED_ARCHITECTURE naming both.

    `shard` (FSDP, distributed.py): the model comes back sharded by it, loaded straight into each rank's
    shards (`load_model_sharded`); DoRA models and the generic backend are loaded whole, then sharded.
    A CUDA out-of-memory while loading is an OOM error saying what to change."""
    try:
        model = _load_for_training(model_dir, dtype, device, method, lora, lora_layers, seed, quant, shard)
    except torch.OutOfMemoryError as e:
        raise EngineError(
            "OOM",
            f"out of GPU memory while loading the model {model_dir}: {str(e).splitlines()[0]}",
            hint="use method qlora (4-bit base weights), more GPUs with distributed.strategy fsdp (each holds "
            "1/N of the model), or a smaller model",
        ) from e
    return model


def _load_for_training(
    model_dir: str,
    dtype: str,
    device: torch.device,
    method: str,
    lora: LoraSpec | None,
    lora_layers: tuple[int, ...] | None,
    seed: int,
    quant: Quant4bit | None,
    shard: Callable[[torch.nn.Module], None] | None,
) -> torch.nn.Module:
    try:
        model_config(model_dir)
    except EngineError as e:
        if e.code != "UNSUPPORTED_ARCHITECTURE" or is_own_architecture(model_dir):
            raise
        from .generic import load_generic

        if method != "lora":
            raise EngineError(
                "UNSUPPORTED",
                f'{e.message}; the generic transformers backend takes it, but only for method "lora" '
                f"(method.type is {method!r})",
                hint='use method "lora" for this architecture, or a Qwen3 / Qwen2.5 / Llama 3.x model',
                field="method.type",
            ) from e
        if prequantized_config(model_dir) is not None:
            raise EngineError(
                "UNSUPPORTED",
                f"{e.message}; a 4-bit checkpoint of it cannot be trained by the generic backend",
                field="quantization_config",
            ) from e
        model = load_generic(model_dir, DTYPES[dtype], device, lora, lora_layers, seed, e.message)
        if shard is not None:
            shard(model)  # refuses architectures it cannot shard, naming the fix
        return model
    if shard is not None and not (lora is not None and lora.use_dora):
        model = load_model_sharded(model_dir, dtype, device, shard, lora, lora_layers, seed, quant)
        log("loaded into FSDP shards (meta device, each rank reads its rows of every tensor)")
        return model
    model = load_model(model_dir, dtype, device, lora, lora_layers, seed=seed, quant=quant)
    if shard is not None:
        log("DoRA: loaded whole, then sharded (its magnitude vector needs whole base weights)")
        shard(model)
    return model


def prequantized_config(model_dir: str) -> Any:
    """config.json's bitsandbytes quantization_config (None for a 16-bit model); unsupported ones are errors."""
    try:
        return read_quantization_config(model_dir)
    except ValueError as e:
        raise EngineError(
            "UNSUPPORTED_ARCHITECTURE",
            str(e),
            hint="Tuna loads bitsandbytes NF4 (4-bit) checkpoints or 16/32-bit ones",
            field="quantization_config",
        ) from e


def load_model(
    model_dir: str,
    dtype: str,
    device: torch.device,
    lora: LoraSpec | None = None,
    lora_layers: tuple[int, ...] | None = None,
    seed: int = 0,
    quant: Quant4bit | None = None,
) -> llama.CausalLM:
    """Build and load a model. A pre-quantized (bitsandbytes NF4) directory always loads with 4-bit
    projections; a 16-bit one gets them when `quant` is given (QLoRA)."""
    c = model_config(model_dir)
    files = weight_files(model_dir)
    four_bit, prequantized = _four_bit_names(c, files, model_dir, lora_layers, quant)
    model = build_model(c, device, DTYPES[dtype], lora, lora_layers, four_bit)
    quant_dtype = DTYPES[quant.dtype] if quant is not None and quant.dtype else None
    load_weights(model, model_dir, files, quant_dtype)
    model.quantization = _quantization_info(four_bit, prequantized, quant, dtype)
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_lora"):
            m.reset_lora()
    return model


def _quantization_info(
    four_bit: set[str] | None, prequantized: bool, quant: Quant4bit | None, dtype: str
) -> dict[str, Any] | None:
    """What a merge must redo to see the base this adapter was trained on (written beside the adapter)."""
    if four_bit is None:
        return None
    return {
        "quant_type": "nf4",
        "source": "prequantized" if prequantized else "quantized_at_load",
        "keep_16bit": list(quant.keep_16bit) if quant is not None and not prequantized else [],
        "dtype": (quant.dtype if quant is not None and quant.dtype else dtype),
        "blocksize": 64,
        "double_quant": True,
    }


# ---- loading straight into FSDP shards ---------------------------------------------------------------------


@torch.no_grad()
def load_model_sharded(
    model_dir: str,
    dtype: str,
    device: torch.device,
    shard: Callable[[torch.nn.Module], None],
    lora: LoraSpec | None = None,
    lora_layers: tuple[int, ...] | None = None,
    seed: int = 0,
    quant: Quant4bit | None = None,
) -> llama.CausalLM:
    """`load_model` for FSDP without a whole copy per GPU: build on the meta device, `shard(model)`
    (fully_shard: every parameter becomes a DTensor of this rank's rows), allocate only the local shards on
    `device`, then read each rank's rows straight from the safetensors files (`get_slice`).

    Peak device memory ≈ this rank's shard (+ one 16-bit projection when quantizing at load: it is read whole
    to quantize, since double quantization needs the whole weight's absmax mean). The result equals
    `load_model(...)` followed by sharding, LoRA initialisation included (same seed, same device generator)."""
    c = model_config(model_dir)
    files = weight_files(model_dir)
    four_bit, prequantized = _four_bit_names(c, files, model_dir, lora_layers, quant)
    tdtype = DTYPES[dtype]
    quant_dtype = DTYPES[quant.dtype] if quant is not None and quant.dtype else tdtype
    with ExitStack() as stack:
        handles = {
            path: stack.enter_context(safe_open(path, "pt", device="cpu"))
            for path in sorted(set(files.values()))
        }

        def tensor(name: str) -> torch.Tensor:
            return handles[files[name]].get_tensor(name)

        check = partial(_check_shape, handles, files)

        with torch.device("meta"):
            model = llama.CausalLM(c, lora, lora_layers)
        states: dict[str, dict[str, Any]] = {}
        for name in sorted(four_bit or ()):
            m = model.get_submodule(name)
            state = _stored_quant_state(tensor, files, name) if prequantized else None
            states[name] = state or {}
            del m.weight, m.bias
            m.weight = m.bias = None
            m.base_layer = Linear4bit(
                m.in_features,
                m.out_features,
                f"{name}.bias" in files,
                compute_dtype=tdtype,
                quant_dtype=parse_dtype(str(state["dtype"])) if state else quant_dtype,
                blocksize=int(state["blocksize"]) if state else 64,
                double_quant=("nested_offset" in state) if state else True,
                nested_blocksize=int(state.get("nested_blocksize", 256)) if state else 256,
                device="meta",
            )
        for name, p in model.named_parameters():
            if not _is_lora(name) and ".base_layer." not in name:
                p.data = p.data.to(tdtype)
        _check_names(model, model_dir, files)  # before any allocation: a wrong directory fails fast
        shard(model)
        model.to_empty(device=device)
        model.reset_buffers()
        params, four_bit_mods = _check_names(model, model_dir, files)  # sharding replaced the parameters

        for name, p in params.items():
            check(name, tuple(p.shape))
            _put(p, lambda rows, name=name: _read_rows(handles[files[name]], name, rows))
        for name, m in four_bit_mods.items():
            base = m.base_layer
            assert base is not None
            bias_key = f"{name}.bias"
            if bias_key in files:
                check(bias_key, (m.out_features,))
                _put(base.bias, lambda rows, k=bias_key: _read_rows(handles[files[k]], k, rows))
            if prequantized:
                _fill_prequantized(base, name, handles, files, states[name])
            else:
                check(f"{name}.weight", (m.out_features, m.in_features))
                q = quantize_weight(tensor(f"{name}.weight").to(device, quant_dtype))
                _put(base.weight, lambda rows, q=q: q.packed.view(-1, 1)[rows], codes=True)
                _put(base.absmax, lambda rows, q=q: q.absmax[rows], codes=True)
                base.quant_map.copy_(q.quant_map)
                assert q.nested_absmax is not None and q.nested_quant_map is not None
                _put(base.nested_absmax, lambda rows, q=q: q.nested_absmax[rows])
                base.nested_quant_map.copy_(q.nested_quant_map)
                base.nested_offset.fill_(float(q.nested_offset or 0.0))
                del q
    model.quantization = _quantization_info(four_bit, prequantized, quant, dtype)
    # LoRA initialisation exactly as load_model does it (same seed, same generator, same module order): each
    # full adapter tensor is drawn on the device, then this rank keeps its rows.
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, Linear) and m.lora is not None:
            if m.lora.use_dora:
                raise EngineError(
                    "UNSUPPORTED",
                    "method.lora.use_dora: DoRA's magnitude needs whole base weights; the sharded loader "
                    "does not compute it",
                    hint="the caller loads DoRA models whole and shards them afterwards",
                )
            a = torch.empty(tuple(m.lora_A.weight.shape), dtype=torch.float32, device=device)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            _put(m.lora_A.weight, lambda rows, a=a: a[rows])
            _put(m.lora_B.weight, lambda rows: 0.0)
    return model


def _local_rows(p: torch.Tensor) -> slice:
    """The rows (dim 0) of the full tensor this rank holds: all of them for a plain tensor, the Shard(0)
    chunk of a DTensor (FSDP2: ceil(n / world) rows per rank, the last ranks possibly fewer or none)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return slice(0, p.shape[0] if p.dim() else 1)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return slice(offset[0], offset[0] + shape[0])


def _put(p: torch.Tensor, rows_of: Callable[[slice], torch.Tensor | float], codes: bool = False) -> None:
    """Fill this rank's part of parameter/buffer `p` from `rows_of(rows)` (its rows of the full tensor).
    `codes`: `p` holds uint8 NF4 codes, possibly as a float view of the same bytes (Linear4bit
    use_float_storage, under FSDP2): its rows are then `element_size` bytes each."""
    from torch.distributed.tensor import DTensor

    local = p.to_local() if isinstance(p, DTensor) else p
    rows = _local_rows(p)
    if codes and local.dtype != torch.uint8:
        w = local.element_size()
        value = rows_of(slice(rows.start * w, rows.stop * w))
        assert isinstance(value, torch.Tensor) and value.dtype == torch.uint8
        value = value.contiguous().reshape(-1).view(local.dtype).reshape(local.shape)
    else:
        value = rows_of(rows)
    if isinstance(value, float):
        local.fill_(value)
        return
    if tuple(value.shape) != tuple(local.shape):
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"a shard of shape {list(value.shape)} was read for a local tensor of shape {list(local.shape)}",
        )
    local.copy_(value)


def _read_rows(handle: Any, name: str, rows: slice) -> torch.Tensor:
    sl = handle.get_slice(name)
    return sl[rows] if len(sl.get_shape()) else handle.get_tensor(name)


def _stored_quant_state(
    tensor: Callable[[str], torch.Tensor], files: dict[str, str], name: str
) -> dict[str, Any]:
    from ..quant.nf4 import unpack_quant_state

    key = f"{name}.weight.{QUANT_STATE_KEY}"
    state = unpack_quant_state(tensor(key))
    if state.get("quant_type") != "nf4":
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"{files[key]}: {key}: quant_type {state.get('quant_type')!r} is not supported; expected 'nf4'",
        )
    return state


def _fill_prequantized(
    base: Linear4bit, name: str, handles: dict[str, Any], files: dict[str, str], state: dict[str, Any]
) -> None:
    """This rank's rows of a stored NF4 weight (packed codes, absmax, nested absmax) and its code tables."""
    prefix = f"{name}.weight"
    where = files[prefix]
    if list(state.get("shape", [])) != [base.out_features, base.in_features]:
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"{where}: 4-bit tensor {prefix} has shape {state.get('shape')} but config.json implies "
            f"{[base.out_features, base.in_features]}",
        )
    h = handles[where]
    stored = h.get_slice(prefix)
    n = base.in_features * base.out_features
    if stored.get_dtype() not in ("U8", "uint8") or math.prod(stored.get_shape()) != -(-n // 2):
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"{where}: {prefix} is {stored.get_dtype()} {stored.get_shape()}; the sharded loader reads uint8 "
            f"packed codes of {-(-n // 2)} bytes (bnb_4bit_quant_storage uint8)",
        )
    _put(base.weight, lambda rows: stored[rows].reshape(-1, 1), codes=True)
    absmax = handles[files[prefix + ".absmax"]].get_slice(prefix + ".absmax")
    _put(base.absmax, lambda rows: absmax[rows], codes=base.double_quant)
    base.quant_map.copy_(handles[files[prefix + ".quant_map"]].get_tensor(prefix + ".quant_map").float())
    if base.double_quant:
        k = prefix + ".nested_absmax"
        _put(base.nested_absmax, lambda rows: handles[files[k]].get_slice(k)[rows].float())
        k2 = prefix + ".nested_quant_map"
        base.nested_quant_map.copy_(handles[files[k2]].get_tensor(k2).float())
        base.nested_offset.fill_(float(state["nested_offset"]))


def _four_bit_names(
    c: llama.Config,
    files: dict[str, str],
    model_dir: str,
    lora_layers: tuple[int, ...] | None,
    quant: Quant4bit | None,
) -> tuple[set[str] | None, bool]:
    """(module paths of the projections that get an NF4 base, or None for none; is the directory
    pre-quantized). Checks `lora_layers` and `quant.keep_16bit` against the model."""
    if lora_layers is not None:
        bad = [i for i in lora_layers if i >= c.num_layers]
        if bad:
            raise EngineError(
                "PLAN_INVALID",
                f"method.trainable_layers: layers {bad} do not exist "
                f"(the model has {c.num_layers}: 0..{c.num_layers - 1})",
            )
    prequantized = prequantized_config(model_dir) is not None
    four_bit: set[str] | None = None
    if prequantized:
        suffix = f".weight.{QUANT_STATE_KEY}"
        four_bit = {k[: -len(suffix)] for k in files if k.endswith(suffix)}
    elif quant is not None:
        with torch.device("meta"):
            names = projection_names(llama.CausalLM(c))
        keep = quant.keep_16bit
        unused = [k for k in keep if not any(should_skip(n, (k,)) for n in names)]
        if unused:
            raise EngineError(
                "PLAN_INVALID",
                f"method.keep_16bit: {unused} match(es) no projection of the model (e.g. {names[0]})",
                hint='name projections by their module path or a part of it: "layers.0.mlp.down_proj", '
                '"self_attn.o_proj", "mlp"',
                field="method.keep_16bit",
            )
        four_bit = {n for n in names if not should_skip(n, keep)}
    return four_bit, prequantized


@torch.no_grad()
def load_weights(
    model: llama.CausalLM,
    model_dir: str,
    files: dict[str, str] | None = None,
    quant_dtype: torch.dtype | None = None,
) -> None:
    """Copy the checkpoint in, checking names and shapes both ways. NF4 bases (`Linear.base_layer`) are
    filled one projection at a time: quantized on the device from the 16-bit tensor, or taken as stored."""
    files = files or weight_files(model_dir)
    dtype = model.model.embed_tokens.weight.dtype
    params, four_bit = _check_names(model, model_dir, files)
    with ExitStack() as stack:
        handles = {
            path: stack.enter_context(safe_open(path, "pt", device="cpu"))
            for path in sorted(set(files.values()))
        }

        check = partial(_check_shape, handles, files)

        for name, p in params.items():
            check(name, tuple(p.shape))
            p.copy_(handles[files[name]].get_tensor(name))
        device = model.model.embed_tokens.weight.device
        for name, m in four_bit.items():
            bias_key = f"{name}.bias"
            bias = (
                handles[files[bias_key]].get_tensor(bias_key).to(device, dtype) if bias_key in files else None
            )
            if f"{name}.weight.{QUANT_STATE_KEY}" in files:  # stored in NF4: take it as is
                own = {
                    k: handles[files[k]].get_tensor(k)
                    for k in files
                    if k.startswith(f"{name}.weight") or k == bias_key
                }
                if bias is not None:
                    check(bias_key, (m.out_features,))
                try:
                    base = linear4bit_from_checkpoint(own, name, compute_dtype=dtype)
                except ValueError as e:
                    raise EngineError(
                        "MODEL_WEIGHTS_MISMATCH", f"{files[name + '.weight']}: {e}", field=name
                    ) from e
                if (base.out_features, base.in_features) != (m.out_features, m.in_features):
                    raise EngineError(
                        "MODEL_WEIGHTS_MISMATCH",
                        f"{files[name + '.weight']}: 4-bit tensor {name}.weight has shape "
                        f"{[base.out_features, base.in_features]} but config.json implies "
                        f"{[m.out_features, m.in_features]}",
                    )
                base = base.to(device)
            else:  # 16-bit in the file: quantize on the device, one projection at a time
                check(f"{name}.weight", (m.out_features, m.in_features))
                w = handles[files[f"{name}.weight"]].get_tensor(f"{name}.weight")
                w = w.to(device, quant_dtype or dtype)
                if bias is not None:
                    check(bias_key, (m.out_features,))
                base = Linear4bit.from_nf4(quantize_weight(w), bias, compute_dtype=dtype)
                del w
            m.base_layer = base


def _check_names(
    model: llama.CausalLM, model_dir: str, files: dict[str, str]
) -> tuple[dict[str, torch.nn.Parameter], dict[str, Linear]]:
    """The model's 16-bit parameters by checkpoint name and its 4-bit projections, after checking that the
    checkpoint holds exactly the tensors the config needs (both ways), naming the first few that differ."""
    four_bit = {n: m for n, m in model.named_modules() if isinstance(m, Linear) and m.base_layer is not None}
    params = {
        n: p
        for n, p in model.named_parameters(remove_duplicate=False)
        if not _is_lora(n) and ".base_layer." not in n
    }
    expected = set(params)
    for name in four_bit:
        expected.add(f"{name}.weight")
        if _has_bias(model.config, name):
            expected.add(f"{name}.bias")
    quant_keys = {k for k in files for n in four_bit if k.startswith(f"{n}.weight.")}
    if model.config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(files))
    if missing:
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"{model_dir}: {len(missing)} tensor(s) the config needs are not in the checkpoint, e.g. "
            + ", ".join(missing[:5]),
            hint="config.json and the safetensors files come from different models, or the download is partial",
        )
    unexpected = sorted(
        k
        for k in files
        if k not in expected
        and k not in quant_keys
        and not k.endswith(IGNORED_KEY_SUFFIXES)
        and not (k == "lm_head.weight" and model.config.tie_word_embeddings)
    )
    if unexpected:
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"{files[unexpected[0]]}: {len(unexpected)} tensor(s) the config does not expect, e.g. "
            + ", ".join(unexpected[:5]),
            hint="config.json and the safetensors files come from different models",
        )
    return params, four_bit


def _shape_of(handles: dict[str, Any], files: dict[str, str], name: str) -> tuple[int, ...]:
    return tuple(handles[files[name]].get_slice(name).get_shape())


def _check_shape(handles: dict[str, Any], files: dict[str, str], name: str, want: tuple[int, ...]) -> None:
    got = _shape_of(handles, files, name)
    if got != want:
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"{files[name]}: tensor {name} has shape {list(got)} but config.json implies {list(want)}",
            hint="config.json and the safetensors files come from different models",
        )


def _has_bias(c: llama.Config, name: str) -> bool:
    proj = name.rsplit(".", 1)[-1]
    if proj in ("q_proj", "k_proj", "v_proj"):
        return c.qkv_bias
    if proj == "o_proj":
        return c.o_bias
    return c.mlp_bias


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or name.endswith("lora_magnitude_vector")
