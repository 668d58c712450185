"""bench/train/context — the longest context one 80 GB card trains: Qwen3-8B QLoRA, one sample per step.

For each length in --lengths (ascending), one packed row of exactly that many tokens (a single sample, so
attention spans all of it) trains for --steps steps through `python -m tuna_engine train` with QLoRA (r=16, all
linear projections), gradient checkpointing and activation offload to pinned CPU memory. The engine process is
capped at --card-gib of GPU memory (torch.cuda.set_per_process_memory_fraction), so a larger card (an H200)
behaves as an 80 GB H100; it stops at the first length that runs out of memory. Prints and writes (--out) the
peak memory and step time of each length; the longest that trained is the answer.

    PYTHONPATH=engine python bench/train/context.py --lengths 65536,131072,262144,360448 --out /tmp/ctx.json

One step of Qwen3-8B at 360,448 tokens is ~10 minutes of attention on an H200 with flash attention 2 (forward,
recomputed forward and backward over 36 layers), ~6 with cuDNN's attention (the engine's default on Hopper for a
one-sample row): the full step ran in 426 s with model writing and loading. `--layers 2,4,6` trains the same
architecture cut to that many decoder layers instead, at the same length: everything a layer adds to the GPU
(its NF4 weights, LoRA parameters, gradients and AdamW states; the layer inputs are offloaded) is the same for
every layer, so the peaks of the cut models lie on a line over the layer count. The script fits it, reports how
straight it is, and extrapolates it to the full model — an extrapolation from measured points, labelled as
such in the output (`extrapolated_peak_gib`), not a run of the full model.
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
    ap.add_argument(
        "--layers",
        default=None,
        type=layer_counts,
        help="comma list of decoder-layer counts: train the architecture cut to each (see above) instead of whole",
    )
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench/train/context needs a CUDA GPU"
    stop_engines_with_this_script()
    work = Path(args.work or tempfile.mkdtemp(prefix="tuna-ctx-"))
    settings = json.loads(args.settings)
    if args.layers:
        cut_models(args, work, settings)
        return
    model_dir = make_model_dir(args.model, work)
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


def layer_counts(spec: str) -> list[int]:
    """--layers: "2,4,6" → [2, 4, 6], each ≥ 1 (argparse turns the error into a usage message naming the flag)."""
    try:
        counts = [int(x) for x in spec.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of layer counts such as 2,4,6, got {spec!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"layer counts must be ≥ 1, got {spec!r}")
    return counts


def cut_models(args: argparse.Namespace, work: Path, settings: dict) -> None:
    """--layers: the model cut to each layer count, every length; a line through the peaks per length,
    extrapolated to the full layer count."""
    from tuna_engine.models.random_dir import write_random_model

    full = PRESETS[args.model]["config"]
    counts = args.layers
    res: dict = {
        "card": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "full_layers": full["num_hidden_layers"],
        "card_gib": args.card_gib,
        "settings": settings,
        "runs": [],
        "extrapolated": [],
    }

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))

    for n in [int(x) for x in args.lengths.split(",")]:
        points = []
        for layers in counts:
            model_dir = work / f"{args.model}-{layers}layers"
            write_random_model({**full, "num_hidden_layers": layers}, model_dir)
            # try_length and train_plan look the model up by its directory name
            PRESETS[model_dir.name] = {**PRESETS[args.model], "config": {**full, "num_hidden_layers": layers}}
            r = {"layers": layers, **try_length(model_dir, n, args.steps, work, args.card_gib, settings)}
            log(f"{n:>8} tokens, {layers} layers: {r}")
            res["runs"].append(r)
            save()
            if "error" in r:
                break
            points.append((layers, r["peak_gib"]))
        if len(points) >= 2:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
            worst = max(abs(y - (my + slope * (x - mx))) for x, y in points)
            peak = my + slope * (full["num_hidden_layers"] - mx)
            res["extrapolated"].append(
                {
                    "length": n,
                    "gib_per_layer": slope,
                    "worst_fit_error_gib": worst,
                    "extrapolated_peak_gib": peak,
                    "fits_card": peak <= args.card_gib,
                }
            )
            log(
                f"{n:>8} tokens: {slope:.3f} GiB a layer (fit within {worst:.3f} GiB) → {peak:.1f} GiB at "
                f"{full['num_hidden_layers']} layers (extrapolated; card budget {args.card_gib} GiB)"
            )
        save()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
