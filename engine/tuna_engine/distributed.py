"""Training on several processes (GPUs): PyTorch's own stack, launched by `torchrun` (docs/distributed.md).

`tuna train --gpus N` starts `python -m torch.distributed.run --nproc-per-node N -m tuna_engine train ...`;
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, and `setup()` reads them. With no
torchrun (or WORLD_SIZE 1 and no `distributed` section in the plan) nothing here runs and train.py's
single-process path is untouched.

  - strategy "fsdp" (what a torchrun launch without a `distributed` section gets): FSDP2 (`torch.distributed.fsdp.fully_shard`) on each decoder layer and on the
    root. Frozen base weights (bf16, or NF4's uint8 `weight`/`absmax` and fp32 `nested_absmax` parameters of
    quant/linear4bit.py — FSDP2 all-gathers mixed dtypes through a uint8 view), LoRA parameters, their
    gradients and AdamW state are all sharded on dim 0; every rank holds about 1/N of them.
  - strategy "ddp": `DistributedDataParallel`, each rank a whole replica; gradients all-reduced.
  - strategy "auto" (the config's default): `choose_strategy` — ddp when a whole replica fits one GPU with room to
    spare (it scales better), else fsdp.

The global batch of a step is the single-process one, micro_batch_size × grad_accum packs: each rank takes a
contiguous block of grad_accum / N micro-batches of it (exactly the micro-batches a single process would
form), so the loss curve is the same whatever the GPU count. Loss = Σ w·CE / Σ w over the whole global step:
the trained-token count is all-reduced first, and since FSDP/DDP average gradients over ranks, each rank's
backward is scaled by N so the reduced gradient is the sum.

Checkpoints are independent of the rank count: parameters and optimizer state are gathered to full tensors
(DTensor.full_tensor, a collective every rank joins) and rank 0 writes exactly what a single process writes;
loading slices each full tensor into the local shard (distribute_tensor with src_data_rank=None, every rank
having read the same file), so a checkpoint of 2 processes resumes on 1, 2 or 4.

Errors: every rank writes its error event to <run_dir>/errors/rank-<r>.json; rank 0 alone speaks the event
protocol on stdout and, when torchrun stops it because another rank failed, reports that rank's error.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .errors import EngineError

Strategy = Literal["fsdp", "ddp"]
ERRORS_DIR = "errors"


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    strategy: Strategy

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- data -----------------------------------------------------------------------------------------

    def local_grad_accum(self, grad_accum: int) -> int:
        if grad_accum % self.world:
            raise EngineError(
                "PLAN_INVALID",
                f"train.grad_accum: {grad_accum} is not divisible by the {self.world} processes; the global "
                f"batch (micro_batch_size × grad_accum) is kept equal to one GPU's, so each process runs "
                f"grad_accum / {self.world} micro-batches",
                hint=f"set train.grad_accum to a multiple of {self.world} (e.g. {self.world * max(1, grad_accum // self.world)})",
                field="train.grad_accum",
            )
        return grad_accum // self.world

    def rank_slice(self, items: list[Any]) -> list[Any]:
        """This rank's contiguous block of a step's packs (len(items) is a multiple of world)."""
        n = len(items) // self.world
        return items[self.rank * n : (self.rank + 1) * n]

    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(t)
        return t.tolist()

    def all_gather_float(self, value: float, device: torch.device) -> list[float]:
        """Every rank's `value`, in rank order (on every rank)."""
        out = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(self.world)]
        torch_dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=device))
        return [float(t[0]) for t in out]

    def broadcast_float(self, value: float, device: torch.device) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch_dist.broadcast(t, 0)
        return float(t[0])

    def barrier(self) -> None:
        torch_dist.barrier()

    def dropout_seed(self, seed: int, step: int) -> int:
        """Ranks other than 0 draw dropout masks from a stream that is a pure function of (seed, rank, step),
        so a resumed run replays them whatever the checkpoint's rank count (rank 0 continues rng.pt)."""
        return (seed * 1_000_003 + self.rank * 10_007 + step) % (2**63 - 1)

    # ---- model ----------------------------------------------------------------------------------------

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = (
                [device.index if device.index is not None else self.local_rank]
                if device.type == "cuda"
                else None
            )
            return DistributedDataParallel(model, device_ids=ids)
        self.shard(model, device)
        return model

    def shard(self, model: nn.Module, device: torch.device) -> None:
        """FSDP2 in place: `fully_shard` on each decoder layer and the root. Works on a model built on the meta
        device too (models.load_model_sharded then allocates and fills only this rank's shards)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        layers = getattr(getattr(model, "model", None), "layers", None)
        if layers is None or not hasattr(model, "output_weight") or hasattr(model, "adapter_parameters"):
            raise EngineError(
                "UNSUPPORTED",
                'distributed.strategy: "fsdp" shards Tuna\'s own model code (Qwen3, Qwen2/2.5, Llama 3.x); '
                "this architecture runs on the generic transformers backend",
                hint='use distributed.strategy "ddp" for it',
                field="distributed.strategy",
            )
        from .quant import Linear4bit

        for m in model.modules():
            if isinstance(m, Linear4bit):
                m.use_float_storage()  # NF4 codes as bf16-typed bytes: FSDP2 (torch 2.11) shards float tensors only
        mesh = init_device_mesh(device.type, (self.world,))
        # One FSDP unit per decoder layer (all-gathered just before it runs, freed after), the root keeps the
        # embeddings, final norm and lm_head (unsharded from the start of forward to the end of backward, so
        # the loss can read `output_weight` after forward).
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)

    @contextlib.contextmanager
    def grad_sync(self, model: nn.Module, last: bool) -> Iterator[None]:
        """Reduce gradients only after the last micro-batch of a step (accumulate locally before)."""
        if self.strategy == "ddp":
            with contextlib.nullcontext() if last else model.no_sync():  # type: ignore[operator]
                yield
            return
        model.set_requires_gradient_sync(last)  # type: ignore[operator]
        yield

    # ---- errors ---------------------------------------------------------------------------------------

    def write_error(self, run_dir: str, event: dict[str, Any]) -> None:
        d = Path(run_dir) / ERRORS_DIR
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".rank-{self.rank}.json.tmp"
        tmp.write_text(json.dumps({"rank": self.rank, **event}) + "\n")
        os.replace(tmp, d / f"rank-{self.rank}.json")

    def clear_error(self, run_dir: str) -> None:
        (Path(run_dir) / ERRORS_DIR / f"rank-{self.rank}.json").unlink(missing_ok=True)


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


# A replica may take this share of the card for auto to pick ddp: the rest is for activations, the CUDA context
# and the allocator's slack (Qwen3-8B LoRA: 16.4 GB of weights, 18 GiB peak with the default settings).
DDP_SHARE = 0.5


def replica_bytes(plan: Any) -> int:
    """What one whole replica holds on a GPU before activations: the base weights as loaded (16-bit, or NF4 at
    ~0.3 of the 16-bit bytes when quantized at load; a pre-quantized directory as stored) plus, for full
    fine-tuning, fp32 gradients and AdamW state (16 bytes per 2 bytes of weight: 8× the weights)."""
    from .models import prequantized_config, weight_files

    stored = sum(os.path.getsize(f) for f in set(weight_files(plan.model.path).values()))
    if plan.method.type == "qlora" and prequantized_config(plan.model.path) is None:
        return int(stored * 0.3)
    if plan.method.type == "full":
        return stored * 8
    return stored


def choose_strategy(plan: Any, device_kind: str, device_bytes: int | None) -> Strategy:
    """distributed.strategy "auto". ddp where it can run and a replica fits: it moves only the gradients of what
    trains, while FSDP all-gathers every frozen weight twice a step (forward and recomputed forward) — measured on
    4 × H200, Qwen3-8B LoRA: DDP 1.98× / 3.92× over one GPU on 2 / 4, FSDP 1.80× / 3.55× (docs/benchmarks.md).
    fsdp where a replica would not fit DDP_SHARE of a GPU (a 32B bf16 or 70B NF4 base, full fine-tuning), and on
    CPU (no per-device memory to compare with: sharding saves host memory). ddp also where fsdp cannot run: the
    generic transformers backend, 8-bit AdamW."""
    from .models import is_own_architecture

    if not is_own_architecture(plan.model.path) or plan.train.optimizer == "adamw8bit":
        return "ddp"
    if device_kind != "cuda" or device_bytes is None:
        return "fsdp"
    return "ddp" if replica_bytes(plan) <= DDP_SHARE * device_bytes else "fsdp"


def setup(strategy: Strategy | None, device_kind: str) -> Dist | None:
    """Join the process group torchrun describes. None (single process) when WORLD_SIZE is 1 and the plan has
    no `distributed` section. `device_kind` is "cuda" or "cpu" (gloo)."""
    rank, world, local_rank = env_world()
    if world == 1 and strategy is None:
        return None
    if "MASTER_ADDR" not in os.environ and world > 1:
        raise EngineError(
            "PLAN_INVALID",
            f"WORLD_SIZE is {world} but MASTER_ADDR is not set: the engine was not started by torchrun",
            hint="start it with `tuna train --gpus N` (which runs python -m torch.distributed.run)",
        )
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        kw: dict[str, Any] = {
            "timeout": timedelta(minutes=int(os.environ.get("TUNA_DIST_TIMEOUT_MIN", "30")))
        }
        if device_kind == "cuda":
            kw["device_id"] = torch.device("cuda", local_rank)
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
    return Dist(rank=rank, world=world, local_rank=local_rank, strategy=strategy or "fsdp")


def check_plan(plan: Any, d: Dist) -> None:
    """What the plan asked for against what torchrun started, and what does not combine with sharding."""
    spec = plan.distributed
    if spec is not None and spec.gpus * spec.nnodes != d.world:
        raise EngineError(
            "PLAN_INVALID",
            f"distributed: gpus {spec.gpus} × nnodes {spec.nnodes} = {spec.gpus * spec.nnodes} processes "
            f"planned, but torchrun started WORLD_SIZE {d.world}",
            hint="launch with `tuna train --gpus N` so the launcher and the plan agree",
            field="distributed.gpus",
        )
    if d.strategy == "fsdp" and plan.train.optimizer == "adamw8bit":
        raise EngineError(
            "UNSUPPORTED",
            'train.optimizer: "adamw8bit" keeps block-quantized state that FSDP cannot shard',
            hint='use optimizer "adamw" with distributed.strategy "fsdp" (its state is sharded anyway), or strategy "ddp"',
            field="train.optimizer",
        )
    d.local_grad_accum(plan.train.grad_accum)


def shutdown(d: Dist | None) -> None:
    if d is not None and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# ---- gathering for checkpoints, loading into shards ---------------------------------------------------------


def full(t: torch.Tensor) -> torch.Tensor:
    """A full (unsharded) copy of `t`; a collective for DTensors, so every rank calls it in the same order."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def to_local_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor `t` as `like` holds it: sliced into `like`'s shard when it is a DTensor (no communication:
    every rank read the same file), else unchanged."""
    if isinstance(like, DTensor):
        return distribute_tensor(
            t.to(like.device_mesh.device_type), like.device_mesh, like.placements, src_data_rank=None
        )
    return t


def gathered_parameters(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """name → full parameter (on CPU), for every parameter (or those in `names`). Every rank must call it."""
    core = unwrap(model)
    return {n: full(p.detach()).cpu() for n, p in core.named_parameters() if names is None or n in names}


def gathered_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with full tensors: what a single process's optimizer.state_dict() holds (ids
    follow the order of the param groups, which is the model's order on every rank count)."""
    sd = optimizer.state_dict()
    state = {
        i: {k: full(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for i, s in sorted(sd["state"].items())
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """A full (single-process) optimizer state dict sliced to this rank's shards of each parameter."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, s in sd["state"].items():
        p = params[int(i)]
        state[i] = {
            k: to_local_like(v, p)
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) == tuple(p.shape)
            else v
            for k, v in s.items()
        }
    return {"state": state, "param_groups": sd["param_groups"]}


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself under a DistributedDataParallel wrapper (FSDP2 shards in place: no wrapper)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def local_numel(model: nn.Module) -> int:
    """Elements of parameter storage this rank holds (a shard's, for FSDP)."""
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in unwrap(model).parameters())
