"""bench/generate — Tuna's generation engine against transformers `generate`, same model, prompts and settings,
in ONE run on ONE card: batch 16, 128-token prompts, 256 new tokens, greedy, warm runs, random-initialised real
Qwen3 architectures. Also measures the weight-read floor: the model's bytes over the card's device-to-device copy
bandwidth measured in the same run (a decode step cannot be faster than reading every weight once).

    PYTHONPATH=engine python bench/generate/run.py --models qwen3-0.6b,qwen3-8b --out /tmp/gen.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench/train"))
from run import make_model_dir  # noqa: E402  (the same random model directories as bench/train)

from tuna_engine.generate import load_for_generation, requests_from_dicts  # noqa: E402
from tuna_engine.protocol import parse_generate_plan  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    # Avoid special-token ids (>= 151643) so nothing in the prompt is an end of turn.
    return torch.randint(0, min(vocab, 151_000), (batch, length), generator=g).tolist()


def bench_hf(model_dir: Path, ids: list[list[int]], new: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda").eval()
    x = torch.tensor(ids, device="cuda")
    kw = dict(do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    with torch.no_grad():
        model.generate(x, **{**kw, "max_new_tokens": 16, "min_new_tokens": 16})  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(x, **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    n = (out.shape[1] - x.shape[1]) * x.shape[0]
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {"tokens_per_s": n / dt, "seconds": dt, "ms_per_step": 1000 * dt / new, "first_row": out[0, x.shape[1]:x.shape[1] + 8].tolist()}


def bench_tuna(model_dir: Path, ids: list[list[int]], new: int) -> dict:
    plan = parse_generate_plan({
        "version": 1, "command": "generate", "model": {"path": str(model_dir), "dtype": "bfloat16"},
        "adapters": {}, "device": "cuda", "max_batch_size": len(ids),
    })
    engine = load_for_generation(plan)

    def reqs(n: int, tag: str):
        return requests_from_dicts([
            {"id": f"{tag}{i}", "prompt_ids": p, "max_new_tokens": n, "temperature": 0, "top_p": 1, "top_k": 0,
             "repetition_penalty": 1, "seed": None, "stop_ids": [], "adapter": None}
            for i, p in enumerate(ids)
        ])

    engine.generate(reqs(16, "w"))  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = engine.generate(reqs(new, "r"))
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = sum(len(v) for v in out.values())
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return {"tokens_per_s": n / dt, "seconds": dt, "ms_per_step": 1000 * dt / new, "first_row": out["r0"][:8]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3-0.6b,qwen3-8b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tuna-genbench-"))
    bw = copy_bandwidth_gbs()
    res = {"card": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "copy_GBps": bw, "models": {}}
    log(f"{res['card']}: copy bandwidth {bw:.0f} GB/s")
    for name in args.models.split(","):
        d = make_model_dir(name, work)
        cfg = json.loads((d / "config.json").read_text())
        nbytes = sum(f.stat().st_size for f in d.glob("*.safetensors"))
        floor_ms = nbytes / (bw * 1e9 / 2) * 1000  # reading once = half of a copy's traffic
        ids = prompts(args.batch, args.prompt, cfg["vocab_size"])
        r = {"weight_bytes": nbytes, "floor_ms_per_step": floor_ms}
        r["hf_generate"] = bench_hf(d, ids, args.new)
        log(f"  {name} HF {r['hf_generate']}")
        r["tuna"] = bench_tuna(d, ids, args.new)
        log(f"  {name} tuna {r['tuna']}")
        r["tuna"]["speedup_vs_hf"] = r["tuna"]["tokens_per_s"] / r["hf_generate"]["tokens_per_s"]
        r["tuna"]["step_over_floor"] = r["tuna"]["ms_per_step"] / floor_ms
        r["hf_generate"]["step_over_floor"] = r["hf_generate"]["ms_per_step"] / floor_ms
        r["same_greedy_start"] = r["tuna"]["first_row"] == r["hf_generate"]["first_row"]
        res["models"][name] = r
    print("\nmodel        | impl         | tokens/s | ms/step | floor ms | step/floor | speed×")
    for name, r in res["models"].items():
        for k in ("hf_generate", "tuna"):
            v = r[k]
            print(f"{name:12} | {k:12} | {v['tokens_per_s']:8.0f} | {v['ms_per_step']:7.2f} | {r['floor_ms_per_step']:8.2f} | "
                  f"{v['step_over_floor']:10.2f} | {v.get('speedup_vs_hf', 1):.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
