"""`python -m tuna_engine train --plan plan.json`: the training loop, top to bottom in `train()`.

Loss of an optimizer step = Σ weight·CE / Σ weight over ALL its micro-batches (token-weighted across gradient
accumulation, as torchtune does; never a mean of micro-batch means, which would over-weight short batches).
Logits are computed only at positions that are trained targets, so the [tokens, vocab] tensor never exists
for prompt tokens.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distributed, loss_scale
from .data import Batch, micro_batches, read_shards, take_packs
from .errors import EngineError
from .export import full_state_dict, save_adapter, save_hf_model
from .fp8 import convert_to_fp8, fp8_unsupported_reason
from .graphs import AUTO_MAX_TOKEN_PARAMS, HostBatch, StepGraphs, graph_keys_mode
from .lora import (
    FusedGroup,
    Linear,
    fuse_projection_groups,
    lora_add_mode,
    refresh_fused,
    set_lora_add,
    set_lora_compute,
)
from .loss import linear_cross_entropy
from .models import Quant4bit, count_params, load_for_training, prequantized_config
from .models.llama import (
    CausalLM,
    Segments,
    attention_mode,
    set_layer_checkpoint,
    set_layer_checkpoint_default,
    set_offload_device_layers,
    set_recompute_keep,
)
from .protocol import TrainPlan, emit, log


def weighted_ce_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Σ_t w[t]·CE(logits[t-1], token[t]) over the batch, in fp32 (a 0-dim tensor).

    Only trained targets reach the output layer, and they go through it in row chunks (loss.py), so neither
    prompt tokens' logits nor the whole [N, V] fp32 logits tensor ever exist. `model` may be wrapped for
    several processes (distributed.py); its output layer is read from the model itself."""
    hidden = model(batch.input_ids, batch.position_ids, batch.sample_ids)  # [B, T, C]
    w = batch.loss_weight[:, 1:]
    keep = w > 0
    return output_ce_sum(model, hidden[:, :-1][keep], batch.input_ids[:, 1:][keep], w[keep])


def output_ce_sum(
    model: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ weights·CE(output layer(rows), targets): rows [N, C] are the hidden states of the trained targets."""
    core = distributed.unwrap(model)
    return linear_cross_entropy(
        rows,
        core.output_weight,
        targets,
        weights,
        logit_scale=getattr(core, "logit_scale", 1.0),
        logit_softcap=getattr(core, "logit_softcap", None),
        bias=getattr(core, "output_bias", None),
    )


def static_ce_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    sample_ids: torch.Tensor,
    seg: Segments,
    row_index: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """`weighted_ce_sum` in fixed shapes (graphs.py): the trained targets' rows gathered by index, padding rows
    weighted 0, the samples' boundaries given, so nothing waits on the GPU and a CUDA graph can hold it."""
    hidden = model(input_ids, position_ids, sample_ids, seg=seg)
    return output_ce_sum(
        model, hidden.reshape(-1, hidden.shape[-1]).index_select(0, row_index), targets, weights
    )


def graph_policy(plan: TrainPlan) -> tuple[bool, float | None]:
    """train.cuda_graphs for one CUDA process with our own models → (graph at all, the tokens × parameters limit
    of a graphed micro-batch, None = any). true graphs every shape; "auto" (the default) the small ones
    (graphs.AUTO_MAX_TOKEN_PARAMS) of bf16 LoRA without DoRA, the path GPU-tested against eager — QLoRA, the FP8
    base, DoRA, fp16 and full fine-tuning graph only with true."""
    setting = plan.train.cuda_graphs
    if setting != "auto":
        return bool(setting), None
    lora = plan.method.lora
    tested = (
        plan.method.type == "lora"
        and lora is not None
        and not lora.use_dora
        and plan.train.base_precision == "bf16"
        and plan.model.dtype == "bfloat16"
    )
    return tested, AUTO_MAX_TOKEN_PARAMS


def step_graphs(
    model: torch.nn.Module,
    trainable: list[torch.nn.Parameter],
    device: torch.device,
    plan: TrainPlan,
    distributed_run: bool,
) -> StepGraphs | None:
    """graphs.py's runner where train.cuda_graphs applies (`graph_policy`); several processes, CPU and the generic
    transformers backend run eagerly."""
    on, limit = graph_policy(plan)
    if not on or device.type != "cuda" or not isinstance(model, CausalLM):
        return None
    if distributed_run:
        if plan.train.cuda_graphs is True:
            log("train.cuda_graphs: not applied under several processes (runs eagerly)")
        return None
    return StepGraphs(model, list(trainable), device, static_ce_sum, max_token_params=limit)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    loss: torch.Tensor,
    max_grad_norm: float,
    set_to_none: bool,
    skip_on_device: bool,
    before_wait: Callable[[], None] | None = None,
    after_update: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Clips the gradients to max_grad_norm (≤ 0: no clipping), steps unless the loss or the gradient norm is
    inf/nan, and zeroes the gradients (set_to_none: frees them) → (loss, gradient norm) as numbers.

    skip_on_device (fused AdamW, one process): the optimizer reads inf/nan from a GPU tensor (its `found_inf`),
    so clipping, step and zeroing are queued behind the backward and the one wait for the numbers comes last:
    the CPU launches them while the GPU still runs the backward, instead of waiting for the loss first and
    leaving the GPU idle while it launches them (~12 ms a step for Qwen3-0.6B's 392 adapter tensors, 2026-11-28
    trace). Otherwise: wait, then step. `before_wait`: CPU work to do while the GPU catches up (the next step's
    batches), on either path before the wait. `after_update`: what must follow the parameters' update on the device
    (TUNA_LORA_ADD=augmented's adapter slots), queued right after it (also when the step was skipped: it copies)."""
    max_norm = max_grad_norm if max_grad_norm > 0 else math.inf
    # .to: clip_grad_norm_ returns a CPU 0 when no parameter has a gradient.
    norm = distributed.full(torch.nn.utils.clip_grad_norm_(params, max_norm)).to(loss.device)
    numbers = torch.stack([loss.double(), norm.double()])
    if skip_on_device:
        optimizer.found_inf = (~torch.isfinite(numbers).all()).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]  # (a later step without it must not skip)
        if after_update is not None:
            after_update()
        optimizer.zero_grad(set_to_none=set_to_none)
        if before_wait is not None:
            before_wait()
        loss_value, norm_value = numbers.tolist()
    else:
        if before_wait is not None:
            before_wait()
        loss_value, norm_value = numbers.tolist()
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            optimizer.step()
        if after_update is not None:
            after_update()
        optimizer.zero_grad(set_to_none=set_to_none)
    return loss_value, norm_value


def set_compiled_recompute(budget: str | None, elementwise: bool) -> None:
    """What the compiled layers recompute instead of saving for backward. Both act through the compiler's
    partitioner (torch._functorch.config), process-wide:

    - elementwise (train.recompute "elementwise"): any elementwise result the backward needs (SwiGLU's
      silu(gate)·up, the norms' outputs, rotated q and k) is rebuilt from the GEMM outputs the layer keeps, even
      one the backward must materialise as a GEMM's or attention's input; GEMMs and attention are never run
      again (the partitioner's allowlist). False puts the partitioner's defaults back. Qwen3-0.6B on an H200
      (2026-11-28): one layer keeps 29.7 KB a token instead of 46.1 with recompute none; 8 × 2048 as 2
      micro-batches 7.8 GiB, 3.91× HF + PEFT (docs/benchmarks.md).
    - TUNA_ACTIVATION_MEMORY_BUDGET=f in (0, 1], an experiment: keep at most that fraction of the saved
      activations, recomputing the cheapest by the partitioner's estimate — past the elementwise tier that
      includes attention (0.6B, 8 × 2048 as 2 micro-batches: 6.9 GiB at 3.86×, recompute none otherwise)."""
    import torch._dynamo
    import torch._functorch.config as functorch_config

    fraction = 1.0  # the partitioner's default: keep what the min-cut keeps
    if budget is not None:
        try:
            fraction = float(budget)
        except ValueError:
            fraction = math.nan
        if not 0 < fraction <= 1:
            raise EngineError(
                "PLAN_INVALID",
                f"environment variable TUNA_ACTIVATION_MEMORY_BUDGET: {budget!r} is not a fraction in (0, 1]",
                hint="unset it, or give e.g. 0.7",
            )
        log(
            f"TUNA_ACTIVATION_MEMORY_BUDGET: compiled layers keep at most {fraction:g} of their saved activations"
        )
    # The min-cut's heuristics that keep such results saved; its op allowlist stays (no GEMM, no attention).
    bans = (
        "ban_recompute_materialized_backward",
        "ban_recompute_used_far_apart",
        "ban_recompute_long_fusible_chains",
    )
    wanted = {**dict.fromkeys(bans, not elementwise), "activation_memory_budget": fraction}
    if any(getattr(functorch_config, k) != v for k, v in wanted.items()):
        # Layers compiled under other settings (an earlier run in this process) would be reused as they are.
        torch._dynamo.reset()
        for k, v in wanted.items():
            setattr(functorch_config, k, v)


def rebuild_rotary_layers(model: CausalLM, value: str | None, elementwise: bool) -> int:
    """Which decoder layers rebuild rotated q and k in backward under recompute "elementwise" (the others keep them
    saved): memory for speed a layer at a time. Rebuilding is the partitioner's choice once rotate_half is views +
    where (llama.rotate_half); the rotated halves joined by `cat` pin them saved (rotate_half_kept).

    Default: the last quarter of the layers rebuild. Qwen3-0.6B, 8 x 2048 as 2 graphed micro-batches, HF + PEFT in
    the same run (H200, 2026-11-28): all 28 rebuilding 3.99-4.00x at 0.26x (7.8 GiB), the last 7 4.08-4.09x at
    0.29x (8.8 GiB), none 4.10x at 0.30x (9.1 GiB) — the quarter is what holds both of issue 5's 4x and 0.3x.
    TUNA_REBUILD_ROTARY_LAYERS=k (an experiment) makes it the last k. Other recompute modes: every layer (no
    effect: they rebuild nothing elementwise). Returns how many layers rebuild."""
    layers = model.model.layers
    if value is None:
        k = math.ceil(len(layers) / 4) if elementwise else len(layers)
    else:
        try:
            k = int(value)
        except ValueError:
            k = -1
        if not 0 <= k <= len(layers):
            raise EngineError(
                "PLAN_INVALID",
                f"environment variable TUNA_REBUILD_ROTARY_LAYERS: {value!r} is not a layer count from 0 to {len(layers)}",
                hint="unset it: the last quarter of the layers rebuild rotated q and k under recompute elementwise",
            )
    for i, layer in enumerate(layers):
        layer.self_attn.rebuild_rotary = i >= len(layers) - k
    if value is not None:
        log(
            f"TUNA_REBUILD_ROTARY_LAYERS: the last {k} of {len(layers)} layers rebuild rotated q/k, the others keep them"
        )
    return k


def lr_at(step: int, plan: TrainPlan) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to the peak, then decay to min_lr_ratio."""
    t = plan.train
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    progress = min(progress, 1.0)
    if t.scheduler == "constant":
        factor = 1.0
    elif t.scheduler == "linear":
        factor = t.min_lr_ratio + (1 - t.min_lr_ratio) * (1 - progress)
    else:
        factor = t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return t.learning_rate * factor


def pick_device(plan: TrainPlan) -> torch.device:
    if plan.device == "cuda" or (plan.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise EngineError(
                "NO_CUDA",
                'device: "cuda" but torch sees no CUDA GPU',
                hint='set device to "auto" or "cpu", or install a CUDA build of torch',
            )
        if plan.model.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise EngineError(
                "BF16_UNSUPPORTED",
                f'model.dtype: "bfloat16" but {torch.cuda.get_device_name()} has no bfloat16 support',
                hint='use dtype "float16" on this GPU (pre-Ampere)',
            )
        return torch.device("cuda")
    return torch.device("cpu")


def set_trainable(model: torch.nn.Module, plan: TrainPlan) -> list[torch.nn.Parameter]:
    """LoRA: only adapter tensors train. Full: every parameter, or those of the chosen layers/modules."""
    m = plan.method
    for name, p in model.named_parameters():
        if m.type != "full":
            p.requires_grad_(".lora_" in name)
            continue
        ok = True
        if m.trainable_layers is not None:
            parts = name.split(".")
            ok = len(parts) > 2 and parts[1] == "layers" and int(parts[2]) in m.trainable_layers
        if ok and m.trainable_modules is not None:
            ok = any(mod in name.split(".") for mod in m.trainable_modules)
        p.requires_grad_(ok)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise EngineError(
            "PLAN_INVALID",
            "method.trainable_layers / method.trainable_modules select no parameter",
            hint="module names: embed_tokens, self_attn, q_proj.., mlp, gate_proj.., norm, lm_head",
        )
    return trainable


def make_optimizer(model: torch.nn.Module, plan: TrainPlan, device: torch.device) -> torch.optim.Optimizer:
    t = plan.train
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # biases, norms, magnitudes
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw: dict[str, Any] = dict(lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
    if t.optimizer == "adamw8bit":
        try:
            from .optim8bit import AdamW8bit  # type: ignore[attr-defined]
        except ImportError as e:
            raise EngineError(
                "UNSUPPORTED",
                'train.optimizer: "adamw8bit" is not available in this build',
                hint='use "adamw"',
            ) from e
        return AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, **kw, fused=device.type == "cuda")


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_batches: list[Batch], device: torch.device) -> float:
    model.eval()
    total, weight = 0.0, 0.0
    for b in val_batches:
        b = b.to(device)
        total += float(weighted_ce_sum(model, b))
        weight += b.trained_tokens
    model.train()
    return total / max(weight, 1e-9)


class _Profile:
    """torch.profiler around part of a run (docs/performance.md explains how to read the output).
    TUNA_PROFILE=<file>: the third step's forward, backward and loss (not the optimizer) as a per-operation table.
    TUNA_PROFILE_TRACE=<file.json>: the fourth and fifth steps whole — micro-batches, the optimizer and the time
    between steps — as a Chrome trace (Perfetto, chrome://tracing): where the GPU waits for the CPU, which the
    table cannot show."""

    def __init__(self, path: str, trace: bool) -> None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.path, self.trace = path, trace
        self.prof = profile(activities=acts)
        self.prof.__enter__()

    def finish(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if self.trace:
            self.prof.export_chrome_trace(self.path)
            return
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        Path(self.path).write_text(self.prof.key_averages().table(sort_by=key, row_limit=40))


def profile_step(step: int, start_step: int) -> _Profile | None:
    path = os.environ.get("TUNA_PROFILE")
    return _Profile(path, trace=False) if path and step == start_step + 3 else None


def train(plan: TrainPlan) -> None:
    t0 = time.time()
    t = plan.train
    attention_mode()  # a bad TUNA_ATTENTION fails here, before the model loads, not at the first forward
    set_lora_add(os.environ.get("TUNA_LORA_ADD"))  # lora.py; a bad value fails here too
    set_layer_checkpoint(os.environ.get("TUNA_LAYER_CHECKPOINT"))  # models/llama.py; likewise
    set_recompute_keep(os.environ.get("TUNA_RECOMPUTE_KEEP"))  # models/llama.py; likewise
    set_offload_device_layers(os.environ.get("TUNA_OFFLOAD_DEVICE_LAYERS"))  # models/llama.py; likewise
    graph_keys_mode()  # TUNA_GRAPH_KEYS (graphs.py), likewise, whether or not this run graphs
    lora = plan.method.lora if plan.method.type in ("lora", "qlora") else None
    quant = Quant4bit(keep_16bit=plan.method.keep_16bit or ()) if plan.method.type == "qlora" else None
    if plan.method.type == "full" and prequantized_config(plan.model.path) is not None:
        raise EngineError(
            "UNSUPPORTED",
            f"{plan.model.path}/config.json: a 4-bit (bitsandbytes) model cannot be fully fine-tuned",
            hint='use method "qlora" (or "lora") on it, or a 16-bit model directory for "full"',
            field="method.type",
        )
    lora_layers = plan.method.trainable_layers if lora is not None else None
    # Several processes under torchrun (distributed.py): None on the single-process path.
    device_kind = (
        "cuda" if plan.device == "cuda" or (plan.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    strategy = plan.distributed.strategy if plan.distributed else None
    if strategy == "auto":
        card = distributed.env_world()[2]
        card_bytes = torch.cuda.get_device_properties(card).total_memory if device_kind == "cuda" else None
        strategy = distributed.choose_strategy(plan, device_kind, card_bytes)
        log(
            f"distributed.strategy auto: {strategy} (a replica holds ~{distributed.replica_bytes(plan) / 1e9:.1f} GB)"
        )
    dist = distributed.setup(strategy, device_kind)
    if dist is not None:
        distributed.check_plan(plan, dist)
        dist.clear_error(plan.run_dir)
        # recompute "full" under DDP/FSDP (compiled layers, dynamo's DDP graph splitting) keeps the checkpoint around
        # each layer unless TUNA_LAYER_CHECKPOINT says otherwise: the path the multi-GPU tests proved.
        set_layer_checkpoint_default("outside")
    device = pick_device(plan)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)

    # ---- model, data, optimizer -------------------------------------------------------------------------
    phase = "loading the model"
    # FSDP: loaded straight into each rank's shards (no whole copy per GPU); DDP: loaded whole, wrapped below.
    shard = (lambda m: dist.shard(m, device)) if dist is not None and dist.strategy == "fsdp" else None
    model = load_for_training(
        plan.model.path, plan.model.dtype, device, plan.method.type, lora, lora_layers, t.seed, quant, shard
    )
    if model.quantization is not None:
        log(f"QLoRA: decoder projections in NF4 ({model.quantization['source']})")
    if t.base_precision == "fp8":
        to_fp8_base(model, plan, device, dist is not None)
    trainable = set_trainable(model, plan)
    rotary_rebuilt = 0
    if hasattr(model, "recompute"):  # our models; the generic backend has only gradient_checkpointing
        # "elementwise" checkpoints nothing: what it recomputes is the compiler's part (set_compiled_recompute).
        model.recompute = "none" if t.recompute == "elementwise" else t.recompute
        rotary_rebuilt = rebuild_rotary_layers(
            model, os.environ.get("TUNA_REBUILD_ROTARY_LAYERS"), t.recompute == "elementwise"
        )
        # "auto": the layer inputs of full recompute wait in pinned CPU memory on CUDA when a pass's inputs are
        # large (llama.offload_this_pass; measured on an H200: Qwen3-8B 10,145 → 10,137 tok/s, 19.9 → 17.7 GiB;
        # Qwen3-0.6B at 0.88 GiB of inputs +18% without it); never on CPU, never by default with mlp/none.
        auto = device.type == "cuda" and t.recompute == "full"
        if t.offload_activations == "auto":
            model.offload_activations = "auto" if auto else False
        else:
            model.offload_activations = t.offload_activations
    else:
        model.gradient_checkpointing = t.gradient_checkpointing
    if lora is not None:
        set_lora_compute(model, t.lora_compute)
    model.train()
    # TUNA_LORA_ADD=augmented (lora.py): frozen weights stored with room for their adapters, one process only (FSDP
    # shards each parameter on its own; DDP not tried). Their adapter slots follow the parameters: refresh_fused
    # after every optimizer step and after a resume.
    fused_groups: list[FusedGroup] = []
    if lora is not None and lora_add_mode() == "augmented":
        if dist is not None:
            log("TUNA_LORA_ADD=augmented: one-process runs only; here the projections keep their own weights")
        else:
            fused_groups = fuse_projection_groups(model)
            log(
                f"TUNA_LORA_ADD=augmented: {len(fused_groups)} projection groups share a buffer with their adapters"
            )
    n_total = count_params(model)
    n_train = sum(p.numel() for p in trainable)
    if dist is not None and shard is None:
        model = dist.wrap(model, device)  # ddp: every rank built the same model (same seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
    train_packs = read_shards(plan.data.train)
    if not train_packs:
        raise EngineError("DATA_INVALID", f"data.train: {list(plan.data.train)} hold no packs")
    val_batches = micro_batches(read_shards(plan.data.validation), t.micro_batch_size)
    optimizer = make_optimizer(model, plan, device)
    # Read whatever the path (a bad value is an error even where nothing is compiled); they act on compiled layers.
    set_compiled_recompute(os.environ.get("TUNA_ACTIVATION_MEMORY_BUDGET"), t.recompute == "elementwise")
    # TUNA_COMPILE=0/1 overrides train.compile (benches, and a way out should a torch release break it).
    compile_env = os.environ.get("TUNA_COMPILE")
    compile_layers = t.compile if compile_env is None else compile_env == "1"
    inner = distributed.unwrap(model)
    compiled = False
    if compile_layers and dist is not None and dist.strategy == "fsdp" and device.type == "cuda":
        # FSDP2's per-layer hooks with regional compile are not proved on GPUs yet (the 200-step 4-GPU test did not
        # finish in its slot); DDP with compile is (2 × H200: 1.97× the 1-GPU compiled run, same losses).
        log("train.compile: not applied under FSDP yet (runs eager); DDP and one process compile")
    elif device.type == "cuda" and compile_layers and isinstance(inner, CausalLM):
        # train.compile (docs/performance.md): compile each decoder layer (regional compilation: one graph,
        # reused by every layer) so norms, RoPE, SwiGLU and the LoRA adds fuse into fewer kernels. Our own
        # model code only: the generic transformers backend stays eager. Under DDP the gradient hooks sit on the
        # parameters, outside the compiled layers.
        for layer in inner.model.layers:
            layer.compile()
        compiled = True
    if t.recompute == "elementwise":
        log(
            "train.recompute elementwise: the compiled layers rebuild norms, SwiGLU's product and (in the last "
            f"{rotary_rebuilt} of {len(inner.model.layers)}) rotated q/k in backward"
            if compiled
            else "train.recompute elementwise: no decoder layer is compiled here (CPU, FSDP, train.compile off or "
            'the generic backend), so it runs as recompute "none"'
        )
    graphs = step_graphs(model, trainable, device, plan, dist is not None)
    packs_per_step = t.micro_batch_size * t.grad_accum  # the global batch, whatever the process count
    if dist is not None:
        dist.local_grad_accum(t.grad_accum)  # each rank: grad_accum / world micro-batches (error if uneven)
    ckpt_root = Path(plan.output.checkpoints_dir)

    state: dict[str, Any] = {
        "step": 0,
        "data_position": 0,
        "best_val_loss": None,
        "best_step": None,
        "evals_since_best": 0,
        "last_checkpoint": None,
    }
    rng = None
    if plan.resume_from:
        src = ckpt.latest_checkpoint(plan.resume_from)
        ckpt.load_weights_into(model, src, lora is not None)
        refresh_fused(fused_groups)
        rng = ckpt.load_optimizer_and_rng(src, optimizer, device)
        state = ckpt.load_trainer_state(src)
        state["last_checkpoint"] = str(src)
        log(f"resuming from {src} at step {state['step']}")
    # float16: dynamic loss scaling (loss_scale.py), its state checkpointed with the trainer state.
    scaler = loss_scale.for_dtype(plan.model.dtype, state.get("loss_scale"))

    start: dict[str, Any] = {
        "event": "start",
        "device": str(device),
        "dtype": plan.model.dtype,
        "params_total": n_total,
        "params_trainable": n_train,
        "total_steps": t.max_steps,
        "start_step": state["step"],
    }
    if dist is not None:
        start.update(world_size=dist.world, strategy=dist.strategy)
        log(
            f"{dist.strategy} over {dist.world} processes; this rank holds {distributed.local_numel(model):,} elements"
        )
    emit(start)
    log(f"{n_train:,} of {n_total:,} parameters train; {len(train_packs)} packs, {packs_per_step} per step")

    def save(step: int, final_dir: Path, with_optimizer: bool = True) -> Path:
        snapshot = {**state, "step": step, "schedule": {"kind": t.scheduler, "lr": lr_at(step - 1, plan)}}
        snapshot.pop("last_checkpoint", None)
        if dist is not None:
            # Gather full tensors on every rank (collectives), rank 0 writes what a single process writes.
            return ckpt.save_checkpoint_distributed(
                dist,
                final_dir,
                model,
                optimizer if with_optimizer else None,
                snapshot,
                lora,
                plan.base_model_name,
                lora_layers,
            )
        return ckpt.save_checkpoint(
            final_dir,
            model,
            optimizer.state_dict() if with_optimizer else None,
            snapshot,
            lora,
            plan.base_model_name,
            lora_layers,
        )

    if rng is not None:
        ckpt.set_rng_state(rng)  # last, so nothing above consumes random numbers after the restore

    # ---- the loop -----------------------------------------------------------------------------------------
    loss = None
    offload_report = getattr(inner, "offload_report", None)
    run_start, start_step = time.time(), state["step"]
    interval_start, interval_tokens = time.time(), 0
    stopped_early = False
    timeline: _Profile | None = None

    def step_batches(position: int) -> tuple[list[Batch], list[HostBatch | None]]:
        """The micro-batches of the step at data position `position` (this rank's), and their graph inputs."""
        packs = take_packs(train_packs, t.seed, position, packs_per_step)
        if dist is not None:
            packs = dist.rank_slice(packs)  # this rank's contiguous block of the global step
        batches = micro_batches(packs, t.micro_batch_size)
        return batches, [graphs.prepare(b) if graphs is not None else None for b in batches]

    # The next step's batches, built while the GPU finishes this one (optimizer_step's before_wait): ~5 ms of CPU a
    # Qwen3-0.6B step that the GPU otherwise waits for (2026-11-28 trace).
    ahead: dict[int, tuple[list[Batch], list[HostBatch | None]]] = {}
    try:
        while state["step"] < t.max_steps:
            step = state["step"] + 1
            lr = lr_at(step - 1, plan)
            for g in optimizer.param_groups:
                g["lr"] = lr
            position = state["data_position"]
            batches, hosts = ahead.pop(position) if position in ahead else step_batches(position)
            ahead.clear()

            def look_ahead(position: int = position) -> None:
                ahead[position + packs_per_step] = step_batches(position + packs_per_step)

            profiling = profile_step(step, start_step)
            # After TUNA_PROFILE's step (two profilers cannot run at once).
            if step == start_step + 4 and (trace := os.environ.get("TUNA_PROFILE_TRACE")):
                timeline = _Profile(trace, trace=True)
            weight = sum(b.trained_tokens for b in batches)
            scale = scaler.scale if scaler is not None else 1.0
            if dist is None:
                total = torch.zeros((), device=device)
                for b, host in zip(batches, hosts, strict=True):
                    phase = (
                        f"forward/backward of step {step} (micro-batch of {list(b.input_ids.shape)} tokens)"
                    )
                    ce_sum = graphs.run(b, scale / max(weight, 1e-9), host) if graphs is not None else None
                    if ce_sum is None:
                        b = b.to(device)
                        ce_sum = weighted_ce_sum(model, b)
                        (ce_sum * (scale / max(weight, 1e-9))).backward()
                        # Its autograd graph goes now, before any capture (graphs.py).
                        ce_sum = ce_sum.detach()
                    total += ce_sum
                    interval_tokens += b.real_tokens
                loss_t = total.double() / max(weight, 1e-9)
            else:
                shapes = sorted({str(list(b.input_ids.shape)) for b in batches})
                phase = (
                    f"forward/backward of step {step} ({len(batches)} micro-batch(es) of {', '.join(shapes)} "
                    f"tokens on rank {dist.rank})"
                )
                loss, weight = distributed_step(dist, model, batches, weight, device, t.seed, step, scale)
                loss_t = torch.full((), loss, dtype=torch.float64, device=device)
                interval_tokens += int(
                    dist.all_reduce_sum([float(sum(b.real_tokens for b in batches))], device)[0]
                )
            if profiling is not None:
                profiling.finish()
            phase = f"optimizer step {step}"
            if scaler is not None:
                scaler.unscale_(trainable)
            loss, grad_norm = optimizer_step(
                optimizer,
                trainable,
                loss_t,
                t.max_grad_norm,
                # Graphs accumulate into the gradients' own tensors: zeroed in place, not freed.
                set_to_none=graphs is None or not graphs.graphs,
                skip_on_device=bool(optimizer.defaults.get("fused")) and dist is None,
                before_wait=look_ahead if step < t.max_steps else None,
                after_update=(lambda: refresh_fused(fused_groups)) if fused_groups else None,
            )
            # The first step's offload totals; the host memory guard's line at each step it keeps tensors.
            if offload_report is not None and (line := offload_report.end_step()) is not None:
                log(line)
            if not math.isfinite(loss):
                raise not_finite(f"loss is {loss}", step, state.get("last_checkpoint"))
            # An inf/nan gradient norm (the same on every rank: it is the global norm) skipped the step: fp16 lowers
            # its loss scale and goes on; 16/32-bit training stops, as for an inf/nan loss (the weights unchanged).
            if scaler is not None and not scaler.update(math.isfinite(grad_norm), step):
                emit(
                    {
                        "event": "log",
                        "message": f"step {step}: float16 gradients overflowed at loss scale {scale:g}; step "
                        f"skipped (no update), loss scale now {scaler.scale:g}",
                    }
                )
            elif scaler is None and not math.isfinite(grad_norm):
                raise not_finite(
                    f"gradient norm is {grad_norm} (loss {loss:.4f}; the step was not applied)",
                    step,
                    state.get("last_checkpoint"),
                )
            if scaler is not None:
                state["loss_scale"] = scaler.state_dict()
            state["step"] = step
            state["data_position"] += packs_per_step

            if step % t.log_every == 0 or step == t.max_steps:
                now = time.time()
                done = step - start_step
                emit(
                    {
                        "event": "step",
                        "step": step,
                        "total_steps": t.max_steps,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm if math.isfinite(grad_norm) else -1.0,
                        "trained_tokens": weight,
                        "tokens_per_s": interval_tokens / max(now - interval_start, 1e-9),
                        "elapsed_s": now - t0,
                        "eta_s": (now - run_start) / done * (t.max_steps - step),
                        "memory_gib": torch.cuda.max_memory_allocated() / 2**30
                        if device.type == "cuda"
                        else None,
                        **step_extras(dist, device, scaler, scale),
                    }
                )
                interval_start, interval_tokens = now, 0
            if timeline is not None and step == start_step + 5:
                timeline.finish()
                timeline = None

            final = step == t.max_steps
            # Every eval_every steps, and always after the last step (eval_every 0 = only then).
            if val_batches and ((t.eval_every and step % t.eval_every == 0) or final):
                phase = f"evaluation at step {step}"
                val = evaluate(model, val_batches, device)
                if dist is not None:  # every rank evaluates the same batches; decide on rank 0's number
                    val = dist.broadcast_float(val, device)
                emit({"event": "eval", "step": step, "val_loss": val})
                if state["best_val_loss"] is None or val < state["best_val_loss"]:
                    state.update(best_val_loss=val, best_step=step, evals_since_best=0)
                    save(step, ckpt_root / "best", with_optimizer=False)
                else:
                    state["evals_since_best"] += 1
                    p = t.early_stopping_patience
                    if p is not None and state["evals_since_best"] >= p:
                        emit(
                            {
                                "event": "log",
                                "message": f"early stopping at step {step}: no better validation "
                                f"loss for {p} evaluations (best {state['best_val_loss']:.4f} at step "
                                f"{state['best_step']})",
                            }
                        )
                        stopped_early = True

            if (t.save_every and step % t.save_every == 0) or stopped_early:
                phase = f"saving the checkpoint of step {step}"
                path = save(step, ckpt_root / f"step-{step}")
                state["last_checkpoint"] = str(path)
                emit({"event": "checkpoint", "step": step, "path": str(path)})
            if stopped_early:
                break
    except torch.OutOfMemoryError as e:
        note = offload_report.guard_note() if offload_report is not None else None
        raise oom_error(str(e), phase, plan, state["step"] + 1, note) from e
    if timeline is not None:  # the run ended before the trace's second step: write what it has
        timeline.finish()

    # ---- outputs ------------------------------------------------------------------------------------------
    out = Path(plan.output.adapter_dir)
    if t.early_stopping_patience is not None and state["best_step"] is not None:
        # With early stopping on, the exported weights are the best ones (DESIGN: keep the best of a run).
        ckpt.load_weights_into(model, ckpt_root / "best", lora is not None)
        refresh_fused(fused_groups)
        log(f"exporting the best weights (step {state['best_step']}, val loss {state['best_val_loss']:.4f})")
    if dist is not None:
        ckpt.save_outputs_distributed(dist, model, lora, plan, lora_layers, out)
    elif lora is not None:
        save_adapter(model, lora, plan.base_model_name, lora_layers, out)
    else:
        save_hf_model(full_state_dict(model), plan.model.path, out, model.model.embed_tokens.weight.dtype)
    emit(
        {
            "event": "done",
            "steps": state["step"],
            "final_loss": loss,
            "adapter_dir": str(out),
            "elapsed_s": time.time() - t0,
            "best_step": state["best_step"],
            "best_val_loss": state["best_val_loss"],
        }
    )
    distributed.shutdown(dist)


def to_fp8_base(model: torch.nn.Module, plan: TrainPlan, device: torch.device, distributed_run: bool) -> None:
    """train.base_precision "fp8": every decoder projection's frozen weight becomes FP8 (fp8.py), one at a time.
    Refused, naming the field, where it cannot run: a device without FP8 GEMMs, several processes, the generic
    transformers backend, a 4-bit checkpoint. The loader read the 16-bit weights first, so the load peaks at the
    16-bit model, and step events' memory_gib (load included, as in every mode) counts it."""

    def refuse(why: str, hint: str) -> EngineError:
        return EngineError(
            "UNSUPPORTED", f'train.base_precision: "fp8": {why}', hint=hint, field="train.base_precision"
        )

    hint = 'use train.base_precision "bf16"'
    reason = fp8_unsupported_reason(device)
    if reason is not None:
        raise refuse(reason, hint + " on this machine")
    if distributed_run:
        raise refuse("not supported under several processes yet (FSDP2 shards only float parameters)", hint)
    if not isinstance(model, CausalLM):
        raise refuse(f"{plan.model.path}: the generic transformers backend has no FP8 base", hint)
    if model.quantization is not None or any(
        isinstance(m, Linear) and m.base_layer is not None for m in model.modules()
    ):
        raise refuse(f"{plan.model.path} holds 4-bit (bitsandbytes) weights, not a 16-bit base", hint)
    n = convert_to_fp8(model)
    model.fp8_base = n > 0  # where full recompute checkpoints (CausalLM._checkpoint_inside)
    if device.type == "cuda":
        # The peak counter is not reset: step events' memory_gib includes the 16-bit load, as in every mode.
        torch.cuda.empty_cache()
        log(
            f"FP8 base: {n} projections in float8_e4m3fn (the 16-bit load peaked at "
            f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB)"
        )
    else:
        log(f"FP8 base: {n} projections in float8_e4m3fn")


def distributed_step(
    dist: distributed.Dist,
    model: torch.nn.Module,
    batches: list[Batch],
    local_weight: float,
    device: torch.device,
    seed: int,
    step: int,
    scale: float = 1.0,
) -> tuple[float, float]:
    """Forward/backward of this rank's micro-batches of one step → (global loss, global trained tokens).

    The trained-token count of the whole step is all-reduced first, so every rank divides by the same Σw;
    FSDP/DDP average gradients over ranks, so the backward is scaled by the world size to make their mean
    the sum Σ_ranks Σ w·∇CE / Σw, which is the single-process gradient."""
    (weight,) = dist.all_reduce_sum([local_weight], device)
    if not dist.is_main:
        torch.manual_seed(dist.dropout_seed(seed, step))
    total = torch.zeros((), device=device)
    for i, b in enumerate(batches):
        b = b.to(device)
        with dist.grad_sync(model, last=i == len(batches) - 1):
            ce_sum = weighted_ce_sum(model, b)
            (ce_sum * (scale * dist.world / max(weight, 1e-9))).backward()
        total += ce_sum.detach()
    (ce_total,) = dist.all_reduce_sum([float(total)], device)
    return ce_total / max(weight, 1e-9), weight


def step_extras(
    dist: distributed.Dist | None, device: torch.device, scaler: loss_scale.LossScaler | None, scale: float
) -> dict[str, Any]:
    """Optional step-event fields: each rank's peak memory under torchrun on CUDA (a collective: every rank
    calls this at the same steps), the fp16 loss scale used by the step and the steps skipped so far."""
    out: dict[str, Any] = {}
    if dist is not None and device.type == "cuda":
        out["memory_gib_per_rank"] = dist.all_gather_float(torch.cuda.max_memory_allocated() / 2**30, device)
    if scaler is not None:
        out.update(loss_scale=scale, skipped_steps=scaler.skipped_steps)
    return out


def not_finite(what: str, step: int, last_checkpoint: str | None) -> EngineError:
    """NAN_LOSS for an inf/nan loss or gradient norm at `step`; no update was applied."""
    return EngineError(
        "NAN_LOSS",
        f"{what} at step {step}; last good checkpoint: {last_checkpoint or 'none'}",
        hint="lower train.learning_rate or raise warmup_steps; check the model weights are finite; "
        + (f"resume_from {last_checkpoint}" if last_checkpoint else "no checkpoint to resume from"),
        step=step,
    )


def oom_error(detail: str, phase: str, plan: TrainPlan, step: int, offload: str | None = None) -> EngineError:
    """`offload`: the host memory guard's line when it kept saved tensors on the GPU this step."""
    t = plan.train
    advice = []
    if offload is not None:
        advice.append(
            f"host memory ran short for the activation offload ({offload}): free host memory or use a host "
            "with more"
        )
    advice.append(
        f"lower train.micro_batch_size (now {t.micro_batch_size}) and raise grad_accum to keep the batch"
    )
    if t.recompute != "full":
        advice.append(f'set train.recompute: "full" (now "{t.recompute}")')
    if t.offload_activations is not True:
        advice.append("set train.offload_activations: true")
    if plan.method.type != "qlora":
        advice.append("use method qlora (4-bit base weights)")
    advice.append("lower the data max length (shorter packs)")
    first = detail.splitlines()[0] if detail else "out of memory"
    return EngineError("OOM", f"out of GPU memory during {phase}: {first}", hint="; ".join(advice), step=step)
