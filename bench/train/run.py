"""bench/train — Tuna's engine against the baseline a user would otherwise write, in ONE run on ONE card.

Baseline: Hugging Face transformers + peft LoRA (r=16, alpha=32, all linear projections, SDPA attention,
gradient checkpointing, fused AdamW, bf16). Tuna: `python -m tuna_engine train` on token shards of the same
shape, through its real plan/event seam. Both on random-initialised real Qwen3 architectures (speed does not
depend on weight values).

Prints tokens/s, peak GPU memory, MFU against a bf16 matmul measured in the same run, and the ratios; writes
the same as JSON (--out). Run on a GPU:

    PYTHONPATH=engine python bench/train/run.py --models qwen3-0.6b,qwen3-8b --out /tmp/bench.json

The fast-path comparison (issue 5; docs/performance.md), every setting against HF in one run:

    PYTHONPATH=engine python bench/train/run.py --models qwen3-0.6b,qwen3-8b \\
        --variants default,exact,fast,fast_mlp,fast_none,fast_offload --out /tmp/fast.json
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
PRESETS = json.loads((ROOT / "src/model/presets.json").read_text())

# tokens per step (micro-batch x length) from the issue's table
DEFAULT_SHAPES = {
    "qwen3-0.6b": (8, 2048),
    "qwen3-8b": (4, 2048),
    "qwen3-32b": (2, 2048),
    "qwen3-1.7b": (8, 2048),
    "qwen3-4b": (4, 2048),
}


_ENGINES: dict[int, str] = {}  # engine pid -> its plan path (on every one of its processes' command lines)


def kill_engine(pid: int) -> None:
    """The engine `start_engine` started and every process it started. torchrun starts its ranks in sessions
    of their own and stops them itself on SIGTERM, so: SIGTERM to the group, a grace period, then SIGKILL to
    whatever still has the plan on its command line."""
    plan = _ENGINES.pop(pid, None)
    with contextlib.suppress(ProcessLookupError, PermissionError, ChildProcessError):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):  # up to 10 s
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError, ChildProcessError):
        os.killpg(pid, signal.SIGKILL)
    if plan:
        subprocess.run(["pkill", "-KILL", "-f", plan], check=False)


def stop_engines_with_this_script() -> None:
    """SIGTERM (from `timeout`), Ctrl-C or exit stops every engine this script started, with all it started in
    turn (torchrun's ranks). Without it a stopped bench leaves runs computing on the GPUs: on 2026-11-28 one did,
    and a later measurement on the same cards was void."""

    def stop(signum: int, _frame: object) -> None:
        for pid in list(_ENGINES):
            kill_engine(pid)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    atexit.register(lambda: [kill_engine(pid) for pid in list(_ENGINES)])


def start_engine(cmd: list[str], env: dict, plan: Path, **popen: object) -> subprocess.Popen:
    """The engine in a process group of its own, so `kill_engine` can end all of it."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, **popen)  # type: ignore[call-overload]
    _ENGINES[proc.pid] = str(plan)
    return proc


def run_engine(cmd: list[str], env: dict, plan: Path) -> subprocess.CompletedProcess:
    """Runs the engine to its end. Its stderr goes to engine-stderr.log beside the plan, so a run stopped by a
    timeout still leaves its log (e.g. TORCH_LOGS=recompiles output)."""
    log_path = plan.parent / "engine-stderr.log"
    with open(log_path, "w") as err_file:
        proc = start_engine(cmd, env, plan, stdout=subprocess.PIPE, stderr=err_file, text=True)
        out, _ = proc.communicate()
    _ENGINES.pop(proc.pid, None)
    subprocess.run(["pkill", "-KILL", "-f", str(plan)], check=False)  # anything the engine left behind
    return subprocess.CompletedProcess(cmd, proc.returncode, out, log_path.read_text(errors="replace"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def matmul_tflops() -> float:
    """Measured bf16 matmul rate (8192^3), the MFU denominator."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    return 2 * n**3 / float(np.median(times)) / 1e12


def flops_per_token(cfg: dict, seq: int, recompute: bool) -> float:
    """Model FLOPs per trained token for LoRA: forward (2 x linear params + attention) plus the activation
    gradients (about the same again; frozen weights get no weight gradient). Recomputation is not counted
    (MFU counts model FLOPs, not hardware FLOPs)."""
    h, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    hd, nh, nkv, inter = (
        cfg["head_dim"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
    )
    linear = L * (h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * inter) + cfg["vocab_size"] * h
    attn = L * 2 * 2 * nh * hd * seq / 2  # QK^T and PV, causal half
    fwd = 2 * linear + attn
    return 2 * fwd


def make_model_dir(name: str, root: Path) -> Path:
    """A Hugging Face model directory with random weights (transformers' own init), made once per preset."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    d = root / name
    if (d / "config.json").exists():
        return d
    p = PRESETS[name]
    from tuna_engine.models.random_dir import planned_bytes, write_random_model

    if planned_bytes(p["config"]) > 20e9:  # Qwen3-32B: its fp32 init would not fit a card; tensor by tensor
        write_random_model(p["config"], d)
        return d
    cfg = Qwen3Config(**{k: v for k, v in p["config"].items() if k not in ("architectures", "model_type")})
    cfg.architectures = ["Qwen3ForCausalLM"]
    with torch.device("cuda"):
        torch.manual_seed(0)
        m = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(d, max_shard_size="5GB")
    del m
    gc.collect()
    torch.cuda.empty_cache()
    return d


def bench_hf(model_dir: Path, batch: int, seq: int, steps: int, warmup: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation="sdpa", device_map="cuda"
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()  # from_pretrained returns eval mode, where checkpointing is off
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    vocab = model.config.vocab_size
    g = torch.Generator(device="cuda").manual_seed(0)
    times = []
    for i in range(warmup + steps):
        ids = torch.randint(0, vocab, (batch, seq), device="cuda", generator=g)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, opt
    gc.collect()
    torch.cuda.empty_cache()
    step_s = float(np.median(times))
    return {"tokens_per_s": batch * seq / step_s, "step_s": step_s, "peak_gib": peak, "loss": float(loss)}


def ffd_sft_packs(
    n_packs: int, seq: int, rng: np.random.Generator
) -> tuple[list[list[int]], list[list[float]]]:
    """n_packs packs (sample lengths, prompt fractions) from first-fit decreasing over ~1.2 × as many samples as
    fill them, the fullest first then shuffled (FFD's last packs are leftovers a real run has few of)."""
    lens: list[int] = []
    while sum(lens) < 1.2 * n_packs * seq:
        lens.append(int(min(seq, max(16, rng.lognormal(5.3, 0.8)))))
    fracs = rng.uniform(0.2, 0.7, len(lens)).tolist()
    packs: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(lens)), key=lambda i: -lens[i]):
        for k, (used, members) in enumerate(packs):
            if used + lens[i] <= seq:
                packs[k] = (used + lens[i], [*members, i])
                break
        else:
            packs.append((lens[i], [i]))
    packs = sorted(packs, key=lambda p: -p[0])[:n_packs]
    order = rng.permutation(len(packs))
    chosen = [packs[j][1] for j in order]
    return [[lens[i] for i in m] for m in chosen], [[fracs[i] for i in m] for m in chosen]


def write_random_shards(d: Path, n_packs: int, seq: int, vocab: int, lengths: str) -> Path:
    """Token shards (docs/formats.md) of n_packs packs. lengths="full": one sample of exactly `seq` tokens per
    pack; "mix": support-transcript-like samples (many short) filling each `seq`-token pack; "mix_unpacked":
    the same length mix, one sample per pack (no packing: the engine pads each micro-batch to its longest);
    "sft": the same length mix as supervised data — each sample's first 20–70% (the prompt) untrained — packed
    first-fit decreasing as `tuna` packs (src/pack/pack.ts): packs nearly full but of varying length, varying
    trained targets and samples per pack."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    seqs: list[list[int]] = []
    prompt_frac: list[list[float]] = []
    if lengths == "sft":
        seqs, prompt_frac = ffd_sft_packs(n_packs, seq, rng)
    for _ in range(n_packs if lengths != "sft" else 0):
        if lengths == "full":
            seqs.append([seq])
        elif lengths == "mix_unpacked":
            seqs.append([int(min(seq, max(16, rng.lognormal(5.3, 0.8))))])
        else:
            left, parts = seq, []
            while left > 0:
                n = int(min(left, max(16, rng.lognormal(5.3, 0.8))))
                parts.append(n)
                left -= n
            seqs.append(parts)
    total = sum(sum(parts) for parts in seqs)
    tokens = rng.integers(0, vocab, total, dtype=np.int32)
    weight = np.ones(total, dtype=np.float32)
    seq_off = [0]
    pack_off = [0]
    for p, parts in enumerate(seqs):
        for s, n in enumerate(parts):
            untrained = max(1, round(prompt_frac[p][s] * n)) if prompt_frac else 1
            weight[seq_off[-1] : seq_off[-1] + untrained] = 0
            seq_off.append(seq_off[-1] + n)
        pack_off.append(len(seq_off) - 1)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "train-00000.safetensors"
    save_file(
        {
            "tokens": tokens,
            "loss_weight": weight,
            "seq_offsets": np.array(seq_off, np.int64),
            "pack_offsets": np.array(pack_off, np.int64),
        },
        str(path),
        metadata={"format": "tuna-shard", "version": "1", "max_length": str(seq)},
    )
    (d / "manifest.json").write_text(json.dumps({"format": "tuna-shards", "version": 1, "max_length": seq}))
    return path


LORA_R16 = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.0,
    "target_modules": ["all-linear"],
    "use_rslora": False,
    "use_dora": False,
}


def train_plan(
    run: Path,
    model_dir: Path,
    shard: Path,
    method: str,
    batch: int,
    grad_accum: int,
    steps: int,
    extra_train: dict | None = None,
    device: str = "cuda",
) -> dict:
    """The plan.json every bench here hands the engine (src/engine/protocol.ts): LoRA r=16, alpha=32 on all linear
    projections (`method` lora or qlora), constant lr 1e-4, AdamW, gradient checkpointing, no eval or saving."""
    return {
        "version": 1,
        "command": "train",
        "run_dir": str(run),
        "model": {"path": str(model_dir), "dtype": "bfloat16"},
        "data": {"train": [str(shard)], "validation": [], "manifest": str(shard.parent / "manifest.json")},
        "method": {"type": method, "lora": dict(LORA_R16)},
        "train": {
            "seed": 0,
            "micro_batch_size": batch,
            "grad_accum": grad_accum,
            "max_steps": steps,
            "learning_rate": 1e-4,
            "weight_decay": 0.0,
            "warmup_steps": 0,
            "scheduler": "constant",
            "min_lr_ratio": 0.0,
            "max_grad_norm": 1.0,
            "optimizer": "adamw",
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "adam_eps": 1e-8,
            "gradient_checkpointing": True,
            "log_every": 1,
            "eval_every": 0,
            "save_every": 0,
            **(extra_train or {}),
        },
        "device": device,
        "output": {"adapter_dir": str(run / "adapter"), "checkpoints_dir": str(run / "checkpoints")},
        "base_model_name": model_dir.name,
        "resume_from": None,
    }


def bench_tuna(
    model_dir: Path,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    work: Path,
    extra_train: dict,
    lengths: str,
    extra_env: dict | None = None,
    gpus: int = 1,
    strategy: str = "fsdp",
    method: str = "lora",
) -> dict:
    """`gpus` > 1: the engine under torchrun (docs/distributed.md), `batch` packs per GPU per step (grad_accum =
    gpus keeps one micro-batch per GPU), so a step trains gpus × batch × seq tokens."""
    run = work / f"run-{model_dir.name}-{lengths}-{gpus}gpu-{int(time.time())}"
    shard = write_random_shards(
        run / "data",
        (steps + warmup) * batch * gpus,
        seq,
        PRESETS[model_dir.name]["config"]["vocab_size"],
        lengths,
    )
    extra_train = dict(extra_train)
    # "split": the step's `batch` packs trained as `split` micro-batches of batch/split (gradient accumulation: the
    # same update, fewer activations alive at once).
    split = extra_train.pop("split", 1)
    if batch % split:
        raise SystemExit(f"variant split {split} does not divide the batch {batch}")
    plan = train_plan(
        run, model_dir, shard, method, batch // split, gpus * split, steps + warmup, extra_train
    )
    launch = [sys.executable]
    if gpus > 1:
        plan["distributed"] = {
            "strategy": strategy,
            "gpus": gpus,
            "nnodes": 1,
            "node_rank": 0,
            "master_addr": "127.0.0.1",
            "master_port": 29500,
        }
        launch += [
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={gpus}",
            "--master-addr=127.0.0.1",
            "--master-port=29500",
        ]
    (run / "plan.json").write_text(json.dumps(plan))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "engine"),
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        **(extra_env or {}),
    }
    proc = run_engine(
        launch + ["-m", "tuna_engine", "train", "--plan", str(run / "plan.json")], env, run / "plan.json"
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps_ev = [e for e in events if e.get("event") == "step"]
    errors = [e for e in events if e.get("event") == "error"]
    if proc.returncode != 0 or errors or len(steps_ev) < warmup + 2:
        return {"error": (errors[0] if errors else proc.stderr[-3000:])}
    # Step time from the engine's elapsed clock between step events (after warm-up).
    el = [e["elapsed_s"] for e in steps_ev]
    dts = np.diff(el)[warmup:]
    step_s = float(np.median(dts))
    # Trained tokens over the timed steps' total time: unpacked rows make steps of different lengths.
    trained_per_s = float(sum(e["trained_tokens"] for e in steps_ev[warmup + 1 :]) / dts.sum())
    return {
        "gpus": gpus,
        # Row tokens per second; without packing the rows are not `seq` long, so trained tokens stand in.
        "tokens_per_s": trained_per_s if lengths == "mix_unpacked" else batch * seq * gpus / step_s,
        "trained_tokens_per_s": trained_per_s,
        "step_s": step_s,
        "peak_gib": max((e["memory_gib"] or 0) for e in steps_ev),
        "loss": steps_ev[-1]["loss"],
    }


# Tuna variants: name -> (plan `train` overrides, engine environment, data lengths, what it is). The plan the
# bench writes has gradient_checkpointing true and no other setting, so "default" is the engine's defaults.
NO_RECOMPUTE = {"compile": True, "recompute": "none", "gradient_checkpointing": False}
ELEMENTWISE = {"compile": True, "recompute": "elementwise", "gradient_checkpointing": False}
VARIANTS: dict[str, tuple[dict, dict, str, str]] = {
    "default": (
        {},
        {},
        "full",
        "the engine's defaults (lora_compute auto, recompute full, train.compile on)",
    ),
    "eager": ({"compile": False}, {}, "full", "the defaults without train.compile"),
    "exact": (
        {"lora_compute": "exact", "compile": False},
        {},
        "full",
        "peft's fp32 adapter math, eager (the engine before issue 5's work)",
    ),
    "fast": ({"compile": True}, {}, "full", "lora_compute auto + train.compile, recompute full"),
    "fast_mlp": ({"compile": True, "recompute": "mlp"}, {}, "full", "fast, recomputing only the MLP blocks"),
    "fast_none": (
        NO_RECOMPUTE,
        {},
        "full",
        "fast, no recomputation",
    ),
    "none_split2": (
        {**NO_RECOMPUTE, "split": 2, "cuda_graphs": True},
        {},
        "full",
        "fast_none with the step's packs as 2 micro-batches (gradient accumulation), CUDA graphs on",
    ),
    "none_split4": (
        {**NO_RECOMPUTE, "split": 4, "cuda_graphs": True},
        {},
        "full",
        "fast_none with the step's packs as 4 micro-batches, CUDA graphs on",
    ),
    "default_split4": ({"split": 4}, {}, "full", "the defaults with the step's packs as 4 micro-batches"),
    "none_split4_eager": (
        {**NO_RECOMPUTE, "split": 4, "cuda_graphs": False},
        {},
        "full",
        "none_split4 without CUDA graphs (their A/B)",
    ),
    # recompute "elementwise" (train.set_compiled_recompute): no layer recomputed, the compiled layers rebuild norms,
    # rotary and SwiGLU's product in backward — the memory lever for 0.6B at <= 0.3x. (Session 8's result files
    # name these none_split2_pointwise, none_graphs_pointwise, fast_none_pointwise: TUNA_RECOMPUTE_POINTWISE=1
    # with recompute none, the same partitioner settings.) TUNA_ACTIVATION_MEMORY_BUDGET: an experiment.
    "elementwise": (
        ELEMENTWISE,
        {},
        "full",
        "fast_none, the compiled layers recomputing elementwise results instead of saving them",
    ),
    "elementwise_graphs": (
        {**ELEMENTWISE, "cuda_graphs": True},
        {},
        "full",
        "elementwise with CUDA graphs",
    ),
    "elementwise_split2": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {},
        "full",
        "elementwise with the step's packs as 2 micro-batches, CUDA graphs on",
    ),
    # TUNA_REBUILD_ROTARY_LAYERS (train.rebuild_rotary_layers): the last k layers rebuild rotated q/k (default under
    # elementwise: the last quarter, 7 of 28 for 0.6B — 4.03-4.09x at 0.29x, session 9). Each layer rebuilding
    # saves ~0.05 GiB for ~0.13 ms a step.
    "elementwise_split2_rot0": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {"TUNA_REBUILD_ROTARY_LAYERS": "0"},
        "full",
        "elementwise_split2 with every layer keeping rotated q/k (session 8's none_split2_pointwise)",
    ),
    "elementwise_split2_eager": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": False},
        {},
        "full",
        "elementwise_split2 without CUDA graphs (a trace can then charge each kernel to its operation)",
    ),
    # Programmatic Dependent Launch in the compiled kernels (Hopper+; inductor's TORCHINDUCTOR_ENABLE_PDL): a kernel
    # starts while the one before drains — against the ~10 ms of sub-20 µs gaps inside a graphed 0.6B step.
    "elementwise_split2_pdl": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {"TORCHINDUCTOR_ENABLE_PDL": "1"},
        "full",
        "elementwise_split2 with PDL in the compiled kernels",
    ),
    # TUNA_LORA_ADD=separate (lora.py): the adapter product as its own GEMM, added elementwise, instead of addmm
    # (whose C ATen may copy from the base output): session 9 measured 394 -> 282 copies a 0.6B step, +0.4-2.1%.
    "elementwise_split2_loraadd": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {"TUNA_LORA_ADD": "separate"},
        "full",
        "elementwise_split2 with the LoRA product added elementwise",
    ),
    "default_loraadd": (
        {},
        {"TUNA_LORA_ADD": "separate"},
        "full",
        "the defaults with the LoRA product added elementwise",
    ),
    "elementwise_split2_rot7": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {"TUNA_REBUILD_ROTARY_LAYERS": "7"},
        "full",
        "elementwise_split2, only the last 7 layers rebuilding rotated q/k",
    ),
    "elementwise_split2_rot14": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {"TUNA_REBUILD_ROTARY_LAYERS": "14"},
        "full",
        "elementwise_split2, only the last 14 layers rebuilding rotated q/k",
    ),
    # TUNA_LORA_ADD=gemm (lora.py): the default before session 10 — the adapter product as addmm's C, which in compiled
    # layers makes ATen copy the base output into Inductor's new buffer first ("inplace", the default from session 10 to 12 and
    # still auto's choice for groups under 4096 features, does not).
    "elementwise_split2_gemm": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {"TUNA_LORA_ADD": "gemm"},
        "full",
        "elementwise_split2 with the LoRA product as addmm's C (a copy of the base output first)",
    ),
    # TUNA_LAYER_CHECKPOINT=outside (models/llama.py): recompute "full"'s checkpoint around each compiled layer, as
    # before session 11 — the whole forward rerun in backward ("inside", the default, reruns only what backward
    # reads and keeps attention's outputs: TUNA_RECOMPUTE_KEEP).
    "default_outside": (
        {},
        {"TUNA_LAYER_CHECKPOINT": "outside"},
        "full",
        "the defaults with each layer's checkpoint around the compiled layer (its whole forward recomputed)",
    ),
    "default_keep_none": (
        {},
        {"TUNA_RECOMPUTE_KEEP": "none"},
        "full",
        "the defaults, the checkpoint inside the layer keeping nothing but its input",
    ),
    "default_keep_qkv": (
        {},
        {"TUNA_RECOMPUTE_KEEP": "attention,qkv"},
        "full",
        "the defaults keeping attention's and the q/k/v projections' outputs through the recompute",
    ),
    "default_keep_o": (
        {},
        {"TUNA_RECOMPUTE_KEEP": "attention,o"},
        "full",
        "the defaults keeping attention's and o_proj's outputs through the recompute",
    ),
    "default_keep_qkv_o": (
        {},
        {"TUNA_RECOMPUTE_KEEP": "attention,qkv,o"},
        "full",
        "the defaults keeping attention's and the q/k/v and o projections' outputs through the recompute",
    ),
    # TUNA_OFFLOAD_DEVICE_LAYERS (models/llama.py): the last k layers' saved tensors are not copied to the host (the
    # default, 1, is the layer the forward pass never releases; 0 copies it too, as before session 12).
    "default_device0": (
        {},
        {"TUNA_OFFLOAD_DEVICE_LAYERS": "0"},
        "full",
        "the defaults copying every layer's saved tensors to the host, the last one too",
    ),
    "default_device4": (
        {},
        {"TUNA_OFFLOAD_DEVICE_LAYERS": "4"},
        "full",
        "the defaults keeping the last 4 layers' saved tensors on the GPU, uncopied",
    ),
    "no_offload_keep_all": (
        {"offload_activations": False},
        {"TUNA_RECOMPUTE_KEEP": "attention,qkv,o"},
        "full",
        "the defaults' keeps (attention, q/k/v, o) with nothing offloaded: what the offload costs in time",
    ),
    # TUNA_LORA_ADD=inplace (lora.py): the default before session 13 — the base GEMM writes its output and the adapter
    # product is added into it by a second GEMM that reads and writes all of it ("epilogue", the default, computes
    # the product first and lets the base GEMM add it as cuBLAS's C; dx likewise in backward).
    "default_inplace": (
        {},
        {"TUNA_LORA_ADD": "inplace"},
        "full",
        "the defaults with the LoRA product added into the base output after its GEMM (before session 13)",
    ),
    # TUNA_LORA_ADD=augmented (lora.py): each group's frozen weights in one buffer with room for the adapters, one GEMM
    # a group and forward pass with no C to read ([x | xA]·[W | s·B]ᵀ); dx = g·A + dy·W, one frozen GEMM a group.
    "default_augmented": (
        {},
        {"TUNA_LORA_ADD": "augmented"},
        "full",
        "the defaults with the frozen weights stored with room for the adapters (one GEMM a projection group)",
    ),
    "default_gemm": (
        {},
        {"TUNA_LORA_ADD": "gemm"},
        "full",
        "the defaults with the LoRA product as addmm's C",
    ),
    "elementwise_split2_rot7_loraadd": (
        {**ELEMENTWISE, "split": 2, "cuda_graphs": True},
        {"TUNA_REBUILD_ROTARY_LAYERS": "7", "TUNA_LORA_ADD": "separate"},
        "full",
        "elementwise_split2_rot7 with the LoRA product added elementwise",
    ),
    "none_split2_budget07": (
        {**NO_RECOMPUTE, "split": 2, "cuda_graphs": True},
        {"TUNA_ACTIVATION_MEMORY_BUDGET": "0.7"},
        "full",
        "none_split2 with the compiled layers keeping <= 0.7 of their saved activations",
    ),
    "none_budget07": (
        {**NO_RECOMPUTE, "cuda_graphs": True},
        {"TUNA_ACTIVATION_MEMORY_BUDGET": "0.7"},
        "full",
        "none_graphs with the compiled layers keeping <= 0.7 of their saved activations",
    ),
    "mlp_split2": (
        {"compile": True, "recompute": "mlp", "split": 2, "cuda_graphs": True},
        {},
        "full",
        "recompute the MLP blocks only, the step's packs as 2 micro-batches, CUDA graphs on",
    ),
    "no_graphs": ({"cuda_graphs": False}, {}, "full", "the defaults without CUDA graphs (their A/B)"),
    "graphs": (
        {"cuda_graphs": True},
        {},
        "full",
        "the defaults with CUDA graphs for every micro-batch shape",
    ),
    "none_graphs": ({**NO_RECOMPUTE, "cuda_graphs": True}, {}, "full", "fast_none with CUDA graphs"),
    "fast_offload": (
        {"compile": True, "offload_activations": True},
        {},
        "full",
        "fast, recompute full, layer inputs offloaded to pinned CPU memory",
    ),
    "fast_mlp_offload": (
        {"compile": True, "recompute": "mlp", "offload_activations": True},
        {},
        "full",
        "fast_mlp with its saved activations offloaded",
    ),
    "exact_compile": (
        {"lora_compute": "exact", "compile": True},
        {},
        "full",
        "exact + train.compile (the earlier compile row)",
    ),
    "mix": ({}, {}, "mix", "default on a support-transcript length mix, packed"),
    # Supervised packs (prompts untrained, packs of varying length) as 4 micro-batches of 2 rows, small enough for
    # cuda_graphs auto: coarse graph keys (the default) against fine ones and no graphs. Give --steps ~40: shapes
    # are graphed from their second sighting.
    "sft_split4": (
        {"split": 4},
        {},
        "sft",
        "the defaults on supervised packs, 4 micro-batches (graph keys coarse)",
    ),
    "sft_split4_fine": (
        {"split": 4},
        {"TUNA_GRAPH_KEYS": "fine"},
        "sft",
        "sft_split4 with fine graph keys (8 buckets an octave, rows not lengthened)",
    ),
    "sft_split4_eager": ({"split": 4, "cuda_graphs": False}, {}, "sft", "sft_split4 without CUDA graphs"),
    "mix_unpacked": (
        {},
        {},
        "mix_unpacked",
        "the same length mix, one sample per row (padded to the batch's longest)",
    ),
    "sdpa": (
        {},
        {"TUNA_ATTENTION": "sdpa"},
        "full",
        "default with the reference attention path (SDPA + block mask)",
    ),
    "ce_eager": (
        {},
        {"TUNA_CE": "eager"},
        "full",
        "default with the loss's eager chunk loop (the Triton CE's A/B)",
    ),
    "varlen": (
        {},
        {"TUNA_ATTENTION": "varlen"},
        "full",
        "default with flash-attention varlen for one-sample rows too (cuDNN's A/B on Hopper)",
    ),
    "no_offload": (
        {"offload_activations": False},
        {},
        "full",
        "default with the layer inputs kept on the GPU (offload's A/B)",
    ),
    "fp8_varlen": (
        {"base_precision": "fp8"},
        {"TUNA_ATTENTION": "varlen"},
        "full",
        "fp8 with flash-attention varlen (cuDNN's A/B under FP8)",
    ),
    "nockpt": ({"gradient_checkpointing": False}, {}, "full", "default without gradient checkpointing"),
    "compile": ({}, {"TUNA_COMPILE": "1"}, "full", "default + TUNA_COMPILE=1 (same as train.compile)"),
    "fp8": (
        {"base_precision": "fp8"},
        {},
        "full",
        "default + train.base_precision fp8 (frozen base in FP8 e4m3, every base GEMM via torch._scaled_mm)",
    ),
    "fp8_none": (
        {"base_precision": "fp8", "recompute": "none", "gradient_checkpointing": False},
        {},
        "full",
        "fp8 without recomputation (the speed setting's candidate)",
    ),
    "qlora": (
        {},
        {},
        "full",
        "QLoRA (NF4 base quantized at load), defaults otherwise: issue 5's Qwen3-32B row against the bf16 baseline",
    ),
}


# Variants that train another method than LoRA on the 16-bit directory (the HF + PEFT baseline stays bf16 LoRA).
VARIANT_METHOD = {"qlora": "qlora"}


def variant(name: str) -> tuple[dict, dict, str]:
    if name not in VARIANTS:
        raise SystemExit(f"--variants: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    extra, env, lengths, _ = VARIANTS[name]
    return dict(extra), dict(env), lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3-0.6b,qwen3-8b")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--work", default=None, help="where model directories and runs go (default: a temp dir)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument(
        "--variants",
        default="default",
        help="comma list of Tuna settings: " + "; ".join(f"{k}: {v[3]}" for k, v in VARIANTS.items()),
    )
    ap.add_argument(
        "--gpus",
        default="1",
        help="comma list of GPU counts for the scaling benchmark, e.g. 1,2,4 "
        "(each >1 runs the engine under torchrun; tuna_<variant>_<n>gpu rows, with scaling vs 1 GPU)",
    )
    ap.add_argument(
        "--scaling-variant",
        default="default",
        choices=list(VARIANTS),
        help="the Tuna variant the --gpus rows run (its 1-GPU row, if in --variants, is the base)",
    )
    ap.add_argument("--strategy", default="fsdp", choices=["fsdp", "ddp"])
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--profile-dir",
        default=None,
        help="write a per-operation profile of Tuna's third step here, one file per model and variant",
    )
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench/train needs a CUDA GPU"
    stop_engines_with_this_script()
    work = Path(args.work or tempfile.mkdtemp(prefix="tuna-bench-"))
    card = torch.cuda.get_device_name()
    peak_tflops = matmul_tflops()
    log(f"{card}: bf16 matmul {peak_tflops:.0f} TFLOP/s")
    results = {
        "card": card,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "matmul_tflops": peak_tflops,
        "models": {},
    }
    for name in args.models.split(","):
        batch, seq = DEFAULT_SHAPES[name]
        cfg = PRESETS[name]["config"]
        fpt = flops_per_token(cfg, seq, recompute=True)
        log(f"== {name}: {batch} x {seq}")
        model_dir = make_model_dir(name, work)
        r: dict = {"batch": batch, "seq": seq, "flops_per_token": fpt}
        if not args.skip_hf:
            r["hf_peft"] = bench_hf(model_dir, batch, seq, args.steps, args.warmup)
            log(f"  HF+PEFT {r['hf_peft']}")
        common = (model_dir, batch, seq, args.steps, args.warmup, work)
        for v in args.variants.split(","):
            extra, env, lengths = variant(v)
            if args.profile_dir:
                env["TUNA_PROFILE"] = str(Path(args.profile_dir) / f"profile-{name}-{v}.txt")
                env["TUNA_PROFILE_TRACE"] = str(Path(args.profile_dir) / f"trace-{name}-{v}.json")
            r[f"tuna_{v}"] = bench_tuna(*common, extra, lengths, env, method=VARIANT_METHOD.get(v, "lora"))
            log(f"  tuna[{v}] {r[f'tuna_{v}']}")
        for n in [int(g) for g in args.gpus.split(",") if int(g) > 1]:
            sv = args.scaling_variant
            key = f"tuna_{sv}_{n}gpu"
            extra, env, lengths = variant(sv)
            r[key] = bench_tuna(
                *common,
                extra,
                lengths,
                env,
                gpus=n,
                strategy=args.strategy,
                method=VARIANT_METHOD.get(sv, "lora"),
            )
            base = r.get(f"tuna_{sv}", {})
            if "tokens_per_s" in r[key] and "tokens_per_s" in base:
                r[key]["scaling_vs_1gpu"] = r[key]["tokens_per_s"] / (n * base["tokens_per_s"])
            log(f"  tuna[{n} GPUs, {args.strategy}] {r[key]}")
        for k, v in r.items():
            if isinstance(v, dict) and "tokens_per_s" in v:
                v["mfu"] = v["tokens_per_s"] * fpt / (peak_tflops * 1e12 * v.get("gpus", 1))
                if "hf_peft" in r and k != "hf_peft" and "tokens_per_s" in r["hf_peft"]:
                    v["speedup_vs_hf"] = v["tokens_per_s"] / r["hf_peft"]["tokens_per_s"]
                    v["memory_vs_hf"] = v["peak_gib"] / r["hf_peft"]["peak_gib"]
        results["models"][name] = r
    print("\nmodel        | impl               | tokens/s | trained/s | peak GiB | MFU   | speed× | mem×")
    for name, r in results["models"].items():
        for k, v in r.items():
            if isinstance(v, dict):
                if "error" in v:
                    print(f"{name:12} | {k:18} | error: {str(v['error'])[:200]}")
                    continue
                print(
                    f"{name:12} | {k:18} | {v['tokens_per_s']:8.0f} | {v.get('trained_tokens_per_s', v['tokens_per_s']):9.0f} | {v['peak_gib']:8.1f} | {v['mfu']:.3f} | {v.get('speedup_vs_hf', 1):.2f} | {v.get('memory_vs_hf', 1):.2f}"
                )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
