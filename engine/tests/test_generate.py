"""Generation (tuna_engine.generate) against transformers' `generate` on tiny random models, with and without
LoRA/DoRA adapters (peft), plus batching, sampling and the stdin/stdout server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, engine_env, make_hf_model

from tuna_engine.generate import Engine, load_for_generation
from tuna_engine.protocol import GenerateRequest, parse_generate_plan

PROMPTS = [
    [5, 17, 200, 3],
    [9],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    [250, 250, 7],
    [42, 43],
    [100, 7, 7, 7, 7, 8],
]


def req(id: str, prompt: list[int], n: int = 10, adapter: str | None = None, **kw) -> GenerateRequest:
    d = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=None, stop_ids=())
    d.update(kw)
    return GenerateRequest(id=id, prompt_ids=tuple(prompt), max_new_tokens=n, adapter=adapter, **d)  # type: ignore[arg-type]


def plan(model_dir: Path, adapters: dict[str, str] | None = None, batch: int = 4) -> dict:
    return {
        "version": 1,
        "command": "generate",
        "model": {"path": str(model_dir), "dtype": "float32"},
        "adapters": {k: str(v) for k, v in (adapters or {}).items()},
        "device": "cpu",
        "max_batch_size": batch,
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Qwen3 and two peft adapters on it (LoRA on attention, DoRA on everything), random non-zero."""
    from peft import LoraConfig, get_peft_model

    d = tmp_path_factory.mktemp("gen")
    hf = make_hf_model(d / "base", "qwen3", seed=3)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    out = {"dir": d / "base", "hf": hf}
    for name, cfg in {
        "lora": LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
        ),
        "dora": LoraConfig(
            r=2,
            lora_alpha=4,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_dora=True,
            init_lora_weights=False,
        ),
    }.items():
        torch.manual_seed(11)
        base = make_hf_model(d / f"tmp_{name}", "qwen3", seed=3)
        peft_model = get_peft_model(base, cfg)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.mul_(3.0)  # large enough to change the greedy output
        peft_model.save_pretrained(d / name)
        peft_model.eval()
        peft_model.generation_config.eos_token_id = None
        peft_model.generation_config.pad_token_id = 0
        out[name] = peft_model
    return out


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def engine(models):
    p = parse_generate_plan(
        plan(models["dir"], {"lora": models["dir"].parent / "lora", "dora": models["dir"].parent / "dora"})
    )
    return load_for_generation(p)


@pytest.mark.parametrize("adapter", [None, "lora", "dora"])
def test_greedy_equals_transformers(models, engine, adapter):
    reference = models["hf"] if adapter is None else models[adapter]
    got = engine.generate([req(f"r{i}", p, 12, adapter) for i, p in enumerate(PROMPTS[:3])])
    for i, p in enumerate(PROMPTS[:3]):
        assert got[f"r{i}"] == hf_greedy(reference, p, 12), (adapter, p)
    if adapter is not None:  # the adapter really changes the output
        assert any(got[f"r{i}"] != hf_greedy(models["hf"], p, 12) for i, p in enumerate(PROMPTS[:3]))


def test_batched_equals_unbatched_with_mixed_adapters(models, engine):
    reqs = [req(f"r{i}", p, 8 + i, [None, "lora", "dora"][i % 3]) for i, p in enumerate(PROMPTS)]
    batched = engine.generate(reqs)  # 6 requests through 4 slots: queueing and slot reuse
    p1 = parse_generate_plan(
        plan(
            models["dir"],
            {"lora": models["dir"].parent / "lora", "dora": models["dir"].parent / "dora"},
            batch=1,
        )
    )
    single = load_for_generation(p1)
    for r in reqs:
        alone = single.generate([r])[r.id]
        assert batched[r.id] == alone, r
        assert len(alone) == r.max_new_tokens


def test_stop_ids_end_generation_and_are_included(models, engine):
    full = engine.generate([req("a", PROMPTS[0], 10)])["a"]
    stop = full[4]
    first = full.index(stop)
    got = engine.generate([req("b", PROMPTS[0], 10, stop_ids=(stop,))])["b"]
    assert got == full[: first + 1]


def test_seeded_sampling_is_reproducible(models, engine):
    kw = dict(temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=1.3)
    a = engine.generate(
        [req("a", PROMPTS[2], 16, "lora", seed=7, **kw), req("x", PROMPTS[0], 5, seed=1, **kw)]
    )["a"]
    b = engine.generate([req("a", PROMPTS[2], 16, "lora", seed=7, **kw)])["a"]
    c = engine.generate([req("a", PROMPTS[2], 16, "lora", seed=8, **kw)])["a"]
    assert a == b
    assert a != c


def test_logits_processing_equals_transformers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(1, 300) * 3
    seen = [3, 3, 17, 250, 299]
    for kw in (
        dict(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3),
        dict(temperature=1.5, top_k=0, top_p=0.5, repetition_penalty=1.0),
        dict(temperature=1.0, top_k=5, top_p=1.0, repetition_penalty=0.8),
    ):
        r = req("x", [1], 1, **kw)
        ours = Engine.process_logits(logits[0], r, set(seen))
        ids = torch.tensor([seen])
        theirs = logits.clone()
        theirs = RepetitionPenaltyLogitsProcessor(kw["repetition_penalty"])(ids, theirs)
        theirs = TemperatureLogitsWarper(kw["temperature"])(ids, theirs)
        if kw["top_k"]:
            theirs = TopKLogitsWarper(kw["top_k"])(ids, theirs)
        if kw["top_p"] < 1:
            theirs = TopPLogitsWarper(kw["top_p"])(ids, theirs)
        assert torch.equal(ours.isinf(), theirs[0].isinf()), kw
        torch.testing.assert_close(ours[~ours.isinf()], theirs[0][~ours.isinf()], rtol=1e-6, atol=1e-6)


def test_prequantized_4bit_model_generates_like_its_dequantized_weights(tmp_path, models):
    """A bnb-4bit directory (written in the bitsandbytes layout by quant/) loads as NF4 for generation and
    gives the tokens of a 16-bit model holding the dequantized weights."""
    from safetensors.torch import load_file, save_file

    from tuna_engine.quant import Linear4bit, quantize_model

    src = models["dir"]
    cfg = json.loads((src / "config.json").read_text())
    hf = models["hf"]
    import copy

    q = copy.deepcopy(hf)
    quantize_model(q, skip=["lm_head"])
    qdir = tmp_path / "q4"
    qdir.mkdir()
    save_file({k: v.contiguous() for k, v in q.state_dict().items()}, str(qdir / "model.safetensors"))
    cfg["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "float32",
        "llm_int8_skip_modules": ["lm_head"],
    }
    (qdir / "config.json").write_text(json.dumps(cfg))
    deq = tmp_path / "deq"
    deq.mkdir()
    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items()}
    for name, m in q.named_modules():
        if isinstance(m, Linear4bit):
            state[f"{name}.weight"] = m.dequantize(torch.float32)
    save_file(state, str(deq / "model.safetensors"))
    (deq / "config.json").write_text((src / "config.json").read_text())
    e4 = load_for_generation(parse_generate_plan(plan(qdir)))
    assert sum(isinstance(m, Linear4bit) for m in e4.model.modules()) == 14
    e16 = load_for_generation(parse_generate_plan(plan(deq)))
    reqs = [req(f"r{i}", p, 8) for i, p in enumerate(PROMPTS[:3])]
    assert e4.generate(reqs) == e16.generate(reqs)


def test_server_streams_tokens_and_handles_cancel_and_bad_requests(models, engine, tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan(models["dir"], {"lora": models["dir"].parent / "lora"}, batch=2)))
    base = dict(temperature=0, top_p=1, top_k=0, repetition_penalty=1, seed=None, stop_ids=[])
    lines = [
        {"id": "a", "prompt_ids": PROMPTS[0], "max_new_tokens": 6, "adapter": None, **base},
        {
            "type": "generate",
            "id": "b",
            "prompt_ids": PROMPTS[2],
            "max_new_tokens": 5,
            "adapter": "lora",
            **base,
        },
        {"id": "bad", "prompt_ids": [], "max_new_tokens": 0, "adapter": None, **base},
        {"id": "unknown", "prompt_ids": [1], "max_new_tokens": 2, "adapter": "nope", **base},
        {"id": "c", "prompt_ids": PROMPTS[1], "max_new_tokens": 50, "adapter": None, **base},
        {"type": "cancel", "id": "c"},
    ]
    p = subprocess.run(
        [sys.executable, "-m", "tuna_engine", "generate", "--plan", str(plan_path)],
        input="".join(json.dumps(x) + "\n" for x in lines),
        cwd=REPO_ROOT,
        env=engine_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    events = [json.loads(x) for x in p.stdout.splitlines()]
    assert events[0] == {"event": "ready", "device": "cpu", "dtype": "float32"}
    errors = {e["id"]: e for e in events if e["event"] == "error"}
    assert errors["bad"]["code"] == "REQUEST_INVALID" and "max_new_tokens" in errors["bad"]["message"]
    assert errors["unknown"]["code"] == "ADAPTER_UNKNOWN"
    finished = {e["id"]: e for e in events if e["event"] == "finished"}
    assert finished["a"]["reason"] == "length" and finished["a"]["generated_tokens"] == 6
    assert finished["b"]["reason"] == "length" and finished["b"]["prompt_tokens"] == len(PROMPTS[2])
    assert finished["c"]["reason"] == "cancelled" and finished["c"]["generated_tokens"] < 50
    streamed = {
        k: [t for e in events if e["event"] == "token" and e["id"] == k for t in e["token_ids"]] for k in "ab"
    }
    want = engine.generate([req("a", PROMPTS[0], 6), req("b", PROMPTS[2], 5, "lora")])
    assert streamed == {"a": want["a"], "b": want["b"]}
    # Every event parses with the TypeScript schema's field set.
    for e in events:
        assert set(e) <= {
            "event",
            "id",
            "token_ids",
            "reason",
            "prompt_tokens",
            "generated_tokens",
            "elapsed_s",
            "device",
            "dtype",
            "code",
            "message",
            "hint",
        }


# ---- the seam: the same plans, requests and events pass or fail on both sides ------------------------------

TSX = REPO_ROOT / "node_modules" / ".bin" / "tsx"
ZOD = """
import * as P from "./src/engine/protocol.ts";
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const { schema, items } = JSON.parse(input);
  process.stdout.write(JSON.stringify(items.map((x) => {
    const r = P[schema].safeParse(x);
    return r.success ? null : r.error.issues.map((i) => i.path.join("."));
  })));
});
"""


def _zod(schema: str, items: list) -> list:
    p = subprocess.run(
        [str(TSX), "--eval", ZOD],
        input=json.dumps({"schema": schema, "items": items}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.skipif(not TSX.exists(), reason="needs node + tsx")
def test_plan_and_requests_agree_with_protocol_ts(tmp_path):
    from tuna_engine.errors import EngineError
    from tuna_engine.protocol import parse_generate_request

    good_plan = plan(tmp_path)
    plans = [(None, good_plan)]
    for field, bad in [
        ("max_batch_size", {**good_plan, "max_batch_size": 0}),
        ("device", {**good_plan, "device": "tpu"}),
        ("adapters", {**good_plan, "adapters": {"a": 3}}),
        ("model", {k: v for k, v in good_plan.items() if k != "model"}),
    ]:
        plans.append((field, bad))
    zod_plans = _zod("GeneratePlan", [p for _, p in plans])
    for (field, p), z in zip(plans, zod_plans, strict=True):
        try:
            parse_generate_plan(p)
            py = None
        except EngineError as e:
            py = e.field
        assert (py is None) == (z is None), (field, py, z)
        if field is not None:
            assert py == field and any(x.split(".")[0] == field for x in z), (field, py, z)

    good = {"id": "a", "prompt_ids": [1, 2], "max_new_tokens": 3, "temperature": 0, "top_p": 1, "top_k": 0}
    good |= {"repetition_penalty": 1, "seed": None, "stop_ids": [7], "adapter": None}
    reqs = [(None, good), (None, {**good, "type": "generate", "seed": 5, "adapter": "x"})]
    for field, value in [
        ("prompt_ids", []),
        ("max_new_tokens", 0),
        ("temperature", -1),
        ("top_p", 0),
        ("top_k", 1.5),
        ("repetition_penalty", 0),
        ("seed", 1.5),
        ("adapter", 3),
        ("id", 4),
    ]:
        reqs.append((field, {**good, field: value}))
    zod_reqs = _zod("GenerateRequest", [r for _, r in reqs])
    for (field, r), z in zip(reqs, zod_reqs, strict=True):
        try:
            parse_generate_request(r)
            py = None
        except EngineError as e:
            py = e.field
        assert py == field and (z is None) == (field is None), (field, py, z)


@pytest.mark.skipif(not TSX.exists(), reason="needs node + tsx")
def test_emitted_events_parse_with_protocol_ts(models, tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan(models["dir"], batch=2)))
    base = dict(
        temperature=0.5, top_p=0.9, top_k=5, repetition_penalty=1.1, seed=3, stop_ids=[], adapter=None
    )
    lines = [
        {"id": "a", "prompt_ids": [1, 2], "max_new_tokens": 3, **base},
        {"id": "b", "prompt_ids": [1], "max_new_tokens": 0, **base},
    ]
    p = subprocess.run(
        [sys.executable, "-m", "tuna_engine", "generate", "--plan", str(plan_path)],
        input="".join(json.dumps(x) + "\n" for x in lines),
        cwd=REPO_ROOT,
        env=engine_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [json.loads(x) for x in p.stdout.splitlines()]
    assert {e["event"] for e in events} == {"ready", "token", "finished", "error"}
    assert _zod("GenerateEvent", events) == [None] * len(events)
