"""Writing what leaves the engine: PEFT adapters and full Hugging Face model directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .lora import PEFT_PREFIX, adapter_config, adapter_state_dict

# Files a model directory carries besides weights that a merged/full model must keep (tokenizer, chat template,
# generation defaults).
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


QUANTIZATION_FILE = "tuna_quantization.json"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted({p.parent for p in path.rglob("*")} | {path}):
        fsync_dir(d)


def save_adapter(
    model: nn.Module, spec: Any, base_model_name: str, layers: tuple[int, ...] | None, out_dir: Path
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        adapter_state_dict(model), str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"}
    )
    # The generic backend knows the module names peft resolved (e.g. GPT-NeoX's query_key_value).
    cfg = adapter_config(spec, base_model_name, layers, getattr(model, "adapter_target_modules", None))
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # QLoRA: how the base was quantized, so `merge` folds the adapter into the weights it was trained
    # against (the dequantized NF4 ones). peft and vLLM read only the two files above.
    quantization = getattr(model, "quantization", None)
    if quantization is not None:
        (out_dir / QUANTIZATION_FILE).write_text(json.dumps(quantization, indent=2) + "\n")


def adapter_tensors_for_model(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """PEFT key names → our parameter names (strip `base_model.model.`; peft may add `.default`)."""
    out = {}
    for k, v in tensors.items():
        if not k.startswith(PEFT_PREFIX):
            from .errors import EngineError

            raise EngineError(
                "ADAPTER_INVALID", f"{source}: tensor {k!r} does not start with {PEFT_PREFIX!r}"
            )
        name = k[len(PEFT_PREFIX) :].replace(".default.", ".")
        if name.endswith(".lora_magnitude_vector.weight"):
            name = name[: -len(".weight")]
        out[name] = v
    return out


def save_hf_model(
    state: dict[str, torch.Tensor],
    source_dir: str,
    out_dir: Path,
    dtype: torch.dtype,
    max_shard_bytes: int = 5 * 2**30,
    config_updates: dict[str, Any] | None = None,
) -> None:
    """A Hugging Face model directory: sharded safetensors (+ index when more than one shard), config.json with
    the dtype, and the tokenizer / chat template / generation files copied from `source_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        t = t.detach().to("cpu", dtype).contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        total = 0
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
            for k, t in shard.items():
                weight_map[k] = fname
                total += t.numel() * t.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    cfg = json.loads((Path(source_dir) / "config.json").read_text())
    dtype_name = str(dtype).removeprefix("torch.")
    cfg["torch_dtype"] = dtype_name
    cfg["dtype"] = dtype_name
    cfg.update(config_updates or {})
    cfg.pop("quantization_config", None)  # what is written here is never 4-bit
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in SIDE_FILES:
        if (Path(source_dir) / f).is_file():
            shutil.copy2(Path(source_dir) / f, out_dir / f)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF-named base weights (tied lm_head omitted, as transformers saves it)."""
    return {n: p for n, p in model.named_parameters() if ".lora_" not in n}
