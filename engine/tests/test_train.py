"""The `train` and `merge` commands end to end, run as TypeScript runs them (a subprocess reading events)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

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

from tuna_engine.checkpoint import load_weights_into
from tuna_engine.data import micro_batches, read_shards
from tuna_engine.errors import EngineError
from tuna_engine.models import load_model
from tuna_engine.protocol import parse_train_plan
from tuna_engine.train import optimizer_step, rebuild_rotary_layers, set_compiled_recompute, weighted_ce_sum


def steps(events):
    return [e for e in events if e["event"] == "step"]


def only(events, kind):
    found = [e for e in events if e["event"] == kind]
    assert len(found) == 1, events
    return found[0]


def test_grad_accum_is_token_weighted(tmp_path: Path) -> None:
    """Two micro-batches with very different trained-token counts: the step loss (and its gradient, seen
    through grad_norm) is Σw·CE/Σw over both, which a mean of micro-batch means would not give."""
    model_dir = tmp_path / "model"
    make_hf_model(model_dir, "qwen3")
    short = random_samples(1, min_len=6, max_len=6, seed=1)
    long = random_samples(1, min_len=60, max_len=60, seed=2, prompt_frac=0.1)
    shard = write_shard(tmp_path / "train.safetensors", short + long)
    plan = make_plan(
        tmp_path, model_dir, [shard], micro_batch_size=1, grad_accum=2, max_steps=1, max_grad_norm=0.0
    )
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    step = steps(events)[0]

    p = parse_train_plan(plan)
    model = load_model(str(model_dir), "float32", torch.device("cpu"), p.method.lora, seed=p.train.seed)
    for n, prm in model.named_parameters():
        prm.requires_grad_(".lora_" in n)
    batches = micro_batches(read_shards([str(shard)]), 1)
    sums = [weighted_ce_sum(model, b) for b in batches]
    weights = [b.trained_tokens for b in batches]
    token_weighted = sum(sums) / sum(weights)
    token_weighted.backward()
    grad_norm = math.sqrt(sum(float(q.grad.pow(2).sum()) for q in model.parameters() if q.grad is not None))
    mean_of_means = float(sum(s / w for s, w in zip(sums, weights, strict=True))) / 2

    assert step["trained_tokens"] == sum(weights)
    assert step["loss"] == pytest.approx(float(token_weighted), rel=1e-5)
    assert abs(step["loss"] - mean_of_means) > 1e-3  # the two definitions really differ on this data
    assert step["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)


def small_run(tmp_path: Path, **train):
    model_dir = tmp_path / "model"
    make_hf_model(model_dir, "qwen3")
    samples = random_samples(24, seed=7)
    shard = write_shard(tmp_path / "train.safetensors", samples, greedy_packs(samples, 40))
    val = write_shard(tmp_path / "val.safetensors", random_samples(4, seed=8))
    return model_dir, shard, val


@pytest.mark.parametrize("dora", [False, True])
def test_adapter_loads_in_peft_and_merge_matches(tmp_path: Path, dora: bool) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir, shard, _ = small_run(tmp_path)
    method = {
        "type": "lora",
        "lora": {
            "r": 4,
            "alpha": 8,
            "dropout": 0.0,
            "target_modules": ["all-linear"],
            "use_rslora": True,
            "use_dora": dora,
        },
    }
    plan = make_plan(tmp_path, model_dir, [shard], method=method, max_steps=3, learning_rate=2e-2)
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    adapter = Path(only(events, "done")["adapter_dir"])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["use_dora"] is dora and cfg["use_rslora"] is True
    assert cfg["base_model_name_or_path"] == "tiny-test-model"

    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, adapter).eval()
    ours = load_model(
        str(model_dir), "float32", torch.device("cpu"), parse_train_plan(plan).method.lora
    ).eval()
    load_weights_into(ours, adapter, lora=True)
    with torch.no_grad():
        ref = pm(ids).logits
        pos = torch.arange(20).expand(2, 20)
        got = ours.logits(ours(ids, pos, torch.zeros_like(ids)))
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5

    # The trained adapter changed the model (otherwise the comparison above proves little).
    fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert float((fresh(ids).logits - ref).abs().max()) > 1e-3

    # merge → a full HF directory whose logits equal base + adapter.
    (model_dir / "chat_template.jinja").write_text("{{ messages }}")
    merge_plan = {
        "version": 1,
        "command": "merge",
        "model": {"path": str(model_dir), "dtype": "float32"},
        "adapter_dir": str(adapter),
        "output_dir": str(tmp_path / "merged"),
        "device": "cpu",
        "max_shard_bytes": 40_000,
    }
    mp = tmp_path / "merge_plan.json"
    mp.write_text(json.dumps(merge_plan))
    code, events, err = run_engine("merge", mp)
    assert code == 0, err
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "model.safetensors.index.json").is_file()
    assert len(list(merged_dir.glob("model-*-of-*.safetensors"))) > 1
    assert (merged_dir / "chat_template.jinja").read_text() == "{{ messages }}"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        m = merged(ids).logits
    assert float((m - ref).abs().max() / ref.abs().max()) < 1e-5


def read_events(proc: subprocess.Popen, until) -> list[dict]:
    events = []
    assert proc.stdout is not None
    for line in proc.stdout:
        events.append(json.loads(line))
        if until(events[-1]):
            break
    return events


def test_resume_after_sigkill_reproduces_loss_curve(tmp_path: Path) -> None:
    """Kill -9 a run right after a checkpoint, resume it, and get bit-identical step losses (LoRA dropout on,
    so RNG state matters, and more steps than one epoch, so the data position matters)."""
    model_dir, shard, val = small_run(tmp_path)
    method = {
        "type": "lora",
        "lora": {
            "r": 4,
            "alpha": 8,
            "dropout": 0.1,
            "target_modules": ["all-linear"],
            "use_rslora": False,
            "use_dora": False,
        },
    }
    kw = dict(method=method, max_steps=30, save_every=4, eval_every=4, micro_batch_size=2, grad_accum=2)
    full = make_plan(tmp_path / "a", model_dir, [shard], [val], **kw)
    code, ref_events, err = run_engine("train", write_plan(full))
    assert code == 0, err
    ref_losses = {e["step"]: e["loss"] for e in steps(ref_events)}
    assert len(ref_losses) == 30

    plan = make_plan(tmp_path / "b", model_dir, [shard], [val], **kw)
    path = write_plan(plan)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuna_engine", "train", "--plan", str(path)],
        cwd=REPO_ROOT,
        env=engine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    first = read_events(proc, lambda e: e["event"] == "checkpoint" and e["step"] == 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(e["step"] for e in steps(first))
    assert killed_at < 30

    resumed = dict(plan, resume_from=plan["run_dir"])
    code, events, err = run_engine("train", write_plan(resumed))
    assert code == 0, err
    start = only(events, "start")["start_step"]
    assert 8 <= start < 30
    got = {e["step"]: e["loss"] for e in steps(events)}
    assert sorted(got) == list(range(start + 1, 31))
    for s, loss in got.items():
        assert loss == ref_losses[s], (s, loss, ref_losses[s])  # exact, not approximate
    ref_val = {e["step"]: e["val_loss"] for e in ref_events if e["event"] == "eval"}
    for e in events:
        if e["event"] == "eval":
            assert e["val_loss"] == ref_val[e["step"]]


def test_crash_while_saving_leaves_previous_checkpoint(tmp_path: Path) -> None:
    """A half-written checkpoint (temp dir, never renamed) is ignored by resume."""
    model_dir, shard, _ = small_run(tmp_path)
    plan = make_plan(tmp_path, model_dir, [shard], max_steps=4, save_every=2)
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    ck = Path(plan["output"]["checkpoints_dir"])
    partial = ck / ".tmp-step-6-12345"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    code, events, err = run_engine(
        "train", write_plan(dict(plan, resume_from=plan["run_dir"], train=dict(plan["train"], max_steps=6)))
    )
    assert code == 0, err
    assert only(events, "start")["start_step"] == 4
    # `best/` holds weights only: resuming from it is refused with a reason, not a traceback.
    plan = make_plan(tmp_path / "c", model_dir, [shard], [shard], max_steps=2, eval_every=1)
    assert run_engine("train", write_plan(plan))[0] == 0
    best = Path(plan["output"]["checkpoints_dir"]) / "best"
    code, events, _ = run_engine("train", write_plan(dict(plan, resume_from=str(best))))
    assert code != 0 and only(events, "error")["code"] == "RESUME_NOT_FOUND"


def test_full_finetune_with_frozen_layers_writes_hf_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir, shard, _ = small_run(tmp_path)
    method = {"type": "full", "trainable_layers": [1], "trainable_modules": ["mlp"]}
    plan = make_plan(tmp_path, model_dir, [shard], method=method, max_steps=2, learning_rate=1e-2)
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    start = only(events, "start")
    assert start["params_trainable"] == 3 * 64 * 128
    out = Path(only(events, "done")["adapter_dir"])
    before = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.1.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}


def test_early_stopping_keeps_best(tmp_path: Path) -> None:
    """A learning rate high enough to make validation loss worsen: training stops after `patience` evals
    without improvement and the exported adapter is the best checkpoint's."""
    model_dir, shard, val = small_run(tmp_path)
    plan = make_plan(
        tmp_path,
        model_dir,
        [shard],
        [val],
        max_steps=30,
        eval_every=1,
        learning_rate=0.3,
        warmup_steps=0,
        scheduler="constant",
        early_stopping_patience=2,
        max_grad_norm=0.0,
    )
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    evals = [e for e in events if e["event"] == "eval"]
    done = only(events, "done")
    assert done["steps"] < 30
    best = min(evals, key=lambda e: e["val_loss"])
    assert done["best_step"] == best["step"] and done["best_val_loss"] == best["val_loss"]
    assert [e["step"] for e in evals][-1] == best["step"] + 2
    exported = Path(done["adapter_dir"]) / "adapter_model.safetensors"
    best_file = Path(plan["output"]["checkpoints_dir"]) / "best" / "adapter_model.safetensors"
    assert exported.read_bytes() == best_file.read_bytes()


# ---- error events -----------------------------------------------------------------------------------------


def test_bad_plan_field_is_named(tmp_path: Path) -> None:
    model_dir, shard, _ = small_run(tmp_path)
    plan = make_plan(tmp_path, model_dir, [shard], micro_batch_size=0)
    plan["method"]["lora"]["target_modules"] = ["qkv"]
    code, events, _ = run_engine("train", write_plan(plan))
    err = only(events, "error")
    assert code != 0 and err["code"] == "PLAN_INVALID"
    assert "train.micro_batch_size: expected an integer >= 1, got 0" in err["message"]
    assert 'method.lora.target_modules: unknown module "qkv"' in err["message"]


def test_missing_model_file(tmp_path: Path) -> None:
    model_dir, shard, _ = small_run(tmp_path)
    (model_dir / "model.safetensors").unlink()
    code, events, _ = run_engine("train", write_plan(make_plan(tmp_path, model_dir, [shard])))
    assert code != 0 and only(events, "error")["code"] == "MODEL_FILE_MISSING"


def test_unknown_architecture(tmp_path: Path) -> None:
    model_dir, shard, _ = small_run(tmp_path)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(model_type="gemma3", architectures=["Gemma3ForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(cfg))
    code, events, _ = run_engine("train", write_plan(make_plan(tmp_path, model_dir, [shard])))
    err = only(events, "error")
    assert code != 0 and err["code"] == "UNSUPPORTED_ARCHITECTURE"
    assert "config.json: model_type: 'gemma3'" in err["message"] and "Gemma3ForCausalLM" in err["message"]
    assert "the generic transformers backend (AutoModelForCausalLM + peft) was tried" in err["message"]


def test_nan_loss_names_step_and_last_checkpoint(tmp_path: Path) -> None:
    """A NaN in the weights makes the first step's loss NaN → NAN_LOSS naming the step, before any update."""
    from safetensors.torch import load_file, save_file

    model_dir, shard, _ = small_run(tmp_path)
    w = load_file(str(model_dir / "model.safetensors"))
    w["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(w, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    code, events, _ = run_engine("train", write_plan(make_plan(tmp_path, model_dir, [shard])))
    err = only(events, "error")
    assert code != 0 and err["code"] == "NAN_LOSS" and err["step"] == 1
    assert "last good checkpoint: none" in err["message"]
    assert not steps(events)


def test_sigterm_saves_nothing_and_reports_interrupted(tmp_path: Path) -> None:
    model_dir, shard, _ = small_run(tmp_path)
    plan = make_plan(tmp_path, model_dir, [shard], max_steps=100000, save_every=50000)
    path = write_plan(plan)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuna_engine", "train", "--plan", str(path)],
        cwd=REPO_ROOT,
        env=engine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    read_events(proc, lambda e: e["event"] == "step" and e["step"] == 3)
    proc.send_signal(signal.SIGTERM)
    rest = [json.loads(line) for line in proc.stdout]  # type: ignore[union-attr]
    proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert rest[-1]["event"] == "error" and rest[-1]["code"] == "INTERRUPTED"
    assert not Path(plan["output"]["checkpoints_dir"]).exists()
    assert not Path(plan["output"]["adapter_dir"]).exists()


def test_a_stop_signal_during_an_error_report_keeps_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun stops every rank as soon as one fails, so a rank's SIGTERM can land while it reports its own error
    (once seen in CI: rank 0 exited without any error event). The report finishes first: here the engine fails
    on a bad TUNA_ATTENTION and signals itself from inside the report — the PLAN_INVALID event still comes out."""
    model_dir, shard, _ = small_run(tmp_path)
    path = write_plan(make_plan(tmp_path, model_dir, [shard], max_steps=1))
    monkeypatch.setenv("TUNA_ATTENTION", "flash3")
    prelude = (
        "import os, signal\n"
        "import tuna_engine.__main__ as m\n"
        "real_log = m.log\n"
        "def log(message):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    real_log(message)\n"
        "m.log = log"
    )
    code, events, err = run_engine("train", path, prelude=prelude)
    assert code == 1, err[-2000:]
    assert [(e["event"], e["code"]) for e in events] == [("error", "PLAN_INVALID")], (events, err[-2000:])


# ---- float16: dynamic loss scaling (loss_scale.py) -----------------------------------------------------------


def test_loss_scaler_rule() -> None:
    """GradScaler's rule: unscale divides the gradients; an overflow skips and halves; growth_interval finite
    steps double; a scale that collapses below 2^-24 is an error naming the step."""
    from tuna_engine.errors import EngineError
    from tuna_engine.loss_scale import LossScaler, for_dtype

    assert for_dtype("bfloat16") is None and for_dtype("float32") is None
    s = for_dtype("float16")
    assert s is not None and s.scale == 2.0**16
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 8.0)
    s = LossScaler(scale=4.0, growth_interval=2)
    s.unscale_([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert s.update(False, step=1) is False and s.scale == 2.0 and s.skipped_steps == 1
    assert s.update(True, step=2) is True and s.scale == 2.0
    assert s.update(True, step=3) is True and s.scale == 4.0 and s.good_steps == 0
    assert LossScaler.from_state(s.state_dict()) == s
    tiny = LossScaler(scale=2.0**-24)
    with pytest.raises(EngineError) as e:
        tiny.update(False, step=9)
    assert e.value.code == "NAN_LOSS" and "step 9" in e.value.message


def _fp16_run(tmp: Path, model: Path, shard: Path, name: str, init_exp: int | None, **train) -> tuple:
    """The engine on a float16 model on CPU; `init_exp` patches the initial loss scale to 2**init_exp and the
    growth interval to 2 (a real overflow, forced by a scale fp16 cannot hold)."""
    plan = make_plan(tmp / name, model, [shard], **train)
    plan["model"]["dtype"] = "float16"
    path = write_plan(plan)
    if init_exp is None:
        code, events, err = run_engine("train", path)
        return code, events, err, plan
    prelude = f"import tuna_engine.loss_scale as ls; ls.INIT_SCALE = 2.0**{init_exp}; ls.GROWTH_INTERVAL = 2"
    code, events, err = run_engine("train", path, prelude=prelude)
    return code, events, err, plan


def test_fp16_loss_scaling_skips_overflows_and_resumes_exactly(tmp_path: Path) -> None:
    make_hf_model(tmp_path / "m", "qwen3")
    samples = random_samples(40, seed=7)
    shard = write_shard(tmp_path / "t.safetensors", samples, greedy_packs(samples, 40))

    # Default scale (2^16): no overflow on this model; fp16 follows the fp32 curve closely.
    code, fp16, err, _ = _fp16_run(tmp_path, tmp_path / "m", shard, "plain", None, max_steps=3)
    assert code == 0, err
    ref_plan = make_plan(tmp_path / "fp32", tmp_path / "m", [shard], max_steps=3)
    code, fp32, err = run_engine("train", write_plan(ref_plan))
    assert code == 0, err
    assert [e["loss"] for e in steps(fp16)] == pytest.approx([e["loss"] for e in steps(fp32)], rel=1e-3)
    assert [e["loss_scale"] for e in steps(fp16)] == [2.0**16] * 3
    assert "loss_scale" not in steps(fp32)[0]

    # 2^21 overflows this model's fp16 gradients: step 1 is skipped, the scale halves, grows after 2 good steps.
    code, events, err, plan = _fp16_run(tmp_path, tmp_path / "m", shard, "ovf", 21, max_steps=8, save_every=3)
    assert code == 0, err
    st = steps(events)
    assert st[0]["loss_scale"] == 2.0**21 and st[0]["skipped_steps"] == 1 and st[0]["grad_norm"] == -1.0
    assert st[1]["loss_scale"] == 2.0**20 and math.isfinite(st[1]["grad_norm"]) and st[1]["grad_norm"] > 0
    assert st[3]["loss_scale"] == 2.0**21  # grown after steps 2 and 3
    logs = [e["message"] for e in events if e["event"] == "log" and "overflowed" in e["message"]]
    assert logs[0].startswith("step 1: float16 gradients overflowed at loss scale 2.09715e+06")
    assert len(logs) == st[-1]["skipped_steps"]
    saved = json.loads(
        (Path(plan["output"]["checkpoints_dir"]) / "step-3" / "trainer_state.json").read_text()
    )
    assert saved["loss_scale"]["scale"] == 2.0**21 and saved["loss_scale"]["skipped_steps"] == 1

    # Resumed from step 3, the run replays steps 4..8 exactly: losses, scales, skips.
    plan_r = make_plan(tmp_path / "resume", tmp_path / "m", [shard], max_steps=8, save_every=3)
    plan_r["model"]["dtype"] = "float16"
    plan_r["resume_from"] = str(Path(plan["output"]["checkpoints_dir"]) / "step-3")
    code, resumed, err = run_engine("train", write_plan(plan_r))
    assert code == 0, err
    keys = ("step", "loss", "loss_scale", "skipped_steps", "grad_norm")
    assert [[e[k] for k in keys] for e in steps(resumed)] == [[e[k] for k in keys] for e in st[3:]]


def test_fp16_skipped_steps_do_not_update(tmp_path: Path) -> None:
    """At a scale where every step overflows, no step updates anything: the adapter is still peft's initial
    one (B = 0), and the loss equals the no-update model's on every step."""
    from safetensors.torch import load_file

    make_hf_model(tmp_path / "m", "qwen3")
    samples = random_samples(16, seed=3)
    shard = write_shard(tmp_path / "t.safetensors", samples, greedy_packs(samples, 40))
    code, events, err, plan = _fp16_run(tmp_path, tmp_path / "m", shard, "skip", 40, max_steps=2)
    assert code == 0, err
    assert [e["skipped_steps"] for e in steps(events)] == [1, 2]
    adapter = load_file(str(Path(plan["output"]["adapter_dir"]) / "adapter_model.safetensors"))
    b = [v for k, v in adapter.items() if "lora_B" in k]
    assert b and all(torch.count_nonzero(v) == 0 for v in b)


@pytest.mark.parametrize("on_device", [True, False])
@pytest.mark.parametrize("bad", [None, "loss", "gradient"])
def test_optimizer_step_skips_non_finite_steps(on_device: bool, bad: str | None) -> None:
    """The step is AdamW's for finite numbers; an inf loss or a NaN gradient leaves the weights as they were (the
    GPU path decides it on the device, fused AdamW's found_inf; the other path after reading the numbers)."""
    p = torch.nn.Parameter(torch.ones(4))
    ref = torch.nn.Parameter(torch.ones(4))
    grad = torch.tensor([0.5, -1.0, 2.0, 0.0])
    opt = torch.optim.AdamW([p], lr=0.1, fused=on_device)
    ref_opt = torch.optim.AdamW([ref], lr=0.1)
    p.grad = grad.clone() if bad != "gradient" else torch.full((4,), math.nan)
    loss = torch.tensor(math.inf if bad == "loss" else 2.0)
    seen = []  # the weights when the CPU work before the wait runs
    loss_value, norm = optimizer_step(
        opt,
        [p],
        loss,
        1.0,
        set_to_none=True,
        skip_on_device=on_device,
        before_wait=lambda: seen.append(p.data.clone()),
    )
    assert p.grad is None and not hasattr(opt, "found_inf")
    # On the device path the update is queued before the wait (and the CPU work); otherwise it follows the wait.
    assert torch.equal(seen[0], p.data if on_device else torch.ones(4))
    if bad is None:
        ref.grad = grad.clone()
        torch.nn.utils.clip_grad_norm_([ref], 1.0)
        ref_opt.step()
        assert (loss_value, norm) == (2.0, pytest.approx(float(grad.norm())))
        torch.testing.assert_close(p.data, ref.data)
    else:
        assert not math.isfinite(loss_value if bad == "loss" else norm)
        assert torch.equal(p.data, torch.ones(4))


def test_compiled_recompute_settings_reach_the_partitioner_or_name_the_variable() -> None:
    """recompute "elementwise" lifts the partitioner's three bans and False puts them back, the memory budget too
    when its variable is unset (the settings are process-wide: a later run in the same process must not inherit
    them); a bad memory budget names its variable and changes nothing."""
    import torch._functorch.config as functorch_config

    flags = (
        "ban_recompute_materialized_backward",
        "ban_recompute_used_far_apart",
        "ban_recompute_long_fusible_chains",
    )
    # config.patch restores the process-wide values afterwards (pytest's monkeypatch would delete them: a config
    # module's attributes are not plain ones).
    with functorch_config.patch(activation_memory_budget=1.0, **dict.fromkeys(flags, True)):
        set_compiled_recompute(None, False)
        assert functorch_config.activation_memory_budget == 1.0
        assert all(getattr(functorch_config, f) for f in flags)
        set_compiled_recompute("0.7", True)
        assert functorch_config.activation_memory_budget == 0.7
        assert not any(getattr(functorch_config, f) for f in flags)
        set_compiled_recompute(None, False)
        assert all(getattr(functorch_config, f) for f in flags)
        assert functorch_config.activation_memory_budget == 1.0
        set_compiled_recompute("0.7", True)
        for bad in ("0", "1.5", "most"):
            with pytest.raises(EngineError, match="TUNA_ACTIVATION_MEMORY_BUDGET: .* not a fraction in"):
                set_compiled_recompute(bad, False)
        assert functorch_config.activation_memory_budget == 0.7
        assert not any(getattr(functorch_config, f) for f in flags)
    assert functorch_config.activation_memory_budget == 1.0 and all(
        getattr(functorch_config, f) for f in flags
    )


def test_profile_table_and_timeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TUNA_PROFILE writes the third step's per-operation table; TUNA_PROFILE_TRACE a Chrome trace of the fourth
    and fifth steps whole, the optimizer's step included (what the table leaves out)."""
    model_dir, shard, _ = small_run(tmp_path)
    table, trace = tmp_path / "p" / "table.txt", tmp_path / "p" / "trace.json"
    monkeypatch.setenv("TUNA_PROFILE", str(table))
    monkeypatch.setenv("TUNA_PROFILE_TRACE", str(trace))
    plan = make_plan(tmp_path, model_dir, [shard], max_steps=6, grad_accum=1)
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    assert len(steps(events)) == 6
    assert "Self CPU" in table.read_text()
    names = [e.get("name", "") for e in json.loads(trace.read_text())["traceEvents"]]
    # two whole steps: each one's optimizer step is in the trace
    assert sum(n.startswith("Optimizer.step#") for n in names) == 2, sorted(set(names))[:50]


def test_rebuild_rotary_layers_picks_the_last_layers_or_names_the_variable(tmp_path: Path) -> None:
    """recompute "elementwise" rebuilds rotated q/k in the last quarter of the layers (rounded up), the others
    keep them; other modes leave every layer as it is; TUNA_REBUILD_ROTARY_LAYERS=k makes it the last k."""
    for n_layers, quarter in ((5, 2), (8, 2), (28, 7)):
        make_hf_model(tmp_path / f"m{n_layers}", "qwen3", num_hidden_layers=n_layers)
        model = load_model(str(tmp_path / f"m{n_layers}"), "float32", torch.device("cpu"), None)
        layers = model.model.layers
        assert len(layers) == n_layers
        assert rebuild_rotary_layers(model, None, elementwise=True) == quarter
        assert [layer.self_attn.rebuild_rotary for layer in layers] == [False] * (n_layers - quarter) + [
            True
        ] * quarter
        assert rebuild_rotary_layers(model, None, elementwise=False) == n_layers
        assert all(layer.self_attn.rebuild_rotary for layer in layers)
    assert rebuild_rotary_layers(model, "1", elementwise=True) == 1
    assert [layer.self_attn.rebuild_rotary for layer in layers] == [False] * (len(layers) - 1) + [True]
    rebuild_rotary_layers(model, "0", elementwise=True)
    assert not any(layer.self_attn.rebuild_rotary for layer in layers)
    for bad in ("-1", str(len(layers) + 1), "half"):
        with pytest.raises(
            EngineError, match=f"TUNA_REBUILD_ROTARY_LAYERS: '{bad}' is not a layer count from 0"
        ):
            rebuild_rotary_layers(model, bad, elementwise=True)
