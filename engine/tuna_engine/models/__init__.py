"""Build a model from a Hugging Face model directory (config.json + safetensors) and load its weights.

`load_model` picks the family from config.json's `model_type`, builds the model on the meta device (so an 8B
model never exists twice in memory), materialises it on the target device, and copies each checkpoint tensor
in, checking names and shapes: a missing, unexpected or mis-shaped tensor is an error naming the tensor and
the file. LoRA parameters are initialised like peft's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import EngineError
from ..protocol import LoraSpec
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
    try:
        return llama.Config.from_hf(cfg)
    except KeyError as e:
        raise EngineError("MODEL_CONFIG_INVALID", f"{path}: required field {e.args[0]!r} missing") from e


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


def build_model(
    c: llama.Config,
    device: torch.device,
    dtype: torch.dtype,
    lora: LoraSpec | None,
    lora_layers: tuple[int, ...] | None,
) -> llama.CausalLM:
    """The model with uninitialised base weights in `dtype` (LoRA parameters stay fp32) on `device`."""
    with torch.device("meta"):
        model = llama.CausalLM(c, lora, lora_layers)
    for name, p in model.named_parameters():
        if not _is_lora(name):
            p.data = p.data.to(dtype)
    model.to_empty(device=device)
    model.reset_buffers()
    return model


def load_model(
    model_dir: str,
    dtype: str,
    device: torch.device,
    lora: LoraSpec | None = None,
    lora_layers: tuple[int, ...] | None = None,
    seed: int = 0,
) -> llama.CausalLM:
    c = model_config(model_dir)
    if lora_layers is not None:
        bad = [i for i in lora_layers if i >= c.num_layers]
        if bad:
            raise EngineError(
                "PLAN_INVALID",
                f"method.trainable_layers: layers {bad} do not exist "
                f"(the model has {c.num_layers}: 0..{c.num_layers - 1})",
            )
    model = build_model(c, device, DTYPES[dtype], lora, lora_layers)
    load_weights(model, model_dir)
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_lora"):
            m.reset_lora()
    return model


@torch.no_grad()
def load_weights(model: llama.CausalLM, model_dir: str) -> None:
    files = weight_files(model_dir)
    params = {n: p for n, p in model.named_parameters(remove_duplicate=False) if not _is_lora(n)}
    if model.config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
    missing = sorted(set(params) - set(files))
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
        if k not in params
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
    by_file: dict[str, list[str]] = {}
    for name in params:
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():
        with safe_open(path, "pt", device="cpu") as f:
            for name in names:
                p = params[name]
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(p.shape):
                    raise EngineError(
                        "MODEL_WEIGHTS_MISMATCH",
                        f"{path}: tensor {name} has shape {list(shape)} but config.json implies {list(p.shape)}",
                        hint="config.json and the safetensors files come from different models",
                    )
                p.copy_(f.get_tensor(name))


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or name.endswith("lora_magnitude_vector")
