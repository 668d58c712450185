"""The Python half of the seam (DESIGN.md "Shape"); src/engine/protocol.ts is the reference.

TypeScript writes plan.json and starts `python -m tuna_engine <command> --plan plan.json`; the engine answers
with one JSON event per stdout line. Plans are parsed into frozen dataclasses by `parse_train_plan` /
`parse_merge_plan`, which collect every problem and report them all at once, each naming its field
("train.micro_batch_size: expected an integer >= 1, got 0").
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from .errors import EngineError

PROTOCOL_VERSION = 1

Dtype = Literal["float32", "bfloat16", "float16"]
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]  # projection names or ("all-linear",)
    use_rslora: bool
    use_dora: bool


@dataclass(frozen=True)
class ModelSpec:
    path: str
    dtype: Dtype


@dataclass(frozen=True)
class DataSpec:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    manifest: str


@dataclass(frozen=True)
class MethodSpec:
    type: Literal["lora", "qlora", "full"]
    lora: LoraSpec | None
    # Freezing. LoRA: adapters only on these decoder layers (peft's layers_to_transform). Full: only these
    # layers' parameters train. None = all layers.
    trainable_layers: tuple[int, ...] | None = None
    # Full fine-tuning only: train only parameters whose dotted name contains one of these module names
    # ("mlp", "self_attn", "q_proj", "embed_tokens", "norm", "lm_head"). None = all modules.
    trainable_modules: tuple[str, ...] | None = None
    # QLoRA only: decoder projections that keep 16-bit weights (module-path fragments matched on whole dotted
    # components, like transformers' llm_int8_skip_modules: "layers.0.mlp.down_proj", "o_proj", "mlp").
    # Embeddings, norms and lm_head are always 16-bit. None = every projection is 4-bit.
    keep_16bit: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainSpec:
    seed: int
    micro_batch_size: int
    grad_accum: int
    max_steps: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    scheduler: Literal["cosine", "linear", "constant"]
    min_lr_ratio: float
    max_grad_norm: float
    optimizer: Literal["adamw", "adamw8bit"]
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    gradient_checkpointing: bool
    log_every: int
    eval_every: int
    save_every: int
    # Stop after this many evaluations without a new best validation loss; None = never stop early.
    early_stopping_patience: int | None = None
    # CUDA only: regional torch.compile of the decoder layers (docs/performance.md). On unless the plan says no.
    compile: bool = True
    # LoRA adapter math (lora.py): "auto" = the fused 16-bit adapter Function, "exact" = peft's fp32 math.
    lora_compute: Literal["auto", "exact"] = "auto"
    # What the backward pass recomputes (models/llama.py): every decoder layer, each MLP block, only the compiled
    # layers' elementwise results (train.set_compiled_recompute: norms, rotary, SwiGLU's product rebuilt from the
    # GEMM outputs kept), or nothing. Absent from the plan = "full" if gradient_checkpointing else "none";
    # present, it must agree with it (true: a layer or block recomputed, full or mlp).
    recompute: Literal["full", "mlp", "elementwise", "none"] = "full"
    # Tensors saved for backward by the decoder live in (pinned) CPU memory until the backward pass.
    # "auto": on for CUDA with recompute "full" for passes with >= 1 GiB of layer inputs (models/llama.py
    # offload_this_pass: only the layer inputs move; no cost on Qwen3-8B, an 18% cost on Qwen3-0.6B's small passes).
    offload_activations: bool | Literal["auto"] = "auto"
    # Precision of the frozen base projections' GEMMs (fp8.py): "bf16" = the model dtype as loaded; "fp8" = the
    # weights held in float8_e4m3fn with per-channel scales and every base GEMM in FP8 (method "lora" only).
    base_precision: Literal["bf16", "fp8"] = "bf16"
    # CUDA graphs for each micro-batch's forward + loss + backward (graphs.py), one CUDA device, our models: true =
    # every micro-batch shape (captured the second time it is seen), "auto" = small micro-batches only, false = none.
    cuda_graphs: bool | Literal["auto"] = "auto"


@dataclass(frozen=True)
class OutputSpec:
    adapter_dir: str
    checkpoints_dir: str


@dataclass(frozen=True)
class DistributedSpec:
    """Several processes under torchrun (docs/distributed.md). The world size comes from torchrun's
    environment; `gpus` × `nnodes` is what the launcher asked for, checked against it."""

    strategy: Literal["auto", "fsdp", "ddp"]  # auto: distributed.choose_strategy
    gpus: int
    nnodes: int


@dataclass(frozen=True)
class TrainPlan:
    version: int
    command: Literal["train"]
    run_dir: str
    model: ModelSpec
    data: DataSpec
    method: MethodSpec
    train: TrainSpec
    device: Literal["auto", "cpu", "cuda"]
    output: OutputSpec
    base_model_name: str
    resume_from: str | None
    distributed: DistributedSpec | None = None


@dataclass(frozen=True)
class MergePlan:
    """Fold a LoRA/DoRA adapter into its base model and write a full Hugging Face model directory."""

    version: int
    command: Literal["merge"]
    model: ModelSpec
    adapter_dir: str
    output_dir: str
    device: Literal["auto", "cpu", "cuda"]
    # Largest safetensors shard, in bytes (a tensor larger than this gets a shard of its own).
    max_shard_bytes: int = 5 * 2**30


@dataclass(frozen=True)
class GeneratePlan:
    """The long-lived `generate` command (generate.py): a model, named LoRA adapters, a batch size."""

    version: int
    command: Literal["generate"]
    model: ModelSpec
    adapters: dict[str, str]  # name -> PEFT adapter directory
    device: Literal["auto", "cpu", "cuda"]
    max_batch_size: int
    # Optional (None = the engine's default; the TUNA_* env vars override them): KV cache positions per
    # request (prompt + new tokens), decode mode (auto | graph | eager | reference), the fused decode layer,
    # torch.compile of it.
    max_model_len: int | None = None
    mode: Literal["auto", "graph", "eager", "reference"] | None = None
    fused: bool | None = None
    compile: bool | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """One stdin line of `generate` (src/engine/protocol.ts GenerateRequest)."""

    id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_p: float
    top_k: int  # 0 = off
    repetition_penalty: float
    seed: int | None
    stop_ids: tuple[int, ...]
    adapter: str | None


# ---- validation -------------------------------------------------------------------------------------------


class _Reader:
    """Reads typed fields out of a JSON object, recording every problem with its dotted field path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, field: str, expected: str, value: Any) -> None:
        shown = "missing" if value is _MISSING else f"got {json.dumps(value)[:80]}"
        self.problems.append(f"{field}: expected {expected}, {shown}")

    def obj(self, d: Any, key: str, path: str) -> dict[str, Any]:
        v = d.get(key, _MISSING) if isinstance(d, dict) else _MISSING
        if not isinstance(v, dict):
            self.bad(path, "an object", v)
            return {}
        return v

    def get(
        self, d: dict[str, Any], key: str, path: str, kind: str, *, optional: bool = False, **lim: Any
    ) -> Any:
        v = d.get(key, _MISSING)
        if optional and (v is _MISSING or v is None):
            return None
        ok = _check(v, kind, **lim)
        if not ok:
            self.bad(path, _describe(kind, **lim), v)
            return None
        if kind == "str[]" or kind == "int[]":
            return tuple(v)
        if kind == "number":
            return float(v)
        return v


_MISSING: Any = object()


def _check(v: Any, kind: str, **lim: Any) -> bool:
    if kind == "str":
        return isinstance(v, str) and (not lim.get("nonempty") or v != "")
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        if not isinstance(v, int) or isinstance(v, bool):
            return False
        return v >= lim.get("min", -math.inf) and v <= lim.get("max", math.inf)
    if kind == "number":
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return False
        lo, hi = lim.get("min", -math.inf), lim.get("max", math.inf)
        return (v > lo if lim.get("exclusive_min") else v >= lo) and v <= hi
    if kind == "enum":
        return v in lim["values"]
    if kind == "str[]":
        return isinstance(v, list) and all(isinstance(x, str) for x in v) and len(v) >= lim.get("min_len", 0)
    if kind == "int[]":
        return isinstance(v, list) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v
        )
    if kind == "literal":
        return v == lim["value"]
    raise AssertionError(kind)


def _describe(kind: str, **lim: Any) -> str:
    if kind == "int":
        if "min" in lim and "max" in lim:
            return f"an integer in [{lim['min']}, {lim['max']}]"
        return f"an integer >= {lim['min']}" if "min" in lim else "an integer"
    if kind == "number":
        if lim.get("exclusive_min"):
            return f"a number > {lim['min']}"
        if "min" in lim and "max" in lim:
            return f"a number in [{lim['min']}, {lim['max']}]"
        return f"a number >= {lim['min']}" if "min" in lim else "a finite number"
    if kind == "enum":
        return "one of " + ", ".join(json.dumps(x) for x in lim["values"])
    if kind == "literal":
        return json.dumps(lim["value"])
    if kind == "str[]":
        return "a list of strings" + (f" (at least {lim['min_len']})" if lim.get("min_len") else "")
    if kind == "int[]":
        return "a list of non-negative integers"
    return {"str": "a non-empty string" if lim.get("nonempty") else "a string", "bool": "true or false"}[kind]


def _load_json(path: str, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise EngineError(
            "PLAN_NOT_FOUND", f"{path}: {what} file not found", hint="pass --plan <run>/plan.json"
        )
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EngineError("PLAN_INVALID", f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e


def parse_train_plan(raw: Any, source: str = "plan.json") -> TrainPlan:
    r = _Reader()
    if not isinstance(raw, dict):
        raise EngineError("PLAN_INVALID", f"{source}: expected a JSON object at the top level")
    version = r.get(raw, "version", "version", "literal", value=PROTOCOL_VERSION)
    command = r.get(raw, "command", "command", "literal", value="train")
    run_dir = r.get(raw, "run_dir", "run_dir", "str", nonempty=True)

    m = r.obj(raw, "model", "model")
    model = ModelSpec(
        path=r.get(m, "path", "model.path", "str", nonempty=True),
        dtype=r.get(m, "dtype", "model.dtype", "enum", values=("float32", "bfloat16", "float16")),
    )
    d = r.obj(raw, "data", "data")
    data = DataSpec(
        train=r.get(d, "train", "data.train", "str[]", min_len=1),
        validation=r.get(d, "validation", "data.validation", "str[]"),
        manifest=r.get(d, "manifest", "data.manifest", "str"),
    )

    me = r.obj(raw, "method", "method")
    mtype = r.get(me, "type", "method.type", "enum", values=("lora", "qlora", "full"))
    lora = None
    if me.get("lora") is not None:
        lo = r.obj(me, "lora", "method.lora")
        targets = r.get(lo, "target_modules", "method.lora.target_modules", "str[]", min_len=1)
        for t in targets or ():
            if t not in LORA_PROJECTIONS and t != "all-linear":
                r.problems.append(
                    f"method.lora.target_modules: unknown module {json.dumps(t)}; expected some of "
                    f'{", ".join(LORA_PROJECTIONS)} or ["all-linear"]'
                )
        lora = LoraSpec(
            r=r.get(lo, "r", "method.lora.r", "int", min=1),
            alpha=r.get(lo, "alpha", "method.lora.alpha", "number", min=0, exclusive_min=True),
            dropout=r.get(lo, "dropout", "method.lora.dropout", "number", min=0, max=1),
            target_modules=targets,
            use_rslora=r.get(lo, "use_rslora", "method.lora.use_rslora", "bool"),
            use_dora=r.get(lo, "use_dora", "method.lora.use_dora", "bool"),
        )
    elif mtype in ("lora", "qlora"):
        r.problems.append(f"method.lora: required when method.type is {json.dumps(mtype)}, missing")
    method = MethodSpec(
        type=mtype,
        lora=lora,
        trainable_layers=r.get(me, "trainable_layers", "method.trainable_layers", "int[]", optional=True),
        trainable_modules=r.get(me, "trainable_modules", "method.trainable_modules", "str[]", optional=True),
        keep_16bit=r.get(me, "keep_16bit", "method.keep_16bit", "str[]", optional=True),
    )
    if method.keep_16bit is not None and mtype != "qlora":
        r.problems.append('method.keep_16bit: only for method.type "qlora"')
    if method.trainable_modules is not None and mtype != "full":
        r.problems.append(
            'method.trainable_modules: only for method.type "full" (LoRA uses lora.target_modules)'
        )

    t = r.obj(raw, "train", "train")
    train = TrainSpec(
        seed=r.get(t, "seed", "train.seed", "int"),
        micro_batch_size=r.get(t, "micro_batch_size", "train.micro_batch_size", "int", min=1),
        grad_accum=r.get(t, "grad_accum", "train.grad_accum", "int", min=1),
        max_steps=r.get(t, "max_steps", "train.max_steps", "int", min=1),
        learning_rate=r.get(t, "learning_rate", "train.learning_rate", "number", min=0, exclusive_min=True),
        weight_decay=r.get(t, "weight_decay", "train.weight_decay", "number", min=0),
        warmup_steps=r.get(t, "warmup_steps", "train.warmup_steps", "int", min=0),
        scheduler=r.get(t, "scheduler", "train.scheduler", "enum", values=("cosine", "linear", "constant")),
        min_lr_ratio=r.get(t, "min_lr_ratio", "train.min_lr_ratio", "number", min=0, max=1),
        max_grad_norm=r.get(t, "max_grad_norm", "train.max_grad_norm", "number", min=0),
        optimizer=r.get(t, "optimizer", "train.optimizer", "enum", values=("adamw", "adamw8bit")),
        adam_beta1=r.get(t, "adam_beta1", "train.adam_beta1", "number"),
        adam_beta2=r.get(t, "adam_beta2", "train.adam_beta2", "number"),
        adam_eps=r.get(t, "adam_eps", "train.adam_eps", "number"),
        gradient_checkpointing=r.get(t, "gradient_checkpointing", "train.gradient_checkpointing", "bool"),
        log_every=r.get(t, "log_every", "train.log_every", "int", min=1),
        eval_every=r.get(t, "eval_every", "train.eval_every", "int", min=0),
        save_every=r.get(t, "save_every", "train.save_every", "int", min=0),
        early_stopping_patience=r.get(
            t, "early_stopping_patience", "train.early_stopping_patience", "int", optional=True, min=1
        ),
        compile=r.get(t, "compile", "train.compile", "bool", optional=True) is not False,
        lora_compute=r.get(
            t, "lora_compute", "train.lora_compute", "enum", optional=True, values=("auto", "exact")
        )
        or "auto",
        recompute=_recompute(r, t),
        offload_activations=_bool_or_auto(r, t, "offload_activations"),
        cuda_graphs=_bool_or_auto(r, t, "cuda_graphs"),
        base_precision=r.get(
            t, "base_precision", "train.base_precision", "enum", optional=True, values=("bf16", "fp8")
        )
        or "bf16",
    )
    if train.base_precision == "fp8" and mtype != "lora":
        r.problems.append(
            f'train.base_precision: "fp8" needs method.type "lora" (a 16-bit base quantized to FP8 at load); '
            f"method.type is {json.dumps(mtype)}"
            + (
                " (its base is already 4-bit NF4)"
                if mtype == "qlora"
                else " (full fine-tuning trains the base)"
            )
        )
    device = r.get(raw, "device", "device", "enum", values=("auto", "cpu", "cuda"))
    o = r.obj(raw, "output", "output")
    output = OutputSpec(
        adapter_dir=r.get(o, "adapter_dir", "output.adapter_dir", "str", nonempty=True),
        checkpoints_dir=r.get(o, "checkpoints_dir", "output.checkpoints_dir", "str", nonempty=True),
    )
    base_model_name = r.get(raw, "base_model_name", "base_model_name", "str")
    resume_from = r.get(raw, "resume_from", "resume_from", "str", optional=True)
    if "resume_from" not in raw:
        r.bad("resume_from", "a string or null", _MISSING)
    distributed = None
    if raw.get("distributed") is not None:
        di = r.obj(raw, "distributed", "distributed")
        distributed = DistributedSpec(
            strategy=r.get(di, "strategy", "distributed.strategy", "enum", values=("auto", "fsdp", "ddp")),
            gpus=r.get(di, "gpus", "distributed.gpus", "int", min=1),
            nnodes=r.get(di, "nnodes", "distributed.nnodes", "int", min=1),
        )
    if r.problems:
        raise _plan_error(source, r.problems)
    return TrainPlan(
        version=version,
        command=command,
        run_dir=run_dir,
        model=model,
        data=data,
        method=method,
        train=train,
        device=device,
        output=output,
        base_model_name=base_model_name,
        resume_from=resume_from,
        distributed=distributed,
    )


def _bool_or_auto(r: _Reader, t: dict[str, Any], key: str) -> bool | Literal["auto"]:
    v = t.get(key)
    if v is None or v == "auto":
        return "auto"
    if isinstance(v, bool):
        return v
    r.bad(f"train.{key}", 'true, false or "auto"', v)
    return "auto"


def _recompute(r: _Reader, t: dict[str, Any]) -> Any:
    """train.recompute, or what train.gradient_checkpointing implies; a contradiction is a problem."""
    gc = t.get("gradient_checkpointing")
    mode = r.get(
        t,
        "recompute",
        "train.recompute",
        "enum",
        optional=True,
        values=("full", "mlp", "elementwise", "none"),
    )
    if mode is None:
        return "none" if gc is False else "full"
    if isinstance(gc, bool) and gc != (mode in ("full", "mlp")):
        r.problems.append(
            f"train.recompute: {json.dumps(mode)} contradicts train.gradient_checkpointing: {json.dumps(gc)} "
            '(false means no layer is recomputed, "none" or "elementwise"; true means "full" or "mlp")'
        )
    return mode


def parse_merge_plan(raw: Any, source: str = "merge_plan.json") -> MergePlan:
    r = _Reader()
    if not isinstance(raw, dict):
        raise EngineError("PLAN_INVALID", f"{source}: expected a JSON object at the top level")
    m = r.obj(raw, "model", "model")
    plan = MergePlan(
        version=r.get(raw, "version", "version", "literal", value=PROTOCOL_VERSION),
        command=r.get(raw, "command", "command", "literal", value="merge"),
        model=ModelSpec(
            path=r.get(m, "path", "model.path", "str", nonempty=True),
            dtype=r.get(m, "dtype", "model.dtype", "enum", values=("float32", "bfloat16", "float16")),
        ),
        adapter_dir=r.get(raw, "adapter_dir", "adapter_dir", "str", nonempty=True),
        output_dir=r.get(raw, "output_dir", "output_dir", "str", nonempty=True),
        device=r.get(raw, "device", "device", "enum", values=("auto", "cpu", "cuda")) or "cpu",
        max_shard_bytes=r.get(raw, "max_shard_bytes", "max_shard_bytes", "int", optional=True, min=1)
        or 5 * 2**30,
    )
    if r.problems:
        raise _plan_error(source, r.problems)
    return plan


def _plan_error(source: str, problems: list[str]) -> EngineError:
    first = problems[0].split(":", 1)[0]
    return EngineError(
        "PLAN_INVALID",
        f"{source}: {len(problems)} invalid field(s):\n  " + "\n  ".join(problems),
        hint="plan.json is written by `tuna train`; if you edited it by hand, fix the field(s) above",
        field=first,
    )


def load_train_plan(path: str) -> TrainPlan:
    return parse_train_plan(_load_json(path, "plan"), source=path)


def load_merge_plan(path: str) -> MergePlan:
    return parse_merge_plan(_load_json(path, "merge plan"), source=path)


def parse_generate_plan(raw: Any, source: str = "plan.json") -> GeneratePlan:
    r = _Reader()
    if not isinstance(raw, dict):
        raise EngineError("PLAN_INVALID", f"{source}: expected a JSON object at the top level")
    m = r.obj(raw, "model", "model")
    adapters = raw.get("adapters", _MISSING)
    if not isinstance(adapters, dict) or not all(isinstance(v, str) and v for v in adapters.values()):
        r.bad("adapters", "an object of adapter name -> adapter directory", adapters)
        adapters = {}
    plan = GeneratePlan(
        version=r.get(raw, "version", "version", "literal", value=PROTOCOL_VERSION),
        command=r.get(raw, "command", "command", "literal", value="generate"),
        model=ModelSpec(
            path=r.get(m, "path", "model.path", "str", nonempty=True),
            dtype=r.get(m, "dtype", "model.dtype", "enum", values=("float32", "bfloat16", "float16")),
        ),
        adapters=dict(adapters),
        device=r.get(raw, "device", "device", "enum", values=("auto", "cpu", "cuda")),
        max_batch_size=r.get(raw, "max_batch_size", "max_batch_size", "int", min=1),
        max_model_len=r.get(raw, "max_model_len", "max_model_len", "int", min=1, optional=True),
        mode=r.get(
            raw, "mode", "mode", "enum", values=("auto", "graph", "eager", "reference"), optional=True
        ),
        fused=r.get(raw, "fused", "fused", "bool", optional=True),
        compile=r.get(raw, "compile", "compile", "bool", optional=True),
    )
    if r.problems:
        raise _plan_error(source, r.problems)
    return plan


def load_generate_plan(path: str) -> GeneratePlan:
    return parse_generate_plan(_load_json(path, "plan"), source=path)


def parse_generate_request(raw: Any) -> GenerateRequest:
    """A stdin request line (already JSON-decoded); problems → one REQUEST_INVALID error naming each field."""
    r = _Reader()
    if not isinstance(raw, dict):
        raise EngineError("REQUEST_INVALID", "request: expected a JSON object")
    rid = r.get(raw, "id", "id", "str", nonempty=True)
    if raw.get("type", "generate") != "generate":
        r.bad("type", '"generate" or "cancel"', raw.get("type"))
    req = GenerateRequest(
        id=rid,
        prompt_ids=r.get(raw, "prompt_ids", "prompt_ids", "int[]"),
        max_new_tokens=r.get(raw, "max_new_tokens", "max_new_tokens", "int", min=1),
        temperature=r.get(raw, "temperature", "temperature", "number", min=0),
        top_p=r.get(raw, "top_p", "top_p", "number", min=0, exclusive_min=True, max=1),
        top_k=r.get(raw, "top_k", "top_k", "int", min=0),
        repetition_penalty=r.get(
            raw, "repetition_penalty", "repetition_penalty", "number", min=0, exclusive_min=True
        ),
        seed=r.get(raw, "seed", "seed", "int", optional=True),
        stop_ids=r.get(raw, "stop_ids", "stop_ids", "int[]"),
        adapter=r.get(raw, "adapter", "adapter", "str", optional=True),
    )
    if req.prompt_ids is not None and len(req.prompt_ids) == 0:
        r.problems.append("prompt_ids: expected at least one token id, got []")
    if "seed" not in raw:
        r.bad("seed", "an integer or null", _MISSING)
    if "adapter" not in raw:
        r.bad("adapter", "a string or null", _MISSING)
    if r.problems:
        raise EngineError(
            "REQUEST_INVALID",
            f"request {rid or '?'}: {len(r.problems)} invalid field(s): " + "; ".join(r.problems),
            field=r.problems[0].split(":", 1)[0],
        )
    return req


# ---- events -----------------------------------------------------------------------------------------------


class StartEvent(TypedDict):
    event: Literal["start"]
    device: str
    dtype: str
    params_total: int
    params_trainable: int
    total_steps: int
    start_step: int


class StepEvent(TypedDict):
    event: Literal["step"]
    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    trained_tokens: float
    tokens_per_s: float
    elapsed_s: float
    eta_s: float
    memory_gib: float | None
    # Optional (absent unless they apply): memory_gib_per_rank: list[float] (torchrun on CUDA, rank order);
    # loss_scale: float and skipped_steps: int (float16 dynamic loss scaling, loss_scale.py).


class EvalEvent(TypedDict):
    event: Literal["eval"]
    step: int
    val_loss: float


class CheckpointEvent(TypedDict):
    event: Literal["checkpoint"]
    step: int
    path: str


class DoneEvent(TypedDict, total=False):
    event: Literal["done"]
    steps: int
    final_loss: float | None
    adapter_dir: str
    elapsed_s: float
    best_step: int | None
    best_val_loss: float | None


class ErrorEvent(TypedDict, total=False):
    event: Literal["error"]
    code: str
    message: str
    hint: str
    step: int


class LogEvent(TypedDict):
    event: Literal["log"]
    message: str


def _rank() -> int | None:
    """This process's rank under torchrun with several processes, else None (docs/distributed.md)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("RANK", "0"))


def emit(event: dict[str, Any]) -> None:
    """One event per stdout line, flushed at once so TypeScript sees progress as it happens. Under torchrun
    only rank 0 speaks; other ranks' errors travel through <run_dir>/errors/ (distributed.py)."""
    if (_rank() or 0) != 0:
        return
    sys.stdout.write(json.dumps(event, allow_nan=False) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    """Human log line (stderr), prefixed with the rank under torchrun."""
    rank = _rank()
    if rank is not None:
        message = "\n".join(f"[rank {rank}] {line}" for line in message.splitlines())
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
