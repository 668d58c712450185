"""bench/train/lora_gemms.py — one layer's LoRA-adapted GEMMs timed alone, each way TUNA_LORA_ADD can compute them.

The whole-step A/B (bench/train/run.py, variants default / default_inplace / default_augmented) moves by 1–2% between
runs; this times the projection groups of one decoder layer by themselves, so the GEMM-level difference of each way
is read without the rest of the step. Per group (q/k/v, o, gate/up, down of a Qwen3 preset; x [tokens, in], rank r):

  forward, y_i = x W_iᵀ + s·(x A_iᵀ) B_iᵀ
    inplace    the frozen GEMM, then the product added into its output (a second kernel reads and writes it)
    epilogue   the product first, then the frozen GEMM adding it as cuBLAS's C
    augmented  [x | x·Aᵀ]·[W | s·B]ᵀ, one GEMM a group (x·Aᵀ and the concatenation included)
    augmented_gemm  that GEMM alone, its input already laid out (what a compiler writing x into place would pay)
  backward, dx = Σ dy_i W_i + g·A   (g = s·dy·B given)
    inplace    one frozen GEMM a projection, each into its own output (their sum, fused into the norm's backward in
               the compiled layer, is not timed)
    epilogue   g·A first, then each frozen GEMM adding into it (C)
    augmented  g·A first, then ONE frozen GEMM over the group's gradient [dy_1 … dy_k] adding into it
    kaug       [dy | g]·[W; A], one GEMM, no C (the layout already in place)

    PYTHONPATH=engine python bench/train/lora_gemms.py --preset qwen3-8b --tokens 8192 --out /tmp/gemms.json

On a CPU it checks that every way computes the same numbers (fp32, small shapes) and prints no timings.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def groups_of(config: dict) -> dict[str, tuple[int, list[int]]]:
    """{group: (in_features, [out_features …])} of one decoder layer."""
    C, inter = config["hidden_size"], config["intermediate_size"]
    H, KV = config["num_attention_heads"], config["num_key_value_heads"]
    D = config.get("head_dim") or C // H
    return {
        "qkv": (C, [H * D, KV * D, KV * D]),
        "o": (H * D, [C]),
        "gate_up": (C, [inter, inter]),
        "down": (inter, [C]),
    }


class Group:
    """Random tensors of one group, and each way of computing its forward and its dx (callables)."""

    def __init__(self, n: int, n_in: int, outs: list[int], r: int, dtype: torch.dtype, device: torch.device):
        g = torch.Generator(device).manual_seed(0)

        def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

        k, s = len(outs), 2.0
        self.x = rand(n, n_in)
        self.Ws = [rand(o, n_in, scale=n_in**-0.5) for o in outs]
        self.As = [rand(r, n_in, scale=n_in**-0.5) for _ in outs]
        self.sBs = [rand(o, r, scale=s * r**-0.5) for o in outs]  # s·B, as the Functions round it
        self.dys = [rand(n, o) for o in outs]
        self.g = torch.cat([dy @ sB for dy, sB in zip(self.dys, self.sBs, strict=True)], dim=1)  # [N, k·r]
        self.a = torch.cat(self.As)  # [k·r, in]
        # augmented's buffer [Σout + Σr, in + Σr] and the layouts a compiler would write in place
        n_out, n_r = sum(outs), k * r
        self.buf = torch.zeros(n_out + n_r, n_in + n_r, dtype=dtype, device=device)
        row = 0
        for i, (W, sB) in enumerate(zip(self.Ws, self.sBs, strict=True)):
            self.buf[row : row + W.shape[0], :n_in] = W
            self.buf[row : row + W.shape[0], n_in + i * r : n_in + (i + 1) * r] = sB
            row += W.shape[0]
        self.buf[n_out:, :n_in] = self.a
        self.x_aug = torch.cat([self.x, self.x @ self.a.t()], dim=1)
        self.dy_cat = torch.cat(self.dys, dim=1)
        self.dy_aug = torch.cat([self.dy_cat, self.g], dim=1)
        self.n_in, self.n_out, self.r = n_in, n_out, r

    # ---- forward: the group's outputs ----
    def fwd_inplace(self) -> list[torch.Tensor]:
        xa = self.x @ self.a.t()
        ys = [self.x @ W.t() for W in self.Ws]
        for i, (y, sB) in enumerate(zip(ys, self.sBs, strict=True)):
            y.addmm_(xa[:, i * self.r : (i + 1) * self.r], sB.t())
        return ys

    def fwd_epilogue(self) -> list[torch.Tensor]:
        xa = self.x @ self.a.t()
        ys = []
        for i, (W, sB) in enumerate(zip(self.Ws, self.sBs, strict=True)):
            y = xa[:, i * self.r : (i + 1) * self.r] @ sB.t()
            ys.append(y.addmm_(self.x, W.t()))
        return ys

    def fwd_augmented(self) -> list[torch.Tensor]:
        xa = self.x @ self.buf[self.n_out :, : self.n_in].t()
        y = torch.cat([self.x, xa], dim=1) @ self.buf[: self.n_out].t()
        return list(y.split([W.shape[0] for W in self.Ws], dim=1))

    def fwd_augmented_gemm(self) -> list[torch.Tensor]:
        y = self.x_aug @ self.buf[: self.n_out].t()
        return list(y.split([W.shape[0] for W in self.Ws], dim=1))

    # ---- backward: dx ----
    def dx_inplace(self) -> list[torch.Tensor]:
        """dx's parts, each its own GEMM output (not summed: in the compiled layer the sum is fused into the
        norm's backward, which reads every part once — not timed here)."""
        return [dy @ W for dy, W in zip(self.dys, self.Ws, strict=True)] + [self.g @ self.a]

    def dx_epilogue(self) -> torch.Tensor:
        dx = self.g @ self.a
        for dy, W in zip(self.dys, self.Ws, strict=True):
            dx.addmm_(dy, W)
        return dx

    def dx_augmented(self) -> torch.Tensor:
        return (self.g @ self.a).addmm_(self.dy_cat, self.buf[: self.n_out, : self.n_in])

    def dx_kaug(self) -> torch.Tensor:
        return self.dy_aug @ self.buf[:, : self.n_in]

    def ways(self) -> dict[str, Callable[[], object]]:
        return {
            "fwd_inplace": self.fwd_inplace,
            "fwd_epilogue": self.fwd_epilogue,
            "fwd_augmented": self.fwd_augmented,
            "fwd_augmented_gemm": self.fwd_augmented_gemm,
            "dx_inplace": self.dx_inplace,
            "dx_epilogue": self.dx_epilogue,
            "dx_augmented": self.dx_augmented,
            "dx_kaug": self.dx_kaug,
        }


def check_same_numbers(group: Group, rtol: float = 1e-5) -> None:
    """Every forward way gives the same outputs, every dx way the same dx (fp32: within summation order)."""
    ref_y, ref_dx = group.fwd_inplace(), sum(group.dx_inplace())
    for name, fn in group.ways().items():
        got = fn()
        if name == "dx_inplace":
            got = sum(got)  # type: ignore[arg-type]
        pairs = zip(got, ref_y, strict=True) if name.startswith("fwd") else [(got, ref_dx)]
        for a, b in pairs:  # type: ignore[misc]
            err = float((a - b).abs().max() / b.abs().max())
            assert err < rtol, (name, err)


def time_ms(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Median milliseconds of fn on the current CUDA stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-8b")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    config = json.loads((ROOT / "src/model/presets.json").read_text())[args.preset]["config"]
    cuda = torch.cuda.is_available()
    if not cuda:  # smoke run: small shapes, fp32, the numbers checked
        for name, (n_in, outs) in groups_of(config).items():
            shrink = max(n_in // 96, 1)
            group = Group(
                37, n_in // shrink, [o // shrink for o in outs], 3, torch.float32, torch.device("cpu")
            )
            check_same_numbers(group)
            print(f"{name}: every way computes the same numbers (CPU, fp32, shrunk {shrink}x); no timings")
        return
    results: dict[str, dict[str, float]] = {}
    for name, (n_in, outs) in groups_of(config).items():
        group = Group(args.tokens, n_in, outs, args.r, torch.bfloat16, torch.device("cuda"))
        results[name] = {way: time_ms(fn, args.iters) for way, fn in group.ways().items()}
        print(name, " ".join(f"{way} {ms * 1000:.0f}µs" for way, ms in results[name].items()), flush=True)
    totals = {way: sum(r[way] for r in results.values()) for way in next(iter(results.values()))}
    print("layer", " ".join(f"{way} {ms * 1000:.0f}µs" for way, ms in totals.items()))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "card": torch.cuda.get_device_name(),
                    "preset": args.preset,
                    "tokens": args.tokens,
                    "r": args.r,
                    "ms": results,
                    "layer_ms": totals,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
