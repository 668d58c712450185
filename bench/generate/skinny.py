"""bench/generate/skinny — the decode step's hand-written kernels against what they replace, on one card (issue 7).

For each decoder projection of Qwen3-0.6B and 8B at M rows (default 16, the bench's batch): cuBLAS (F.linear)
against tuna::skinny_linear with the config it would use (CONFIGS or heuristic_config) and against every config
of a small sweep; µs per call measured inside a CUDA graph of 50 calls (as the decode step replays them, launch
gaps included), achieved weight-read GB/s, and the max error against F.linear. Then the fused forms against the
eager pair they replace (SiLU·up + down; add + norm + qkv; norm + gate/up; o + residual add), and the head's
argmax ([M, 151936] fp32) against torch.argmax. Prints the fastest config per shape as a CONFIGS table for
kernels/skinny_gemm.py.

    PYTHONPATH=engine python bench/generate/skinny.py [--rows 16] [--no-sweep] [--out /tmp/skinny.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import rel_err, us_per_call  # bench/generate/measure.py (this folder)

from tuna_engine.kernels import argmax as am  # noqa: F401  (tuna::argmax_rows)
from tuna_engine.kernels import skinny_gemm as sg

# (model, projection) → (N, K)
SHAPES = {
    ("qwen3-0.6b", "qkv"): (4096, 1024),
    ("qwen3-0.6b", "o"): (1024, 2048),
    ("qwen3-0.6b", "gate_up"): (6144, 1024),
    ("qwen3-0.6b", "down"): (1024, 3072),
    ("qwen3-8b", "qkv"): (6144, 4096),
    ("qwen3-8b", "o"): (4096, 4096),
    ("qwen3-8b", "gate_up"): (24576, 4096),
    ("qwen3-8b", "down"): (4096, 12288),
}
SWEEP = [
    sg.Config(bn, bk, split, 4, stages)
    for bn, bk, split, stages in itertools.product((16, 32, 64), (128, 256), (1, 2, 4, 8), (4,))
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument(
        "--no-sweep",
        action="store_true",
        help="only cuBLAS against the configs the op would use",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    M = args.rows
    torch.manual_seed(0)
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    res: dict = {
        "card": torch.cuda.get_device_name(),
        "sms": sms,
        "rows": M,
        "gemm": {},
        "fused": {},
    }
    print(f"{res['card']} ({sms} SMs), M = {M}", file=sys.stderr)
    best_table = {}
    print(
        "\nmodel      | proj    |     N |     K | cuBLAS µs | skinny µs (config)          | GB/s  | best sweep µs (config)"
    )
    for (model, proj), (N, K) in SHAPES.items():
        w = torch.randn(N, K, dtype=torch.bfloat16, device=dev) * 0.02
        x = torch.randn(M, 1, K, dtype=torch.bfloat16, device=dev)
        want = F.linear(x, w)
        t_cublas = us_per_call(lambda: F.linear(x, w))  # noqa: B023
        cfg = sg.config_for(N, K, dev)
        got = torch.ops.tuna.skinny_linear(x, w)
        t_skinny = us_per_call(lambda: torch.ops.tuna.skinny_linear(x, w))  # noqa: B023
        row = {
            "N": N, "K": K, "cublas_us": t_cublas, "skinny_us": t_skinny, "config": list(cfg),
            "err": rel_err(got, want), "floor_us_at_4.8TBps": N * K * 2 / 4.8e6,
        }  # fmt: skip
        sweep = []
        if not args.no_sweep:
            for c in SWEEP:
                if c.split_k > 1 and K // c.split_k < c.block_k:
                    continue
                out, _ = sg.skinny_triton(x, w, config=c)
                e = rel_err(out, want)
                t = us_per_call(lambda c=c: sg.skinny_triton(x, w, config=c))  # noqa: B023
                sweep.append({"config": list(c), "us": t, "err": e})
            sweep.sort(key=lambda r: r["us"])
            row["sweep"] = sweep
            best_table[(N, K)] = sweep[0]["config"]
        res["gemm"][f"{model}/{proj}"] = row
        best = f"{sweep[0]['us']:6.2f} {tuple(sweep[0]['config'])}" if sweep else "-"
        print(
            f"{model:10} | {proj:7} | {N:5} | {K:5} | {t_cublas:9.2f} | {t_skinny:6.2f} {tuple(cfg)!s:20} | "
            f"{N * K * 2 / t_skinny / 1e3:5.0f} | {best}   err {row['err']:.1e}"
        )

    # fused forms against the eager ops they replace (0.6B widths)
    C, inter, qkv_n = 1024, 3072, 4096
    x = torch.randn(M, 1, C, dtype=torch.bfloat16, device=dev)
    dd = torch.randn_like(x)
    nw = 1 + 0.1 * torch.randn(C, dtype=torch.bfloat16, device=dev)
    w_qkv = torch.randn(qkv_n, C, dtype=torch.bfloat16, device=dev) * 0.02
    w_gu = torch.randn(2 * inter, C, dtype=torch.bfloat16, device=dev) * 0.02
    w_down = torch.randn(C, inter, dtype=torch.bfloat16, device=dev) * 0.02
    w_o = torch.randn(C, 2048, dtype=torch.bfloat16, device=dev) * 0.02
    gu = torch.randn(M, 1, 2 * inter, dtype=torch.bfloat16, device=dev)
    y = torch.randn(M, 1, 2048, dtype=torch.bfloat16, device=dev)

    def norm(s: torch.Tensor) -> torch.Tensor:
        return nw * F.rms_norm(s, (C,), eps=1e-6)

    pairs = {
        "silu_down": (
            lambda: F.linear(F.silu(gu[..., :inter]) * gu[..., inter:], w_down),
            lambda: torch.ops.tuna.skinny_silu_linear(gu, w_down),
        ),
        "add_norm_qkv": (
            lambda: F.linear(norm(x + dd), w_qkv),
            lambda: torch.ops.tuna.skinny_add_norm_linear(x, dd, nw, 1e-6, w_qkv)[0],
        ),
        "norm_gate_up": (
            lambda: F.linear(norm(x), w_gu),
            lambda: torch.ops.tuna.skinny_norm_linear(x, nw, 1e-6, w_gu),
        ),
        "o_residual": (
            lambda: x + F.linear(y, w_o),
            lambda: torch.ops.tuna.skinny_linear(y, w_o, x),
        ),
    }
    print("\nfused form     | eager ops µs (uncompiled) | fused kernel µs | err")
    for name, (eager, fused) in pairs.items():
        e = rel_err(fused(), eager())
        te, tf = us_per_call(eager), us_per_call(fused)
        res["fused"][name] = {"eager_us": te, "fused_us": tf, "err": e}
        print(f"{name:14} | {te:25.2f} | {tf:15.2f} | {e:.1e}")

    logits = torch.randn(M, 151_936, device=dev)
    same = torch.equal(torch.ops.tuna.argmax_rows(logits), logits.argmax(-1))
    ta, tk = (
        us_per_call(lambda: logits.argmax(-1)),
        us_per_call(lambda: torch.ops.tuna.argmax_rows(logits)),
    )
    res["argmax"] = {"torch_us": ta, "tuna_us": tk, "equal": same}
    print(f"\nargmax [{M}, 151936] fp32: torch {ta:.2f} µs, tuna::argmax_rows {tk:.2f} µs, equal ids: {same}")
    if best_table:
        print("\n# fastest sweep configs (kernels/skinny_gemm.py CONFIGS):")
        for (N, K), c in best_table.items():
            print(f"    ({N}, {K}): Config{tuple(c)},")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
