"""bench/train/trace_streams.py — per GPU stream, how busy it was and how the compute stream's idle time lines up with
the copies, from a Chrome trace (TUNA_PROFILE_TRACE, or `bench/train/run.py --profile-dir`).

The per-operation table (TUNA_PROFILE) sums kernel time but cannot say whether the compute stream waited: an
offloaded step copies ~10 GiB each way over PCIe on a side stream, and if the copies are slower than the layers the
compute stream idles at each wait. This prints, for the traced span: each stream's busy time (the union of its
kernels and copies), its copies' bytes and rate by direction, and the compute stream's idle time split into what
overlaps copy activity on another stream (likely waiting for a copy) and what does not (CPU launch gaps, syncs).

    python bench/train/trace_streams.py trace.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

Interval = tuple[float, float]


def union(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def total(intervals: list[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def intersect(xs: list[Interval], ys: list[Interval]) -> float:
    """Length of the overlap of two sorted, disjoint interval lists."""
    i = j = 0
    got = 0.0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        got += max(0.0, b - a)
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return got


def gaps(busy: list[Interval], start: float, end: float) -> list[Interval]:
    out, t = [], start
    for a, b in busy:
        if a > t:
            out.append((t, a))
        t = max(t, b)
    if end > t:
        out.append((t, end))
    return out


def direction(name: str) -> str:
    m = re.search(r"(HtoD|DtoH|DtoD|HtoH|PtoP)", name)
    return m.group(1) if m else "kernel"


def analyse(events: list[dict[str, Any]]) -> str:
    per_stream: dict[Any, list[Interval]] = defaultdict(list)
    copies: dict[tuple[Any, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # bytes, µs, count
    kernel_us: dict[Any, float] = defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        args = e.get("args", {})
        stream = args.get("stream", e.get("tid"))
        span = (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
        per_stream[stream].append(span)
        kind = direction(e.get("name", "")) if e["cat"] == "gpu_memcpy" else "kernel"
        if kind == "kernel":
            kernel_us[stream] += span[1] - span[0]
        else:
            c = copies[(stream, kind)]
            c[0] += float(args.get("bytes", 0))
            c[1] += span[1] - span[0]
            c[2] += 1
    if not per_stream:
        return "no GPU events in the trace"
    busy = {s: union(v) for s, v in per_stream.items()}
    start = min(v[0][0] for v in busy.values())
    end = max(v[-1][1] for v in busy.values())
    compute = max(kernel_us, key=kernel_us.get)  # the stream with the most kernel time
    lines = [f"traced span {(end - start) / 1e3:.1f} ms; compute stream = {compute}"]
    for s in sorted(busy, key=lambda s: -total(busy[s])):
        lines.append(
            f"  stream {s}: busy {total(busy[s]) / 1e3:.1f} ms ({total(busy[s]) / (end - start):.0%}), "
            f"kernels {kernel_us[s] / 1e3:.1f} ms"
        )
        for (cs, kind), (nbytes, us, n) in sorted(copies.items(), key=lambda kv: str(kv[0])):
            if cs == s and us > 0:
                lines.append(
                    f"    {kind}: {n} copies, {nbytes / 2**30:.2f} GiB in {us / 1e3:.1f} ms "
                    f"({nbytes / (us * 1e3):.1f} GB/s while copying)"
                )
    idle = gaps(busy[compute], start, end)
    other = union([iv for s, v in busy.items() if s != compute for iv in v])
    waiting = intersect(idle, other)
    lines.append(
        f"compute stream idle {total(idle) / 1e3:.1f} ms: {waiting / 1e3:.1f} ms of it while another stream copied or "
        f"ran, {(total(idle) - waiting) / 1e3:.1f} ms with nothing else on the GPU"
    )
    long_gaps = sorted((b - a for a, b in idle), reverse=True)[:10]
    lines.append("  its 10 longest gaps (ms): " + ", ".join(f"{g / 1e3:.2f}" for g in long_gaps))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    args = ap.parse_args()
    data = json.loads(args.trace.read_text())
    print(analyse(data["traceEvents"] if isinstance(data, dict) else data))


if __name__ == "__main__":
    main()
