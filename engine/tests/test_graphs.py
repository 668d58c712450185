"""CUDA graphs' static form of a micro-batch (graphs.py), on the CPU: the graph's loss — trained targets
gathered by index and padded with weight 0 to a bucket, boundaries computed on the host — is the loss and the
gradients of the eager path's boolean mask. Capture and replay themselves run in tests/gpu/test_graphs_gpu.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import greedy_packs, lora_method, make_hf_model, make_plan, random_samples, write_shard

from tuna_engine.data import collate, micro_batches, read_shards
from tuna_engine.errors import EngineError
from tuna_engine.graphs import (
    AUTO_MAX_TOKEN_PARAMS,
    StepGraphs,
    _Graph,
    bucket,
    graph_key,
    graph_keys_mode,
    host_batch,
)
from tuna_engine.models import llama, load_model
from tuna_engine.models.llama import segments
from tuna_engine.protocol import LoraSpec, parse_train_plan
from tuna_engine.train import graph_policy, static_ce_sum, weighted_ce_sum


def test_bucket_pads_at_most_an_eighth_within_its_bounds() -> None:
    for n in [1, 7, 8, 9, 100, 1000, 1023, 1024, 1025, 16376, 99_999]:
        b = bucket(n, cap=10**9)
        assert b >= n and b >= 8
        assert b <= max(8, n + n / 8), (n, b)
    assert bucket(16_376, cap=8 * 2047) == 16_376  # every target trained: exactly the batch, no padding
    assert bucket(5, cap=3) == 3
    for n in [9, 100, 1000, 1023, 1025, 3000, 99_999]:  # coarse keys' targets: 4 sizes an octave
        b = bucket(n, cap=10**9, per_octave=4)
        assert n <= b <= n + n / 4, (n, b)
    assert {bucket(n, cap=10**9, per_octave=4) for n in range(2049, 4097)} == {2560, 3072, 3584, 4096}


def _lora_model(tmp_path: Path) -> torch.nn.Module:
    model_dir = tmp_path / "model"
    make_hf_model(model_dir, "qwen3")
    lora = LoraSpec(
        r=4, alpha=8, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
    )
    model = load_model(str(model_dir), "float32", torch.device("cpu"), lora, seed=3)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    model.train()
    return model


@pytest.mark.parametrize("coarse", [True, False])
@pytest.mark.parametrize("layout", ["packed", "one_per_row"])
def test_static_loss_equals_masked_loss(tmp_path: Path, layout: str, coarse: bool) -> None:
    model = _lora_model(tmp_path)
    if layout == "packed":  # several samples a row, rows of different lengths (padding), prompts untrained
        samples = random_samples(12, seed=4, prompt_frac=0.4)
        shard = write_shard(tmp_path / "t.safetensors", samples, greedy_packs(samples, 37))
    else:  # 21 tokens: not a bucket size, but rows of one sample each keep their length
        samples = random_samples(4, min_len=21, max_len=21, seed=5, prompt_frac=0.0)
        shard = write_shard(tmp_path / "t.safetensors", samples)
    batch = micro_batches(read_shards([str(shard)]), 4)[0]
    T = batch.input_ids.shape[1]
    h = host_batch(batch, coarse)
    key = graph_key(h)
    assert h.one_per_row == (layout == "one_per_row")
    assert key.one_per_row == h.one_per_row
    if coarse and layout == "packed":  # lengthened to the bucket of its length, padding a sample of its own
        assert (T, key.length) == (37, 40) and h.source is batch
        assert torch.equal(h.batch.input_ids[:, :T], batch.input_ids)
        assert not h.batch.loss_weight[:, T:].any()
    else:
        assert key.length == T and h.batch is batch and h.source is None
    # the host boundaries are the device function's, and the key's slots hold them
    assert torch.equal(h.cu_seqlens, segments(h.batch.sample_ids).cu_seqlens)
    assert key.samples >= h.cu_seqlens.numel() - 1 and key.targets >= len(h.targets)
    if layout == "packed":
        assert key.targets > len(h.targets) or key.targets == key.rows * (key.length - 1)
        if coarse:
            assert key.samples & (key.samples - 1) == 0  # a power of two

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return out

    ref = weighted_ce_sum(model, batch)
    (ref * 0.5).backward()
    ref_grads = grads()

    g = _Graph(key, torch.device("cpu"))
    g.load(h, 0.5)
    got = static_ce_sum(
        model, g.input_ids, g.position_ids, g.sample_ids, g.segments, g.row_index, g.targets, g.weights
    )
    (got * g.scale).backward()
    got_grads = grads()

    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert len(got_grads) == len(ref_grads) > 0
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_padded_targets_weigh_nothing(tmp_path: Path) -> None:
    """A batch with one trained target: the bucket's other rows are padding; loss and gradients are that one
    target's. The rows gathered for padding point at row 0, so a weight there other than 0 would show."""
    model = _lora_model(tmp_path)
    samples = random_samples(2, min_len=16, max_len=16, seed=6, prompt_frac=0.0)
    b = collate(read_shards([str(write_shard(tmp_path / "t.safetensors", samples))]))
    w = torch.zeros_like(b.loss_weight)
    w[1, 9] = 1.0
    b = type(b)(b.input_ids, b.position_ids, b.sample_ids, w, b.real_tokens)
    h = host_batch(b)
    key = graph_key(h)
    assert len(h.targets) == 1 and key.targets == 8
    g = _Graph(key, torch.device("cpu"))
    g.load(h, 1.0)
    assert g.weights.tolist() == [1.0] + [0.0] * 7
    assert g.row_index.tolist() == [1 * 16 + 8] * 8  # padding repeats the trained row (row 1, position 8)
    got = static_ce_sum(
        model, g.input_ids, g.position_ids, g.sample_ids, g.segments, g.row_index, g.targets, g.weights
    )
    assert float(got.detach()) == pytest.approx(float(weighted_ce_sum(model, b).detach()), rel=1e-6)


@pytest.mark.parametrize(
    "method,train,dtype,want",
    [
        ({}, {}, "bfloat16", (True, AUTO_MAX_TOKEN_PARAMS)),  # the GPU-tested path: small micro-batches
        ({}, {"cuda_graphs": True}, "bfloat16", (True, None)),  # every shape
        ({}, {"cuda_graphs": False}, "bfloat16", (False, None)),
        ({}, {}, "float16", (False, AUTO_MAX_TOKEN_PARAMS)),
        ({"type": "qlora"}, {}, "bfloat16", (False, AUTO_MAX_TOKEN_PARAMS)),
        ({"use_dora": True}, {}, "bfloat16", (False, AUTO_MAX_TOKEN_PARAMS)),
        ({}, {"base_precision": "fp8"}, "bfloat16", (False, AUTO_MAX_TOKEN_PARAMS)),
        ({"type": "qlora"}, {"cuda_graphs": True}, "bfloat16", (True, None)),
    ],
)
def test_graph_policy(tmp_path: Path, method: dict, train: dict, dtype: str, want: tuple) -> None:
    """ "auto" graphs only bf16 LoRA without DoRA (what the GPU tests cover); true graphs anything."""
    m = lora_method(method.get("type", "lora"))
    m["lora"]["use_dora"] = method.get("use_dora", False)
    plan = make_plan(tmp_path, tmp_path, [tmp_path / "t"], method=m, **train)
    plan["model"]["dtype"] = dtype
    assert graph_policy(parse_train_plan(plan)) == want


def test_graph_keys_mode_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNA_GRAPH_KEYS", raising=False)
    assert graph_keys_mode() == "coarse"
    monkeypatch.setenv("TUNA_GRAPH_KEYS", "fine")
    assert graph_keys_mode() == "fine"
    monkeypatch.setenv("TUNA_GRAPH_KEYS", "tight")
    with pytest.raises(EngineError, match="TUNA_GRAPH_KEYS: 'tight' is not one of coarse, fine"):
        graph_keys_mode()


@pytest.mark.parametrize("coarse", [True, False])
def test_prepare_judges_the_lengthened_shape(tmp_path: Path, coarse: bool) -> None:
    """StepGraphs.prepare (without a GPU: its CUDA state left out) graphs a packed micro-batch only if the shape it
    will run at — lengthened to 40 tokens under coarse keys — is graphable; here only rows under 40 tokens are (as
    if 40 crossed the offload threshold, whose passes must not be captured)."""
    samples = random_samples(12, seed=4, prompt_frac=0.4)
    shard = write_shard(tmp_path / "t.safetensors", samples, greedy_packs(samples, 37))
    batch = micro_batches(read_shards([str(shard)]), 4)[0]
    graphs = object.__new__(StepGraphs)
    graphs.disabled, graphs.coarse = None, coarse
    graphs.graphable = lambda rows, length: length < 40  # type: ignore[method-assign]
    h = graphs.prepare(batch)
    assert (h is None) if coarse else (h is not None and h.batch is batch)


def test_captured_micro_batches_take_the_default_layer_checkpoint() -> None:
    """A graphed micro-batch (its capture and the eager run that warms it) runs recompute "full" with the checkpoint
    the rest of the run takes: inside the layer by default (its replays equal eager: tests/gpu/test_graphs_gpu.py,
    full-inside), TUNA_LAYER_CHECKPOINT where set. Until session 12 captures lowered it to outside."""
    seen: list[str] = []

    def loss(*args: object) -> torch.Tensor:
        seen.append(llama.layer_checkpoint())
        return torch.zeros((), requires_grad=True)

    steps = SimpleNamespace(model=None, graph_loss=loss)
    g = SimpleNamespace(
        input_ids=None, position_ids=None, sample_ids=None, segments=None, row_index=None, targets=None,
        weights=None, scale=1.0,
    )  # fmt: skip
    StepGraphs._forward_backward(steps, g)  # type: ignore[arg-type]
    try:
        llama.set_layer_checkpoint("outside")  # what TUNA_LAYER_CHECKPOINT=outside sets (train.py)
        StepGraphs._forward_backward(steps, g)  # type: ignore[arg-type]
    finally:
        llama.set_layer_checkpoint(None)
    assert seen == ["inside", "outside"]
    with pytest.raises(ValueError, match="expected one of"):  # the default DDP/FSDP lower (train.py)
        llama.set_layer_checkpoint_default("around")
    assert llama.layer_checkpoint() == "inside"
