"""FSDP2 / DDP on 2 CUDA GPUs with NCCL (the lead runs these: `PYTHONPATH=engine .venv/bin/python -m pytest
engine/tests/gpu/test_distributed_gpu.py -q` on a machine with >= 2 GPUs). bf16 LoRA and QLoRA: the 2-GPU step
losses follow the 1-GPU run's (bf16 tolerance), and its checkpoint resumes on 1 GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    greedy_packs,
    make_hf_model,
    make_plan,
    random_samples,
    run_engine,
    write_plan,
    write_shard,
)
from test_distributed import losses, torchrun

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]

QLORA = {
    "type": "qlora",
    "lora": {
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": ["all-linear"],
        "use_rslora": False,
        "use_dora": False,
    },
}


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
