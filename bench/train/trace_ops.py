"""bench/train/trace_ops.py — which operations launched the GPU work whose name matches a pattern, from a Chrome trace.

The per-operation table (TUNA_PROFILE) names kernels but not who launched them: session 8 found 394 `memcpy128`
copies a Qwen3-0.6B step (5.3 ms) with no owner. A trace (TUNA_PROFILE_TRACE, or `bench/train/run.py
--profile-dir`) links each kernel to the runtime call that launched it (its correlation id), and that call sits
inside the CPU operations that were running on its thread; this prints, per chain of enclosing operations, how
many matching kernels they launched and their GPU time.

    python bench/train/trace_ops.py trace.json --kernel memcpy --depth 3

Eager steps only: a CUDA graph's kernels all point at its one cudaGraphLaunch (run the variant with
cuda_graphs false).
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def owners(events: list[dict[str, Any]], pattern: str, depth: int) -> list[tuple[str, int, float]]:
    """(operation chain outermost → innermost, last `depth` levels, kernel count, GPU µs), most GPU time first."""
    name_re = re.compile(pattern, re.IGNORECASE)  # the profiler names copies "Memcpy DtoD (Device -> Device)"
    launches: dict[Any, dict[str, Any]] = {}
    ops: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = e.get("cat", "")
        if cat in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            launches[e["args"]["correlation"]] = e
        elif cat in ("cpu_op", "user_annotation", "python_function"):
            ops[(e["pid"], e["tid"])].append(e)
    starts = {}
    for key, lane in ops.items():
        lane.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))  # an op and its first child can start together
        starts[key] = [e["ts"] for e in lane]
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in GPU_CATEGORIES or not name_re.search(e.get("name", "")):
            continue
        launch = launches.get(e.get("args", {}).get("correlation"))
        chain = ["<no launch found>"]
        if launch is not None:
            key = (launch["pid"], launch["tid"])
            lane, ts = ops.get(key, []), launch["ts"]
            # Enclosing operations: those starting before the launch and ending after it (nested: outermost first).
            upto = bisect.bisect_right(starts.get(key, []), ts)
            chain = [o["name"] for o in lane[:upto] if o["ts"] + o.get("dur", 0) >= ts] or [launch["name"]]
        label = " > ".join(chain[-depth:])
        totals[label][0] += 1
        totals[label][1] += e.get("dur", 0)
    return sorted(((k, int(v[0]), v[1]) for k, v in totals.items()), key=lambda r: -r[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument(
        "--kernel", default="memcpy", help="regular expression on the GPU event's name (any case)"
    )
    ap.add_argument("--depth", type=int, default=3, help="innermost enclosing operations to show")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    data = json.loads(args.trace.read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    rows = owners(events, args.kernel, args.depth)
    print(f"{'kernels':>8} {'GPU ms':>9}  launched inside")
    for label, count, us in rows[: args.top]:
        print(f"{count:8d} {us / 1000:9.3f}  {label}")


if __name__ == "__main__":
    main()
