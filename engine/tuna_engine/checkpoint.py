"""Checkpoints: everything needed to continue a run exactly, written atomically.

checkpoints_dir/step-N/ holds
  adapter_model.safetensors + adapter_config.json   (LoRA; PEFT layout, loadable as is)  or  model.safetensors
  optimizer.pt        optimizer state
  rng.pt              torch CPU + CUDA, python `random` and numpy generator states
  trainer_state.json  step, data position (packs consumed), schedule, best validation loss, patience count
Atomic: everything is written to a hidden temp dir, fsynced, then renamed to step-N (rename is atomic on
POSIX), so a crash while saving leaves no step-N at all and the previous checkpoint untouched.

Under several processes (distributed.py) the files are the same: full tensors gathered from the shards,
written by rank 0, and loading slices them into whatever shards the resuming run has, so a checkpoint does not
depend on the number of processes that wrote it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import EngineError
from .export import adapter_tensors_for_model, fsync_dir, fsync_tree, full_state_dict, save_adapter
from .lora import adapter_parameters, is_adapter_param

if TYPE_CHECKING:
    from .distributed import Dist
    from .protocol import TrainPlan

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])


def save_checkpoint(
    final_dir: Path,
    model: nn.Module,
    optimizer_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    lora_spec: Any,
    base_model_name: str,
    lora_layers: tuple[int, ...] | None,
) -> Path:
    """Write a checkpoint to `final_dir` atomically (replacing an older one of the same name).
    `optimizer_state` is `optimizer.state_dict()`; None writes weights only (no optimizer.pt / rng.pt)."""
    parent = final_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{final_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if lora_spec is not None:
            save_adapter(model, lora_spec, base_model_name, lora_layers, tmp)
        else:
            state = {k: v.detach().contiguous() for k, v in full_state_dict(model).items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        fsync_tree(tmp)
        old = parent / f".old-{final_dir.name}-{os.getpid()}"
        if final_dir.exists():
            os.rename(final_dir, old)
        os.rename(tmp, final_dir)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_dir


def latest_checkpoint(path: str) -> Path:
    """`path` is a checkpoint dir (has trainer_state.json), a checkpoints dir, or a run dir (→ its checkpoints/)."""
    p = Path(path)
    if (p / "trainer_state.json").is_file():
        return p
    for d in (p, p / "checkpoints"):
        steps = (
            sorted(
                (int(m.group(1)), c)
                for c in d.glob("step-*")
                if (m := STEP_DIR.match(c.name)) and (c / "trainer_state.json").is_file()
            )
            if d.is_dir()
            else []
        )
        if steps:
            return steps[-1][1]
    raise EngineError(
        "RESUME_NOT_FOUND",
        f"resume_from: {path}: no checkpoint there (expected a step-N dir, or a run/checkpoints dir holding some)",
        hint="set resume_from to null to start fresh, or to a directory from an earlier run",
    )


@torch.no_grad()
def load_weights_into(model: nn.Module, ckpt: Path, lora: bool) -> None:
    """Copy checkpointed trainable weights into `model`, checking the names match both ways."""
    if lora:
        params = adapter_parameters(model)
        f = ckpt / "adapter_model.safetensors"
        tensors = adapter_tensors_for_model(load_file(str(f)), str(f))
        expected = set(params)
    else:
        params = dict(model.named_parameters())
        f = ckpt / "model.safetensors"
        tensors = load_file(str(f))
        expected = {n for n in params if ".lora_" not in n}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise EngineError(
            "CHECKPOINT_MISMATCH",
            f"{f}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})",
            hint="resume with the same model and method (LoRA rank, targets, layers) as the checkpointed run",
        )
    from .distributed import to_local_like

    for name, t in tensors.items():
        if tuple(t.shape) != tuple(params[name].shape):
            raise EngineError(
                "CHECKPOINT_MISMATCH",
                f"{f}: tensor {name} has shape {list(t.shape)}, the model expects {list(params[name].shape)}",
            )
        params[name].copy_(to_local_like(t.to(params[name].dtype), params[name]))


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "trainer_state.json").read_text())


def load_optimizer_and_rng(
    ckpt: Path, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Any]:
    if not (ckpt / "optimizer.pt").is_file() or not (ckpt / "rng.pt").is_file():
        raise EngineError(
            "RESUME_NOT_FOUND",
            f"resume_from: {ckpt} holds weights only (no optimizer.pt / rng.pt), so training cannot continue exactly",
            hint="resume from a step-N checkpoint, or the run directory (→ its latest step-N)",
        )
    state = torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=False)
    if _is_sharded(optimizer):
        from .distributed import shard_optimizer_state

        state = shard_optimizer_state(optimizer, state)
    optimizer.load_state_dict(state)
    return torch.load(ckpt / "rng.pt", weights_only=False)


def _is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for g in optimizer.param_groups for p in g["params"])


class _Gathered(nn.Module):
    """Full parameters gathered from a sharded model, standing in for it where the single-process writers
    (save_adapter, full_state_dict) read a model: same names, `adapter_parameters`, `quantization`."""

    def __init__(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._tensors = tensors
        self.quantization = getattr(model, "quantization", None)

    def adapter_parameters(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self._tensors.items() if is_adapter_param(n)}

    def named_parameters(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return iter(self._tensors.items())


def _gather(model: nn.Module, lora_spec: Any) -> _Gathered:
    from .distributed import gathered_parameters, unwrap

    core = unwrap(model)
    names = set(adapter_parameters(core)) if lora_spec is not None else None
    return _Gathered(core, gathered_parameters(core, names))


def save_checkpoint_distributed(
    dist: Dist,
    final_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    lora_spec: Any,
    base_model_name: str,
    lora_layers: tuple[int, ...] | None,
) -> Path:
    """`save_checkpoint` for a sharded/replicated model: every rank gathers (collectives), rank 0 writes the
    files a single process would write, then all ranks wait for it."""
    from .distributed import gathered_optimizer_state

    gathered = _gather(model, lora_spec)
    opt_state = gathered_optimizer_state(optimizer) if optimizer is not None else None
    if dist.is_main:
        save_checkpoint(
            final_dir, gathered, opt_state, trainer_state, lora_spec, base_model_name, lora_layers
        )
    dist.barrier()
    return final_dir


def save_outputs_distributed(
    dist: Dist,
    model: nn.Module,
    lora_spec: Any,
    plan: TrainPlan,
    lora_layers: tuple[int, ...] | None,
    out: Path,
) -> None:
    """The run's adapter (or full model) from a sharded/replicated model, written by rank 0."""
    from .distributed import unwrap

    gathered = _gather(model, lora_spec)
    if dist.is_main:
        if lora_spec is not None:
            save_adapter(gathered, lora_spec, plan.base_model_name, lora_layers, out)
        else:
            from .export import save_hf_model

            core = unwrap(model)
            save_hf_model(
                full_state_dict(gathered), plan.model.path, out, core.model.embed_tokens.weight.dtype
            )
    dist.barrier()
