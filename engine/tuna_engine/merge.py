"""`python -m tuna_engine merge --plan merge_plan.json`: fold a LoRA/DoRA adapter into its base model.

W' = W + s·BA (LoRA) or W' = m/||W + s·BA||_row · (W + s·BA) (DoRA), computed in fp32 and written in the
plan's dtype as a full Hugging Face model directory (sharded safetensors + index, config.json, tokenizer and
chat-template files copied from the base model directory).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import load_weights_into
from .errors import EngineError
from .export import save_hf_model
from .lora import Linear, read_adapter_config
from .models import DTYPES, load_model
from .protocol import MergePlan, emit


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if ".lora_" in name:
            continue
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name)
        if isinstance(module, Linear) and pname == "weight":
            state[name] = module.merged_weight()
        else:
            state[name] = p.detach()
    return state


def merge(plan: MergePlan) -> None:
    t0 = time.time()
    device = torch.device(
        "cuda" if plan.device == "cuda" or (plan.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    spec, layers = read_adapter_config(plan.adapter_dir)
    adapter_file = Path(plan.adapter_dir) / "adapter_model.safetensors"
    if not adapter_file.is_file():
        raise EngineError(
            "ADAPTER_NOT_FOUND",
            f"{adapter_file}: not found",
            hint="adapter_dir must hold adapter_model.safetensors and adapter_config.json",
        )
    n = len(load_file(str(adapter_file)))
    emit({"event": "log", "message": f"merging {n} adapter tensors from {plan.adapter_dir}"})
    # Build in fp32 so the fold is exact, then write in the requested dtype.
    model = load_model(plan.model.path, "float32", device, spec, layers)
    load_weights_into(model, Path(plan.adapter_dir), lora=True)
    save_hf_model(
        merged_state_dict(model),
        plan.model.path,
        Path(plan.output_dir),
        DTYPES[plan.model.dtype],
        plan.max_shard_bytes,
    )
    emit(
        {
            "event": "done",
            "steps": 0,
            "final_loss": None,
            "adapter_dir": plan.output_dir,
            "elapsed_s": time.time() - t0,
        }
    )
