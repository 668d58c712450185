"""QLoRA: LoRA over NF4 base weights is LoRA over the dequantized weights (same math), end to end.

The reference for "the dequantized weights" is built here from quant/ directly (quantize_weight →
dequantize), independently of the loader, and saved as an ordinary 16-bit Hugging Face directory, so
transformers + peft can run the reference model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import lora_method, make_hf_model, make_plan, random_samples, run_engine, write_plan, write_shard
from safetensors.torch import load_file, save_file
from test_lora import copy_peft_into_ours, packed_batch, reference_loss

from tuna_engine.checkpoint import load_weights_into
from tuna_engine.errors import EngineError
from tuna_engine.export import adapter_tensors_for_model
from tuna_engine.lora import Linear
from tuna_engine.models import Quant4bit, load_model
from tuna_engine.protocol import LORA_PROJECTIONS, LoraSpec, parse_train_plan
from tuna_engine.quant import Linear4bit, quantize_model, quantize_weight
from tuna_engine.quant.convert import should_skip
from tuna_engine.train import weighted_ce_sum

CPU = torch.device("cpu")


def is_projection(key: str) -> bool:
    return key.endswith(".weight") and key.split(".")[-2] in LORA_PROJECTIONS


def write_dequantized(src: Path, dst: Path, keep_16bit: tuple[str, ...] = ()) -> None:
    """dst = src with every projection weight (not matched by keep_16bit) replaced by dequant(quant(W))."""
    dst.mkdir(parents=True, exist_ok=True)
    state = load_file(str(src / "model.safetensors"))
    for k, w in state.items():
        if is_projection(k) and not should_skip(k[: -len(".weight")], keep_16bit):
            state[k] = quantize_weight(w).dequantize(w.dtype)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(src / "config.json", dst / "config.json")


def spec_of(variant: dict, r: int = 4, alpha: float = 8.0) -> LoraSpec:
    return LoraSpec(
        r=r,
        alpha=alpha,
        dropout=0.0,
        target_modules=tuple(variant["target_modules"]),
        use_rslora=False,
        use_dora=variant["use_dora"],
    )


@pytest.mark.parametrize(
    "family,variant,keep",
    [
        ("qwen3", dict(target_modules=["all-linear"], use_dora=False), ()),
        ("qwen2", dict(target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True), ("layers.1.mlp",)),
    ],
    ids=["qwen3-lora", "qwen2-bias-dora-keep16"],
)
def test_qlora_step_equals_peft_on_dequantized_weights(
    tmp_path: Path, family: str, variant: dict, keep: tuple[str, ...]
) -> None:
    src, deq = tmp_path / "src", tmp_path / "deq"
    make_hf_model(src, family)
    write_dequantized(src, deq, keep)
    # peft on the dequantized model (its adapter tensors randomised), then the same adapter on our QLoRA model.
    from transformers import AutoModelForCausalLM

    pm = randomized_peft(AutoModelForCausalLM.from_pretrained(deq, dtype=torch.float32), variant)
    pm.train()
    ours = load_model(str(src), "float32", CPU, spec_of(variant), quant=Quant4bit(keep_16bit=keep))
    for n, p in ours.named_parameters():
        p.requires_grad_(".lora_" in n)
    copy_peft_into_ours(pm, ours)
    ours.train()

    four_bit = [n for n, m in ours.named_modules() if isinstance(m, Linear) and m.base_layer is not None]
    sixteen = [n for n, m in ours.named_modules() if isinstance(m, Linear) and m.base_layer is None]
    assert len(four_bit) == 14 - len(sixteen) and all(
        isinstance(ours.get_submodule(n + ".base_layer"), Linear4bit) for n in four_bit
    )
    assert sixteen == (
        ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
        if keep
        else []
    )
    assert (
        ours.model.embed_tokens.weight.dtype == torch.float32 and ours.lm_head.weight.dtype == torch.float32
    )

    samples = random_samples(5, seed=3)
    ref = reference_loss(pm, samples)
    ref.backward()
    batch = packed_batch(samples, per_row=2)
    got = weighted_ce_sum(ours, batch) / batch.loss_weight[:, 1:].sum()
    got.backward()
    assert abs(float(got) - float(ref)) / float(ref) < 1e-5
    ref_grads = adapter_tensors_for_model(
        {k: p.grad for k, p in pm.named_parameters() if "lora_" in k}, "peft"
    )
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if ".lora_" in n}
    assert set(ref_grads) == set(ours_grads)
    for k, g in ref_grads.items():
        err = float((ours_grads[k] - g).abs().max() / g.abs().max().clamp_min(1e-12))
        assert err < 1e-5, (k, err)

    # The same adapter on the ORIGINAL (unquantized) weights gives a different loss: the 4-bit base is used.
    on_orig = randomized_peft(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), variant)
    with torch.no_grad():
        for (k, p), (k2, q) in zip(on_orig.named_parameters(), pm.named_parameters(), strict=True):
            assert k == k2
            if "lora_" in k:
                p.copy_(q)
        assert abs(float(reference_loss(on_orig, samples)) - float(ref)) > 1e-4


def randomized_peft(hf, variant: dict):
    """peft LoRA/DoRA over `hf` with every adapter tensor randomised (B ≠ 0, magnitudes ≠ ||W||)."""
    from peft import LoraConfig, get_peft_model

    targets = variant["target_modules"]
    cfg = LoraConfig(
        r=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
        use_dora=variant["use_dora"],
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    pm = get_peft_model(hf, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                if "magnitude" in name:
                    p.add_(0.1 * torch.rand(p.shape, generator=g))
                else:
                    p.add_(0.2 * torch.randn(p.shape, generator=g))
    return pm


def qlora_method(**extra) -> dict:
    return lora_method("qlora", **extra)


def test_qlora_run_adapter_loads_in_peft_and_merge_dequantizes(tmp_path: Path) -> None:
    """A QLoRA run: loss falls; its adapter loaded by peft over the dequantized model gives our logits; merge
    folds it into the dequantized base (not the original weights)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src, deq = tmp_path / "src", tmp_path / "deq"
    make_hf_model(src, "qwen3")
    keep = ("layers.0.mlp.down_proj",)
    write_dequantized(src, deq, keep)
    samples = random_samples(8, seed=7)
    shard = write_shard(tmp_path / "train.safetensors", samples)
    plan = make_plan(
        tmp_path,
        src,
        [shard],
        method=qlora_method(keep_16bit=list(keep)),
        max_steps=6,
        learning_rate=2e-2,
        micro_batch_size=4,
        grad_accum=1,
        warmup_steps=0,
        scheduler="constant",
    )
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses[-1] < losses[0] - 0.05, losses
    start = next(e for e in events if e["event"] == "start")
    assert (
        start["params_total"]
        == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(src).parameters())
        + start["params_trainable"]
    )
    adapter = Path(next(e for e in events if e["event"] == "done")["adapter_dir"])
    assert json.loads((adapter / "tuna_quantization.json").read_text())["keep_16bit"] == list(keep)

    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(20).expand(2, 20)
    pm = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(deq, dtype=torch.float32), adapter
    ).eval()
    ours = load_model(
        str(src), "float32", CPU, parse_train_plan(plan).method.lora, quant=Quant4bit(keep_16bit=keep)
    ).eval()
    load_weights_into(ours, adapter, lora=True)
    with torch.no_grad():
        ref = pm(ids).logits
        got = ours.logits(ours(ids, pos, torch.zeros_like(ids)))
        on_original = (
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), adapter).eval()(ids).logits
        )
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    assert float((on_original - ref).abs().max()) > 1e-3  # quantization matters at this size

    merge_plan = {
        "version": 1,
        "command": "merge",
        "model": {"path": str(src), "dtype": "float32"},
        "adapter_dir": str(adapter),
        "output_dir": str(tmp_path / "merged"),
        "device": "cpu",
    }
    mp = tmp_path / "merge_plan.json"
    mp.write_text(json.dumps(merge_plan))
    code, events, err = run_engine("merge", mp)
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        m = merged(ids).logits
    assert float((m - ref).abs().max() / ref.abs().max()) < 1e-5


def write_prequantized(src: Path, dst: Path, skip: tuple[str, ...]) -> None:
    """A bitsandbytes-layout 4-bit directory made with quant/ (the keys transformers + bitsandbytes save)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    quantize_model(hf, skip=("lm_head", *skip))
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    dst.mkdir(parents=True)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
        "llm_int8_skip_modules": ["lm_head", *skip],
    }
    (dst / "config.json").write_text(json.dumps(cfg))


def test_prequantized_directory_loads_as_is(tmp_path: Path) -> None:
    """A pre-quantized bnb directory loads without re-quantizing (llm_int8_skip_modules stay 16-bit) and gives
    the same model as quantizing the 16-bit weights at load time with the same modules kept."""
    src, pre = tmp_path / "src", tmp_path / "pre"
    make_hf_model(src, "qwen2", dtype=torch.bfloat16)
    skip = ("layers.1.self_attn.o_proj",)
    write_prequantized(src, pre, skip)
    assert "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4" in load_file(
        str(pre / "model.safetensors")
    )
    spec = spec_of(dict(target_modules=["all-linear"], use_dora=False))
    a = load_model(str(pre), "float32", CPU, spec).eval()
    b = load_model(str(src), "float32", CPU, spec, quant=Quant4bit(keep_16bit=skip, dtype="bfloat16")).eval()
    assert a.model.layers[1].self_attn.o_proj.base_layer is None
    assert a.model.layers[0].self_attn.o_proj.base_layer is not None
    assert a.quantization is not None and a.quantization["source"] == "prequantized"
    sa = {k: v for k, v in a.state_dict().items() if ".lora_" not in k}
    sb = {k: v for k, v in b.state_dict().items() if ".lora_" not in k}
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        la = a.logits(a(ids, pos, torch.zeros_like(ids)))
        lb = b.logits(b(ids, pos, torch.zeros_like(ids)))
    assert torch.equal(la, lb)

    # Train on it: lora or qlora both use the stored 4-bit base; full fine-tuning is refused with a reason.
    shard = write_shard(tmp_path / "t.safetensors", random_samples(4))
    plan = make_plan(tmp_path, pre, [shard], method=qlora_method(), max_steps=1)
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    plan = make_plan(tmp_path, pre, [shard], method={"type": "full"}, max_steps=1)
    code, events, _ = run_engine("train", write_plan(plan))
    assert code != 0 and events[-1]["code"] == "UNSUPPORTED" and "4-bit" in events[-1]["message"]


def test_keep_16bit_that_matches_nothing_is_named(tmp_path: Path) -> None:
    make_hf_model(tmp_path, "qwen3")
    spec = spec_of(dict(target_modules=["q_proj"], use_dora=False))
    with pytest.raises(EngineError) as e:
        load_model(str(tmp_path), "float32", CPU, spec, quant=Quant4bit(keep_16bit=("mlp", "layers.7.mlp")))
    assert e.value.code == "PLAN_INVALID" and "['layers.7.mlp']" in e.value.message
    assert e.value.field == "method.keep_16bit"


def test_bitsandbytes_saved_directory_matches_bitsandbytes(tmp_path: Path) -> None:
    """A directory written by transformers + bitsandbytes itself (llm_int8_skip_modules set) loads as is: each
    4-bit weight dequantizes to exactly what bitsandbytes' dequantize_4bit gives, and the logits equal those of
    the 16-bit model holding those dequantized weights. (bitsandbytes' own CPU 4-bit matmul is not the
    reference for the logits: it differs from an fp32 matmul on the same weights by ~1e-3.)"""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    src = tmp_path / "src"
    make_hf_model(src, "qwen3", dtype=torch.bfloat16)
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["lm_head", "layers.1.self_attn.o_proj"],
    )
    bnb = AutoModelForCausalLM.from_pretrained(
        src, quantization_config=q, device_map="cpu", dtype=torch.float32
    )
    bnb.save_pretrained(tmp_path / "bnb")
    ours = load_model(str(tmp_path / "bnb"), "float32", CPU).eval()
    assert ours.model.layers[1].self_attn.o_proj.base_layer is None
    ref_model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    n4 = 0
    with torch.no_grad():
        for name, m in bnb.named_modules():
            if type(m).__name__ != "Linear4bit":
                continue
            w = bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state)
            assert torch.equal(ours.get_submodule(name).base_layer.dequantize(), w), name
            ref_model.get_submodule(name).weight.copy_(w)
            n4 += 1
    assert n4 == 13  # 14 projections, one kept in 16 bit
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = ref_model(ids).logits
        got = ours.logits(ours(ids, torch.arange(16).expand(2, 16), torch.zeros_like(ids)))
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_qlora_resume_is_exact_with_gradient_checkpointing(tmp_path: Path) -> None:
    """Checkpoints of a QLoRA run (recomputed layers, dropout on) resume to the same step losses, bit for bit."""
    src = tmp_path / "src"
    make_hf_model(src, "qwen3")
    shard = write_shard(tmp_path / "train.safetensors", random_samples(12, seed=5))
    method = qlora_method()
    method["lora"]["dropout"] = 0.1
    kw = dict(method=method, max_steps=6, save_every=3, gradient_checkpointing=True, micro_batch_size=2)
    full = make_plan(tmp_path / "a", src, [shard], **kw)
    code, events, err = run_engine("train", write_plan(full))
    assert code == 0, err
    ref = {e["step"]: e["loss"] for e in events if e["event"] == "step"}
    # A second run resumed from the first one's step-3 checkpoint replays steps 4-6.
    resumed = make_plan(tmp_path / "b", src, [shard], **kw)
    resumed["resume_from"] = str(Path(full["output"]["checkpoints_dir"]) / "step-3")
    code, events, err = run_engine("train", write_plan(resumed))
    assert code == 0, err
    got = {e["step"]: e["loss"] for e in events if e["event"] == "step"}
    assert sorted(got) == [4, 5, 6] and all(got[s] == ref[s] for s in got), (got, ref)
