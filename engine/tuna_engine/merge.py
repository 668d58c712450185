"""`python -m tuna_engine merge --plan merge_plan.json`: fold a LoRA/DoRA adapter into its base model.

W' = W + s·BA (LoRA) or W' = m/||W + s·BA||_row · (W + s·BA) (DoRA), computed in fp32 and written in the
plan's dtype as a full Hugging Face model directory (sharded safetensors + index, config.json, tokenizer and
chat-template files copied from the base model directory).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import load_weights_into
from .errors import EngineError
from .export import QUANTIZATION_FILE, save_hf_model
from .lora import Linear, read_adapter_config
from .models import DTYPES, Quant4bit, is_own_architecture, load_model
from .protocol import MergePlan, emit


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Hugging Face-named weights with every adapter folded in; NF4 bases are dequantized first."""
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if ".lora_" in name or ".base_layer." in name:
            continue
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name)
        if isinstance(module, Linear) and pname == "weight":
            state[name] = module.merged_weight()
        else:
            state[name] = p.detach()
    for name, module in model.named_modules():
        if isinstance(module, Linear) and module.base_layer is not None:
            state[f"{name}.weight"] = module.merged_weight()
            if module.base_layer.bias is not None:
                state[f"{name}.bias"] = module.base_layer.bias.detach()
    return state


def read_quantization(adapter_dir: str) -> Quant4bit | None:
    """The QLoRA base recipe saved beside an adapter trained on a base quantized at load time."""
    path = Path(adapter_dir) / QUANTIZATION_FILE
    if not path.is_file():
        return None
    q = json.loads(path.read_text())
    if q.get("source") != "quantized_at_load":
        return None  # a pre-quantized base directory is 4-bit by itself
    return Quant4bit(keep_16bit=tuple(q.get("keep_16bit") or ()), dtype=q.get("dtype"))


def merge(plan: MergePlan) -> None:
    t0 = time.time()
    device = torch.device(
        "cuda" if plan.device == "cuda" or (plan.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if not is_own_architecture(plan.model.path):
        # The generic backend's adapters: peft folds them (in fp32) into the transformers model.
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(plan.model.path, dtype=torch.float32).to(device)
        merged = PeftModel.from_pretrained(base, plan.adapter_dir).merge_and_unload()
        _write_merged(merged.state_dict(), plan, t0)
        return
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
    # Build in fp32 so the fold is exact, then write in the requested dtype. An adapter trained with QLoRA is
    # folded into the dequantized NF4 base it was trained on (quantized again the same way, deterministically).
    quant = read_quantization(plan.adapter_dir)
    if quant is not None:
        emit({"event": "log", "message": "QLoRA adapter: folding into the dequantized 4-bit base"})
    model = load_model(plan.model.path, "float32", device, spec, layers, quant=quant)
    load_weights_into(model, Path(plan.adapter_dir), lora=True)
    _write_merged(merged_state_dict(model), plan, t0)


def _write_merged(state: dict[str, torch.Tensor], plan: MergePlan, t0: float) -> None:
    save_hf_model(state, plan.model.path, Path(plan.output_dir), DTYPES[plan.model.dtype], plan.max_shard_bytes)
    emit({"event": "done", "steps": 0, "final_loss": None, "adapter_dir": plan.output_dir, "elapsed_s": time.time() - t0})
