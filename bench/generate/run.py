"""bench/generate — Tuna's generation engine against transformers `generate`, same model, prompts and settings,
in ONE run on ONE card: batch 16, 128-token prompts, 256 new tokens, greedy, warm runs, random-initialised real
Qwen3 architectures. Also measures the weight-read floor: the model's bytes over the card's device-to-device copy
bandwidth measured in the same run (a decode step cannot be faster than reading every weight once).

Rows: transformers `generate`; Tuna variants (--variants): `reference` (the original dynamic-cache path), `eager`
(static cache, fused layer, no graphs), `graph_unfused` (static cache + CUDA graphs, one matmul per projection:
the path before the fused layer), `graph` (graphs + fused layer, uncompiled), `graph_compile` (graphs + fused
layer with the two regions around an eager SDPA attention through torch.compile, compile scope "regions": 2
compiles per model here, the batch-16 bucket's two regions), `graph_layer` (the default on CUDA: graphs + the
whole layer as one compiled graph with the Triton tuna::decode_attention and the cache writes inside, plus the
compiled head, compile scope "layer": 2 compiles per model here, and one graph for every length); then
graph_layer with issue 7's hand-written kernels (decode.Kernels, TUNA_DECODE_KERNELS), one more each row:
`layer_argmax` (the head's two-stage argmax), `layer_gemm` (+ the four projections by the Triton skinny GEMM),
`layer_silu` (+ SiLU·up as the down GEMM's prologue), `layer_all` (+ residual add and RMSNorm as the qkv and
gate/up GEMMs' prologues, o's residual add as its epilogue), `layer_pdl` (Programmatic Dependent Launch in the
compiled kernels), `layer_persistent` (each layer as ONE launch of kernels/decode_layer.py's persistent kernel;
the engine stops with an error if its grid barrier ever times out). ms/step for
Tuna is decode steps only (prefills are eager in every mode and timed apart). The launch-bound rows (HF,
reference, eager) decode --slow-new tokens (32) instead of 256 to keep the run short; their per-step time
hardly depends on the context length at these sizes. graph/graph_unfused capture every bucket's graph before
timing; the compiled rows capture only the batch-16 bucket's graphs (each batch bucket would be more compiles).
kernels_per_step: CUDA kernels one decode step launches, counted by torch.profiler on an eager run of the step;
compiles: graphs dynamo compiled for the row (torch._dynamo counters). --profile-dir DIR writes each row's
per-kernel table of that profiled step (device time and calls, slowest first) to DIR/profile-<model>-<variant>.txt.

    PYTHONPATH=engine python bench/generate/run.py --models qwen3-0.6b,qwen3-8b --out /tmp/gen.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench/train"))
from measure import copy_bandwidth_gbs  # noqa: E402  (bench/generate/measure.py)
from run import make_model_dir  # noqa: E402  (the same random model directories as bench/train)

from tuna_engine.decode import bucket_for  # noqa: E402
from tuna_engine.generate import Engine, requests_from_dicts  # noqa: E402
from tuna_engine.models import load_model  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    # Avoid special-token ids (>= 151643) so nothing in the prompt is an end of turn.
    return torch.randint(0, min(vocab, 151_000), (batch, length), generator=g).tolist()


def bench_hf(model_dir: Path, ids: list[list[int]], new: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda").eval()
    x = torch.tensor(ids, device="cuda")
    kw = {
        "do_sample": False,
        "max_new_tokens": new,
        "min_new_tokens": new,
        "pad_token_id": 0,
    }
    with torch.no_grad():
        model.generate(x, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(x, **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    n = (out.shape[1] - x.shape[1]) * x.shape[0]
    del model
    gc.collect()
    torch.cuda.empty_cache()
    # ms_per_step includes the one batched prefill (1/new of the time).
    return {
        "new_tokens": new,
        "tokens_per_s": n / dt,
        "seconds": dt,
        "ms_per_step": 1000 * dt / new,
        "first_row": out[0, x.shape[1] : x.shape[1] + 8].tolist(),
    }


def _requests(ids: list[list[int]], new: int, tag: str):
    return requests_from_dicts(
        [
            {
                "id": f"{tag}{i}",
                "prompt_ids": p,
                "max_new_tokens": new,
                "temperature": 0,
                "top_p": 1,
                "top_k": 0,
                "repetition_penalty": 1,
                "seed": None,
                "stop_ids": [],
                "adapter": None,
            }
            for i, p in enumerate(ids)
        ]
    )


def _run(
    engine: Engine, ids: list[list[int]], new: int, tag: str
) -> tuple[dict[str, list[int]], float, float, int]:
    """Prefill every request (eager, one at a time), then decode until all finish. Returns the outputs, the
    prefill seconds, the decode seconds and the number of decode steps (each step ends in a host sync)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for r in _requests(ids, new, tag):
        engine.start(r)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    out: dict[str, list[int]] = {}
    steps = 0
    while engine.active:
        for seq, _ in engine.step():
            if engine.finish_reason(seq):
                out[seq.req.id] = seq.generated
                engine.release(seq)
        steps += 1
    torch.cuda.synchronize()
    return out, t1 - t0, time.perf_counter() - t1, steps


# variant -> (TUNA_GENERATE_MODE, fused, compile, decode kernels: decode.Kernels.parse)
VARIANTS: dict[str, tuple[str, bool, bool | str, str]] = {
    "reference": ("reference", False, False, ""),
    "eager": ("eager", True, False, ""),
    "graph_unfused": ("graph", False, False, ""),
    "graph": ("graph", True, False, ""),
    "graph_compile": ("graph", True, "regions", ""),
    "graph_layer": ("graph", True, "layer", ""),
    # graph_layer plus issue 7's hand-written kernels (decode.Kernels), one more each row: the head's two-stage
    # argmax; + the four projections by the skinny GEMM; + SiLU·up inside the down GEMM; + the norms and residual
    # adds inside the GEMMs.
    "layer_argmax": ("graph", True, "layer", "argmax"),
    "layer_gemm": ("graph", True, "layer", "gemm,argmax"),
    "layer_silu": ("graph", True, "layer", "gemm,silu,argmax"),
    "layer_all": ("graph", True, "layer", "gemm,silu,norm,argmax"),
    # graph_layer with Programmatic Dependent Launch in the compiled kernels (Hopper+: a kernel starts while the one
    # before drains; inductor's triton.enable_pdl) — against the ~0.35 ms of gaps in a 0.6B step's graph.
    "layer_pdl": ("graph", True, "layer", ""),
    # every layer as ONE launch of the persistent kernel (kernels/decode_layer.py: phases split by grid barriers),
    # the head still compiled — against the ~12 kernels a layer and their gaps (issue 7's 0.6B step).
    "layer_persistent": ("graph", True, "layer", "persistent"),
}
SLOW = {"reference", "eager"}
PDL = {"layer_pdl"}


def kernels_per_step(engine: Engine, batch: int, table: Path | None = None) -> int:
    """CUDA kernels of one all-rows decode step, run eagerly under torch.profiler (compiled regions included).
    `table`: also write the per-kernel table (device time, calls), slowest first, and the kernels' summed device
    time — against the graph's ms per step, what is left is launch gaps."""
    from torch.profiler import ProfilerActivity, profile

    dec = engine.decoder
    assert dec is not None
    dec.inputs.zero_()
    dec._step(batch, dec.key_bucket(1), False)  # warm (compiled regions compile here if not yet)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec._step(batch, dec.key_bucket(1), False)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if table is not None:
        busy_ms = sum(e.device_time for e in kernels) / 1000
        table.write_text(
            f"{len(kernels)} kernels, {busy_ms:.3f} ms of summed device time in one decode step\n\n"
            + prof.key_averages().table(sort_by="device_time_total", row_limit=60, max_name_column_width=90)
        )
    return len(kernels)


def bench_tuna(model, ids: list[list[int]], new: int, variant: str, profile: Path | None = None) -> dict:
    """One Engine over the already loaded model. ms_per_step is decode steps only (all rows active); the
    prefills are timed apart (they are eager in every mode)."""
    from torch._dynamo.utils import counters

    mode, fused, compiled, kernels = VARIANTS[variant]
    import torch._dynamo
    import torch._inductor.config as inductor_config

    pdl = variant in PDL
    if pdl != bool(getattr(inductor_config.triton, "enable_pdl", False)):
        if pdl and not hasattr(inductor_config.triton, "enable_pdl"):
            raise SystemExit(
                f"--variants {variant}: torch {torch.__version__}'s inductor has no triton.enable_pdl"
            )
        torch._dynamo.reset()  # compiled code is shared between variants; these kernels must be built anew
        inductor_config.triton.enable_pdl = pdl
    graphs_before = counters["stats"]["unique_graphs"]
    t = time.perf_counter()
    os.environ["TUNA_DECODE_KERNELS"] = kernels  # read by decode.Decoder when the Engine builds it
    engine = Engine(
        model,
        {},
        len(ids),
        max_model_len=len(ids[0]) + new,
        mode=mode,
        fused=fused,
        compile=compiled,
    )
    dec = engine.decoder
    if dec is not None and dec.use_graphs:
        if compiled:  # only the full batch's bucket: each batch bucket is 2 more compiles
            cap = dec.capacity
            for S in sorted(
                {dec.graph_S(dec.key_bucket(n)) for n in range(1, cap + 1, dec.key_block)}
                | {dec.graph_S(dec.key_bucket(cap))}
            ):
                dec._capture((bucket_for(len(ids), dec.buckets), S, False))
        else:
            dec.capture_all()
        log(f"    captured {dec.stats['captures']} graphs in {time.perf_counter() - t:.1f} s")
    _run(engine, ids, min(new, 8), "w")  # warm-up
    setup_s = time.perf_counter() - t
    out, prefill_s, decode_s, steps = _run(engine, ids, new, "r")
    n = sum(len(v) for v in out.values())
    res = {
        "variant": variant,
        "mode": mode,
        "new_tokens": new,
        "tokens_per_s": n / (prefill_s + decode_s),
        "ms_per_step": 1000 * decode_s / steps,
        "prefill_ms_per_request": 1000 * prefill_s / len(ids),
        "decode_steps": steps,
        "first_row": out["r0"][:8],
    }
    res["setup_s"] = setup_s
    if engine.decoder is not None:
        res["decoder_stats"] = dict(engine.decoder.stats)
        res["fused"], res["compiled"] = engine.decoder.fused, engine.decoder.compiled
        res["compile_scope"] = engine.decoder.compile_scope
        res["kernels"] = ",".join(k for k, on in engine.decoder.kernels._asdict().items() if on)
        res["kernels_per_step"] = kernels_per_step(engine, len(ids), profile)
        res["compiles"] = counters["stats"]["unique_graphs"] - graphs_before
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3-0.6b,qwen3-8b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument(
        "--slow-new",
        type=int,
        default=32,
        help="new tokens for the launch-bound rows (HF, tuna reference, tuna eager), to keep the run short",
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"Tuna rows to run, of {', '.join(VARIANTS)}",
    )
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--profile-dir",
        default=None,
        help="write each row's per-kernel table of one decode step to DIR/profile-<model>-<variant>.txt",
    )
    args = ap.parse_args()
    t_start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="tuna-genbench-"))
    bw = copy_bandwidth_gbs()
    res = {
        "card": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "copy_GBps": bw,
        "settings": {k: getattr(args, k) for k in ("batch", "prompt", "new", "slow_new")},
        "models": {},
    }
    log(f"{res['card']}: copy bandwidth {bw:.0f} GB/s")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    rows = ([] if args.skip_hf else ["hf_generate"]) + [f"tuna_{m}" for m in variants]
    for name in args.models.split(","):
        d = make_model_dir(name, work)
        cfg = json.loads((d / "config.json").read_text())
        nbytes = sum(f.stat().st_size for f in d.glob("*.safetensors"))
        # Reading every weight once at the copy's read + write rate (the arithmetic: Qwen3-8B's 16.4 GB in
        # ~5.5 ms on an H100). Halving the rate, as this bench did before session 5, let 8B run "below" the floor.
        floor_ms = nbytes / (bw * 1e9) * 1000
        ids = prompts(args.batch, args.prompt, cfg["vocab_size"])
        slow = min(args.new, args.slow_new)
        r: dict = {"weight_bytes": nbytes, "floor_ms_per_step": floor_ms}
        if not args.skip_hf:
            r["hf_generate"] = bench_hf(d, ids, slow)
            log(f"  {name} HF {r['hf_generate']}")
        model = load_model(str(d), "bfloat16", torch.device("cuda"))
        for v in variants:
            table = Path(args.profile_dir) / f"profile-{name}-{v}.txt" if args.profile_dir else None
            r[f"tuna_{v}"] = bench_tuna(model, ids, slow if v in SLOW else args.new, v, table)
            log(f"  {name} tuna {v} {r[f'tuna_{v}']}")
        del model
        gc.collect()
        torch.cuda.empty_cache()
        for k in rows:
            r[k]["step_over_floor"] = r[k]["ms_per_step"] / floor_ms
            if "hf_generate" in r:
                r[k]["speedup_vs_hf"] = r["hf_generate"]["ms_per_step"] / r[k]["ms_per_step"]
        if "tuna_graph" in r and "tuna_eager" in r:
            r["graph_first_row_equals_eager"] = r["tuna_graph"]["first_row"] == r["tuna_eager"]["first_row"]
        for other in ("tuna_graph_unfused", "tuna_graph_compile", "tuna_graph_layer"):
            if "tuna_graph" in r and other in r:
                r[f"graph_first_row_equals_{other[5:]}"] = (
                    r["tuna_graph"]["first_row"] == r[other]["first_row"]
                )
        # bf16: a near-tie may flip with another GEMM's rounding
        for other in (
            "tuna_layer_argmax",
            "tuna_layer_gemm",
            "tuna_layer_silu",
            "tuna_layer_all",
            "tuna_layer_pdl",
            "tuna_layer_persistent",
        ):
            if "tuna_graph_layer" in r and other in r:
                r[f"graph_layer_first_row_equals_{other[5:]}"] = (
                    r["tuna_graph_layer"]["first_row"] == r[other]["first_row"]
                )
        if "tuna_graph" in r and "hf_generate" in r:
            r["graph_first_row_equals_hf"] = r["tuna_graph"]["first_row"] == r["hf_generate"]["first_row"]
        res["models"][name] = r
    res["wall_s"] = time.perf_counter() - t_start
    print(
        "\nmodel        | impl               | new | ms/step | floor ms | step/floor | speed× vs HF | kernels/step | setup s"
        " | compiles"
    )
    for name, r in res["models"].items():
        for k in rows:
            v = r[k]
            n = v.get("new_tokens", slow if k == "hf_generate" else args.new)
            print(
                f"{name:12} | {k:18} | {n:3} | {v['ms_per_step']:7.2f} | {r['floor_ms_per_step']:8.2f} | "
                f"{v['step_over_floor']:10.2f} | {v.get('speedup_vs_hf', 1):12.2f} | "
                f"{v.get('kernels_per_step', '-'):>12} | {v.get('setup_s', 0):7.1f} | {v.get('compiles', '-')}"
            )
    print(f"wall {res['wall_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
