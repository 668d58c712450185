"""The persistent decode-layer kernel (kernels/decode_layer.py) against decode._decode_layer, eager and uncompiled,
on the same weights (a tiny random Qwen3 layer of the engine's own model code, fused as decode.Decoder fuses it).

Run by Triton's interpreter on CPU (TRITON_INTERPRET=1, in a fresh process: the interpreter is chosen when
triton.jit runs): every phase as its own launch with several programs (grid-stride loops, split-K, key splits and
their last-arrival reductions), and the one-launch form with its grid barriers on one program (the only grid the
interpreter can run through a barrier: it runs programs one after another). fp32 to ~1e-5, bf16 within bf16
rounding; the caches hold the new k/v at pos[b] and are bit-for-bit untouched elsewhere; the one-launch form
equals the phase-per-launch form bit for bit; a grid whose programs cannot all be resident (two programs in the
interpreter) gives up at its barriers, sets the error flag and returns instead of hanging.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import textwrap
from typing import Any

import pytest
import torch
from helpers import ENGINE_DIR, run_interpreted

from tuna_engine import decode
from tuna_engine.models.llama import Config as ModelConfig
from tuna_engine.models.llama import DecoderLayer, rope_inv_freq

# (B rows, C hidden, H heads, KV heads, D head_dim, I intermediate, capacity, slots). G = H/KV = 1, 2, 4; C, I and
# D not multiples of the test configs' blocks (C = 80 with block_k 32, I = 72 with 16-column tiles, D = 24 padded
# to 32); B = 1, 3, 16; more slots than rows.
SHAPES = [
    (1, 64, 2, 2, 16, 96, 40, 2),
    (3, 80, 4, 2, 24, 72, 50, 5),
    (16, 64, 8, 2, 16, 48, 36, 16),
]


def make_case(shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: str = "cpu") -> dict[str, Any]:
    """A random Qwen3 decoder layer of `shape` as decode._LayerW, step inputs x and d, caches filled with random
    values, positions differing per row (row 0 at position 0, the last at capacity − 1), rotary tables as
    decode.Decoder builds them."""
    B, C, H, KV, D, inter, cap, slots = shape
    c = ModelConfig(
        model_type="qwen3", vocab_size=16, hidden_size=C, intermediate_size=inter, num_layers=1, num_heads=H,
        num_kv_heads=KV, head_dim=D, rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
        tie_word_embeddings=False, qk_norm=True, qkv_bias=False, o_bias=False, mlp_bias=False,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    layer = DecoderLayer(c, None, ())
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    layer = layer.to(device=device, dtype=dtype)
    at, mlp = layer.self_attn, layer.mlp

    def group(*mods: torch.nn.Module) -> decode._Group:
        return decode._Group(torch.cat([m.weight.detach() for m in mods]), None, None, None, None, None)

    qk_norm = torch.cat((at.q_norm.weight.detach().expand(H, -1), at.k_norm.weight.detach().expand(KV, -1)))
    w = decode._LayerW(
        layer.input_layernorm.weight.detach(),
        layer.post_attention_layernorm.weight.detach(),
        qk_norm,
        group(at.q_proj, at.k_proj, at.v_proj),
        group(at.o_proj),
        group(mlp.gate_proj, mlp.up_proj),
        group(mlp.down_proj),
    )
    inv_freq, rope_scale = rope_inv_freq(c)
    freqs = torch.arange(cap).float()[:, None] * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * rope_scale).to(dtype), (emb.sin() * rope_scale).to(dtype)
    half = D // 2
    sin_pm = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    perm = torch.cat((torch.arange(half, D), torch.arange(half)))
    pos = torch.randint(0, cap, (B,), generator=g)
    pos[0], pos[-1] = 0, cap - 1
    t = {
        "x": torch.randn(B, 1, C, generator=g),
        "d": torch.randn(B, 1, C, generator=g),
        "ck": torch.randn(slots, KV, cap, D, generator=g),
        "cv": torch.randn(slots, KV, cap, D, generator=g),
    }
    t = {k: v.to(device=device, dtype=dtype) for k, v in t.items()}
    return dict(
        **t, w=w, pos=pos.to(device), cos=cos.to(device), sin=sin_pm.to(device), perm=perm.to(device),
        heads=(H, KV, D), eps=1e-6,
    )  # fmt: skip


def reference(case: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """decode._decode_layer, eager, on copies of the caches → (x2, mlp out, k cache, v cache)."""
    ck, cv = case["ck"].clone(), case["cv"].clone()
    zero = torch.zeros(1, dtype=torch.long, device=ck.device)
    sel = decode._Sel(None, None, None, None)
    x2, out = decode._decode_layer(
        case["x"], case["d"], case["w"], sel, zero, zero, ck, cv, case["pos"], case["cos"], case["sin"],
        case["perm"], case["heads"], case["eps"], 1,
    )  # fmt: skip
    return x2, out, ck, cv


def kernel(case: dict[str, Any], state: Any, config: Any = None, one_launch: bool | None = None, **kw: Any):
    """The persistent kernel on copies of the caches → (x2, mlp out, k cache, v cache)."""
    from tuna_engine.kernels.decode_layer import decode_layer_persistent

    ck, cv = case["ck"].clone(), case["cv"].clone()
    x2, out = decode_layer_persistent(
        case["x"], case["d"], case["w"], ck, cv, case["pos"], case["cos"], case["sin"], case["perm"],
        case["heads"], case["eps"], state, config, one_launch, **kw,
    )  # fmt: skip
    return x2, out, ck, cv


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| over max |want|."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def compare(case: dict[str, Any], got: tuple, want: tuple) -> dict[str, float]:
    """Errors of x2, out and the new cache entries; `untouched`: cache entries other than (b, :, pos[b]) of rows
    0..B−1 that differ from the caches before the call (must be 0)."""
    (x2, out, ck, cv), (wx2, wout, wck, wcv) = got, want
    B = x2.shape[0]
    rows = torch.arange(B)
    pos = case["pos"].cpu()
    new = torch.zeros(ck.shape[0], ck.shape[2], dtype=torch.bool)
    new[rows, pos] = True
    new = new[:, None, :, None].expand_as(ck)
    untouched = int((ck.cpu() != case["ck"].cpu())[~new].sum() + (cv.cpu() != case["cv"].cpu())[~new].sum())
    return {
        "x2": rel_err(x2, wx2),
        "out": rel_err(out, wout),
        "k_new": rel_err(ck.cpu()[new], wck.cpu()[new]),
        "v_new": rel_err(cv.cpu()[new], wcv.cpu()[new]),
        "untouched": untouched,
    }


def limits(dtype: str) -> float:
    """Against the largest magnitude. fp32: summation order only. bf16: the kernel rounds where eager rounds (with
    truncating casts instead, as the interpreter's own are, the errors were 2-3e-2), so what is left is the
    GEMMs' and attention's summation order: 3-6e-3 measured, about one bf16 step (2^-8)."""
    return 2e-5 if dtype == "torch.float32" else 1e-2


# Configs that exercise split-K (qkv 3 splits, o 2, gate/up 2, down 3), column tiles that do not divide N, key
# splits (1 and 3) with 16-key blocks; and the heuristic default. "latency": the latency options on the split
# config (the statistic in 16-column chunks through tl.range's pipeline, x + d of phase C loaded early, relaxed
# counter resets); "wide_rstd": the statistic in one chunk wider than C (masked).
TEST_CONFIGS = {
    "split": dict(qkv=(16, 3), o=(16, 2), gate_up=(16, 2), down=(32, 3), attn=(3, 16), block_k=32),
    "nosplit": dict(qkv=(32, 1), o=(16, 1), gate_up=(16, 1), down=(16, 1), attn=(1, 16), block_k=16),
    "latency": dict(
        qkv=(16, 3),
        o=(16, 2),
        gate_up=(16, 2),
        down=(32, 3),
        attn=(3, 16),
        block_k=32,
        rstd_block=16,
        rstd_stages=3,
        early_residual=True,
        relaxed_reset=True,
    ),  # fmt: skip
    "wide_rstd": dict(
        qkv=(32, 1), o=(16, 1), gate_up=(16, 1), down=(16, 1), attn=(1, 16), block_k=16, rstd_block=128
    ),
}
ONE_LAUNCH = ("split", "latency")  # also run as one launch (barriers, counters back to 0)

INTERPRETED = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_decode_layer import ONE_LAUNCH, SHAPES, TEST_CONFIGS, compare, kernel, make_case, reference
    from tuna_engine.kernels.decode_layer import Config, PersistentState

    out = []
    for i, shape in enumerate(SHAPES):
        for dtype in (torch.float32, torch.bfloat16):
            case = make_case(shape, dtype, seed=i)
            want = reference(case)
            for name, cfg in TEST_CONFIGS.items():
                state = PersistentState("cpu", programs=3)
                got = kernel(case, state, Config(**cfg), one_launch=False)
                out.append([i, str(dtype), name, "phases", compare(case, got, want), state.error_count()])
                if name in ONE_LAUNCH and dtype == torch.float32:
                    one = PersistentState("cpu", programs=1)
                    runs = [kernel(case, one, Config(**cfg), one_launch=True) for _ in range(2)]
                    same = all(all(torch.equal(a, b) for a, b in zip(r, got)) for r in runs)
                    out.append([i, str(dtype), name, "one_launch", compare(case, runs[1], want), one.error_count(),
                                same, int(one.barrier.item()), int(one.arrivals.abs().sum().item())])
            if i == 1:  # the heuristic config; a state made for "cpu:0" (as "cuda" for cuda:0) takes cpu tensors
                got = kernel(case, PersistentState("cpu:0", programs=5), one_launch=False)
                out.append([i, str(dtype), "default", "phases", compare(case, got, want), 0])
    # two programs in one launch cannot pass a barrier under the interpreter: bounded polls, flag set, no hang
    case = make_case(SHAPES[0], torch.float32, seed=0)
    two = PersistentState("cpu", programs=2)
    kernel(case, two, Config(**TEST_CONFIGS["split"]), one_launch=True, max_spin=4)
    out.append(["not_resident", two.error_count(), int(two.barrier.item())])
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_persistent_layer_interpreted_equals_decode_layer():
    rows = run_interpreted(INTERPRETED, str(ENGINE_DIR / "tests"))
    *cases, (tag, flag, barrier) = rows
    assert len(cases) == len(SHAPES) * (2 * len(TEST_CONFIGS) + len(ONE_LAUNCH)) + 2
    for i, dtype, name, mode, err, error_flag, *one in cases:
        where = (SHAPES[i], dtype, name, mode, err)
        assert error_flag == 0, where
        assert err["untouched"] == 0, where
        for key in ("x2", "out", "k_new", "v_new"):
            assert err[key] < limits(dtype), (key, *where)
        if mode == "one_launch":
            same, count, arrivals = one
            assert same, ("one launch differs from the phase launches", *where)
            assert count == 2 * 4, where  # two launches, four barriers each, one program
            assert arrivals == 0, where  # every split counter back to 0
    assert tag == "not_resident" and flag == 1 and barrier == 4 * 2, (tag, flag, barrier)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_next_layer_weight_must_be_like_this_layers():
    """`next_qkv` (prefetched into L2 by the kernel, which reads it as an [N, C] row-major weight) is checked before
    any launch: another shape, dtype or a non-contiguous view is a ValueError naming it."""
    from tuna_engine.kernels.decode_layer import PersistentState

    case = make_case(SHAPES[0], torch.float32, seed=0)
    w_qkv = case["w"].qkv.weight
    for bad in (w_qkv[:-1], w_qkv.to(torch.bfloat16), w_qkv.t().contiguous().t()):
        with pytest.raises(ValueError, match="next_qkv"):
            kernel(case, PersistentState("cpu", programs=1), next_qkv=bad)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_rstd_options_are_checked():
    """rstd_block must be 0 or a power of 2 ≥ 16 (tl.arange's width), rstd_stages ≥ 0: a ValueError naming it."""
    from tuna_engine.kernels.decode_layer import Config, PersistentState

    case = make_case(SHAPES[0], torch.float32, seed=0)
    base = Config(**TEST_CONFIGS["split"])
    for bad, name in (
        (base._replace(rstd_block=48), "rstd_block"),
        (base._replace(rstd_stages=-1), "rstd_stages"),
    ):
        with pytest.raises(ValueError, match=name):
            kernel(case, PersistentState("cpu", programs=1), bad)


def test_default_config_uses_every_program():
    """The heuristic's splits give the small-N phases about one work item per program on an H200 (132 SMs)."""
    from tuna_engine.kernels.decode_layer import default_config

    for C, heads, inter in ((1024, (16, 8, 128), 3072), (4096, (32, 8, 128), 12288)):
        cfg = default_config(16, C, heads, inter, 132)
        H, KV, D = heads
        for (bn, split), n in ((cfg.qkv, (H + 2 * KV) * D), (cfg.o, C), (cfg.gate_up, inter), (cfg.down, C)):
            items = -(-n // bn) * split
            assert 0.7 * 132 <= items, (C, n, bn, split)
            assert n % bn == 0


def test_state_device_is_its_tensors_device():
    """PersistentState("cuda") must take tensors on cuda:0 (the wrapper compares state.device with x.device, and
    torch.device("cuda") != torch.device("cuda:0")); "cpu:0" vs "cpu" is the same case on CPU."""
    from tuna_engine.kernels.decode_layer import PersistentState

    state = PersistentState("cpu:0", programs=1)
    assert state.device == torch.zeros(1).device == state.barrier.device


def _compile_sm90(
    C: int, heads: tuple[int, int, int], inter: int, prefetch: bool = False, **options: Any
) -> Any:
    """The one-launch bf16 kernel compiled ahead of time for an H100/H200 (sm_90) with the default config (and
    `prefetch`, and any other Config `options`), the arguments specialised as a launch specialises them (pointers
    and multiples of 16 marked divisible by 16)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tuna_engine.kernels import decode_layer as dl

    H, KV, D = heads
    cfg = dl.default_config(16, C, heads, inter, 132)._replace(**options)
    consts = dict(
        H=H, KV=KV, D=D, G_PAD=16, D_PAD=D, HAS_QKN=True, HAS_NEXT=prefetch, BN_QKV=cfg.qkv[0], SPLIT_QKV=cfg.qkv[1], BN_O=cfg.o[0],
        SPLIT_O=cfg.o[1], BN_GU=cfg.gate_up[0], SPLIT_GU=cfg.gate_up[1], BN_DN=cfg.down[0], SPLIT_DN=cfg.down[1],
        ATT_SPLIT=cfg.attn[0], ATT_BLOCK=cfg.attn[1], BLOCK_K=cfg.block_k, PHASE_LO=0, PHASE_HI=dl.PHASES - 1,
        BARRIER=True, RSTD_BLOCK=cfg.rstd_block or cfg.block_k, RSTD_STAGES=cfg.rstd_stages,
        EARLY_RESIDUAL=cfg.early_residual, RELAXED_RESET=cfg.relaxed_reset, PREFETCH=prefetch, MAX_SPIN_=dl.MAX_SPIN, MAX_TILES_=dl.MAX_TILES, IEEE=False, INTERP=False,
    )  # fmt: skip
    fn = dl._decode_layer_kernel
    sig: dict[str, str] = {}
    for n in fn.arg_names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in ("POS", "PERM", "BAR"):
            sig[n] = "*i64"
        elif n in ("ARR", "ERR"):
            sig[n] = "*i32"
        elif n.startswith("WS_"):
            sig[n] = "*fp32"
        elif n in ("eps", "qk_scale"):
            sig[n] = "fp32"
        elif n in ("B", "C", "NI") or n.startswith("s"):
            sig[n] = "i32"
        else:
            sig[n] = "*bf16"
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if sig[n].startswith("*") or (sig[n] == "i32" and n != "B")
    }
    src = ASTSource(fn, sig, consts, attrs)
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("model", ["qwen3-0.6b", "qwen3-8b"])
def test_one_launch_kernel_compiles_for_sm90(model, prefetch):
    """No GPU needed: the one-launch kernel lowers to sm_90 code for the real shapes (what the interpreter cannot
    show: a non-constexpr global or an op the GPU backend rejects fails here), the barrier is the cooperative-groups
    sequence (one thread's release add, its acquire polls: one at start and two per barrier in the code), the
    weights stream through cp.async, and the default config does not spill registers. With `prefetch` the L2 hints
    are there (C's weights from B, D's two row blocks from C, E's from D, the next layer's qkv from E: 5 sites),
    and none without."""
    import re

    C, heads, inter = {"qwen3-0.6b": (1024, (16, 8, 128), 3072), "qwen3-8b": (4096, (32, 8, 128), 12288)}[
        model
    ]
    k = _compile_sm90(C, heads, inter, prefetch)
    ptx = k.asm["ptx"]
    assert len(re.findall(r"prefetch\.global\.L2", ptx)) == (5 if prefetch else 0)
    from tuna_engine.kernels.decode_layer import BARRIERS

    assert len(re.findall(r"red\.global\.gpu\.release\.add\.u64", ptx)) == BARRIERS
    assert len(re.findall(r"ld\.global\.gpu\.acquire\.b64", ptx)) == 1 + 2 * BARRIERS
    assert "cp.async" in ptx
    _assert_fits(k)


def _assert_fits(k: Any) -> None:
    """Shared memory within an H200's 227 KB with room to spare, and no register spills (STACK:0, when the
    cuobjdump that ships with Triton is there)."""
    import re
    import shutil
    import tempfile

    import triton

    assert k.metadata.shared < 200 * 1024
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    if shutil.which(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            usage = subprocess.run(
                [cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True
            )
        assert re.search(r"STACK:0\b", usage.stdout), usage.stdout


# Config options that shorten memory waits (decode_layer.Config), as the bench's sweep tries them. "tail" splits
# o and down in two for both models, so that there is a split tail to make leaner.
LATENCY_OPTIONS = {
    "rstd_pipelined": dict(rstd_block=256, rstd_stages=4),
    "rstd_wide": dict(rstd_block=1024),
    "tail": dict(o=(16, 2), down=(16, 2), early_residual=True, relaxed_reset=True),
}


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("option", list(LATENCY_OPTIONS))
@pytest.mark.parametrize("model", ["qwen3-0.6b", "qwen3-8b"])
def test_latency_options_lower_as_intended_for_sm90(model, option):
    """Each option changes the sm_90 code as it means to, without spills. By default the rms statistic's loads
    are plain loads of [16, block_k] tiles, one memory round trip per chunk (sm_90 SASS: two LDG.128 a thread per
    iteration, not unrolled). rstd_stages: its [16, rstd_block] tiles (x and d in A, x2 in D) become cp.async
    copies (tl.range's software pipeline). rstd_block 1024: one plain load of a [16, 1024] tile per tensor (one
    round trip for C = 1024). tail: the counter resets are relaxed exchanges (none acq_rel: the epilogue's loads
    no longer wait for them), and phase C's x and d loads (plain, not .cg: launch inputs) come before its K loop's
    first cp.async instead of after its reduction."""
    import re

    C, heads, inter = {"qwen3-0.6b": (1024, (16, 8, 128), 3072), "qwen3-8b": (4096, (32, 8, 128), 12288)}[
        model
    ]
    opts = LATENCY_OPTIONS[option]
    k = _compile_sm90(C, heads, inter, **opts)
    ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
    tile = rf"tensor<16x{opts.get('rstd_block', 0)}x!tt\.ptr<bf16>"
    if option == "rstd_pipelined":
        assert len(re.findall(rf"async_copy_global_to_local .*: {tile}", ttgir)) >= 3
        assert not re.search(rf"tt\.load .*: {tile}", ttgir)
    elif option == "rstd_wide":
        assert len(re.findall(rf"tt\.load .*: {tile}", ttgir)) == 3
    else:
        assert not re.search(r"atom\.global\.gpu\.acq_rel\.exch", ptx)
        assert len(re.findall(r"atom\.global\.gpu\.relaxed\.exch", ptx)) == 2  # o and down
        phase_c = re.split(r"red\.global\.gpu\.release\.add\.u64", ptx)[2]  # after the second barrier
        first_load = re.search(r"ld\.global\.(?!cg|gpu)", phase_c)
        assert first_load and first_load.start() < phase_c.index("cp.async.commit_group")
    _assert_fits(k)


ENGINE_PERSISTENT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from helpers import make_hf_model
    from test_generate import PROMPTS, plan, req
    from tuna_engine.generate import load_for_generation
    from tuna_engine.protocol import parse_generate_plan

    d = Path(sys.argv[2])
    make_hf_model(d / "base", "qwen3", seed=3)
    p = parse_generate_plan(plan(d / "base", batch=3))
    reqs = [req("a", PROMPTS[0], 5), req("b", PROMPTS[3], 5), req("c", PROMPTS[2], 4)]
    out = {}
    for spec in ("", "persistent"):
        os.environ["TUNA_DECODE_KERNELS"] = spec
        engine = load_for_generation(p, mode="eager", compile=True)
        out[spec or "compiled"] = {
            "tokens": engine.generate(reqs),
            "persistent": engine.decoder.persistent is not None,
        }
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_decoder_with_the_persistent_kernel_generates_the_compiled_layers_tokens(tmp_path) -> None:
    """decode.Kernels.persistent through the engine (TUNA_DECODE_KERNELS=persistent; interpreted on CPU, a launch
    per phase): a tiny Qwen3 in fp32, three requests of different prompt lengths decoded together, gives the same
    greedy tokens as the compiled whole-layer step."""
    out = run_interpreted(ENGINE_PERSISTENT, str(ENGINE_DIR / "tests"), str(tmp_path))
    assert out["persistent"]["persistent"] and not out["compiled"]["persistent"]
    assert out["persistent"]["tokens"] == out["compiled"]["tokens"]
    assert all(len(t) > 0 for t in out["compiled"]["tokens"].values())
