"""bench/generate/persistent — one decoder layer of a decode step as ONE persistent Triton launch
(kernels/decode_layer.py) against the compiled layer decode.py runs today (issue 7), on one card.

For Qwen3-0.6B (28 layers) and Qwen3-8B (36 layers) shapes with random bf16 weights (every layer its own weights
and caches, so nothing stays in L2 from one layer to the next), batch 16, a 512-position cache with the rows at
positions 280..295 (filled to ~300): the whole stack of layers captured in one CUDA graph and replayed, for
  (a) compiled: torch.compile(decode._decode_layer, dynamic=False, fullgraph=True), as decode.py runs it,
  (b) persistent: decode_layer_persistent with its heuristic config (and each --configs entry),
µs per layer, and the floors per layer: the layer's weight bytes over the device-to-device copy bandwidth
measured in this run (read + write bytes per second, as bench/generate/run.py computes the step floor), and the
same with the K/V the attention reads added. Also the persistent outputs' error against the compiled ones after
one step (bf16: ~1e-2 expected) and the error flag (must be 0: every program passed every barrier).

With --phases, where the persistent kernel's time goes (heuristic config): an empty launch, the four grid
barriers alone, each phase alone as its own launch (no barriers), the five phase launches, the one launch.

    PYTHONPATH=engine python bench/generate/persistent.py [--models qwen3-0.6b,qwen3-8b] [--configs] [--phases]
        [--out /tmp/persistent.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from measure import copy_bandwidth_gbs, rel_err, us_per_call  # bench/generate/measure.py (this folder)

from tuna_engine import decode
from tuna_engine.kernels import decode_layer as dl
from tuna_engine.kernels.decode_attn import default_splits

# name → (layers, C, H, KV, D, I)
MODELS = {
    "qwen3-0.6b": (28, 1024, 16, 8, 128, 3072),
    "qwen3-8b": (36, 4096, 32, 8, 128, 12288),
}
BATCH, CAPACITY, POS_LO = 16, 512, 280  # row b at position 280 + b (every replay rewrites the same positions)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_layers(n: int, C: int, heads: tuple[int, int, int], inter: int) -> list[decode._LayerW]:
    H, KV, D = heads
    dev, dt = torch.device("cuda"), torch.bfloat16

    def lin(o: int, i: int) -> decode._Group:
        return decode._Group(
            torch.randn(o, i, device=dev, dtype=dt) / math.sqrt(i), None, None, None, None, None
        )

    def norm(*shape: int) -> torch.Tensor:
        return (1 + 0.1 * torch.randn(*shape, device=dev)).to(dt)

    return [
        decode._LayerW(
            norm(C),
            norm(C),
            norm(H + KV, D),
            lin((H + 2 * KV) * D, C),
            lin(C, H * D),
            lin(2 * inter, C),
            lin(C, inter),
        )  # fmt: skip
        for _ in range(n)
    ]


def rotary(capacity: int, D: int, theta: float = 1e6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos, sin± [capacity, D] and perm as decode.Decoder builds them."""
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, device="cuda").float() / D))
    emb = torch.arange(capacity, device="cuda").float()[:, None] * inv
    emb = torch.cat((emb, emb), -1)
    cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
    half = D // 2
    sin_pm = torch.cat((-sin[:, :half], sin[:, half:]), -1)
    perm = torch.cat((torch.arange(half, D), torch.arange(half))).cuda()
    return cos, sin_pm, perm


def sweep_configs(base: dl.Config) -> list[dl.Config]:
    """A few variations of the heuristic config: warps, K block, pipeline stages, key splits, L2 prefetch, and the
    latency options (decode_layer.Config; what the sm_90 code showed is in the kernel's comments): the rms
    statistic pipelined or in wider chunks, no split-K for o and down (no serial reduction tail), phase C's
    residual loaded early, relaxed counter resets, and their combinations. Duplicates of the base are left out."""
    nosplit = base._replace(o=(base.o[0], 1), down=(base.down[0], 1))
    rstd = dict(rstd_block=256, rstd_stages=4)  # 3 chunks of 16×256 in flight: C = 1024 in two round trips
    tail = dict(early_residual=True, relaxed_reset=True)
    latency = [
        base._replace(rstd_stages=4),
        base._replace(rstd_stages=8),
        base._replace(**rstd),
        base._replace(rstd_block=512, rstd_stages=3),
        base._replace(rstd_block=1024),
        nosplit,
        base._replace(early_residual=True),
        base._replace(relaxed_reset=True),
        base._replace(**tail),
        base._replace(**rstd, **tail),
        nosplit._replace(**rstd, **tail),
    ]
    others = [
        base._replace(num_warps=4),
        base._replace(block_k=64),
        base._replace(block_k=256, num_stages=2),
        base._replace(num_stages=3),
        base._replace(prefetch=True),
        base._replace(attn=(2, 32)),
        base._replace(attn=(4, 32)),
        base._replace(attn=(2, 64)),
        base._replace(attn=(1, 64)),
        base._replace(num_stages=5),
        base._replace(block_k=64, num_stages=6),
    ]
    out: list[dl.Config] = []
    for c in latency + others:  # for 8B (o, down not split) nosplit is the base
        if c != base and c not in out:
            out.append(c)
    return out


def bench_model(name: str, bw: float, configs: bool, phases: bool) -> dict:
    L, C, H, KV, D, inter = MODELS[name]
    heads = (H, KV, D)
    torch.manual_seed(0)
    layers = make_layers(L, C, heads, inter)
    caches = [
        (
            torch.randn(BATCH, KV, CAPACITY, D, device="cuda", dtype=torch.bfloat16),
            torch.randn(BATCH, KV, CAPACITY, D, device="cuda", dtype=torch.bfloat16),
        )
        for _ in range(L)
    ]
    cos, sin_pm, perm = rotary(CAPACITY, D)
    pos = torch.arange(POS_LO, POS_LO + BATCH, device="cuda")
    x0 = torch.randn(BATCH, 1, C, device="cuda", dtype=torch.bfloat16)
    d0 = torch.zeros_like(x0)
    eps = 1e-6
    n_split = default_splits(BATCH, KV, torch.device("cuda"))
    compiled = torch.compile(decode._decode_layer, dynamic=False, fullgraph=True)
    sel = decode._Sel(None, None, None, None)
    zero = torch.zeros(1, dtype=torch.long, device="cuda")

    def run_compiled():
        x, d = x0, d0
        for w, (ck, cv) in zip(layers, caches, strict=True):
            x, d = compiled(x, d, w, sel, zero, zero, ck, cv, pos, cos, sin_pm, perm, heads, eps, n_split)
        return x, d

    state = dl.PersistentState("cuda")

    def run_persistent(cfg: dl.Config | None, part: tuple[int, int, bool] | None = None):
        def run():
            x, d = x0, d0
            for i, (w, (ck, cv)) in enumerate(zip(layers, caches, strict=True)):
                nxt = layers[i + 1].qkv.weight if i + 1 < len(layers) else None  # config.prefetch hints it
                x, d = dl.decode_layer_persistent(
                    x, d, w, ck, cv, pos, cos, sin_pm, perm, heads, eps, state, config=cfg, part=part,
                    next_qkv=nxt,
                )  # fmt: skip
            return x, d

        return run

    w0 = layers[0]
    weight_bytes = sum(t.numel() * t.element_size() for t in (w0.ln1, w0.ln2, w0.qk_norm)) + sum(
        g.weight.numel() * g.weight.element_size() for g in (w0.qkv, w0.o, w0.gate_up, w0.down)
    )
    kv_bytes = 2 * sum(int(p) + 1 for p in pos.tolist()) * KV * D * 2  # keys 0..pos[b] of every row, K and V
    res: dict = {
        "layers": L,
        "weight_bytes_per_layer": weight_bytes,
        "kv_bytes_per_layer": kv_bytes,
        "floor_us_per_layer": weight_bytes / (bw * 1e9) * 1e6,
        "floor_with_kv_us_per_layer": (weight_bytes + kv_bytes) / (bw * 1e9) * 1e6,
    }
    # correctness after one step from the same caches (the attention reads what the other wrote: same values)
    want = compiled(x0, d0, w0, sel, zero, zero, *caches[0], pos, cos, sin_pm, perm, heads, eps, n_split)
    got = dl.decode_layer_persistent(x0, d0, w0, *caches[0], pos, cos, sin_pm, perm, heads, eps, state)
    res["err_x2"], res["err_out"] = rel_err(got[0], want[0]), rel_err(got[1], want[1])
    t0 = time.perf_counter()
    res["compiled_us_per_layer"] = us_per_call(run_compiled, calls=1) / L
    log(f"  {name}: compiled {res['compiled_us_per_layer']:.2f} µs/layer ({time.perf_counter() - t0:.0f} s)")
    cfg0 = dl.default_config(BATCH, C, heads, inter, state.programs)
    res["persistent_config"] = cfg0._asdict()
    res["persistent_us_per_layer"] = us_per_call(run_persistent(None), calls=1) / L
    # a set flag means a barrier timed out (grid not resident): that timing is meaningless, and a set flag makes
    # every later barrier run through — so it is read and cleared after each measurement
    res["error_flag"] = state.error_count()
    state.clear_error()
    log(f"  {name}: persistent {res['persistent_us_per_layer']:.2f} µs/layer {cfg0} flag {res['error_flag']}")
    if phases:
        parts = {"empty launch": (5, 4, False), "4 barriers": (5, 4, True)}
        parts.update({f"phase {'ABCDE'[p]} alone": (p, p, False) for p in range(dl.PHASES)})
        parts["5 phase launches"] = None
        res["phases_us_per_layer"] = {}
        for label, part in parts.items():
            if part is None:
                fn = lambda: [run_persistent(None, (p, p, False))() for p in range(dl.PHASES)]  # noqa: E731
            else:
                fn = run_persistent(None, part)
            us = us_per_call(fn, calls=1) / L
            res["phases_us_per_layer"][label] = us
            log(f"  {name}: {label}: {us:.2f} µs/layer")
        res["phases_error_flag"] = state.error_count()
        state.clear_error()
    if configs:
        res["sweep"] = []
        for cfg in sweep_configs(cfg0):
            try:
                us = us_per_call(run_persistent(cfg), calls=1) / L
            except Exception as e:  # a config the compiler or the card rejects (shared memory, registers)
                log(f"  {name}: {cfg} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            flag = state.error_count()
            state.clear_error()
            res["sweep"].append({"config": cfg._asdict(), "us_per_layer": us, "error_flag": flag})
            log(f"  {name}: {us:.2f} µs/layer {cfg} flag {flag}")
        res["sweep"].sort(key=lambda r: (r["error_flag"] != 0, r["us_per_layer"]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3-0.6b,qwen3-8b")
    ap.add_argument(
        "--configs", action="store_true", help="also time a small sweep of persistent-kernel configs"
    )
    ap.add_argument("--phases", action="store_true", help="also time each part of the kernel on its own")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/generate/persistent.py needs a CUDA GPU (it times CUDA graphs); torch sees none here")
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {unknown}; expected some of {', '.join(MODELS)}")
    bw = copy_bandwidth_gbs()
    res: dict = {
        "card": torch.cuda.get_device_name(),
        "sms": torch.cuda.get_device_properties(0).multi_processor_count,
        "date": time.strftime("%Y-%m-%d"),
        "copy_GBps": bw,
        "batch": BATCH,
        "positions": [POS_LO, POS_LO + BATCH - 1],
        "capacity": CAPACITY,
        "models": {},
    }
    log(f"{res['card']} ({res['sms']} SMs): copy bandwidth {bw:.0f} GB/s")
    for name in names:
        res["models"][name] = bench_model(name, bw, args.configs, args.phases)
        torch.cuda.empty_cache()
        if args.out:  # after each model: a call cut short keeps what it measured
            Path(args.out).write_text(json.dumps(res, indent=2))
    print(
        "\nmodel      | layers | compiled µs/layer | persistent µs/layer | best sweep µs | floor µs (weights, +KV) "
        "| compiled/floor | persistent/floor | err x2, out | flag"
    )
    for name, r in res["models"].items():
        best = f"{r['sweep'][0]['us_per_layer']:13.2f}" if r.get("sweep") else f"{'-':>13}"
        print(
            f"{name:10} | {r['layers']:6} | {r['compiled_us_per_layer']:17.2f} | {r['persistent_us_per_layer']:19.2f} | "
            f"{best} | {r['floor_us_per_layer']:8.2f}, {r['floor_with_kv_us_per_layer']:6.2f}       | "
            f"{r['compiled_us_per_layer'] / r['floor_us_per_layer']:14.2f} | "
            f"{r['persistent_us_per_layer'] / r['floor_us_per_layer']:16.2f} | "
            f"{r['err_x2']:.1e}, {r['err_out']:.1e} | {r['error_flag']}"
        )


if __name__ == "__main__":
    main()
