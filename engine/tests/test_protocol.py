"""protocol.py agrees with src/engine/protocol.ts: the same plans pass or fail on both sides, on the same field,
and the events a real run emits parse with the zod schemas."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO_ROOT, make_hf_model, make_plan, random_samples, run_engine, write_plan, write_shard

from tuna_engine.errors import EngineError
from tuna_engine.protocol import parse_merge_plan, parse_train_plan

TSX = REPO_ROOT / "node_modules" / ".bin" / "tsx"
pytestmark = pytest.mark.skipif(not TSX.exists() or shutil.which("node") is None, reason="needs node + tsx")

ZOD_CHECK = """
import * as P from "./src/engine/protocol.ts";
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const { schema, items } = JSON.parse(input);
  const out = items.map((x) => {
    const r = P[schema].safeParse(x);
    return r.success ? null : r.error.issues.map((i) => i.path.join("."));
  });
  process.stdout.write(JSON.stringify(out));
});
"""


def zod(schema: str, items: list) -> list[list[str] | None]:
    p = subprocess.run(
        [str(TSX), "--eval", ZOD_CHECK],
        input=json.dumps({"schema": schema, "items": items}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def py_field(parse, plan) -> str | None:
    try:
        parse(plan)
        return None
    except EngineError as e:
        return e.field


def variants(base: dict) -> list[tuple[str | None, dict]]:
    """(field expected to be reported, plan)."""
    out: list[tuple[str | None, dict]] = [(None, base)]

    def mutate(field: str, fn) -> None:
        p = copy.deepcopy(base)
        fn(p)
        out.append((field, p))

    full = copy.deepcopy(base)
    full["method"] = {"type": "full", "trainable_layers": [0, 1], "trainable_modules": ["mlp"]}
    full["train"]["early_stopping_patience"] = 3
    out.append((None, full))
    qlora = copy.deepcopy(base)
    qlora["method"].update(type="qlora", keep_16bit=["layers.0.mlp.down_proj", "o_proj"])
    out.append((None, qlora))
    bad_keep = copy.deepcopy(qlora)
    bad_keep["method"]["keep_16bit"] = ["mlp", 3]
    out.append(("method.keep_16bit", bad_keep))
    mutate("train.micro_batch_size", lambda p: p["train"].update(micro_batch_size=0))
    mutate("train.scheduler", lambda p: p["train"].update(scheduler="step"))
    mutate("train.learning_rate", lambda p: p["train"].update(learning_rate=-1))
    mutate("model.dtype", lambda p: p["model"].update(dtype="int8"))
    mutate("method.lora.r", lambda p: p["method"]["lora"].update(r=1.5))
    mutate("method.lora.dropout", lambda p: p["method"]["lora"].update(dropout=2))
    mutate("train.early_stopping_patience", lambda p: p["train"].update(early_stopping_patience=0))
    mutate("method.trainable_layers", lambda p: p["method"].update(trainable_layers=[-1]))
    mutate("version", lambda p: p.update(version=2))
    mutate("data.train", lambda p: p["data"].update(train=[]))
    mutate("resume_from", lambda p: p.pop("resume_from"))
    return out


def test_train_plans_agree(tmp_path: Path) -> None:
    base = make_plan(tmp_path, tmp_path / "model", [tmp_path / "a.safetensors"])
    cases = variants(base)
    results = zod("TrainPlan", [p for _, p in cases])
    for (field, plan), zod_paths in zip(cases, results, strict=True):
        assert py_field(parse_train_plan, plan) == field
        if field is None:
            assert zod_paths is None, (plan, zod_paths)
        else:
            assert zod_paths is not None and any(
                p == field or p.startswith(field + ".") for p in zod_paths
            ), (field, zod_paths)


def test_merge_plans_agree() -> None:
    good = {
        "version": 1,
        "command": "merge",
        "model": {"path": "m", "dtype": "bfloat16"},
        "adapter_dir": "a",
        "output_dir": "o",
        "device": "cpu",
        "max_shard_bytes": 1000,
    }
    bad = dict(good, max_shard_bytes=0)
    assert zod("MergePlan", [good, bad]) == [None, ["max_shard_bytes"]]
    assert py_field(parse_merge_plan, good) is None
    assert py_field(parse_merge_plan, bad) == "max_shard_bytes"


def test_events_of_a_real_run_parse_with_zod(tmp_path: Path) -> None:
    make_hf_model(tmp_path / "model", "qwen3")
    shard = write_shard(tmp_path / "t.safetensors", random_samples(8))
    val = write_shard(tmp_path / "v.safetensors", random_samples(2, seed=4))
    plan = make_plan(tmp_path, tmp_path / "model", [shard], [val], max_steps=2, eval_every=1, save_every=2)
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    assert {e["event"] for e in events} == {"start", "step", "eval", "checkpoint", "done"}
    bad_plan = dict(plan, device="tpu")
    code, bad_events, _ = run_engine("train", write_plan(bad_plan, tmp_path / "bad.json"))
    assert code != 0 and bad_events[-1]["event"] == "error"
    assert zod("EngineEvent", events + bad_events) == [None] * (len(events) + len(bad_events))
