"""Our model code against transformers on the same weights (fp32, tiny configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_hf_model

from tuna_engine.errors import EngineError
from tuna_engine.models import load_model

CASES = {
    "qwen3": dict(family="qwen3"),
    "qwen3-tied": dict(family="qwen3", tie_word_embeddings=True),
    "qwen3-yarn": dict(
        family="qwen3",
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        max_position_embeddings=128,
    ),
    "qwen2-bias": dict(family="qwen2"),
    "qwen2-tied": dict(family="qwen2", tie_word_embeddings=True),
    "llama3-rope": dict(
        family="llama",
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "llama-attn-bias": dict(family="llama", attention_bias=True, mlp_bias=True),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def ours_logits(model, ids: torch.Tensor) -> torch.Tensor:
    B, T = ids.shape
    pos = torch.arange(T).expand(B, T)
    return model.logits(model(ids, pos, torch.zeros(B, T, dtype=torch.long)))


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path: Path, case: str) -> None:
    kw = dict(CASES[case])
    hf = make_hf_model(tmp_path, **kw)
    ours = load_model(str(tmp_path), "float32", torch.device("cpu")).eval()
    ids = torch.randint(0, 256, (2, 80), generator=torch.Generator().manual_seed(0))  # longer than yarn's 32
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours_logits(ours, ids)
    assert rel_err(got, ref) < 1e-5
    if kw.get("tie_word_embeddings"):
        assert "lm_head" not in dict(ours.named_modules())


def test_legacy_config_fields(tmp_path: Path) -> None:
    """Real Qwen3/Llama config.json files (transformers 4.x) carry top-level rope_theta and rope_scaling."""
    hf = make_hf_model(
        tmp_path,
        "qwen3",
        max_position_embeddings=128,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    )
    cfg = json.loads((tmp_path / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = load_model(str(tmp_path), "float32", torch.device("cpu")).eval()
    assert ours.config.rope_scaling is not None and ours.config.rope_scaling["rope_type"] == "yarn"
    ids = torch.randint(0, 256, (1, 100))
    with torch.no_grad():
        assert rel_err(ours_logits(ours, ids), hf(ids).logits) < 1e-5


def test_sharded_checkpoint_loads(tmp_path: Path) -> None:
    hf = make_hf_model(tmp_path, "qwen3", max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = load_model(str(tmp_path), "float32", torch.device("cpu")).eval()
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert rel_err(ours_logits(ours, ids), hf(ids).logits) < 1e-5


def test_packed_rows_equal_separate_samples(tmp_path: Path) -> None:
    hf = make_hf_model(tmp_path, "qwen3")
    ours = load_model(str(tmp_path), "float32", torch.device("cpu")).eval()
    lens = [5, 9, 3]
    samples = [torch.randint(0, 256, (n,)) for n in lens]
    ids = torch.cat(samples)[None]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    sid = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])[None]
    with torch.no_grad():
        packed = ours.logits(ours(ids, pos, sid))[0]
        start = 0
        for s in samples:
            ref = hf(s[None]).logits[0]
            assert rel_err(packed[start : start + len(s)], ref) < 1e-5
            start += len(s)


def test_bf16_close_to_transformers_bf16(tmp_path: Path) -> None:
    hf = make_hf_model(tmp_path, "qwen3", dtype=torch.bfloat16)
    from transformers import AutoModelForCausalLM

    ref_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_model(str(tmp_path), "bfloat16", torch.device("cpu")).eval()
    ids = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        ref = ref_model(ids).logits.float()
        got = ours_logits(ours, ids).float()
    assert ours.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert rel_err(got, ref) < 2e-2
    del hf


def test_unknown_architecture_names_field(tmp_path: Path) -> None:
    make_hf_model(tmp_path, "qwen3")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError) as e:
        load_model(str(tmp_path), "float32", torch.device("cpu"))
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE"
    assert "config.json: model_type: 'mamba'" in e.value.message and "qwen3" in e.value.message


@pytest.mark.parametrize(
    "field,value,code,says",
    [
        (
            "partial_rotary_factor",
            0.5,
            "UNSUPPORTED_ARCHITECTURE",
            "partial_rotary_factor: 0.5 is not supported",
        ),
        ("head_dim", 15, "MODEL_CONFIG_INVALID", "head_dim: 15 is odd"),
    ],
)
def test_rotary_needs_whole_even_heads(
    tmp_path: Path, field: str, value: object, code: str, says: str
) -> None:
    """Rotary pairs the two halves of every head (rotate_half): a partial rotary or an odd head size would be
    computed wrong, so the config is refused, naming the field."""
    make_hf_model(tmp_path, "qwen3")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError) as e:
        load_model(str(tmp_path), "float32", torch.device("cpu"))
    assert e.value.code == code and says in e.value.message and "config.json" in e.value.message


def test_shape_mismatch_names_tensor_and_file(tmp_path: Path) -> None:
    make_hf_model(tmp_path, "qwen3")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError) as e:
        load_model(str(tmp_path), "float32", torch.device("cpu"))
    assert e.value.code == "MODEL_WEIGHTS_MISMATCH"
    assert "model.safetensors: tensor model.layers.0.mlp." in e.value.message
    assert "[128, 64]" in e.value.message or "[64, 128]" in e.value.message


def test_missing_weights_file(tmp_path: Path) -> None:
    make_hf_model(tmp_path, "qwen3")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(EngineError) as e:
        load_model(str(tmp_path), "float32", torch.device("cpu"))
    assert e.value.code == "MODEL_FILE_MISSING"
