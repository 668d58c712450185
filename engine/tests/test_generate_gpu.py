"""Generation on CUDA: greedy equals transformers on the GPU, batching changes nothing, a 4-bit model (Triton
dequantization) generates like its dequantized weights, and the CUDA-graph decode path (the default on CUDA)
gives exactly the eager static path's tokens, re-using its captured graphs across steps and runs."""

from __future__ import annotations

import copy
import json
import os

# cuBLAS picks the same kernels on every stream (graph capture runs on a side stream): bitwise-equal steps.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import QWEN3_0_6B, make_hf_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from test_generate import _run_script, req  # noqa: E402

from tuna_engine.generate import load_for_generation  # noqa: E402
from tuna_engine.protocol import GenerateRequest, parse_generate_plan  # noqa: E402
from tuna_engine.quant import Linear4bit, quantize_model  # noqa: E402

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 17, 200, 3], [9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [250, 250, 7]]


def _req(i: int, prompt: list[int], n: int) -> GenerateRequest:
    return GenerateRequest(f"r{i}", tuple(prompt), n, 0.0, 1.0, 0, 1.0, None, (), None)


def _plan(path, batch: int = 4) -> dict:
    model = {"path": str(path), "dtype": "float32"}
    return {
        "version": 1,
        "command": "generate",
        "model": model,
        "adapters": {},
        "device": "cuda",
        "max_batch_size": batch,
    }


def test_cuda_greedy_batching_and_4bit(tmp_path):
    hf = make_hf_model(tmp_path / "base", "qwen3", seed=5).cuda()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    engine = load_for_generation(parse_generate_plan(_plan(tmp_path / "base")))
    assert engine.device.type == "cuda"
    reqs = [_req(i, p, 10) for i, p in enumerate(PROMPTS)]
    batched = engine.generate(reqs)
    single = load_for_generation(parse_generate_plan(_plan(tmp_path / "base", batch=1)))
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([p], device="cuda")
        with torch.no_grad():
            want = hf.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False
            )
        assert batched[f"r{i}"] == want[0, len(p) :].tolist()
        assert single.generate([reqs[i]])[f"r{i}"] == batched[f"r{i}"]

    q = copy.deepcopy(hf).cpu()
    quantize_model(q, skip=["lm_head"])
    (tmp_path / "q4").mkdir()
    save_file(
        {k: v.contiguous() for k, v in q.state_dict().items()}, str(tmp_path / "q4" / "model.safetensors")
    )
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "float32",
    }
    (tmp_path / "q4" / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(tmp_path / "base" / "model.safetensors"))
    for name, m in q.named_modules():
        if isinstance(m, Linear4bit):
            state[f"{name}.weight"] = m.dequantize(torch.float32)
    (tmp_path / "deq").mkdir()
    save_file(state, str(tmp_path / "deq" / "model.safetensors"))
    (tmp_path / "deq" / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    e4 = load_for_generation(parse_generate_plan(_plan(tmp_path / "q4")))
    assert any(isinstance(m, Linear4bit) and m.weight.is_cuda for m in e4.model.modules())
    e16 = load_for_generation(parse_generate_plan(_plan(tmp_path / "deq")))
    assert e4.generate(reqs) == e16.generate(reqs)


def _save_adapter(base_dir, out_dir, config, scale: float = 1.0) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(11)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.mul_(scale)
    model.save_pretrained(out_dir)


def _bf16_plan(base_dir, adapters: dict, batch: int) -> dict:
    return {
        "version": 1,
        "command": "generate",
        "model": {"path": str(base_dir), "dtype": "bfloat16"},
        "adapters": {k: str(v) for k, v in adapters.items()},
        "device": "cuda",
        "max_batch_size": batch,
    }


def test_graph_equals_eager_bf16_mixed_adapters_and_graphs_are_reused(tmp_path):
    from peft import LoraConfig

    base = tmp_path / "base"
    make_hf_model(base, "qwen3", seed=5, dtype=torch.bfloat16)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    dora = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", use_dora=True, init_lora_weights=False)
    _save_adapter(base, tmp_path / "lora", lora, 3.0)
    _save_adapter(base, tmp_path / "dora", dora, 3.0)
    p = parse_generate_plan(_bf16_plan(base, {"lora": tmp_path / "lora", "dora": tmp_path / "dora"}, 4))
    # Uncompiled: the SDPA step with its key buckets (the compiled whole-layer step: test_layer_compiled_*).
    graph = load_for_generation(p, max_model_len=96, compile=False)
    eager = load_for_generation(p, max_model_len=96, mode="eager")
    assert graph.mode == "graph" and eager.mode == "eager"
    for e in (graph, eager):
        e.decoder.key_block = 16  # several key buckets within these lengths

    def arrivals():
        sampled = dict(temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.2)
        return {
            0: [req("a", [5, 17, 200, 3], 20, None), req("b", [9], 30, "lora")],
            3: [req("c", list(range(1, 12)), 25, "dora"), req("s", [42, 43], 24, "lora", seed=4, **sampled)],
            6: [req("d", [250, 250, 7], 40, None, repetition_penalty=1.3)],  # queued until a slot frees
            50: [req("e", [100, 7, 7], 12, None)],  # with "d" only: base-only steps
        }

    got = _run_script(graph, arrivals())
    want = _run_script(eager, arrivals())
    assert got == want
    dec = graph.decoder
    stats = dict(dec.stats)
    assert stats["eager_steps"] == 0 and stats["replays"] == eager.decoder.stats["eager_steps"]
    assert stats["captures"] == len(dec.graphs) and stats["replays"] > 2 * stats["captures"], stats
    assert {k[2] for k in dec.graphs} == {False, True} and len({k[1] for k in dec.graphs}) >= 3, dec.graphs
    # A second run: the same graphs replayed (no new capture), the same tokens.
    ptrs = {k: g.logits.data_ptr() for k, g in dec.graphs.items()}
    assert _run_script(graph, arrivals()) == got
    assert dec.stats["captures"] == stats["captures"] and dec.stats["replays"] == 2 * stats["replays"]
    assert {k: g.logits.data_ptr() for k, g in dec.graphs.items()} == ptrs


def test_graph_equals_eager_on_qwen3_0_6b_shapes(tmp_path):
    """Real Qwen3-0.6B widths (head_dim 128, 16/8 heads, vocab 151936; 4 layers), bf16, batch 8 with one
    LoRA on half the rows, every graph captured up front."""
    from peft import LoraConfig

    base = tmp_path / "base"
    make_hf_model(base, "qwen3", seed=1, dtype=torch.bfloat16, **{**QWEN3_0_6B, "num_hidden_layers": 4})
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    _save_adapter(base, tmp_path / "lora", cfg)
    p = parse_generate_plan(_bf16_plan(base, {"lora": tmp_path / "lora"}, 8))
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(0, 151_000, (int(n),), generator=g).tolist() for n in (3, 40, 17, 64, 1, 9, 33, 50)
    ]

    def reqs():
        return [req(f"r{i}", x, 48, "lora" if i % 2 else None) for i, x in enumerate(prompts)]

    graph = load_for_generation(p, max_model_len=512, compile=False)  # graph = eager exactly: same kernels
    graph.decoder.capture_all(max_len=128)
    captured = graph.decoder.stats["captures"]
    assert captured == len(graph.decoder.buckets) * 2  # key bucket 256 (capped at 512) x adapters or not
    got = graph.generate(reqs())
    assert graph.decoder.stats["captures"] == captured  # nothing captured while serving
    eager = load_for_generation(p, max_model_len=512, mode="eager")
    assert got == eager.generate(reqs())
    reference = load_for_generation(p, mode="reference").generate(reqs())
    same = sum(a == b for r in got for a, b in zip(got[r], reference[r], strict=True))
    print(f"graph vs reference (bf16): {same}/{sum(map(len, got.values()))} tokens agree")


def _one_step_logits(engine, prompts: list[list[int]], adapters: list[int]) -> torch.Tensor:
    """Prefill each prompt into its slot, then one decode step of all rows: logits fp32 [rows, vocab]."""
    dec = engine.decoder
    for slot, (x, a) in enumerate(zip(prompts, adapters, strict=True)):
        dec.prefill(torch.tensor(x, device="cuda"), slot, a)
    logits, _ = dec.decode([7] * len(prompts), [len(x) for x in prompts], adapters)
    return logits[: len(prompts)].clone()


def _kernels(engine, rows: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    dec = engine.decoder
    dec._step(rows, dec.key_bucket(1), False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec._step(rows, dec.key_bucket(1), False)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def _four_layer_0_6b_with_lora(tmp_path):
    """The generate plan of a Qwen3-0.6B-wide model cut to 4 layers (bf16, random) with one random LoRA on every
    linear projection, batch 8."""
    from peft import LoraConfig

    base = tmp_path / "base"
    make_hf_model(base, "qwen3", seed=1, dtype=torch.bfloat16, **{**QWEN3_0_6B, "num_hidden_layers": 4})
    _save_adapter(
        base,
        tmp_path / "lora",
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False),
    )
    return parse_generate_plan(_bf16_plan(base, {"lora": tmp_path / "lora"}, 8))


def test_fused_and_compiled_decode_on_qwen3_0_6b_shapes(tmp_path):
    """The fused layer and its torch.compile on CUDA (Qwen3-0.6B widths, 4 layers, bf16, batch 8, LoRA on half
    the rows): graph = eager token for token with the fused layer; fused and compiled steps' logits match the
    unfused step to bf16 rounding; the fused step launches fewer CUDA kernels; the compiled graphs are reused."""
    p = _four_layer_0_6b_with_lora(tmp_path)
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(0, 151_000, (int(n),), generator=g).tolist() for n in (3, 40, 17, 64, 1, 9, 33, 50)
    ]
    adapters = [i % 2 for i in range(8)]

    def reqs():
        return [req(f"r{i}", x, 32, "lora" if i % 2 else None) for i, x in enumerate(prompts)]

    fused_graph = load_for_generation(p, max_model_len=256, compile=False)
    assert fused_graph.decoder.fused and not fused_graph.decoder.compiled
    got = fused_graph.generate(reqs())
    assert got == load_for_generation(p, max_model_len=256, mode="eager").generate(reqs())

    unfused = load_for_generation(p, max_model_len=256, mode="eager", fused=False)
    regions = load_for_generation(p, max_model_len=256, compile="regions")
    compiled = load_for_generation(p, max_model_len=256, compile=True)
    assert regions.decoder.compile_scope == "regions" and compiled.decoder.compile_scope == "layer"
    want = _one_step_logits(unfused, prompts, adapters)
    scale = want.abs().max()
    for e in (fused_graph, regions, compiled):
        logits = _one_step_logits(e, prompts, adapters)
        err = ((logits - want).abs().max() / scale).item()
        agree = (logits.argmax(-1) == want.argmax(-1)).sum().item()
        print(
            f"fused={e.decoder.fused} compile={e.decoder.compile_scope}: max rel err {err:.2e}, argmax {agree}/8"
        )
        assert err < 0.05 and agree >= 7
    k_unfused, k_fused, k_regions, k_compiled = (
        _kernels(e, 8) for e in (unfused, fused_graph, regions, compiled)
    )
    print(
        f"CUDA kernels per 4-layer step: unfused {k_unfused}, fused {k_fused}, regions {k_regions}, "
        f"layer {k_compiled}"
    )
    assert k_fused < 0.8 * k_unfused and k_regions < k_fused and k_compiled < k_regions
    # The compiled path serves requests with its graphs, captured once and replayed.
    out = compiled.generate(reqs())
    assert sorted(map(len, out.values())) == [32] * 8
    captures = compiled.decoder.stats["captures"]
    assert compiled.generate(reqs()) == out and compiled.decoder.stats["captures"] == captures


# ---- tuna::decode_attention (Triton) and the whole-layer compiled step ------------------------------------------


def test_triton_decode_attention_bf16_equals_sdpa():
    """The Triton kernels against the SDPA reference (fp32 math on the same bf16 inputs) and against per-row
    float64 attention: Qwen3-0.6B (G=2) and 8B (G=4) heads, G=1 and G=8, 1 to 16 key splits, a capacity that is
    not a multiple of the block, positions 0 and capacity-1; then the op inside a CUDA graph, replayed with new
    positions, equals the op called directly (each row's length is read on the device at replay)."""
    from test_generate_attn import case, per_row_reference

    from tuna_engine.kernels.decode_attn import (
        decode_attention_reference,
        decode_attention_triton,
        default_splits,
    )

    shapes = [
        (16, 8, 2, 128, 700, 16),
        (16, 8, 4, 128, 700, 16),
        (3, 4, 1, 64, 300, 4),
        (2, 2, 8, 128, 333, 2),
    ]
    for i, shape in enumerate(shapes):
        q, k, v, pos = (t.cuda() for t in case(shape, seed=i, dtype=torch.bfloat16))
        ref = decode_attention_reference(q.float(), k.float(), v.float(), pos)
        exact = per_row_reference(q.cpu(), k.cpu(), v.cpu(), pos.cpu()).cuda()
        for n_split in sorted({1, 2, 4, 16, default_splits(shape[0], shape[1], q.device)}):
            got = decode_attention_triton(q, k, v, pos, n_split)
            assert got.dtype == torch.bfloat16 and got.shape == q.shape
            err, err64 = (got.float() - ref).abs().max().item(), (got.double() - exact).abs().max().item()
            print(f"{shape} split {n_split}: max abs err vs SDPA fp32 {err:.2e}, vs float64 {err64:.2e}")
            assert err < 2e-2 and err64 < 2e-2, (shape, n_split, err, err64)

    q, k, v, pos = (t.cuda() for t in case(shapes[0], seed=9, dtype=torch.bfloat16))
    n_split = default_splits(16, 8, q.device)
    torch.ops.tuna.decode_attention(q, k, v, pos, n_split)  # compile the kernels before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.tuna.decode_attention(q, k, v, pos, n_split)
    for new in (torch.full_like(pos, 5), torch.randint(0, 700, pos.shape, device="cuda")):
        pos.copy_(new)
        graph.replay()
        assert torch.equal(out, torch.ops.tuna.decode_attention(q, k, v, pos, n_split))


def test_layer_compiled_graph_equals_layer_compiled_eager_on_qwen3_0_6b_shapes(tmp_path):
    """The default CUDA path (graph mode, compile scope "layer": one compiled graph per whole layer with the
    Triton attention) on Qwen3-0.6B widths (4 layers, bf16, batch 8, LoRA on half the rows, requests joining and
    leaving, sampling): token for token the same compiled step run without CUDA graphs; one graph per (batch
    bucket, adapter rows or not) whatever the lengths (no key buckets), reused on a second run; and close to the
    uncompiled SDPA step (the share of equal tokens is printed: bf16 near-ties may flip)."""
    p = _four_layer_0_6b_with_lora(tmp_path)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 151_000, (int(n),), generator=g).tolist() for n in (3, 300, 17, 64, 1, 9)]

    def arrivals():
        sampled = dict(temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.2)
        return {
            0: [req(f"r{i}", x, 40 + 7 * i, "lora" if i % 2 else None) for i, x in enumerate(prompts[:4])],
            5: [req("s", prompts[4], 30, "lora", seed=3, **sampled), req("t", prompts[5], 60, None)],
        }

    graph = load_for_generation(p, max_model_len=512)
    assert graph.mode == "graph" and graph.decoder.compile_scope == "layer"
    got = _run_script(graph, arrivals())
    dec = graph.decoder
    assert {k[1] for k in dec.graphs} == {512}, dec.graphs  # no key buckets: every length, one graph
    assert len(dec.graphs) <= 2 * len(dec.buckets) and {k[2] for k in dec.graphs} == {False, True}
    captures = dec.stats["captures"]
    assert _run_script(graph, arrivals()) == got and dec.stats["captures"] == captures
    eager = load_for_generation(p, max_model_len=512, mode="eager", compile=True)
    assert eager.decoder.compile_scope == "layer"
    assert _run_script(eager, arrivals()) == got
    sdpa = _run_script(load_for_generation(p, max_model_len=512, mode="eager"), arrivals())
    same = sum(a == b for r in got for a, b in zip(got[r], sdpa[r], strict=False))
    print(f"layer-compiled vs uncompiled SDPA step (bf16): {same}/{sum(map(len, got.values()))} tokens agree")
    assert same >= 0.5 * sum(map(len, got.values()))


# ---- issue 7's decode kernels (decode.Kernels: skinny GEMM and its fused forms, the head's argmax) ---------------


def test_skinny_gemm_and_argmax_kernels_on_the_gpu():
    """tuna::skinny_linear and its fused forms at the Qwen3-0.6B and 8B projection shapes, 1, 5 and 16 rows, bf16:
    within bf16 rounding of the eager ops (cuBLAS), x + d bit for bit; the split-K kernel replayed in a CUDA graph
    equals the direct call bit for bit (partials summed in a fixed order), and its counters are back at zero;
    tuna::argmax_rows on [16, 151936] fp32 logits equals torch.argmax, ties across and inside chunks included."""
    from tuna_engine.kernels import skinny_gemm as sg

    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072), (6144, 4096), (4096, 12288)]
    for (N, K), M in ((s, m) for s in shapes for m in (1, 5, 16)):

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g, device="cuda") * scale).bfloat16()

        w, x, d, r = rnd(N, K, scale=0.02), rnd(M, 1, K), rnd(M, 1, K), rnd(M, 1, N)
        nw, gu = (1 + 0.1 * torch.randn(K, generator=g, device="cuda")).bfloat16(), rnd(M, 1, 2 * K)
        for name, xi, kw in [
            ("plain", x, {}),
            ("residual", x, dict(residual=r)),
            ("silu", gu, dict(prologue=sg.SILU_MUL)),
            ("add_norm", x, dict(prologue=sg.NORM, norm_w=nw, eps=1e-6, d=d)),
        ]:
            got, s = sg.skinny_triton(xi, w, **kw)
            want, ws = sg.reference(xi, w, **kw)
            err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
            assert err < 1e-2, (N, K, M, name, err)
            if s is not None:
                assert torch.equal(s, ws), (N, K, M, name)
    # a split-K shape in a CUDA graph
    x, w = (
        torch.randn(16, 1, 3072, device="cuda").bfloat16(),
        torch.randn(1024, 3072, device="cuda").bfloat16(),
    )
    assert sg.config_for(1024, 3072, x.device).split_k > 1
    direct = torch.ops.tuna.skinny_linear(x, w)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.tuna.skinny_linear(x, w)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, direct)
    assert all(int(c.abs().sum()) == 0 for c in sg._COUNTERS.values())

    logits = torch.randn(16, 151_936, device="cuda")
    logits[1, 100] = logits[1, 150_000] = logits[1].max() + 1  # a tie across chunks
    logits[2, 5000] = logits[2, 5001] = logits[2].max() + 1  # inside a chunk
    logits[3, 151_935] = 1e30  # the last column
    assert torch.equal(torch.ops.tuna.argmax_rows(logits), logits.argmax(-1))
    assert torch.ops.tuna.argmax_rows(logits)[1:4].tolist() == [100, 5000, 151_935]


def test_decode_kernels_on_qwen3_0_6b_shapes(tmp_path, monkeypatch):
    """TUNA_DECODE_KERNELS=all on the default CUDA path (graph mode, compile scope "layer"), Qwen3-0.6B widths (4
    layers, bf16, batch 8, LoRA on half the rows, requests joining and leaving): graph replay equals the same
    compiled step run eagerly token for token (the kernels are deterministic); one step's logits match the
    baseline step (cuBLAS, Inductor) to bf16 rounding with the same greedy ids on ≥ 7 of 8 rows; the greedy share
    of equal tokens with the baseline is printed (bf16 near-ties may flip); ≥ 3 fewer kernels per layer (SiLU·up and the two
    add/norm kernels; and cuBLAS's split-K reduce where it used one)."""
    p = _four_layer_0_6b_with_lora(tmp_path)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 151_000, (int(n),), generator=g).tolist() for n in (3, 300, 17, 64, 1, 9)]

    def arrivals():
        return {
            0: [req(f"r{i}", x, 40 + 7 * i, "lora" if i % 2 else None) for i, x in enumerate(prompts[:4])],
            5: [req("s", prompts[4], 30, "lora"), req("t", prompts[5], 60, None)],
        }

    base = load_for_generation(p, max_model_len=512)
    monkeypatch.setenv("TUNA_DECODE_KERNELS", "all")
    fast = load_for_generation(p, max_model_len=512)
    eager = load_for_generation(p, max_model_len=512, mode="eager", compile=True)
    assert fast.decoder.kernels.norm and eager.decoder.kernels.norm and not base.decoder.kernels.gemm
    got = _run_script(fast, arrivals())
    assert _run_script(eager, arrivals()) == got
    want = _run_script(base, arrivals())
    same = sum(a == b for r in got for a, b in zip(got[r], want[r], strict=False))
    print(f"decode kernels vs baseline (bf16): {same}/{sum(map(len, got.values()))} tokens agree")
    assert same >= 0.5 * sum(map(len, got.values()))

    short = [x[:40] for x in prompts] + [[7, 8], [9]]
    adapters = [i % 2 for i in range(8)]
    for rows in (adapters, [0] * 8):  # adapter rows (their groups keep the eager form) and base rows only
        lb, lf = (_one_step_logits(e, short, rows) for e in (base, fast))
        err = ((lf - lb).abs().max() / lb.abs().max()).item()
        agree = (lf.argmax(-1) == lb.argmax(-1)).sum().item()
        print(f"adapters {rows}: max rel err {err:.2e}, argmax {agree}/8")
        assert err < 0.05 and agree >= 7
    k_base, k_fast = _kernels(base, 8), _kernels(fast, 8)
    print(f"CUDA kernels per 4-layer step: baseline {k_base}, decode kernels {k_fast}")
    assert k_fast <= k_base - 3 * 4
