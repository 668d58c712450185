"""bench/train/step_memory.py — a training step's GPU memory by phase: bf16 or FP8 bases, the full-recompute
checkpoint inside or outside the layer.

Session 12 found Qwen3-0.6B's FP8 step (2 × 2048, not offloaded) peaking at 1.77 GiB with the checkpoint inside the
compiled layer against 1.35 outside, while one layer's saved tensors, listed on the GPU, were the same as bf16's: the
extra is not a saved activation. This prints, per setting, what the forward pass leaves allocated and the forward's
and backward's peaks above the model itself, and with --snapshot-dir writes a `torch.cuda.memory` history snapshot of
each FP8 step (open it at https://pytorch.org/memory_viz) to see which allocation makes the peak.

    PYTHONPATH=engine python bench/train/step_memory.py --layers 28 --rows 2 --length 2048 \\
        --settings fp8:inside,fp8:outside,bf16:inside --snapshot-dir /tmp/snap

The model is built as the trainer builds it (LoRA r=16 on every projection, `lora_compute: auto`, bf16, layers
compiled, recompute full, no offload), random weights; the loss is a stand-in (a sum of squares of the hidden states).
On a CPU it runs and prints no numbers (a smoke run of the script).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch._dynamo

from tuna_engine.fp8 import convert_to_fp8
from tuna_engine.lora import set_lora_compute
from tuna_engine.models import llama
from tuna_engine.protocol import LoraSpec

ROOT = Path(__file__).resolve().parents[2]
GIB = float(1 << 30)


def build(preset: str, layers: int, precision: str, device: torch.device) -> llama.CausalLM:
    config = json.loads((ROOT / "src/model/presets.json").read_text())[preset]["config"]
    cfg = llama.Config.from_hf(dict(config, num_hidden_layers=layers))
    spec = LoraSpec(
        r=16, alpha=32, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
    )
    torch.manual_seed(0)
    model = llama.CausalLM(cfg, spec, None).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02)
            p.requires_grad = "lora_" in name
    model.to(device)
    set_lora_compute(model, "auto")
    if precision == "fp8":
        convert_to_fp8(model)
    for layer in model.model.layers:
        layer.compile()
    model.train()
    model.recompute = "full"
    model.offload_activations = False
    return model


def step(model: llama.CausalLM, rows: int, length: int, snapshot: Path | None) -> str:
    """One forward + backward; on CUDA the memory line (bytes above what was allocated before the step)."""
    dev = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (rows, length), device=dev)
    pos = torch.arange(length, device=dev)[None].expand(rows, length)
    sample_ids = torch.zeros(rows, length, dtype=torch.long, device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        if snapshot is not None:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
    hidden = model(ids, pos, sample_ids)
    if cuda:
        torch.cuda.synchronize()
        forward_peak = torch.cuda.max_memory_allocated() - base
        after_forward = torch.cuda.memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
    hidden.float().pow(2).sum().backward()
    model.zero_grad(set_to_none=True)
    if not cuda:
        return "ran (CPU: no numbers)"
    torch.cuda.synchronize()
    backward_peak = torch.cuda.max_memory_allocated() - base
    if snapshot is not None:
        torch.cuda.memory._dump_snapshot(str(snapshot))
        torch.cuda.memory._record_memory_history(enabled=None)
    return (
        f"model {base / GIB:.3f} GiB; forward peak +{forward_peak / GIB:.3f}, left after forward "
        f"+{after_forward / GIB:.3f}, backward peak +{backward_peak / GIB:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-0.6b", help="a preset of src/model/presets.json")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--settings", default="fp8:inside,fp8:outside,bf16:inside,bf16:outside")
    ap.add_argument(
        "--snapshot-dir", type=Path, default=None, help="memory history snapshots of the FP8 steps"
    )
    args = ap.parse_args()
    settings = [s.split(":") for s in args.settings.split(",")]
    for parts in settings:
        if len(parts) != 2 or parts[0] not in ("bf16", "fp8") or parts[1] not in llama.LAYER_CHECKPOINTS:
            ap.error(f"--settings: {':'.join(parts)!r} is not <bf16|fp8>:<inside|outside>")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for precision, checkpoint in settings:
        t0 = time.time()
        torch._dynamo.reset()
        llama.set_layer_checkpoint(checkpoint)
        model = build(args.model, args.layers, precision, device)
        step(model, args.rows, args.length, None)  # compiles, warms the allocator
        snap = None
        if args.snapshot_dir is not None and precision == "fp8":
            args.snapshot_dir.mkdir(parents=True, exist_ok=True)
            snap = args.snapshot_dir / f"snapshot-{precision}-{checkpoint}.pickle"
        line = step(model, args.rows, args.length, snap)
        print(f"{precision}, checkpoint {checkpoint}: {line} ({time.time() - t0:.0f} s)", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    llama.set_layer_checkpoint(None)


if __name__ == "__main__":
    main()
