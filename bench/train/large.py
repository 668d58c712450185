"""bench/train/large — 70B-class QLoRA and Qwen3-32B bf16 LoRA on 2 GPUs of one machine (issue 6), one command.

    PYTHONPATH=engine python bench/train/large.py --work /tmp/large --out /tmp/large.json

1. Writes the random model directories (cached under --work; engine/tuna_engine/models/random_dir.py, tensor by
   tensor, timed): llama3-70b as a pre-quantized bitsandbytes NF4 directory (~40 GB, quantized on GPU 0 as it
   is written: the 140 GB bf16 model never exists) and qwen3-32b in bf16 (~65 GB).
2. Runs `python -m tuna_engine train` under torchrun on --gpus GPUs (FSDP2, each rank loading only its shards
   straight from the files) through the real plan/event seam: llama3-70b QLoRA and qwen3-32b bf16 LoRA, r=16
   alpha=32 on all linear projections, micro-batch 2 × 2048 tokens per GPU (grad_accum = GPUs: one micro-batch
   per GPU per step), gradient checkpointing (recompute "full"), AdamW, random tokens (speed does not depend on
   values).
3. Reports per run: model load time (launch → start event), tokens/s (all GPUs, and per GPU) from the engine's
   step clock after warm-up, MFU against a bf16 matmul measured in the same run, and each rank's peak memory
   (torch.cuda.max_memory_allocated, load included: the step events' memory_gib_per_rank). JSON with --out.

Budget: ~105 GB of disk under --work and ~5 minutes on a 4×H100 box (disk writes at 1–2 GB/s dominate: ~1–2
min; each run loads for ~20–40 s and trains --warmup + --steps steps). --write-only just writes the directories.

Issue 5's one-card row: `--runs qwen3-32b-qlora --gpus 1` (Qwen3-32B QLoRA, peak memory against the ≤ 22 GiB
target); `--settings '{"optimizer": "adamw8bit"}'` merges settings into every plan's train section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import (  # noqa: E402
    PRESETS,
    ROOT,
    flops_per_token,
    kill_engine,
    log,
    matmul_tflops,
    start_engine,
    stop_engines_with_this_script,
    train_plan,
    write_random_shards,
)

from tuna_engine.models.random_dir import planned_bytes, write_random_model  # noqa: E402

# name -> (preset, method, 4-bit directory)
RUNS = {
    "llama3-70b-qlora": ("llama3-70b", "qlora", True),
    "qwen3-32b-lora": ("qwen3-32b", "lora", False),
    "qwen3-32b-qlora": ("qwen3-32b", "qlora", True),  # issue 5: one GPU, peak ≤ 22 GiB (run with --gpus 1)
    "qwen2.5-72b-qlora": ("qwen2.5-72b", "qlora", True),  # optional (~41 GB more disk)
    "tiny-qlora": (
        "tiny",
        "qlora",
        True,
    ),  # smoke test of this script (runs on CPU with --device cpu)
}


def model_dir(work: Path, preset: str, four_bit: bool) -> Path:
    return work / "models" / (f"{preset}-bnb-4bit" if four_bit else preset)


def write_dirs(work: Path, names: list[str]) -> dict:
    """Write (or reuse) each run's random directory; refuse early when the disk cannot hold them."""
    need = 0
    todo = []
    for name in names:
        preset, _, four_bit = RUNS[name]
        d = model_dir(work, preset, four_bit)
        if not (d / ".tuna-random-complete").is_file():
            need += planned_bytes(PRESETS[preset]["config"], four_bit=four_bit)
            todo.append(name)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if need > free * 0.97:
        raise SystemExit(
            f"{work}: {free / 1e9:.0f} GB free, the model directories need {need / 1e9:.0f} GB; "
            "use a --work on a larger disk, or fewer --runs"
        )
    out = {}
    for name in names:
        preset, _, four_bit = RUNS[name]
        d = model_dir(work, preset, four_bit)
        log(
            f"== writing {d} ({'NF4' if four_bit else 'bf16'}, ~{planned_bytes(PRESETS[preset]['config'], four_bit=four_bit) / 1e9:.0f} GB)"
        )
        out[name] = write_random_model(PRESETS[preset]["config"], d, four_bit=four_bit, progress=log)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def run_engine(
    name: str,
    work: Path,
    gpus: int,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    timeout: int,
    device: str = "cuda",
    settings: dict | None = None,
) -> dict:
    preset, method, four_bit = RUNS[name]
    cfg = PRESETS[preset]["config"]
    d = model_dir(work, preset, four_bit)
    run = work / f"run-{name}-{gpus}gpu-{int(time.time())}"
    n_steps = steps + warmup
    shard = write_random_shards(run / "data", n_steps * batch * gpus, seq, cfg["vocab_size"], "full")
    plan = train_plan(run, d, shard, method, batch, gpus, n_steps, extra_train=settings, device=device)
    plan["base_model_name"] = preset
    if gpus > 1:
        plan["distributed"] = {"strategy": "fsdp", "gpus": gpus, "nnodes": 1}
    (run / "plan.json").write_text(json.dumps(plan))
    launch = [sys.executable]
    if gpus > 1:
        launch += [
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={gpus}",
            "--master-addr=127.0.0.1",
            "--master-port=29531",
        ]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "engine"),
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        **({"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))} if device == "cuda" else {}),
    }
    t0 = time.time()
    stderr_file = open(run / "stderr.log", "w")  # noqa: SIM115 (closed after the process ends)
    proc = start_engine(
        launch + ["-m", "tuna_engine", "train", "--plan", str(run / "plan.json")],
        env,
        run / "plan.json",
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
    )
    events: list[tuple[float, dict]] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                e = json.loads(line)
                events.append((time.time() - t0, e))
                if e["event"] in ("step", "start", "error"):
                    log(
                        f"  [{name} {time.time() - t0:6.1f}s] {json.dumps({k: v for k, v in e.items() if k not in ('event',)})[:300]}"
                    )
            if time.time() - t0 > timeout:
                kill_engine(proc.pid)
                break
        proc.wait(timeout=60)
    finally:
        kill_engine(proc.pid)  # torchrun's ranks too, finished or not
        stderr_file.close()
    stderr_tail = (run / "stderr.log").read_text()[-3000:]
    evs = [e for _, e in events]
    errors = [e for e in evs if e["event"] == "error"]
    st = [e for e in evs if e["event"] == "step"]
    start_at = next((t for t, e in events if e["event"] == "start"), None)
    res: dict = {
        "gpus": gpus,
        "batch_per_gpu": batch,
        "seq": seq,
        "method": method,
        "settings": settings or {},
        "model_dir": str(d),
        "load_s": start_at,
        "wall_s": time.time() - t0,
    }
    if proc.returncode != 0 or errors or len(st) < warmup + 2:
        res["error"] = errors[0] if errors else stderr_tail
        return res
    dts = np.diff([e["elapsed_s"] for e in st])[warmup - 1 if warmup else 0 :]
    step_s = float(np.median(dts))
    tokens = batch * seq * gpus
    per_rank = [
        max(v)
        for v in zip(
            *[e.get("memory_gib_per_rank") or [e["memory_gib"] or 0.0] for e in st],
            strict=True,
        )
    ]
    res.update(
        step_s=step_s,
        tokens_per_s=tokens / step_s,
        tokens_per_s_per_gpu=tokens / step_s / gpus,
        peak_gib_per_gpu=per_rank,
        loss=[e["loss"] for e in st],
        flops_per_token=flops_per_token(cfg, seq, recompute=True),
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work",
        required=True,
        help="model directories (cached: reused when complete) and runs go here",
    )
    ap.add_argument(
        "--runs",
        default="llama3-70b-qlora,qwen3-32b-lora",
        help=f"comma list of {', '.join(RUNS)}",
    )
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="packs per GPU per step (micro-batch)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4, help="timed steps after --warmup")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=420, help="seconds per engine run")
    ap.add_argument(
        "--settings",
        type=json.loads,
        default={},
        help='JSON merged into every plan\'s train section, e.g. \'{"optimizer": "adamw8bit"}\'',
    )
    ap.add_argument("--write-only", action="store_true")
    ap.add_argument(
        "--delete-after",
        action="store_true",
        help="remove the model directories at the end",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS
    )  # cpu: smoke test
    args = ap.parse_args()
    cuda = args.device == "cuda"
    assert not cuda or torch.cuda.is_available(), "bench/train/large needs CUDA GPUs"
    stop_engines_with_this_script()
    work = Path(args.work)
    names = [n for n in args.runs.split(",") if n]
    for n in names:
        if n not in RUNS:
            raise SystemExit(f"--runs: unknown run {n!r}; choose from {', '.join(RUNS)}")
    if cuda and torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA GPUs visible")
    t_all = time.time()
    results: dict = {
        "card": torch.cuda.get_device_name() if cuda else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "gpus": args.gpus,
    }
    results["writes"] = write_dirs(work, names)
    if not args.write_only:
        results["matmul_tflops"] = peak = matmul_tflops() if cuda else float("nan")
        if cuda:
            torch.cuda.empty_cache()
        for n in names:
            log(f"== {n} on {args.gpus} GPUs, {args.batch} x {args.seq} tokens per GPU per step")
            r = run_engine(
                n,
                work,
                args.gpus,
                args.batch,
                args.seq,
                args.steps,
                args.warmup,
                args.timeout,
                args.device,
                args.settings,
            )
            if "tokens_per_s" in r:
                r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / (peak * 1e12 * args.gpus)
            results[n] = r
    results["total_wall_s"] = time.time() - t_all
    print("\nrun               | GPUs | load s | tokens/s (per GPU) | peak GiB per GPU      | MFU")
    for n in names:
        r = results.get(n)
        if r is None:
            continue
        if "error" in r:
            print(f"{n:17} | error: {str(r['error'])[:400]}")
            continue
        peaks = ", ".join(f"{g:.1f}" for g in r["peak_gib_per_gpu"])
        print(
            f"{n:17} | {r['gpus']:4} | {r['load_s']:6.1f} | {r['tokens_per_s']:7.0f} ({r['tokens_per_s_per_gpu']:6.0f}) | {peaks:21} | {r['mfu']:.3f}"
        )
    for n, w in results["writes"].items():
        print(
            f"write {n}: {w['bytes'] / 1e9:.1f} GB, {w['seconds']:.0f} s{' (reused)' if w.get('reused') else ''}"
        )
    print(f"total {results['total_wall_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.delete_after:
        shutil.rmtree(work / "models", ignore_errors=True)


if __name__ == "__main__":
    main()
