"""adapter_config.json variants peft writes: projection names, "all-linear", or full module paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuna_engine.errors import EngineError
from tuna_engine.lora import read_adapter_config


def write(tmp: Path, targets: object, **extra: object) -> str:
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": targets, **extra}
    (tmp / "adapter_config.json").write_text(json.dumps(cfg))
    return str(tmp)


def test_full_module_paths_become_projections_and_layers(tmp_path: Path) -> None:
    paths = [f"model.layers.{i}.{m}" for i in (0, 2) for m in ("self_attn.q_proj", "mlp.down_proj")]
    spec, layers = read_adapter_config(write(tmp_path, paths))
    assert spec.target_modules == ("down_proj", "q_proj")
    assert layers == (0, 2)


def test_layers_to_transform_wins_over_paths(tmp_path: Path) -> None:
    paths = [f"model.layers.{i}.self_attn.v_proj" for i in (0, 1)]
    _, layers = read_adapter_config(write(tmp_path, paths, layers_to_transform=[1]))
    assert layers == (1,)


def test_uneven_paths_are_refused_by_name(tmp_path: Path) -> None:
    paths = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    with pytest.raises(EngineError) as e:
        read_adapter_config(write(tmp_path, paths))
    assert e.value.code == "ADAPTER_UNSUPPORTED" and "model.layers.0.self_attn.q_proj" in e.value.message


def test_names_mixed_with_paths_are_refused(tmp_path: Path) -> None:
    """ "q_proj" means every layer, a path one layer: one (projections, layers) pair cannot say both."""
    with pytest.raises(EngineError) as e:
        read_adapter_config(write(tmp_path, ["q_proj", "model.layers.0.mlp.up_proj"]))
    assert e.value.code == "ADAPTER_UNSUPPORTED"
