"""bench/generate/count_ops — ops per decode step (CPU, torch.profiler), unfused vs fused vs compiled, on a
Qwen3-0.6B-shaped model in bf16 cut to 1 and 2 layers (vocabulary 4096: op counts do not depend on it). Counted:
each aten call that computes something and is not inside another counted call (views, metadata and pure wrappers
such as `aten::to` are see-through: the copy they make counts). On CUDA each counted op is about one kernel launch
(F.rms_norm, a linear, SDPA are one op each), which is what bounds a small model's step (issue 7). per_layer = the
2-layer step minus the 1-layer step.

Compiled steps (`compile_regions`: the two regions around an eager attention; `compile_layer`: the whole layer with
tuna::decode_attention, and the head): ops outside the compiled graphs are counted as above; each compiled graph
counts the kernels its Inductor code calls (generated C++ kernels, extern GEMMs, custom ops) once per call. CPU
Inductor fuses like GPU Inductor but not identically (bench/generate/run.py counts the real CUDA kernels), and on
CUDA tuna::decode_attention is 2 kernels when it splits the keys (1 here).

    PYTHONPATH=engine python bench/generate/count_ops.py
"""

from __future__ import annotations

import json
import re
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


def tiny_06b(layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(Config.from_hf({**QWEN3_06B, "num_hidden_layers": layers}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(dtype).eval()


def adapters_for(model: CausalLM, n: int = 2, r: int = 16) -> dict[str, list[AdapterWeights | None]]:
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


COMPILED = "## Call CompiledFxGraph"  # profiler range around one call of a compiled graph


def leaf_ops(fn, compiled_kernels: list[int] | None = None) -> dict[str, int]:
    """{aten op: calls} of the counted ops one call of fn makes. With compiled_kernels (kernels per compiled graph,
    in the order the graphs are first called), a compiled graph's call counts as that many ops under
    "compiled" and the ops inside it are not counted."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    graphs: list[str] = []
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        if compiled_kernels is not None and e.name.startswith(COMPILED):
            if e.name not in graphs:
                graphs.append(e.name)
            counts["compiled"] = counts.get("compiled", 0) + compiled_kernels[graphs.index(e.name)]
            continue
        if not e.name.startswith("aten::") or e.name in VIEWS:
            continue
        p = e.cpu_parent
        while p is not None and (not p.name.startswith("aten::") or p.name in VIEWS):
            if compiled_kernels is not None and p.name.startswith(COMPILED):
                break
            p = p.cpu_parent
        if p is None:  # not inside another counted op
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def code_kernels(code: str) -> int:
    """Kernels one call of an Inductor graph launches: generated kernels, extern kernels (GEMMs) and ops called
    through torch.ops (custom ops, fallbacks), counted in its `call` function."""
    body = code.split("def call(self, args):", 1)[1].split("\nrunner = ", 1)[0]
    pattern = r"\b(?:cpp_fused_\w+|triton_\w+\.run|extern_kernels\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?)\("
    return len(re.findall(pattern, body))


def step_ops(
    model: CausalLM, fused: bool, lora: bool, batch: int = 16, compile: bool | str = False
) -> dict[str, int]:
    """The ops of one decode step of `batch` rows (every row on an adapter when lora)."""
    from torch._inductor.utils import run_and_get_code

    ad = adapters_for(model) if lora else {}
    dec = Decoder(model, ad, 2 if lora else 0, batch, 512, use_graphs=False, fused=fused, compile=compile)
    ids, pos = list(range(1, batch + 1)), [100 + i for i in range(batch)]
    aidx = [1 + i % 2 for i in range(batch)] if lora else [0] * batch
    if not compile:
        dec.decode(ids, pos, aidx)  # warm-up
        return leaf_ops(lambda: dec.decode(ids, pos, aidx))
    torch._dynamo.reset()  # compile here (not from an earlier call's cache) to see each graph's code
    _, codes = run_and_get_code(lambda: dec.decode(ids, pos, aidx))
    return leaf_ops(lambda: dec.decode(ids, pos, aidx), [code_kernels(c) for c in codes])


def main() -> None:
    res: dict[str, dict[str, float]] = {}
    variants = {
        "unfused": (False, False),
        "fused": (True, False),
        "compile_regions": (True, "regions"),
        "compile_layer": (True, "layer"),
    }
    for lora in (False, True):
        for name, (fused, compile) in variants.items():
            one, two = (sum(step_ops(tiny_06b(n), fused, lora, compile=compile).values()) for n in (1, 2))
            res[f"{name}{'+lora' if lora else ''}"] = {
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
