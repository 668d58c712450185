"""bench/train/saved_tensors.py — what one decoder layer keeps for its backward pass, tensor by tensor.

A step's peak memory without recomputation is mostly these (Qwen3-0.6B: ~45 KB a token a layer, session 7,
docs/benchmarks.md), so this is the list to shrink when a setting must fit a memory bound. The layer is built as
the trainer builds it (LoRA r=16 on every projection, adapters through `lora_compute: auto`, bf16, the layer
compiled on CUDA as `train.compile` does) and run forward under a saved-tensor hook; each saved storage is
counted once, parameters not at all.

    PYTHONPATH=engine python bench/train/saved_tensors.py --model qwen3-0.6b --recompute none,mlp,elementwise
        # elementwise: the compiler rebuilds elementwise results (train.set_compiled_recompute);
        # --memory-budget 0.7: TUNA_ACTIVATION_MEMORY_BUDGET

On a CPU it runs uncompiled (--compile to compile there too) with the reference attention: the list differs from
the GPU's (where it matters: cuDNN attention on Hopper).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch._dynamo

from tuna_engine.lora import set_lora_compute
from tuna_engine.models import build_model, llama
from tuna_engine.models.llama import segments
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import set_compiled_recompute

ROOT = Path(__file__).resolve().parents[2]


def saved_by_layer(model: llama.CausalLM, rows: int, length: int) -> tuple[list[torch.Tensor], int]:
    """The tensors layer 0 saves for backward on a [rows, length] micro-batch of one sample a row, and the bytes
    its forward left allocated (CUDA; 0 elsewhere)."""
    dev = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (rows, length), device=dev)
    pos = torch.arange(length, device=dev)[None].expand(rows, length)
    x = model.model.embed_tokens(ids).detach().requires_grad_()
    # The rotary tables as CausalLM.forward makes them (shared by every layer: listed, but per model, not layer).
    freqs = pos[..., None].float() * model.inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * model.rope_scale).to(x.dtype), (emb.sin() * model.rope_scale).to(x.dtype)
    seg = segments(torch.zeros(rows, length, dtype=torch.long, device=dev))
    saved: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    before = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        y = model.model.layers[0](x, cos, sin, seg)
    after = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    unique: dict[int, torch.Tensor] = {}
    for t in saved:
        unique.setdefault(t.untyped_storage().data_ptr(), t)
    y.sum().backward()  # the compiled backward runs once too (a second call then lists the warm layer)
    return [t for k, t in unique.items() if k not in params], after - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-0.6b", help="a preset of src/model/presets.json")
    ap.add_argument(
        "--recompute",
        default="none,mlp,elementwise",
        help="comma list of train.recompute modes: none, mlp, elementwise",
    )
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--compile", action="store_true", help="compile the layer on a CPU too (always on CUDA)")
    ap.add_argument("--memory-budget", help="TUNA_ACTIVATION_MEMORY_BUDGET for the compiled layer, e.g. 0.7")
    args = ap.parse_args()
    preset = json.loads((ROOT / "src/model/presets.json").read_text())[args.model]["config"]
    config = llama.Config.from_hf(dict(preset, num_hidden_layers=1))
    lora = LoraSpec(
        r=16, alpha=32, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
    )
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokens = args.rows * args.length
    for mode in args.recompute.split(","):
        if mode not in ("none", "mlp", "elementwise"):
            raise SystemExit(
                f"--recompute: {mode!r} is not listed per layer (expected none, mlp or elementwise)"
            )
        set_compiled_recompute(args.memory_budget, mode == "elementwise")
        model = build_model(config, dev, torch.bfloat16, lora, None)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(0, 0.02)
                p.requires_grad = "lora_" in name
        set_lora_compute(model, "auto")  # the trainer's default adapter path (lora.py LoraFunction)
        model.train()
        model.recompute = "none" if mode == "elementwise" else mode  # as train.py sets it
        if dev.type == "cuda" or args.compile:
            torch._dynamo.reset()  # compiled afresh under this mode's partitioner settings
            for layer in model.model.layers:
                layer.compile()
        saved_by_layer(model, args.rows, args.length)  # warm-up: compiles
        tensors, allocated = saved_by_layer(model, args.rows, args.length)
        total = sum(t.untyped_storage().nbytes() for t in tensors)
        print(
            f"== {args.model}, recompute {mode}, {args.rows} × {args.length} on {dev.type}: "
            f"{total / tokens:,.0f} bytes a token saved by one layer (forward left {allocated / tokens:,.0f} allocated)"
        )
        for t in sorted(tensors, key=lambda t: -t.untyped_storage().nbytes()):
            size = t.untyped_storage().nbytes()
            print(f"  {str(tuple(t.shape)):26} {str(t.dtype):15} {size / tokens:9,.0f} B/token")


if __name__ == "__main__":
    main()
