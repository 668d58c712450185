"""The card's device-to-device copy rate, which both generation benches divide weight bytes by for the floor (a
decode step cannot be faster than reading every weight once)."""

from __future__ import annotations

import time

import torch


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy, bytes read + written per second (GB/s)."""
    n = 1 << 30  # 1 Gi bf16 elements = 2 GiB
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / reps
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * 2 / dt / 1e9
