"""bench/generate/count_ops — ops per decode step (CPU, torch.profiler), unfused vs fused, on a Qwen3-0.6B-shaped
model in bf16 cut to 1 and 2 layers (vocabulary 4096: op counts do not depend on it). Counted: each aten call that
computes something and is not inside another counted call (views, metadata and pure wrappers such as `aten::to`
are see-through: the copy they make counts). On CUDA each counted op is about one kernel launch (F.rms_norm,
a linear, SDPA are one op each), which is what bounds a small model's step (issue 7). per_layer = the 2-layer
step minus the 1-layer step.

    PYTHONPATH=engine python bench/generate/count_ops.py
"""

from __future__ import annotations

import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from tuna_engine.decode import Decoder
from tuna_engine.generate import AdapterWeights
from tuna_engine.models.llama import CausalLM, Config

# Ops that only make views, read metadata or wrap another op: no kernel of their own on CUDA.
VIEWS = {
    "aten::view",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::as_strided",
    "aten::expand",
    "aten::select",
    "aten::slice",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::t",
    "aten::transpose",
    "aten::permute",
    "aten::detach",
    "aten::_unsafe_view",
    "aten::alias",
    "aten::lift_fresh",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::resize_",
    "aten::split",
    "aten::chunk",
    "aten::narrow",
    "aten::result_type",
    "aten::to",
    "aten::contiguous",
    "aten::unflatten",
    "aten::flatten",
    "aten::view_as",
    "aten::expand_as",
    "aten::split_with_sizes",
    "aten::unbind",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::numpy_T",
}

QWEN3_06B = {
    "model_type": "qwen3",
    "vocab_size": 4096,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 2,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
}
PROJ = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def tiny_06b(
    layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(Config.from_hf({**QWEN3_06B, "num_hidden_layers": layers}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(dtype).eval()


def adapters_for(
    model: CausalLM, n: int = 2, r: int = 16
) -> dict[str, list[AdapterWeights | None]]:
    """n random LoRA adapters on every projection: {module path: [one per adapter]}."""
    g = torch.Generator().manual_seed(1)
    out: dict[str, list[AdapterWeights | None]] = {}
    for name, m in model.named_modules():
        if name.split(".")[-1] in PROJ["self_attn"] + PROJ["mlp"]:
            out[name] = [
                AdapterWeights(
                    torch.randn(r, m.in_features, generator=g) * 0.05,
                    torch.randn(m.out_features, r, generator=g) * 0.05,
                    2.0,
                )
                for _ in range(n)
            ]
    return out


def leaf_ops(fn) -> dict[str, int]:
    """{aten op: calls} of the counted ops one call of fn makes."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name in VIEWS:
            continue
        p = e.cpu_parent
        while p is not None and (not p.name.startswith("aten::") or p.name in VIEWS):
            p = p.cpu_parent
        if p is None:  # not inside another counted op
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def step_ops(
    model: CausalLM, fused: bool, lora: bool, batch: int = 16
) -> dict[str, int]:
    """The ops of one decode step of `batch` rows (every row on an adapter when lora)."""
    ad = adapters_for(model) if lora else {}
    dec = Decoder(
        model, ad, 2 if lora else 0, batch, 512, use_graphs=False, fused=fused
    )
    ids, pos = list(range(1, batch + 1)), [100 + i for i in range(batch)]
    aidx = [1 + i % 2 for i in range(batch)] if lora else [0] * batch
    dec.decode(ids, pos, aidx)  # warm-up
    return leaf_ops(lambda: dec.decode(ids, pos, aidx))


def main() -> None:
    res: dict[str, dict[str, float]] = {}
    for lora in (False, True):
        for fused in (False, True):
            one, two = (
                sum(step_ops(tiny_06b(n), fused, lora).values()) for n in (1, 2)
            )
            res[f"{'fused' if fused else 'unfused'}{'+lora' if lora else ''}"] = {
                "per_step_2_layers": two,
                "per_layer": two - one,
                "outside_layers": 2 * one - two,
            }
    print(json.dumps(res, indent=2))
    print(
        "28-layer 0.6B step (ops):",
        {k: v["outside_layers"] + 28 * v["per_layer"] for k, v in res.items()},
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
