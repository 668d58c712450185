"""bench/train/context — the longest context one 80 GB card trains: Qwen3-8B QLoRA, one sample per step.

For each length in --lengths (ascending), one packed row of exactly that many tokens (a single sample, so
attention spans all of it) trains for --steps steps through `python -m tuna_engine train` with QLoRA (r=16, all
linear projections), gradient checkpointing and activation offload to pinned CPU memory. The engine process is
capped at --card-gib of GPU memory (torch.cuda.set_per_process_memory_fraction), so a larger card (an H200)
behaves as an 80 GB H100; it stops at the first length that runs out of memory. Prints and writes (--out) the
peak memory and step time of each length; the longest that trained is the answer.

    PYTHONPATH=engine python bench/train/context.py --lengths 65536,131072,262144,360448 --out /tmp/ctx.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    PRESETS,
    ROOT,
    make_model_dir,
    run_engine,
    stop_engines_with_this_script,
    train_plan,
    write_random_shards,
)

# The engine, run with its GPU memory capped: an H200 must not pass a length an H100 80GB could not train.
CAPPED_ENGINE = (
    "import sys, torch, runpy; "
    "torch.cuda.set_per_process_memory_fraction(float(sys.argv.pop(1)) * 2**30 / "
    "torch.cuda.get_device_properties(0).total_memory); "
    "sys.argv[0] = 'tuna_engine'; runpy.run_module('tuna_engine', run_name='__main__')"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def try_length(model_dir: Path, length: int, steps: int, work: Path, card_gib: float, settings: dict) -> dict:
    run = work / f"ctx-{length}-{int(time.time())}"
    vocab = PRESETS[model_dir.name]["config"]["vocab_size"]
    shard = write_random_shards(run / "data", steps, length, vocab, "full")
    plan = train_plan(run, model_dir, shard, "qlora", 1, 1, steps, settings)
    (run / "plan.json").write_text(json.dumps(plan))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "engine"),
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    t0 = time.time()
    proc = run_engine(
        [sys.executable, "-c", CAPPED_ENGINE, str(card_gib), "train", "--plan", str(run / "plan.json")],
        env,
        run / "plan.json",
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps_ev = [e for e in events if e.get("event") == "step"]
    errors = [e for e in events if e.get("event") == "error"]
    out: dict = {"length": length, "wall_s": time.time() - t0}
    if proc.returncode != 0 or errors or not steps_ev:
        out["error"] = errors[0] if errors else proc.stderr[-2000:]
        out["oom"] = bool(errors and errors[0].get("code") == "OOM")
        return out
    el = [e["elapsed_s"] for e in steps_ev]
    out.update(
        peak_gib=max((e["memory_gib"] or 0) for e in steps_ev),
        step_s=el[-1] - el[-2] if len(el) > 1 else None,
        loss=steps_ev[-1]["loss"],
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--lengths", default="65536,131072,262144,360448")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument(
        "--card-gib", type=float, default=79.1, help="GPU memory the engine may use (H100 80GB: 79.1)"
    )
    ap.add_argument(
        "--settings",
        default='{"offload_activations": true}',
        help="JSON merged into the plan's train section",
    )
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench/train/context needs a CUDA GPU"
    stop_engines_with_this_script()
    work = Path(args.work or tempfile.mkdtemp(prefix="tuna-ctx-"))
    model_dir = make_model_dir(args.model, work)
    settings = json.loads(args.settings)
    res = {
        "card": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "card_gib": args.card_gib,
        "settings": settings,
        "runs": [],
    }
    for n in [int(x) for x in args.lengths.split(",")]:
        r = try_length(model_dir, n, args.steps, work, args.card_gib, settings)
        log(f"{n:>8} tokens: {r}")
        res["runs"].append(r)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        if "error" in r:
            break
    ok = [r["length"] for r in res["runs"] if "error" not in r]
    res["longest_trained"] = max(ok) if ok else 0
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
