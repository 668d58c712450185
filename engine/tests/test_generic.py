"""The generic backend (models/generic.py): an architecture we have no code for (GPT-NeoX) trained through
transformers + peft behind the same plan, loss and events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_plan, random_samples, run_engine, write_plan, write_shard
from test_lora import packed_batch, reference_loss

from tuna_engine.checkpoint import load_weights_into
from tuna_engine.export import adapter_tensors_for_model
from tuna_engine.lora import adapter_parameters
from tuna_engine.models import load_for_training
from tuna_engine.models.generic import GenericCausalLM
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import weighted_ce_sum

CPU = torch.device("cpu")
NEOX_TARGETS = ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]


def make_neox(path: Path, seed: int = 0, family: str = "gpt_neox"):
    """A tiny random GPT-NeoX (or Phi: lm_head with a bias, partial rotary, q/k/v/dense names) saved to path."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, PhiConfig

    torch.manual_seed(seed)
    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=256,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    if family == "phi":
        cfg = PhiConfig(**common, partial_rotary_factor=0.5)
    else:
        cfg = GPTNeoXConfig(**common, rotary_pct=0.5)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    return hf.eval()


def spec(dora: bool = False, targets: tuple[str, ...] = ("all-linear",)) -> LoraSpec:
    return LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=targets, use_rslora=False, use_dora=dora)


@pytest.mark.parametrize(
    "family,dora,targets",
    [
        ("gpt_neox", False, ("all-linear",)),
        ("gpt_neox", True, ("all-linear",)),
        ("phi", False, ("q_proj", "v_proj")),
    ],
    ids=["neox-lora", "neox-dora", "phi-qv-lm_head-bias"],
)
def test_packed_step_matches_peft(tmp_path: Path, family: str, dora: bool, targets: tuple[str, ...]) -> None:
    """Packed rows (several samples, padding) through our generic model = each sample alone through peft:
    the loss and every adapter gradient, with both packing modes (position_ids, explicit 4-D mask)."""
    from peft import LoraConfig, get_peft_model

    make_neox(tmp_path, family=family)
    ours = load_for_training(str(tmp_path), "float32", CPU, "lora", spec(dora, targets), None, 0, None)
    assert isinstance(ours, GenericCausalLM) and ours.packing == "position_ids"
    assert ours.adapter_target_modules == (NEOX_TARGETS if family == "gpt_neox" else sorted(targets))
    assert (ours.output_bias is not None) == (family == "phi")
    from transformers import AutoModelForCausalLM

    pm = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules="all-linear" if targets == ("all-linear",) else list(targets),
            use_dora=dora,
        ),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.add_(
                    (0.1 * torch.rand(p.shape, generator=g))
                    if "magnitude" in name
                    else 0.2 * torch.randn(p.shape, generator=g)
                )
    mapped = adapter_tensors_for_model({k: v for k, v in pm.named_parameters() if "lora_" in k}, "peft")
    params = adapter_parameters(ours)
    assert (
        set(mapped) == set(params)
        and len(params) == (3 if dora else 2) * (4 if family == "gpt_neox" else 2) * 2
    )
    with torch.no_grad():
        for k, v in mapped.items():
            params[k].copy_(v)
    for n, p in ours.named_parameters():
        p.requires_grad_(".lora_" in n)
    pm.train()
    ours.train()

    samples = random_samples(5, seed=3)
    ref = reference_loss(pm, samples)
    ref.backward()
    ref_grads = adapter_tensors_for_model(
        {k: p.grad for k, p in pm.named_parameters() if "lora_" in k}, "peft"
    )
    batch = packed_batch(samples, per_row=2)
    for packing in ("position_ids", "mask"):
        ours.packing = packing
        ours.zero_grad()
        got = weighted_ce_sum(ours, batch) / batch.loss_weight[:, 1:].sum()
        got.backward()
        assert abs(float(got.detach()) - float(ref.detach())) / float(ref.detach()) < 1e-5, packing
        for k, gr in ref_grads.items():
            err = float((params[k].grad - gr).abs().max() / gr.abs().max().clamp_min(1e-12))
            assert err < 1e-5, (packing, k, err)


def test_generic_run_loss_falls_adapter_loads_in_peft_and_merges(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "neox"
    make_neox(model_dir)
    samples = random_samples(8, seed=7)
    shard = write_shard(tmp_path / "train.safetensors", samples, [[0, 1], [2, 3], [4, 5], [6, 7]])
    plan = make_plan(
        tmp_path,
        model_dir,
        [shard],
        max_steps=6,
        learning_rate=2e-2,
        micro_batch_size=4,
        grad_accum=1,
        warmup_steps=0,
        scheduler="constant",
        gradient_checkpointing=True,
    )
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses[-1] < losses[0] - 0.05, losses
    adapter = Path(next(e for e in events if e["event"] == "done")["adapter_dir"])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == NEOX_TARGETS

    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    pm = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter
    )
    ours = load_for_training(str(model_dir), "float32", CPU, "lora", spec(), None, 0, None).eval()
    load_weights_into(ours, adapter, lora=True)
    with torch.no_grad():
        ref = pm.eval()(ids).logits
        got = ours.logits(ours(ids, torch.arange(20).expand(2, 20), torch.zeros_like(ids)))
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()(ids).logits
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    assert float((base - ref).abs().max()) > 1e-3  # training changed the model

    mp = tmp_path / "merge_plan.json"
    mp.write_text(
        json.dumps(
            {
                "version": 1,
                "command": "merge",
                "model": {"path": str(model_dir), "dtype": "float32"},
                "adapter_dir": str(adapter),
                "output_dir": str(tmp_path / "merged"),
                "device": "cpu",
            }
        )
    )
    code, events, err = run_engine("merge", mp)
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert float((merged(ids).logits - ref).abs().max() / ref.abs().max()) < 1e-5


def test_unknown_architecture_names_the_fallback(tmp_path: Path) -> None:
    make_neox(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update(model_type="tuna_no_such_model", architectures=["NoSuchForCausalLM"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    shard = write_shard(tmp_path / "t.safetensors", random_samples(2))
    code, events, _ = run_engine("train", write_plan(make_plan(tmp_path, tmp_path / "m", [shard])))
    err = events[-1]
    assert code != 0 and err["code"] == "UNSUPPORTED_ARCHITECTURE"
    assert "model_type: 'tuna_no_such_model'" in err["message"]
    assert "generic transformers backend (AutoModelForCausalLM + peft) was tried" in err["message"]
    # full fine-tuning of an architecture only the generic backend knows is refused with a reason
    plan = make_plan(tmp_path / "full", tmp_path / "neox", [shard], method={"type": "full"})
    make_neox(tmp_path / "neox")
    code, events, _ = run_engine("train", write_plan(plan))
    assert (
        code != 0
        and events[-1]["code"] == "UNSUPPORTED"
        and 'only for method "lora"' in events[-1]["message"]
    )
