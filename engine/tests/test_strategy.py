"""distributed.strategy "auto" (distributed.choose_strategy): ddp where a whole replica fits half a GPU or where
FSDP cannot run, else fsdp — decided from the model directory's bytes and the card's memory before loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import lora_method, make_hf_model, make_plan
from test_generic import make_neox

from tuna_engine import distributed
from tuna_engine.protocol import parse_train_plan

GB = 10**9


def plan_for(tmp: Path, model_dir: Path, method: dict | None = None, **train: object):
    raw = make_plan(tmp, model_dir, [tmp / "train.safetensors"], method=method, **train)
    raw["distributed"] = {"strategy": "auto", "gpus": 2, "nnodes": 1}
    return parse_train_plan(raw)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("m") / "qwen3"
    make_hf_model(d, "qwen3")
    return d


def stored(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


def test_auto_is_a_valid_plan_value(tmp_path: Path, qwen: Path) -> None:
    assert plan_for(tmp_path, qwen).distributed.strategy == "auto"


def test_lora_replica_that_fits_half_the_card_is_ddp_else_fsdp(tmp_path: Path, qwen: Path) -> None:
    plan = plan_for(tmp_path, qwen)
    size = distributed.replica_bytes(plan)
    assert size == stored(qwen)  # LoRA on a 16-bit base: the weights as stored
    assert distributed.choose_strategy(plan, "cuda", 2 * size) == "ddp"
    assert distributed.choose_strategy(plan, "cuda", 2 * size - 1) == "fsdp"
    assert distributed.choose_strategy(plan, "cpu", None) == "fsdp"  # no per-device memory to compare with


def test_full_fine_tuning_counts_gradients_and_optimizer_state(tmp_path: Path, qwen: Path) -> None:
    plan = plan_for(tmp_path, qwen, method={"type": "full"})
    assert distributed.replica_bytes(plan) == 8 * stored(qwen)
    assert distributed.choose_strategy(plan, "cuda", 4 * stored(qwen)) == "fsdp"
    assert distributed.choose_strategy(plan, "cuda", 16 * stored(qwen)) == "ddp"


def test_qlora_from_a_16bit_directory_counts_nf4_bytes(tmp_path: Path, qwen: Path) -> None:
    plan = plan_for(tmp_path, qwen, method=lora_method("qlora", r=8, alpha=16))
    assert distributed.replica_bytes(plan) == int(stored(qwen) * 0.3)


def test_ddp_where_fsdp_cannot_run(tmp_path: Path, qwen: Path) -> None:
    # 8-bit AdamW (block-quantized state FSDP cannot shard), even on a card the replica would not fit
    plan = plan_for(tmp_path, qwen, optimizer="adamw8bit")
    assert distributed.choose_strategy(plan, "cuda", 1) == "ddp"
    # an architecture on the generic transformers backend (FSDP shards Tuna's own model code only)
    neox = tmp_path / "neox"
    make_neox(neox)
    assert distributed.choose_strategy(plan_for(tmp_path, neox), "cuda", 1) == "ddp"
