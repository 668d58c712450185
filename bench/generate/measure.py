"""What the generation benches measure the same way: the card's device-to-device copy rate (weight bytes over it
are the floor: a decode step cannot be faster than reading every weight once), a call's time inside a CUDA
graph, and the relative error of one output against another."""

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


def us_per_call(fn, calls: int = 50, reps: int = 20) -> float:
    """µs per call of fn() replayed in a CUDA graph of `calls` calls (launch gaps as in the decode graph)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1000 / (reps * calls)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| over max |want|."""
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
