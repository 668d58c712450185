"""bench/train/attention — the training attention kernels on the engine's shapes, forward + backward, one card.

Backends, each on the same q/k/v (bf16, packed [tokens, heads, 128] as the engine holds them, GQA as in Qwen3):
- `fa2_varlen`: torch's flash-attention varlen (`torch.nn.attention.varlen.varlen_attn`), the engine's path today;
- `cudnn_ragged`: cuDNN through `aten._cudnn_attention_forward` with the same cumulative sample lengths (the
  packed layout, no padding; backward through its registered derivative) — an experiment, not in the engine;
- `cudnn_dense`: `llama.cudnn_rows_attention`, cuDNN on [B, H, T, D] views, for batches of one sample a row —
  what the engine runs by default on Hopper for such batches.
Each case prints milliseconds for forward and forward + backward, TFLOP/s (causal FLOPs inside samples), and the
largest differences of the output and the three gradients from `fa2_varlen` (relative to the reference's max).

    PYTHONPATH=engine python bench/train/attention.py --out /tmp/attn.json [--long 360448]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "engine"))
from tuna_engine.models import llama  # noqa: E402

SHAPES = {  # q heads, kv heads
    "qwen3-8b": (32, 8),
    "qwen3-0.6b": (16, 8),
}


def mix_lengths(rows: int, seq: int, seed: int) -> list[int]:
    """A support-transcript-like mix packed into rows: many short samples, a few long ones, rows filled."""
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for _ in range(rows):
        left = seq
        while left > 0:
            n = int(torch.randint(64, 1024, (1,), generator=g)) if torch.rand(1, generator=g) < 0.9 else 1800
            n = min(n, left)
            out.append(n)
            left -= n
    return out


def causal_flops(lengths: list[int], heads: int, d: int) -> float:
    return sum(4.0 * n * (n + 1) / 2 * d * heads for n in lengths)  # QK and PV, causal half


def inputs(lengths: list[int], h: int, kv: int, d: int = 128):
    total = sum(lengths)
    dev = torch.device("cuda")
    q = torch.randn(total, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(total, kv, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(total, kv, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=dev, dtype=torch.int32)
    return q, k, v, cu, max(lengths)


def run_fa2(q, k, v, cu, mx):
    seg = llama.Segments(torch.empty(0), cu, mx)
    return llama.varlen_attention(q[None], k[None], v[None], seg)[0]


def run_cudnn_ragged(q, k, v, cu, mx):
    # autograd through the forward op (its registered derivative); an experiment, not wired into the engine
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, mx, mx, True, 0.0, True, False)[0]


def run_cudnn_dense(q, k, v, cu, mx):
    lengths = (cu[1:] - cu[:-1]).tolist()
    if len(set(lengths)) != 1:
        raise ValueError("cudnn_dense needs one sample a row of equal length")
    B, T = len(lengths), lengths[0]
    qd, kd, vd = (t.view(B, T, t.shape[1], t.shape[2]) for t in (q, k, v))
    return llama.cudnn_rows_attention(qd, kd, vd).reshape(q.shape)  # the engine's path (TUNA_ATTENTION=auto)


BACKENDS = {"fa2_varlen": run_fa2, "cudnn_ragged": run_cudnn_ragged, "cudnn_dense": run_cudnn_dense}


def time_it(fn, q, k, v, cu, mx, g, iters: int) -> tuple[float, float, tuple]:
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v, cu, mx)
    out.backward(g)
    ref = (out.detach().clone(), q.grad.clone(), k.grad.clone(), v.grad.clone())
    torch.cuda.synchronize()
    e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    fwd = tot = 0.0
    for _ in range(iters):
        for t in (q, k, v):
            t.grad = None
        e[0].record()
        out = fn(q, k, v, cu, mx)
        e[1].record()
        out.backward(g)
        e[2].record()
        torch.cuda.synchronize()
        fwd += e[0].elapsed_time(e[1])
        tot += e[0].elapsed_time(e[2])
    return fwd / iters, tot / iters, ref


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def case(name: str, lengths: list[int], h: int, kv: int, iters: int) -> dict:
    q, k, v, cu, mx = inputs(lengths, h, kv)
    g = torch.randn_like(q)  # one upstream gradient for every backend, so their gradients compare
    flops = causal_flops(lengths, h, 128)
    row: dict = {"case": name, "tokens": sum(lengths), "samples": len(lengths), "max_len": mx, "backends": {}}
    ref = None
    for b, fn in BACKENDS.items():
        try:
            fwd, tot, outs = time_it(fn, q, k, v, cu, mx, g, iters)
        except Exception as e:  # noqa: BLE001 — a backend that cannot serve a shape is a result, not a crash
            row["backends"][b] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"{name:28s} {b:13s} error: {type(e).__name__}: {str(e)[:160]}", flush=True)
            continue
        r = {
            "fwd_ms": round(fwd, 3),
            "fwd_bwd_ms": round(tot, 3),
            "fwd_tflops": round(flops / fwd / 1e9, 1),
            "fwd_bwd_tflops": round(3.5 * flops / tot / 1e9, 1),  # backward ≈ 2.5 forwards of FLOPs
        }
        if ref is None:
            ref = outs
        else:
            r["rel_diff_vs_fa2"] = {
                n: rel_diff(a, b_) for n, a, b_ in zip(("out", "dq", "dk", "dv"), outs, ref, strict=True)
            }
        row["backends"][b] = r
        print(
            f"{name:28s} {b:13s} fwd {fwd:8.3f} ms  fwd+bwd {tot:8.3f} ms  {r['fwd_bwd_tflops']:6.1f} TFLOP/s "
            f"{r.get('rel_diff_vs_fa2', '')}",
            flush=True,
        )
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument(
        "--long", type=int, default=0, help="also one sample of this many tokens (8B heads), 1 iteration"
    )
    a = ap.parse_args()
    print(
        torch.__version__, torch.cuda.get_device_name(), "cudnn", torch.backends.cudnn.version(), flush=True
    )
    probe = {}
    try:  # the ragged cuDNN op's outputs (shapes/strides), which a torch.library fake must reproduce
        q, k, v, cu, mx = inputs([100, 300], 32, 8)
        res = torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, mx, mx, True, 0.0, True, False)
        probe = {
            f"out{i}": [list(t.shape), list(t.stride()), str(t.dtype)]
            for i, t in enumerate(res)
            if isinstance(t, torch.Tensor)
        }
    except Exception as e:  # noqa: BLE001
        probe = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    print("probe", probe, flush=True)
    rows = []
    for model, (h, kv) in SHAPES.items():
        batch = 4 if model == "qwen3-8b" else 8
        rows.append(case(f"{model} {batch}x2048", [2048] * batch, h, kv, a.iters))
        rows.append(case(f"{model} mix {batch}x2048", mix_lengths(batch, 2048, 0), h, kv, a.iters))
    rows.append(case("qwen3-8b 1x32768", [32768], 32, 8, 3))
    if a.long:
        rows.append(case(f"qwen3-8b 1x{a.long}", [a.long], 32, 8, 1))
    if a.out:
        a.out.write_text(
            json.dumps(
                {
                    "card": torch.cuda.get_device_name(),
                    "date": time.strftime("%Y-%m-%d"),
                    "torch": torch.__version__,
                    "cudnn": torch.backends.cudnn.version(),
                    "probe": probe,
                    "cases": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
