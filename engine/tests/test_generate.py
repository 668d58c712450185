"""Generation (tuna_engine.generate) against transformers' `generate` on tiny random models, with and without
LoRA/DoRA adapters (peft), plus batching, sampling and the stdin/stdout server. The default path on CPU is the
static-cache decoder (decode.py, mode "eager"); it is also checked token for token against the original
dynamic-cache path (mode "reference")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, engine_env, make_hf_model

from tuna_engine.errors import EngineError
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


# ---- the static-cache path (decode.py) against the original path ---------------------------------------------


def _adapters(models) -> dict[str, Path]:
    return {"lora": models["dir"].parent / "lora", "dora": models["dir"].parent / "dora"}


def _run_script(engine: Engine, arrivals: dict[int, list[GenerateRequest]]) -> dict[str, list[int]]:
    """Requests arrive at given decode steps, wait for a free slot, and run to completion (the serve loop)."""
    results: dict[str, list[int]] = {}
    pending: list[GenerateRequest] = []
    step = 0
    while step <= max(arrivals) or pending or engine.active:
        pending += arrivals.get(step, [])
        while pending and engine.free_slots:
            seq, _ = engine.start(pending.pop(0))
            if engine.finish_reason(seq):
                results[seq.req.id] = seq.generated
                engine.release(seq)
        for seq, _ in engine.step():
            if engine.finish_reason(seq):
                results[seq.req.id] = seq.generated
                engine.release(seq)
        step += 1
    return results


def _record_steps(engine: Engine) -> list[tuple[int, int, bool]]:
    """The (batch bucket, key bucket, adapters) of every decode step the static engine runs."""
    dec = engine.decoder
    assert dec is not None
    keys: list[tuple[int, int, bool]] = []
    step = dec._step

    def recording(Bk: int, S: int, lora: bool):
        keys.append((Bk, S, lora))
        return step(Bk, S, lora)

    dec._step = recording  # type: ignore[method-assign]
    return keys


def test_static_path_equals_reference_with_joins_and_mixed_adapters(models):
    p = parse_generate_plan(plan(models["dir"], _adapters(models), batch=4))
    static = load_for_generation(p, mode="eager")
    reference = load_for_generation(p, mode="reference")
    assert static.decoder is not None and reference.decoder is None
    static.decoder.key_block = 4  # small key buckets so these short requests cross several of them
    keys = _record_steps(static)
    names = [None, "lora", "dora"]

    def arrivals() -> dict[int, list[GenerateRequest]]:
        reqs = [req(f"r{i}", p, 3 + 2 * i, names[i % 3]) for i, p in enumerate(PROMPTS)]
        reqs.append(req("one", [7, 8], 1, "dora"))  # finishes at prefill
        late = req("late", PROMPTS[4], 4, None)  # alone after the others: base-only steps
        return {0: reqs[:2], 2: [reqs[2]], 3: [reqs[6]], 5: reqs[3:5], 9: [reqs[5]], 40: [late]}

    got = _run_script(static, arrivals())
    want = _run_script(reference, arrivals())
    assert got == want
    assert {k: len(v) for k, v in got.items()} == {
        **{f"r{i}": 3 + 2 * i for i in range(6)},
        "one": 1,
        "late": 4,
    }
    batch_buckets = {k[0] for k in keys}
    key_buckets = {k[1] for k in keys}
    assert {1, 2, 4} <= batch_buckets and {8, 16, 32} <= key_buckets, keys
    assert {False, True} == {k[2] for k in keys}  # base-only steps skip the adapter math
    assert not static.active and sorted(static.free_slots) == [0, 1, 2, 3]


def test_static_sampling_and_repetition_penalty_equal_reference(models):
    p = parse_generate_plan(plan(models["dir"], _adapters(models), batch=4))
    kw = dict(temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=1.3)
    reqs = [
        req("s1", PROMPTS[2], 12, "lora", seed=7, **kw),
        req("g", PROMPTS[0], 10, None),
        req("gp", PROMPTS[3], 10, "dora", repetition_penalty=1.5),  # greedy, but processed logits
        req("s2", PROMPTS[5], 9, None, seed=3, temperature=1.3),
    ]
    static = load_for_generation(p, mode="eager").generate(reqs)
    reference = load_for_generation(p, mode="reference").generate(reqs)
    assert static == reference
    plain = load_for_generation(p, mode="eager").generate([req("gp", PROMPTS[3], 10, "dora")])
    assert plain["gp"] != static["gp"]  # the penalty changed the greedy answer


def test_request_longer_than_max_model_len_is_refused(models):
    p = parse_generate_plan(plan(models["dir"], batch=2))
    engine = load_for_generation(p, max_model_len=16, mode="eager")
    assert engine.decoder is not None and engine.decoder.capacity == 16
    with pytest.raises(EngineError) as e:
        engine.start(req("long", PROMPTS[2], 6))  # 11 + 6 = 17
    assert e.value.code == "REQUEST_TOO_LONG" and e.value.field == "max_new_tokens"
    assert (
        "11 tokens" in e.value.message and "17" in e.value.message and "max_model_len 16" in e.value.message
    )
    assert engine.free_slots == [0, 1] and not engine.active  # nothing was taken
    # Exactly full: the last position of the cache is used, and the tokens are the reference's.
    full = engine.generate([req("full", PROMPTS[2], 5), req("b", PROMPTS[1], 15)])
    want = load_for_generation(p, mode="reference").generate(
        [req("full", PROMPTS[2], 5), req("b", PROMPTS[1], 15)]
    )
    assert full == want and len(full["b"]) == 15


def test_static_mode_selection(models, monkeypatch):
    from tuna_engine.decode import batch_buckets, bucket_for

    p = parse_generate_plan(plan(models["dir"], batch=6))
    with pytest.raises(EngineError) as e:
        load_for_generation(p, mode="graph")
    assert e.value.code == "NO_CUDA"
    monkeypatch.setenv("TUNA_GENERATE_MODE", "reference")
    monkeypatch.setenv("TUNA_MAX_MODEL_LEN", "96")
    engine = load_for_generation(p)
    assert engine.mode == "reference" and engine.max_model_len == 96
    monkeypatch.setenv("TUNA_GENERATE_MODE", "fast")
    with pytest.raises(EngineError, match="TUNA_GENERATE_MODE"):
        load_for_generation(p)
    monkeypatch.delenv("TUNA_GENERATE_MODE")
    engine = load_for_generation(p)
    assert engine.mode == "eager" and engine.decoder is not None
    assert batch_buckets(6) == [1, 2, 4, 6] and bucket_for(5, batch_buckets(6)) == 6
    dec = engine.decoder
    assert [dec.key_bucket(n) for n in (1, 256, 257, 96)] == [96, 96, 96, 96]  # capped at the capacity
    dec.key_block = 8
    assert [dec.key_bucket(n) for n in (1, 8, 9, 17, 33, 96)] == [8, 8, 16, 32, 64, 96]
    # A decode step pads to the bucket: 3 rows give logits for 4, the padding rows attend to position 0.
    logits, ids = dec.decode([5, 0, 9], [0, 0, 0], [0, 0, 0])
    assert logits.shape == (4, engine.c.vocab_size) and ids.shape == (4,)
    assert torch.equal(ids, logits.argmax(-1))
    torch.testing.assert_close(logits[1], logits[3])  # same token at position 0 in two free slots
    assert not torch.allclose(logits[0], logits[1])
    # Row 0 (token 5 alone at position 0) is what a one-token prefill of [5] predicts.
    torch.testing.assert_close(dec.prefill(torch.tensor([5]), 2, 0), logits[0], rtol=1e-5, atol=1e-5)


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
    got = e4.generate(reqs)
    assert got == e16.generate(reqs)
    assert e4.mode == "eager"  # the static path on NF4 weights = the original path
    assert got == load_for_generation(parse_generate_plan(plan(qdir)), mode="reference").generate(reqs)


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
        {"id": "long", "prompt_ids": PROMPTS[2], "max_new_tokens": 60, "adapter": None, **base},
    ]
    p = subprocess.run(
        [sys.executable, "-m", "tuna_engine", "generate", "--plan", str(plan_path)],
        input="".join(json.dumps(x) + "\n" for x in lines),
        cwd=REPO_ROOT,
        env={**engine_env(), "TUNA_MAX_MODEL_LEN": "64"},
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
    assert errors["long"]["code"] == "REQUEST_TOO_LONG" and "max_model_len 64" in errors["long"]["message"]
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
    full = {**good_plan, "max_model_len": 8192, "mode": "graph", "fused": False, "compile": True}
    plans = [(None, good_plan), (None, full)]
    for field, bad in [
        ("max_batch_size", {**good_plan, "max_batch_size": 0}),
        ("max_model_len", {**full, "max_model_len": 0}),
        ("mode", {**full, "mode": "fast"}),
        ("compile", {**full, "compile": "yes"}),
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


# ---- the fused decode layer (decode.py `fused`, `compile`) ------------------------------------------------------


def test_fused_step_equals_unfused_with_mixed_adapters(models):
    """Fused (q/k/v and gate/up as one matmul, stacked adapters, one q/k norm + rotary) = the per-projection
    step, token for token in fp32, and the model's weights are unchanged by the fusion (views of the concat)."""
    p = parse_generate_plan(plan(models["dir"], _adapters(models), batch=4))
    unfused = load_for_generation(p, mode="eager", fused=False)
    fused = load_for_generation(p, mode="eager", fused=True)
    assert unfused.decoder is not None and fused.decoder is not None
    assert fused.decoder.fused and not unfused.decoder.fused
    q, k = (fused.model.model.layers[0].self_attn.q_proj, fused.model.model.layers[0].self_attn.k_proj)
    w = fused.decoder.layer_w[0].qkv.weight  # type: ignore[index]
    assert q.weight.data_ptr() == w.data_ptr() and torch.equal(
        k.weight, unfused.model.model.layers[0].self_attn.k_proj.weight
    )
    names = [None, "lora", "dora"]
    reqs = [req(f"r{i}", p_, 6 + i, names[i % 3]) for i, p_ in enumerate(PROMPTS)]
    assert fused.generate(reqs) == unfused.generate(reqs)
    # Logits of one mixed step, and a prefill, agree to fp32 rounding.
    for e in (fused, unfused):
        for s, a in ((0, 1), (1, 2), (2, 0)):
            e.decoder.prefill(torch.tensor(PROMPTS[s]), s, a)  # type: ignore[union-attr]
    lf, _ = fused.decoder.decode([5, 6, 7], [4, 1, 11], [1, 2, 0])
    lu, _ = unfused.decoder.decode([5, 6, 7], [4, 1, 11], [1, 2, 0])
    torch.testing.assert_close(lf, lu, rtol=1e-5, atol=1e-5)


def test_fused_norm_is_the_model_norm_bitwise_in_bf16():
    from tuna_engine.decode import _fnorm, _norm
    from tuna_engine.models.llama import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(96, 1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(5, 3, 96) * 4).bfloat16()
    assert torch.equal(_fnorm(x, norm.weight, norm.eps), norm(x))
    assert torch.equal(_norm(norm, x), norm(x))


def test_fused_step_launches_fewer_ops():
    """Ops per decode step (torch.profiler on CPU, bench/generate/count_ops.py) on a Qwen3-0.6B-shaped layer:
    the fused layer makes at most 24 per layer (unfused: 40), with adapters at most 55 (unfused: 89)."""
    sys.path.insert(0, str(REPO_ROOT / "bench/generate"))
    from count_ops import step_ops, tiny_06b

    per_layer = {}
    for fused in (False, True):
        for lora in (False, True):
            one, two = (sum(step_ops(tiny_06b(n), fused, lora, batch=4).values()) for n in (1, 2))
            per_layer[fused, lora] = two - one
    assert per_layer[True, False] <= 24 and per_layer[True, True] <= 55, per_layer
    assert per_layer[False, False] >= 38 and per_layer[False, True] >= 85, per_layer


def test_fused_falls_back_for_4bit_and_plan_fields_and_env(models, tmp_path, monkeypatch):
    raw = plan(models["dir"], batch=2)
    raw.update(max_model_len=40, mode="reference", fused=False)
    p = parse_generate_plan(raw)
    assert (p.max_model_len, p.mode, p.fused, p.compile) == (40, "reference", False, None)
    engine = load_for_generation(p)
    assert engine.mode == "reference" and engine.max_model_len == 40
    raw["mode"] = "eager"
    engine = load_for_generation(parse_generate_plan(raw))
    assert engine.decoder is not None and engine.decoder.capacity == 40 and not engine.decoder.fused
    monkeypatch.setenv("TUNA_MAX_MODEL_LEN", "24")  # env vars override the plan
    monkeypatch.setenv("TUNA_GENERATE_FUSED", "1")
    engine = load_for_generation(parse_generate_plan(raw))
    assert engine.decoder is not None and engine.decoder.capacity == 24 and engine.decoder.fused
    monkeypatch.setenv("TUNA_GENERATE_FUSED", "yes")
    with pytest.raises(EngineError, match="TUNA_GENERATE_FUSED"):
        load_for_generation(parse_generate_plan(raw))
    raw["max_model_len"] = 0
    with pytest.raises(EngineError, match="max_model_len"):
        parse_generate_plan(raw)


def test_compiled_fused_step_equals_eager(models):
    """torch.compile of the fused layer's two regions around an eager attention (compile scope "regions", the
    path before the whole-layer graph; CPU inductor here): same greedy tokens as uncompiled fused and as the
    reference path, with adapters. Batch bucket 2 with adapters only: 2 compiles (~10 s)."""
    p = parse_generate_plan(plan(models["dir"], _adapters(models), batch=2))
    from torch._dynamo.utils import counters

    compiled = load_for_generation(p, mode="eager", compile="regions")  # type: ignore[arg-type]
    assert compiled.decoder is not None and compiled.decoder.compile_scope == "regions"
    reqs = [req("a", PROMPTS[0], 6, "lora"), req("b", PROMPTS[3], 6, "dora")]
    before = counters["stats"]["unique_graphs"]
    got = compiled.generate(reqs)
    # Two regions x one (batch bucket 2, adapter rows) key, shared by both layers; a second run compiles nothing.
    assert counters["stats"]["unique_graphs"] - before == 2
    assert compiled.generate(reqs) == got and counters["stats"]["unique_graphs"] - before == 2
    assert got == load_for_generation(p, mode="eager").generate(reqs)
    assert got == load_for_generation(p, mode="reference").generate(reqs)


# ---- the whole-layer compiled step (compile scope "layer", tuna::decode_attention) -----------------------------


def test_layer_compiled_step_equals_eager_with_and_without_adapters(models):
    """compile=True is scope "layer": every whole decoder layer (norm with the previous layer's residual add, qkv,
    q/k norm, rotary, the K/V cache writes, tuna::decode_attention, o, norm, MLP) is ONE compiled graph shared by
    every layer, plus the head (CPU inductor; the op runs its SDPA reference here). In fp32: the same greedy
    tokens as the uncompiled fused step and the reference path, for steps with LoRA, DoRA and base rows and for
    base-only steps, and one step's logits within fp32 rounding. Graphs: one layer graph per (batch bucket,
    adapter rows or not), one head graph per batch bucket; repeated runs compile nothing."""
    from torch._dynamo.utils import counters

    p = parse_generate_plan(plan(models["dir"], _adapters(models), batch=2))
    compiled = load_for_generation(p, mode="eager", compile=True)
    dec = compiled.decoder
    assert dec is not None and dec.compile_scope == "layer" and dec.graph_S(256) == dec.capacity
    runs = {
        "mixed": [req("a", PROMPTS[0], 7, "lora"), req("b", PROMPTS[3], 7, None)],
        "adapters": [req("c", PROMPTS[2], 6, "dora"), req("d", PROMPTS[4], 6, "lora")],
        "base": [req("e", PROMPTS[5], 6, None), req("f", PROMPTS[1], 6, None)],
    }
    before = counters["stats"]["unique_graphs"]
    got = {k: compiled.generate(r) for k, r in runs.items()}
    # layer graph with adapter rows + head graph (bucket 2), then the layer graph without adapter rows
    assert counters["stats"]["unique_graphs"] - before == 3
    assert {k: compiled.generate(r) for k, r in runs.items()} == got
    assert counters["stats"]["unique_graphs"] - before == 3
    eager = load_for_generation(p, mode="eager")
    reference = load_for_generation(p, mode="reference")
    for k, r in runs.items():
        assert got[k] == eager.generate(r) == reference.generate(r), k
    # the adapters change the tokens (the compiled graph does apply them)
    assert got["adapters"] != compiled.generate([req("c", PROMPTS[2], 6), req("d", PROMPTS[4], 6)])
    for e in (compiled, eager):
        for s, a in ((0, 1), (1, 2)):
            e.decoder.prefill(torch.tensor(PROMPTS[s]), s, a)  # type: ignore[union-attr]
    lc, ic = compiled.decoder.decode([5, 6], [4, 1], [1, 2])
    le, ie = eager.decoder.decode([5, 6], [4, 1], [1, 2])  # type: ignore[union-attr]
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-5)
    assert torch.equal(ic, ie)
    # the cache rows the compiled step wrote (position 4 of slot 0, position 1 of slot 1) are the eager step's
    for li in range(len(dec.k)):
        for cache_c, cache_e in ((dec.k[li], eager.decoder.k[li]), (dec.v[li], eager.decoder.v[li])):  # type: ignore[union-attr]
            torch.testing.assert_close(cache_c[0, :, :5], cache_e[0, :, :5], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cache_c[1, :, :2], cache_e[1, :, :2], rtol=1e-5, atol=1e-5)


def test_layer_compiled_step_launches_nine_kernels_per_layer():
    """count_ops on Qwen3-0.6B widths (bf16, batch 4): the whole-layer graph calls 9 kernels per layer on CPU
    Inductor, the minimum the issue names (norm with the previous residual add, qkv GEMM, q/k norm + rotary + both
    cache writes, attention, o GEMM, residual add + norm, gate/up GEMM, SiLU·up, down GEMM), against 14 for the
    two compiled regions and 23 uncompiled (bench/generate/count_ops.py). A K/V write that copied the cache (a functionalized index_put not
    made in place) would add kernels. (The 0.6B step: 258 here; regions 408, uncompiled 660: count_ops.py.)"""
    sys.path.insert(0, str(REPO_ROOT / "bench/generate"))
    from count_ops import step_ops, tiny_06b

    one, two = (sum(step_ops(tiny_06b(n), True, False, batch=4, compile="layer").values()) for n in (1, 2))
    assert two - one <= 9, (one, two)
    assert 2 * one - two <= 7, (one, two)  # embedding, zeros, the head graph (norm, lm head GEMM, argmax)
