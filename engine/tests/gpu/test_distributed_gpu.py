"""FSDP2 / DDP on CUDA GPUs with NCCL (the lead runs these: `PYTHONPATH=engine .venv/bin/python -m pytest
engine/tests/gpu/test_distributed_gpu.py -q` on a machine with 4 GPUs; tests needing more GPUs than there are
skip). bf16 LoRA and QLoRA: the 2-GPU step losses follow the 1-GPU run's (bf16 tolerance), and its checkpoint
resumes on 1 GPU; a 200-step run on 4 GPUs follows the 1-GPU run with the same global batch; a CUDA
out-of-memory in a step ends with an OOM error event naming the phase and what to lower, checkpoints kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from helpers import (
    greedy_packs,
    lora_method,
    make_hf_model,
    make_plan,
    random_samples,
    run_engine,
    write_plan,
    write_shard,
)
from test_distributed import losses, torchrun

pytestmark = pytest.mark.gpu


def gpus(n: int) -> pytest.MarkDecorator:
    return pytest.mark.skipif(torch.cuda.device_count() < n, reason=f"needs {n} CUDA GPUs")


QLORA = lora_method("qlora", r=8, alpha=16)


@gpus(2)
@pytest.mark.parametrize("method,strategy", [("lora", "fsdp"), ("qlora", "fsdp"), ("qlora", "ddp")])
def test_two_gpus_follow_one_gpu(tmp_path: Path, method: str, strategy: str) -> None:
    model_dir = tmp_path / "model"
    make_hf_model(
        model_dir, "qwen3", hidden_size=256, intermediate_size=512, num_hidden_layers=4, dtype=torch.bfloat16
    )
    samples = random_samples(64, seed=7, max_len=60)
    shard = write_shard(tmp_path / "train.safetensors", samples, greedy_packs(samples, 128))
    runs = {}
    for name, n in (("one", 1), ("two", 2)):
        plan = make_plan(
            tmp_path / name,
            model_dir,
            [shard],
            max_steps=6,
            save_every=3,
            grad_accum=2,
            method=QLORA if method == "qlora" else None,
        )
        plan["device"] = "cuda"
        plan["model"]["dtype"] = "bfloat16"
        if n == 2:
            plan["distributed"] = {"strategy": strategy, "gpus": 2, "nnodes": 1}
        code, events, err = torchrun(write_plan(plan)) if n == 2 else run_engine("train", write_plan(plan))
        assert code == 0, err[-4000:]
        runs[name] = (plan, events)
    assert losses(runs["two"][1]) == pytest.approx(losses(runs["one"][1]), rel=2e-2)
    # The 2-GPU checkpoint of step 3 resumes on 1 GPU and follows the curve.
    plan = make_plan(
        tmp_path / "resume",
        model_dir,
        [shard],
        max_steps=6,
        grad_accum=2,
        method=QLORA if method == "qlora" else None,
    )
    plan.update(device="cuda", resume_from=str(Path(runs["two"][0]["output"]["checkpoints_dir"]) / "step-3"))
    plan["model"]["dtype"] = "bfloat16"
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err[-4000:]
    assert losses(events) == pytest.approx(losses(runs["one"][1])[3:], rel=2e-2)


# ---- 200 steps on 4 GPUs against 1 GPU (issue 6) -------------------------------------------------------------


def learnable_samples(n: int, seed: int) -> list[tuple[list[int], list[float]]]:
    """Samples a LoRA can learn within 200 steps: a random prompt (ids < 512, not trained) then an answer that
    counts up from a random start with a stride of 1, 2 or 3 (trained)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(8, 64, (1,), generator=g))
        a = int(torch.randint(16, 160, (1,), generator=g))
        start, stride = (
            int(torch.randint(0, 512, (1,), generator=g)),
            int(torch.randint(1, 4, (1,), generator=g)),
        )
        prompt = torch.randint(0, 512, (p,), generator=g).tolist()
        answer = [(start + stride * i) % 1024 for i in range(a)]
        out.append((prompt + answer, [0.0] * p + [1.0] * a))
    return out


@gpus(4)
def test_200_steps_on_4_gpus_follow_1_gpu(tmp_path: Path) -> None:
    """Qwen3-0.6B architecture (random bf16 weights), packed data (packs of up to 1024 tokens), LoRA r=16,
    global batch 8 packs: 1 GPU runs 4 micro-batches of 2 per step, each of 4 GPUs (FSDP) one. The curves agree
    within bf16 noise: every 20-step window's mean loss within 2%, and the loss fell (the test can fail)."""
    import json

    from tuna_engine.models.random_dir import write_random_model

    root = Path(__file__).resolve().parents[3]
    preset = json.loads((root / "src/model/presets.json").read_text())["qwen3-0.6b"]["config"]
    model_dir = tmp_path / "qwen3-0.6b"
    write_random_model(preset, model_dir)
    samples = learnable_samples(3000, seed=11)
    shard = write_shard(tmp_path / "train.safetensors", samples, greedy_packs(samples, 1024), max_length=1024)
    method = lora_method(r=16, alpha=32)
    curves = {}
    for name, n in (("one", 1), ("four", 4)):
        plan = make_plan(
            tmp_path / name,
            model_dir,
            [shard],
            method=method,
            max_steps=200,
            micro_batch_size=2,
            grad_accum=4,
            learning_rate=5e-4,
            warmup_steps=10,
            gradient_checkpointing=True,
        )
        plan.update(device="cuda")
        plan["model"]["dtype"] = "bfloat16"
        if n == 4:
            plan["distributed"] = {"strategy": "fsdp", "gpus": 4, "nnodes": 1}
        path = write_plan(plan)
        try:
            code, events, err = (
                torchrun(path, n=4, timeout=420) if n == 4 else run_engine("train", path, timeout=420)
            )
        except subprocess.TimeoutExpired as e:  # say how far it got: the last step events and the stderr tail
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            steps = [line for line in out.splitlines() if '"event": "step"' in line]
            pytest.fail(
                f"{name}: timed out after {e.timeout} s at {len(steps)} steps; last: {steps[-2:]}\n{err[-3000:]}"
            )
        assert code == 0, err[-4000:]
        curves[name] = losses(events)
        if n == 4:
            per_rank = [e["memory_gib_per_rank"] for e in events if e["event"] == "step"][-1]
            assert len(per_rank) == 4 and all(g > 0 for g in per_rank)
    one, four = curves["one"], curves["four"]
    assert len(one) == len(four) == 200
    windows = lambda c: [sum(c[i : i + 20]) / 20 for i in range(0, 200, 20)]  # noqa: E731
    for a, b in zip(windows(one), windows(four), strict=True):
        assert b == pytest.approx(a, rel=2e-2), (windows(one), windows(four))
    assert four[:5] == pytest.approx(one[:5], rel=5e-3)  # before bf16 differences compound
    assert windows(one)[-1] < windows(one)[0] - 1.0, windows(one)


# ---- CUDA out of memory in a step (issue 4) -------------------------------------------------------------------


def test_oom_in_first_step_names_phase_and_settings(tmp_path: Path) -> None:
    """A micro-batch far beyond a 6 GiB card budget (Qwen3-0.6B architecture, 16 × 2048 tokens, no gradient
    checkpointing): the run ends with one OOM error event naming the step, the micro-batch shape and the
    settings to lower."""
    import json

    from tuna_engine.models.random_dir import write_random_model

    root = Path(__file__).resolve().parents[3]
    preset = json.loads((root / "src/model/presets.json").read_text())["qwen3-0.6b"]["config"]
    write_random_model(preset, tmp_path / "m")
    samples = [(list(range(1, 2049)), [0.0] + [1.0] * 2047) for _ in range(32)]
    shard = write_shard(tmp_path / "t.safetensors", samples, max_length=2048)
    plan = make_plan(tmp_path, tmp_path / "m", [shard], micro_batch_size=16, grad_accum=1, max_steps=2)
    plan["device"] = "cuda"
    plan["model"]["dtype"] = "bfloat16"
    path = write_plan(plan)
    prelude = (
        "import torch\n"
        "torch.cuda.set_per_process_memory_fraction(6 * 2**30 / torch.cuda.get_device_properties(0).total_memory)"
    )
    code, events, err = run_engine("train", path, timeout=300, prelude=prelude)
    assert code != 0
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, (events, err[-3000:])
    e = errors[0]
    assert e["code"] == "OOM" and e["step"] == 1
    assert (
        "out of GPU memory during forward/backward of step 1 (micro-batch of [16, 2048] tokens)"
        in e["message"]
    )
    assert "micro_batch_size (now 16)" in e["hint"] and "qlora" in e["hint"]


def test_oom_mid_run_keeps_checkpoints(tmp_path: Path) -> None:
    """The card budget shrinks to almost nothing before step 3's forward (a real CUDA OOM from the caching
    allocator): the error event names step 3, and checkpoints step-1 and step-2 are complete and resumable."""

    from helpers import make_hf_model

    make_hf_model(tmp_path / "m", "qwen3", hidden_size=256, intermediate_size=512, dtype=torch.bfloat16)
    samples = random_samples(64, seed=7, max_len=60)
    shard = write_shard(tmp_path / "t.safetensors", samples, greedy_packs(samples, 128))
    plan = make_plan(tmp_path / "a", tmp_path / "m", [shard], max_steps=4, save_every=1, grad_accum=1)
    plan["device"] = "cuda"
    plan["model"]["dtype"] = "bfloat16"
    path = write_plan(plan)
    prelude = (
        "import torch\n"
        "import tuna_engine.train as t\n"
        "real, calls = t.weighted_ce_sum, []\n"
        "def squeezed(model, batch):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3 and model.training:\n"
        "        torch.cuda.empty_cache()\n"
        "        torch.cuda.set_per_process_memory_fraction(1e-6)\n"
        "    return real(model, batch)\n"
        "t.weighted_ce_sum = squeezed"
    )
    code, events, err = run_engine("train", path, timeout=300, prelude=prelude)
    errors = [e for e in events if e["event"] == "error"]
    assert code != 0 and len(errors) == 1, (events, err[-3000:])
    assert errors[0]["code"] == "OOM" and errors[0]["step"] == 3
    assert "forward/backward of step 3" in errors[0]["message"]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [1, 2]
    ckpts = Path(plan["output"]["checkpoints_dir"])
    assert sorted(d.name for d in ckpts.iterdir()) == ["step-1", "step-2"]  # no half-written directory
    # The kept checkpoint resumes (same plan, no squeeze) and finishes the run.
    plan_r = make_plan(tmp_path / "b", tmp_path / "m", [shard], max_steps=4, grad_accum=1)
    plan_r.update(device="cuda", resume_from=str(ckpts / "step-2"))
    plan_r["model"]["dtype"] = "bfloat16"
    code, ev, err = run_engine("train", write_plan(plan_r))
    assert code == 0, err[-3000:]
    assert [e["step"] for e in ev if e["event"] == "step"] == [3, 4]
