"""Random-weight model directories of any size, written tensor by tensor (for benchmarks of 32B–70B models).

`write_random_model(config, out)` writes a Hugging Face directory — config.json, sharded
`model-0000i-of-0000N.safetensors` and `model.safetensors.index.json` — whose tensors are exactly those our
model code (models/llama.py) expects for that config, with HF names. Matrices are normal(0, 0.02) (the
configs' `initializer_range`), norm weights 1, biases 0. Speed does not depend on the values.

`four_bit=True` writes a pre-quantized bitsandbytes NF4 directory instead (`*-bnb-4bit` layout, exactly what
quant/ reads and what transformers + bitsandbytes save: `<proj>.weight` packed uint8, `.weight.absmax`,
`.weight.quant_map`, `.weight.nested_absmax`, `.weight.nested_quant_map`,
`.weight.quant_state.bitsandbytes__nf4`, and config.json `quantization_config`): every decoder projection is
drawn in 16 bit on the device, quantized there (blocksize 64, double quantization) and only its 4-bit form
leaves the device. Embeddings, norms and lm_head stay 16-bit, as bitsandbytes checkpoints keep them.

Memory: one tensor on the device at a time, and at most two shards on the host (one being filled, one being
written by a background thread), so a 70B model (140 GB in bf16, ~40 GB in NF4) never exists anywhere whole.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..lora import Linear
from ..quant.nf4 import DEFAULT_BLOCKSIZE, DEFAULT_NESTED_BLOCKSIZE, QUANT_STATE_KEY, quantize_weight
from . import DTYPES, llama

BNB_QUANTIZATION_CONFIG: dict[str, Any] = {
    "quant_method": "bitsandbytes",
    "load_in_4bit": True,
    "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_quant_storage": "uint8",
    "llm_int8_skip_modules": ["lm_head"],
    "llm_int8_threshold": 6.0,
    "llm_int8_has_fp16_weight": False,
}
COMPLETE = ".tuna-random-complete"  # written last: a directory without it is a partial write


def tensor_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every tensor of the model, in module order, from our own model code built on the
    meta device (so the list cannot disagree with what the loader expects)."""
    c = llama.Config.from_hf(config)
    with torch.device("meta"):
        model = llama.CausalLM(c)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def projection_names(config: dict[str, Any]) -> set[str]:
    c = llama.Config.from_hf(config)
    with torch.device("meta"):
        model = llama.CausalLM(c)
    return {n for n, m in model.named_modules() if isinstance(m, Linear)}


def nf4_nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of one NF4 weight with double quantization (codes, absmax, nested absmax, maps; JSON ~200 B)."""
    n = math.prod(shape)
    blocks = -(-n // DEFAULT_BLOCKSIZE)
    return -(-n // 2) + blocks + 4 * -(-blocks // DEFAULT_NESTED_BLOCKSIZE) + 4 * (16 + 256) + 200


def planned_bytes(config: dict[str, Any], dtype: str = "bfloat16", four_bit: bool = False) -> int:
    size = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    quantized = projection_names(config) if four_bit else set()
    total = 0
    for name, shape in tensor_shapes(config):
        mod, leaf = name.rsplit(".", 1)
        total += nf4_nbytes(shape) if mod in quantized and leaf == "weight" else math.prod(shape) * size
    return total


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def write_random_model(
    config: dict[str, Any],
    out: str | Path,
    *,
    dtype: str = "bfloat16",
    four_bit: bool = False,
    seed: int = 0,
    device: torch.device | None = None,
    shard_bytes: int = 4 << 30,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the directory; returns {"bytes", "files", "seconds", "gb_per_s"}. `config` is a config.json dict
    (a presets.json entry's `config`). An existing complete directory with the same config is reused."""
    out = Path(out)
    device = device or _default_device()
    std = float(config.get("initializer_range", 0.02))
    full_cfg = {**config, "torch_dtype": dtype}
    if four_bit:
        full_cfg["quantization_config"] = {**BNB_QUANTIZATION_CONFIG, "bnb_4bit_compute_dtype": dtype}
    stamp = json.dumps({"config": full_cfg, "seed": seed}, sort_keys=True)
    if (out / COMPLETE).is_file() and (out / COMPLETE).read_text() == stamp:
        files = sorted(out.glob("model-*.safetensors"))
        return {
            "bytes": sum(f.stat().st_size for f in files),
            "files": len(files),
            "seconds": 0.0,
            "reused": True,
        }
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("model*.safetensors*"), *out.glob(".part-*"), out / COMPLETE]:
        old.unlink(missing_ok=True)
    say = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    shapes = tensor_shapes(config)
    quantized = projection_names(config) if four_bit else set()
    total = planned_bytes(config, dtype, four_bit)
    gen = torch.Generator(device=device).manual_seed(seed)
    tdtype = DTYPES[dtype]

    pool = ThreadPoolExecutor(max_workers=1)  # writes shard k while shard k+1 is drawn
    pending: Future[None] | None = None
    parts: list[tuple[Path, list[str]]] = []
    shard: dict[str, torch.Tensor] = {}
    shard_size = 0
    written = 0
    t0 = last_report = time.time()

    def flush() -> None:
        nonlocal pending, shard, shard_size
        if not shard:
            return
        path = out / f".part-{len(parts):05d}.safetensors"
        parts.append((path, list(shard)))
        if pending is not None:
            pending.result()  # at most two shards on the host
        tensors = shard
        pending = pool.submit(lambda: save_file(tensors, str(path), metadata={"format": "pt"}))
        shard, shard_size = {}, 0

    try:
        for name, shape in shapes:
            mod, leaf = name.rsplit(".", 1)
            if "norm" in name.rsplit(".", 2)[-2] and leaf == "weight":
                w = torch.ones(shape, dtype=tdtype, device=device)
            elif leaf == "bias":
                w = torch.zeros(shape, dtype=tdtype, device=device)
            else:
                w = torch.empty(shape, dtype=tdtype, device=device).normal_(0.0, std, generator=gen)
            if mod in quantized and leaf == "weight":
                tensors = {k: v.contiguous() for k, v in quantize_weight(w).to_bnb_tensors(name).items()}
            else:
                tensors = {name: w}
            for k, v in tensors.items():
                v = v.to("cpu", non_blocking=False)
                shard[k] = v
                shard_size += v.numel() * v.element_size()
                written += v.numel() * v.element_size()
            del w, tensors
            if shard_size >= shard_bytes:
                flush()
            now = time.time()
            if now - last_report > 10:
                rate = written / max(now - t0, 1e-9)
                say(
                    f"{out.name}: {written / 1e9:.1f} / {total / 1e9:.1f} GB, {rate / 1e9:.2f} GB/s, "
                    f"ETA {(total - written) / max(rate, 1):.0f} s"
                )
                last_report = now
        flush()
        if pending is not None:
            pending.result()
    finally:
        pool.shutdown(wait=True)

    n = len(parts)
    weight_map: dict[str, str] = {}
    for i, (path, keys) in enumerate(parts):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        path.rename(out / final)
        weight_map.update(dict.fromkeys(keys, final))
    size = sum((out / f).stat().st_size for f in set(weight_map.values()))
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2) + "\n"
    )
    (out / "config.json").write_text(json.dumps(full_cfg, indent=2) + "\n")
    seconds = time.time() - t0
    (out / COMPLETE).write_text(stamp)
    say(
        f"{out}: {size / 1e9:.1f} GB in {n} files, {seconds:.0f} s ({size / 1e9 / max(seconds, 1e-9):.2f} GB/s)"
    )
    return {
        "bytes": size,
        "files": n,
        "seconds": seconds,
        "gb_per_s": size / 1e9 / max(seconds, 1e-9),
        "reused": False,
    }


__all__ = ["QUANT_STATE_KEY", "planned_bytes", "tensor_shapes", "write_random_model"]
