"""Test helpers: tiny Hugging Face models saved to disk, token shards in the docs/formats.md layout, plans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

ENGINE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = ENGINE_DIR.parent

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=256,
    max_position_embeddings=512,
)


def hf_config(family: str, **overrides: Any):
    """A tiny transformers config of `family` (qwen3, qwen2, llama) with eager-free defaults."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    kw: dict[str, Any] = {**TINY, **overrides}
    if family == "qwen2":
        kw.pop("head_dim", None)
    cls = {"qwen3": Qwen3Config, "qwen2": Qwen2Config, "llama": LlamaConfig}[family]
    return cls(**kw)


def make_hf_model(
    path: Path,
    family: str = "qwen3",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    **overrides: Any,
):
    """Save a randomly initialised tiny HF model to `path`; return it (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = hf_config(family, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # larger-than-default weights so every term matters numerically
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(path, **kw)
    return model.float().eval()


def write_shard(
    path: Path,
    samples: list[tuple[list[int], list[float]]],
    packs: list[list[int]] | None = None,
    max_length: int = 512,
) -> Path:
    """A token shard (docs/formats.md): samples as (tokens, loss_weight); packs as lists of consecutive sample
    indices (default: one sample per pack)."""
    tokens: list[int] = []
    weights: list[float] = []
    seq_offsets = [0]
    for toks, w in samples:
        assert len(toks) == len(w) and w[0] == 0, "the first token of a sample is never a target"
        tokens += toks
        weights += w
        seq_offsets.append(len(tokens))
    packs = packs if packs is not None else [[i] for i in range(len(samples))]
    pack_offsets = [0]
    for p in packs:
        assert p == list(range(pack_offsets[-1], pack_offsets[-1] + len(p))), "packs are contiguous"
        pack_offsets.append(pack_offsets[-1] + len(p))
    assert pack_offsets[-1] == len(samples)
    save_file(
        {
            "tokens": torch.tensor(tokens, dtype=torch.int32),
            "loss_weight": torch.tensor(weights, dtype=torch.float32),
            "seq_offsets": torch.tensor(seq_offsets, dtype=torch.int64),
            "pack_offsets": torch.tensor(pack_offsets, dtype=torch.int64),
        },
        str(path),
        metadata={"format": "tuna-shard", "version": "1", "max_length": str(max_length)},
    )
    return path


def random_samples(
    n: int, vocab: int = 256, min_len: int = 6, max_len: int = 24, seed: int = 0, prompt_frac: float = 0.4
) -> list[tuple[list[int], list[float]]]:
    """Random samples with a prompt (weight 0) then an answer (weight 1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        L = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        toks = torch.randint(0, vocab, (L,), generator=g).tolist()
        p = max(1, int(L * prompt_frac))
        out.append((toks, [0.0] * p + [1.0] * (L - p)))
    return out


def greedy_packs(samples: list[tuple[list[int], list[float]]], max_length: int) -> list[list[int]]:
    packs: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, (toks, _) in enumerate(samples):
        if cur and used + len(toks) > max_length:
            packs.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += len(toks)
    if cur:
        packs.append(cur)
    return packs


def lora_method(type: str = "lora", r: int = 4, alpha: float = 8, **extra: Any) -> dict[str, Any]:
    """A plan's `method` section: LoRA (or QLoRA) of rank r on every linear projection; `extra` goes beside
    `lora` (e.g. keep_16bit)."""
    lora = {
        "r": r,
        "alpha": alpha,
        "dropout": 0.0,
        "target_modules": ["all-linear"],
        "use_rslora": False,
        "use_dora": False,
    }
    return {"type": type, "lora": lora, **extra}


def make_plan(
    tmp: Path,
    model_dir: Path,
    train_shards: list[Path],
    val_shards: list[Path] | None = None,
    method: dict[str, Any] | None = None,
    **train: Any,
) -> dict[str, Any]:
    run = tmp / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "manifest.json").write_text("{}")
    t = dict(
        seed=1,
        micro_batch_size=2,
        grad_accum=2,
        max_steps=4,
        learning_rate=1e-3,
        weight_decay=0.0,
        warmup_steps=1,
        scheduler="cosine",
        min_lr_ratio=0.1,
        max_grad_norm=1.0,
        optimizer="adamw",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_eps=1e-8,
        gradient_checkpointing=False,
        log_every=1,
        eval_every=0,
        save_every=0,
    )
    t.update(train)
    return {
        "version": 1,
        "command": "train",
        "run_dir": str(run),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {
            "train": [str(s) for s in train_shards],
            "validation": [str(s) for s in (val_shards or [])],
            "manifest": str(run / "manifest.json"),
        },
        "method": method or lora_method(),
        "train": t,
        "device": "cpu",
        "output": {"adapter_dir": str(run / "adapter"), "checkpoints_dir": str(run / "checkpoints")},
        "base_model_name": "tiny-test-model",
        "resume_from": None,
    }


def write_plan(plan: dict[str, Any], path: Path | None = None) -> Path:
    path = path or Path(plan["run_dir"]) / "plan.json"
    path.write_text(json.dumps(plan, indent=2))
    return path


def bf16_train(
    work: Path, model_dir: Path, shards: list[Path], timeout: float, device: str = "cuda", **train: Any
) -> tuple[list[dict[str, Any]], str]:
    """A bf16 training run through the engine process, on CUDA by default (the GPU tests): its step events and its
    stderr (the human log). A run that fails fails the test with the end of its stderr."""
    plan = make_plan(work, model_dir, shards, **train)
    plan["model"]["dtype"] = "bfloat16"
    plan["device"] = device
    code, events, err = run_engine("train", write_plan(plan), timeout=timeout)
    assert code == 0, err[-3000:]
    return [e for e in events if e["event"] == "step"], err


def run_interpreted(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> Any:
    """`script` (Python source) in a fresh process with TRITON_INTERPRET=1 — Triton picks its interpreter when
    triton.jit runs, so a test process that has imported a kernel cannot switch — and the engine on PYTHONPATH;
    returns the JSON of the last line it prints. A failing script fails the test with its stderr."""
    full = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ENGINE_DIR), **(env or {})}
    p = subprocess.run(
        [sys.executable, "-c", script, *args], env=full, capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ENGINE_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_engine(
    command: str, plan_path: Path, timeout: float = 120, prelude: str = ""
) -> tuple[int, list[dict[str, Any]], str]:
    """Run `python -m tuna_engine <command> --plan <plan>`; return (exit code, events, stderr). `prelude`: Python
    run in the engine's process first (to patch a function, cap GPU memory, …), then the engine's main."""
    if prelude:
        prog = (
            f"{prelude}\nimport sys\nfrom tuna_engine.__main__ import main\n"
            f"sys.exit(main([{command!r}, '--plan', {str(plan_path)!r}]))\n"
        )
        argv = [sys.executable, "-c", prog]
    else:
        argv = [sys.executable, "-m", "tuna_engine", command, "--plan", str(plan_path)]
    p = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=engine_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    events = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    return p.returncode, events, p.stderr


def random_cuda_model_dir(path: Path, cfg: dict[str, Any]) -> Path:
    """A Qwen3 directory of `cfg`'s shape (e.g. QWEN3_0_6B) with transformers' random init, made on the GPU in
    bf16 (GPU tests: speed and curves do not depend on the weights' values)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**cfg), dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


# Real Qwen3 architectures (config.json of Qwen/Qwen3-0.6B and Qwen/Qwen3-8B) for GPU tests with random weights.
QWEN3_COMMON = dict(
    head_dim=128,
    vocab_size=151936,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=40960,
    attention_bias=False,
    hidden_act="silu",
)
QWEN3_0_6B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    tie_word_embeddings=True,
    **QWEN3_COMMON,
)
QWEN3_8B = dict(
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
    **QWEN3_COMMON,
)
