"""Training on several processes (distributed.py) proven on CPU: gloo, 2 processes on 127.0.0.1.

The engine runs as `tuna train --gpus 2` runs it: `python -m torch.distributed.run --nproc-per-node 2 -m
tuna_engine train --plan plan.json`. Reference: the same plan on one process (the single-process path)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    REPO_ROOT,
    engine_env,
    greedy_packs,
    make_hf_model,
    make_plan,
    random_samples,
    run_engine,
    write_plan,
    write_shard,
)
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from tuna_engine import lora
from tuna_engine.data import Batch, micro_batches, read_shards
from tuna_engine.distributed import Dist, full, setup, shutdown, unwrap
from tuna_engine.errors import EngineError
from tuna_engine.lora import set_lora_add, set_lora_compute
from tuna_engine.models import Quant4bit, load_for_training
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import weighted_ce_sum

FSDP = {"strategy": "fsdp", "gpus": 2, "nnodes": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    plan_path: Path, n: int = 2, program: list[str] | None = None, timeout: float = 120
) -> tuple[int, list[dict[str, Any]], str]:
    """Run the engine under torchrun with `n` processes; (exit code, rank 0's events, stderr of all)."""
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", "--nnodes=1"]
    launch += ["--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    cmd = launch + (program or ["-m", "tuna_engine", "train", "--plan", str(plan_path)])
    p = subprocess.run(cmd, cwd=REPO_ROOT, env=engine_env(), capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    err = p.stderr
    if p.returncode != 0:
        # How far rank 0 got: a crash after its "done" event is a teardown problem, not training's.
        err += f"\n[rank 0's last events: {[e.get('event') for e in events[-4:]]}]"
    return p.returncode, events, err


def losses(events: list[dict[str, Any]]) -> list[float]:
    return [e["loss"] for e in events if e["event"] == "step"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model and data; a 1-process run and a 2-process run of the same plan (4 steps, checkpoints at
    2 and 4) with strategy "auto", which the engine resolves to FSDP on CPU. grad_accum 2 → each of the 2
    processes runs one micro-batch of 2 packs per step."""
    tmp = tmp_path_factory.mktemp("dist")
    model_dir = tmp / "model"
    make_hf_model(model_dir, "qwen3")
    samples = random_samples(40, seed=7)
    shard = write_shard(tmp / "train.safetensors", samples, greedy_packs(samples, 40))
    val = write_shard(tmp / "val.safetensors", random_samples(4, seed=8))
    out: dict[str, Any] = {"tmp": tmp, "model": model_dir, "shard": shard, "val": val}
    for name, extra in (("one", None), ("two", {**FSDP, "strategy": "auto"})):
        plan = make_plan(tmp / name, model_dir, [shard], [val], max_steps=4, save_every=2, eval_every=2)
        if extra:
            plan["distributed"] = extra
        path = write_plan(plan)
        code, events, err = torchrun(path) if extra else run_engine("train", path)
        assert code == 0, err
        out[name] = {"plan": plan, "events": events, "stderr": err}
    return out


def test_two_processes_reproduce_one_process_curve(runs: dict[str, Any]) -> None:
    one, two = runs["one"]["events"], runs["two"]["events"]
    start = next(e for e in two if e["event"] == "start")
    assert start["world_size"] == 2 and start["strategy"] == "fsdp"  # auto, resolved on CPU (gloo)
    assert "distributed.strategy auto: fsdp" in runs["two"]["stderr"]
    assert losses(two) == pytest.approx(losses(one), abs=1e-5) and len(losses(one)) == 4
    norms = lambda ev: [e["grad_norm"] for e in ev if e["event"] == "step"]  # noqa: E731
    assert norms(two) == pytest.approx(norms(one), rel=1e-4)
    assert [e["trained_tokens"] for e in two if e["event"] == "step"] == [
        e["trained_tokens"] for e in one if e["event"] == "step"
    ]
    vals = lambda ev: [e["val_loss"] for e in ev if e["event"] == "eval"]  # noqa: E731
    assert vals(two) == pytest.approx(vals(one), abs=1e-5)
    # Only rank 0 speaks: one start and one done event, both ranks log to stderr with their prefix.
    assert [e["event"] for e in two].count("start") == 1 and [e["event"] for e in two].count("done") == 1
    assert "[rank 0]" in runs["two"]["stderr"] and "[rank 1]" in runs["two"]["stderr"]
    # Each rank holds about half of the parameters' storage (FSDP2 shards every parameter on dim 0).
    held = [
        int(line.split("holds ")[1].split(" ")[0].replace(",", ""))
        for line in runs["two"]["stderr"].splitlines()
        if "this rank holds" in line
    ]
    total = start["params_total"]
    assert len(held) == 2 and all(abs(h - total / 2) <= total * 0.02 for h in held), (held, total)


def test_checkpoint_is_the_single_process_layout(runs: dict[str, Any]) -> None:
    """The 2-process checkpoint holds full tensors in the files a single process writes (same names, shapes,
    values within fp32 noise; optimizer state keyed the same way)."""
    c1 = Path(runs["one"]["plan"]["output"]["checkpoints_dir"]) / "step-2"
    c2 = Path(runs["two"]["plan"]["output"]["checkpoints_dir"]) / "step-2"
    a1, a2 = (
        load_file(str(c1 / "adapter_model.safetensors")),
        load_file(str(c2 / "adapter_model.safetensors")),
    )
    assert a1.keys() == a2.keys()
    for k in a1:
        torch.testing.assert_close(a2[k], a1[k], atol=1e-6, rtol=1e-5)
    o1 = torch.load(c1 / "optimizer.pt", weights_only=False)
    o2 = torch.load(c2 / "optimizer.pt", weights_only=False)
    assert o1["state"].keys() == o2["state"].keys()
    for i in o1["state"]:
        for k in ("exp_avg", "exp_avg_sq"):
            assert type(o2["state"][i][k]) is torch.Tensor  # a plain full tensor, not a DTensor shard
            torch.testing.assert_close(o2["state"][i][k], o1["state"][i][k], atol=1e-7, rtol=1e-4)
    assert json.loads((c2 / "trainer_state.json").read_text())["data_position"] == 8
    adapter = Path(runs["two"]["plan"]["output"]["adapter_dir"]) / "adapter_model.safetensors"
    assert load_file(str(adapter)).keys() == a1.keys()


def _resume_plan(runs: dict[str, Any], name: str, distributed: dict[str, Any] | None) -> Path:
    plan = make_plan(
        runs["tmp"] / name,
        runs["model"],
        [runs["shard"]],
        [runs["val"]],
        max_steps=4,
        save_every=2,
        eval_every=2,
    )
    plan["resume_from"] = str(Path(runs["two"]["plan"]["output"]["checkpoints_dir"]) / "step-2")
    if distributed:
        plan["distributed"] = distributed
    return write_plan(plan)


def test_two_process_checkpoint_resumes_on_one_process(runs: dict[str, Any]) -> None:
    code, events, err = run_engine("train", _resume_plan(runs, "resume1", None))
    assert code == 0, err
    assert next(e for e in events if e["event"] == "start")["start_step"] == 2
    assert losses(events) == pytest.approx(losses(runs["one"]["events"])[2:], abs=1e-5)


def test_two_process_checkpoint_resumes_on_two_processes(runs: dict[str, Any]) -> None:
    code, events, err = torchrun(_resume_plan(runs, "resume2", FSDP))
    assert code == 0, err
    assert losses(events) == pytest.approx(losses(runs["one"]["events"])[2:], abs=1e-5)


def test_two_nodes_of_one_process_reproduce_two_processes_on_one_node(runs: dict[str, Any]) -> None:
    """Multi-node as `tuna train --gpus 1 --nnodes 2 --node-rank 0|1 --master-addr … --master-port …` launches it
    (src/engine/runner.ts): two torchrun launchers on 127.0.0.1, one process each, static rendezvous on the
    master's port. World size 2 again, so the curve is the one-node 2-process run's; only global rank 0 (node 0)
    speaks the event protocol."""
    plan = make_plan(runs["tmp"] / "nodes", runs["model"], [runs["shard"]], max_steps=4)
    plan["distributed"] = {"strategy": "fsdp", "gpus": 1, "nnodes": 2}
    path = write_plan(plan)
    port = free_port()
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--nnodes=2"]
            + [f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}"]
            + ["-m", "tuna_engine", "train", "--plan", str(path)],
            cwd=REPO_ROOT,
            env=engine_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=180) for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], [o[1][-3000:] for o in outs]
    events = [[json.loads(line) for line in o[0].splitlines() if line.startswith("{")] for o in outs]
    assert events[1] == []  # node 1 holds global rank 1: silent
    start = next(e for e in events[0] if e["event"] == "start")
    assert start["world_size"] == 2
    assert losses(events[0]) == pytest.approx(losses(runs["two"]["events"]), abs=1e-5)
    assert len(losses(events[0])) == 4


def test_error_on_rank_1_surfaces_with_its_message(runs: dict[str, Any]) -> None:
    """Rank 1 fails in step 2 (its forward raises); torchrun stops rank 0, whose error event is rank 1's."""
    plan = make_plan(runs["tmp"] / "fail", runs["model"], [runs["shard"]], max_steps=4)
    plan["distributed"] = FSDP
    path = write_plan(plan)
    fault = (
        "import os, sys; import tuna_engine.train as t; from tuna_engine.errors import EngineError\n"
        "real = t.weighted_ce_sum\n"
        "calls = []\n"
        "def broken(model, batch):\n"
        "    calls.append(1)\n"
        "    if os.environ['RANK'] == '1' and len(calls) == 2 and model.training:\n"
        "        raise EngineError('DATA_INVALID', 'shard 7 of rank one is unreadable', hint='re-run tuna data')\n"
        "    return real(model, batch)\n"
        "t.weighted_ce_sum = broken\n"
        "from tuna_engine.__main__ import main\n"
        f"sys.exit(main(['train', '--plan', {str(path)!r}]))\n"
    )
    code, events, err = torchrun(path, program=["--no-python", sys.executable, "-c", fault])
    assert code != 0
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, (events, err[-3000:])
    assert errors[0]["code"] == "DATA_INVALID"
    assert errors[0]["message"] == "rank 1: shard 7 of rank one is unreadable"
    assert errors[0]["hint"] == "re-run tuna data"
    assert [e["step"] for e in events if e["event"] == "step"] == [1]
    rank1 = json.loads((Path(plan["run_dir"]) / "errors" / "rank-1.json").read_text())
    assert rank1["rank"] == 1 and rank1["code"] == "DATA_INVALID"


def test_grad_accum_must_divide_by_world() -> None:
    d = Dist(rank=0, world=2, local_rank=0, strategy="fsdp")
    assert d.local_grad_accum(4) == 2
    with pytest.raises(EngineError) as e:
        d.local_grad_accum(3)
    assert e.value.code == "PLAN_INVALID" and e.value.field == "train.grad_accum"
    assert "train.grad_accum: 3 is not divisible by the 2 processes" in e.value.message
    assert d.rank_slice(list(range(8))) == [0, 1, 2, 3]
    assert Dist(rank=1, world=2, local_rank=1, strategy="fsdp").rank_slice(list(range(8))) == [4, 5, 6, 7]


# ---- one step on 2 in-process ranks (torch.multiprocessing + gloo) against one process ----------------------

LORA = LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False)
# "lora_epilogue": LoRA on the fast path with TUNA_LORA_ADD=epilogue (lora.LoraLinearFunction, which takes the frozen
# weights as arguments: under FSDP2 the unsharded ones of the forward, saved for backward).
CASES = (
    ("lora", "fsdp"),
    ("qlora", "fsdp"),
    ("lora", "ddp"),
    ("qlora", "ddp"),
    ("lora_epilogue", "fsdp"),
    ("lora_epilogue", "ddp"),
)


def _build(model_dir: str, method: str) -> torch.nn.Module:
    quant = Quant4bit() if method == "qlora" else None
    base_method = "lora" if method == "lora_epilogue" else method
    model = load_for_training(model_dir, "float32", torch.device("cpu"), base_method, LORA, None, 1, quant)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    set_lora_add("epilogue" if method == "lora_epilogue" else None)
    set_lora_compute(model, "auto" if method == "lora_epilogue" else "exact")
    return model


def _one_step(model: torch.nn.Module, batches: list[Batch], weight: float, scale: float) -> float:
    total = 0.0
    for b in batches:
        ce = weighted_ce_sum(model, b)
        (ce / weight * scale).backward()
        total += float(ce.detach())
    return total


def _rank_worker(rank: int, model_dir: str, shard: str, port: int, out: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    results: dict[str, Any] = {}
    epilogue_calls = [0]  # LoraLinearFunction's forward calls, so that "lora_epilogue" is shown to take it
    forward = lora.LoraLinearFunction.forward

    def counted(ctx: Any, *args: Any) -> Any:
        epilogue_calls[0] += 1
        return forward(ctx, *args)

    lora.LoraLinearFunction.forward = staticmethod(counted)  # type: ignore[method-assign]
    for method, strategy in CASES:
        epilogue_calls[0] = 0
        d = setup(strategy, "cpu")  # type: ignore[arg-type]
        assert d is not None
        model = _build(model_dir, method)
        names = {n: p.dtype for n, p in model.named_parameters()}
        model = d.wrap(model, torch.device("cpu"))
        batches = micro_batches(d.rank_slice(read_shards([shard])[:8]), 2)
        (weight,) = d.all_reduce_sum([sum(b.trained_tokens for b in batches)], torch.device("cpu"))
        with d.grad_sync(model, last=True):
            ce = _one_step(model, batches, weight, d.world)
        (ce_total,) = d.all_reduce_sum([ce], torch.device("cpu"))
        core = unwrap(model)
        grads = {n: full(p.grad).clone() for n, p in core.named_parameters() if p.requires_grad}
        # Bytes, not elements: under FSDP the NF4 codes are held as bf16-typed bytes (use_float_storage).
        local = [q.to_local() if isinstance(q, DTensor) else q for q in unwrap(model).parameters()]
        held = sum(t.numel() * t.element_size() for t in local)
        if rank == 0:
            results[f"{method}/{strategy}"] = {
                "loss": ce_total / weight,
                "grads": grads,
                "held": held,
                "dtypes": {n: str(t) for n, t in names.items()},
                "epilogue_calls": epilogue_calls[0],
            }
        torch.distributed.barrier()
    if rank == 0:
        torch.save(results, out)
    shutdown(d)


def test_one_step_loss_and_gradients_equal_single_process(tmp_path: Path) -> None:
    """LoRA and QLoRA (NF4 base: uint8 `weight`/`absmax` parameters) under FSDP2 and DDP on 2 gloo ranks: the
    step's loss and the gathered LoRA gradients equal one process's within 1e-5 (fp32); FSDP ranks hold about
    half of the parameter storage, uint8 included."""
    model_dir = tmp_path / "model"
    make_hf_model(model_dir, "qwen3")
    samples = random_samples(24, seed=3)
    shard = write_shard(tmp_path / "train.safetensors", samples, greedy_packs(samples, 40))
    out = tmp_path / "results.pt"
    torch.multiprocessing.spawn(
        _rank_worker, args=(str(model_dir), str(shard), free_port(), str(out)), nprocs=2, join=True
    )
    got = torch.load(out, weights_only=False)
    for method, strategy in CASES:
        r = got[f"{method}/{strategy}"]
        model = _build(str(model_dir), method)
        batches = micro_batches(read_shards([str(shard)])[:8], 2)
        weight = sum(b.trained_tokens for b in batches)
        try:
            loss = _one_step(model, batches, weight, 1.0) / weight
        finally:
            set_lora_add(None)  # _build's setting is process-wide
        assert r["loss"] == pytest.approx(loss, abs=1e-5), (method, strategy)
        ref = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert r["grads"].keys() == ref.keys() and len(ref) > 0
        for n, g in ref.items():
            torch.testing.assert_close(r["grads"][n], g, atol=1e-5, rtol=1e-4, msg=f"{method}/{strategy} {n}")
        storage = sum(p.numel() * p.element_size() for p in model.parameters())
        if strategy == "fsdp":
            assert abs(r["held"] - storage / 2) <= storage * 0.02, (method, r["held"], storage)
        else:
            assert r["held"] == storage
        if method == "qlora":
            assert r["dtypes"]["model.layers.0.mlp.up_proj.base_layer.weight"] == "torch.uint8"
        assert (r["epilogue_calls"] > 0) == (method == "lora_epilogue"), (
            method,
            strategy,
            r["epilogue_calls"],
        )
