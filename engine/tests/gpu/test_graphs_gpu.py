"""CUDA graphs for the training step (graphs.py, train.cuda_graphs) on a GPU.

- Micro-batches replayed through a captured graph give the eager path's loss sums and accumulated gradients, for
  packed rows (flash-attention varlen with padded cu_seqlens) and one-sample rows (cuDNN), with and without
  recomputation; inputs really are reloaded (each batch trains a different number of targets, so a stale replay
  would show); gradient tensors replaced under the graph make it capture again instead of writing into freed
  memory.
- A capture after eager micro-batches on the default stream works (their autograd graphs dropped).
- A 30-step run with graphs follows the same run without them (same plan, the step split into micro-batches).
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from helpers import (
    QWEN3_0_6B,
    bf16_train,
    greedy_packs,
    random_cuda_model_dir,
    random_samples,
    write_shard,
)

from tuna_engine.data import Batch, collate, read_shards
from tuna_engine.graphs import StepGraphs
from tuna_engine.models import llama, load_model
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import static_ce_sum, weighted_ce_sum

pytestmark = pytest.mark.gpu

FOUR_LAYERS = {**QWEN3_0_6B, "num_hidden_layers": 4}


_LORA = LoraSpec(
    r=16, alpha=32, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
)


def _model(model_dir: Path, recompute: str) -> torch.nn.Module:
    model = load_model(str(model_dir), "bfloat16", torch.device("cuda"), _LORA, seed=0)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    model.recompute = recompute
    model.offload_activations = False
    for layer in model.model.layers:
        layer.compile()
    model.train()
    return model


def _batches(layout: str, tmp: Path) -> list[Batch]:
    """Four micro-batches of one shape: the same rows' layout, new tokens, and a prompt of 10/20/30/40 tokens
    at each row's start (untrained), so every batch trains a different count of targets within one bucket."""
    if layout == "rows":
        samples = random_samples(2, vocab=151936, min_len=1024, max_len=1024, seed=1)
        packs = None
    else:  # two rows of several samples each, the second shorter (padding)
        samples = random_samples(9, vocab=151936, min_len=100, max_len=200, seed=2)
        packs = [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    shard = write_shard(tmp / f"{layout}.safetensors", samples, packs, max_length=1024)
    base = collate(read_shards([str(shard)]))
    out = []
    g = torch.Generator().manual_seed(3)
    for k in range(4):
        ids = torch.randint(0, 151936, base.input_ids.shape, generator=g)
        w = base.loss_weight.clone()
        w[:, : 10 * (k + 1)] = 0.0
        out.append(Batch(ids, base.position_ids, base.sample_ids, w, base.real_tokens))
    return out


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().float().clone() for p in model.parameters() if p.grad is not None]


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Relative distance of two gradient sets, as one vector each."""
    d = sum(float((x - y).float().norm() ** 2) for x, y in zip(a, b, strict=True))
    n = sum(float(y.float().norm() ** 2) for y in b)
    return (d / max(n, 1e-60)) ** 0.5


def _fp32_twin(model: torch.nn.Module, model_dir: Path) -> torch.nn.Module:
    """The same weights in fp32, eager, masked SDPA: the reference both bf16 paths are measured against."""
    twin = load_model(str(model_dir), "float32", torch.device("cuda"), _LORA, seed=0)
    with torch.no_grad():
        for (n, a), (m, b) in zip(twin.named_parameters(), model.named_parameters(), strict=True):
            assert n == m
            a.copy_(b)
            a.requires_grad_(b.requires_grad)
    twin.recompute = "none"
    twin.offload_activations = False
    twin.train()
    return twin


@pytest.mark.parametrize("layout", ["packed", "rows"])
@pytest.mark.parametrize(
    "recompute,checkpoint",
    [("none", None), ("full", None), ("full", "outside")],
    ids=["none", "full", "full-outside"],
)
def test_replays_equal_eager(tmp_path: Path, layout: str, recompute: str, checkpoint: str | None) -> None:
    """checkpoint: TUNA_LAYER_CHECKPOINT (None: unset, the default: recompute "full" checkpoints inside each layer).
    Session 12 (H200) ran the inside checkpoint as "full-inside" while captures still defaulted to outside: passed."""
    llama.set_layer_checkpoint(checkpoint)
    try:
        _replays_equal_eager(tmp_path, layout, recompute)
    finally:
        llama.set_layer_checkpoint(None)


def _replays_equal_eager(tmp_path: Path, layout: str, recompute: str) -> None:
    model_dir = random_cuda_model_dir(tmp_path / "m", FOUR_LAYERS)
    model = _model(model_dir, recompute)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = _batches(layout, tmp_path)
    scale = 1.0 / 4096
    cuda = torch.device("cuda")

    def eager(m: torch.nn.Module, bs: list[Batch]) -> tuple[list[float], list[torch.Tensor]]:
        sums = []
        for b in bs:
            ce = weighted_ce_sum(m, b.to(cuda))
            (ce * scale).backward()
            sums.append(float(ce.detach()))
        del ce  # no autograd graph may keep the accumulation nodes of the default stream alive
        out = _grads(m)
        m.zero_grad(set_to_none=True)
        return sums, out

    # A graphed micro-batch may run other kernels than the eager one (a lengthened row, another attention
    # algorithm under capture), each rounding bf16 its own way: graphed and eager differed by 0.2-0.9% of the
    # gradients' norm on an H200 (2026-11-28) while two eager runs agree exactly. So both are measured against
    # the fp32 computation of the same batches: the graphs must be as accurate as eager (a stale or wrong input
    # is off by O(1)).
    twin = _fp32_twin(model, model_dir)
    _, exact = eager(twin, batches)
    _, exact_first = eager(twin, batches[:1])
    del twin
    gc.collect()
    ref_sums, ref = eager(model, batches)
    _, ref_first = eager(model, batches[:1])
    eager_error, eager_error_first = _rel(ref, exact), _rel(ref_first, exact_first)
    gc.collect()

    graphs = StepGraphs(model, params, cuda, static_ce_sum)
    got = [float(graphs.run(b, scale)) for b in batches]
    # the first sighting eager, then captured at the second and replayed for it and the next two
    assert graphs.disabled is None
    assert (len(graphs.graphs), graphs.replays) == (1, 3)
    assert len({round(x) for x in ref_sums}) == 4  # the batches' sums really differ: a stale input would show
    for a, b in zip(got, ref_sums, strict=True):
        assert a == pytest.approx(b, rel=1e-4), (got, ref_sums)
    graphed_error = _rel(_grads(model), exact)
    print(f"gradient error against fp32: eager {eager_error:.2e}, graphed {graphed_error:.2e}")
    assert graphed_error < 1.5 * eager_error + 1e-3

    # Gradients freed (set_to_none) and the shape seen again: captured again onto the new gradient tensors.
    model.zero_grad(set_to_none=True)
    graphs.run(batches[0], scale)
    assert (len(graphs.graphs), graphs.replays) == (1, 4)
    assert _rel(_grads(model), exact_first) < 1.5 * eager_error_first + 1e-3


def test_capture_after_eager_micro_batches_on_the_default_stream(tmp_path: Path) -> None:
    """A run whose earlier micro-batches ran eagerly on the default stream (shapes not graphed) captures later
    ones: train.py drops each eager autograd graph after its backward, so no accumulation node of the default
    stream is alive at the capture (with the graph kept alive the capture fails: the first attempt's bug)."""
    model = _model(random_cuda_model_dir(tmp_path / "m", FOUR_LAYERS), "none")
    params = [p for p in model.parameters() if p.requires_grad]
    batches = _batches("rows", tmp_path)
    cuda = torch.device("cuda")
    ce = weighted_ce_sum(model, batches[0].to(cuda))
    (ce * 1e-3).backward()
    ce = ce.detach()  # as train.py does
    model.zero_grad(set_to_none=False)
    graphs = StepGraphs(model, params, cuda, static_ce_sum)
    for b in batches:
        assert graphs.run(b, 1e-3) is not None
    assert graphs.disabled is None and (len(graphs.graphs), graphs.replays) == (1, 3)


def _graphed_and_eager(
    tmp: Path, model_dir: Path, shard: Path, micro_batch_size: int, grad_accum: int
) -> tuple:
    """30 steps of recompute none, compiled, lr 1e-3, with CUDA graphs on and off: ({graphs: losses}, {graphs: log}),
    after checking that the two curves agree within bf16 noise step by step."""
    curves, logs = {}, {}
    for graphs in (False, True):
        steps, logs[graphs] = bf16_train(
            tmp / str(graphs),
            model_dir,
            [shard],
            600,
            max_steps=30,
            micro_batch_size=micro_batch_size,
            grad_accum=grad_accum,
            learning_rate=1e-3,
            warmup_steps=3,
            gradient_checkpointing=False,
            recompute="none",
            compile=True,
            cuda_graphs=graphs,
        )
        curves[graphs] = [e["loss"] for e in steps]
    diffs = [abs(a - b) / b for a, b in zip(curves[True], curves[False], strict=True)]
    assert len(diffs) == 30 and max(diffs) < 1e-2, diffs
    return curves, logs


def test_30_steps_with_graphs_follow_eager(tmp_path: Path) -> None:
    model_dir = random_cuda_model_dir(tmp_path / "m", QWEN3_0_6B)
    samples = random_samples(120, vocab=1000, min_len=2048, max_len=2048, seed=7)
    shard = write_shard(tmp_path / "t.safetensors", samples, max_length=2048)
    curves, logs = _graphed_and_eager(tmp_path, model_dir, shard, micro_batch_size=1, grad_accum=4)
    assert "cuda_graphs: captured micro-batch shape 1 × 2048" in logs[True], logs[True][-3000:]
    assert "cuda_graphs" not in logs[False]
    assert curves[True][-1] < curves[True][0]


def test_packed_real_lengths_graph_with_coarse_keys_and_follow_eager(tmp_path: Path) -> None:
    """Supervised samples of 32–700 tokens (prompts untrained) packed next-fit into 2,048-token rows: micro-batches
    differ in length, trained targets and samples. With the default (coarse) graph keys shapes repeat, so graphs
    are captured — rows lengthened to a bucket of their length — and the losses follow the eager run's."""
    model_dir = random_cuda_model_dir(tmp_path / "m", FOUR_LAYERS)
    samples = random_samples(900, vocab=151936, min_len=32, max_len=700, seed=11)
    shard = write_shard(tmp_path / "t.safetensors", samples, greedy_packs(samples, 2048), max_length=2048)
    _, logs = _graphed_and_eager(tmp_path, model_dir, shard, micro_batch_size=2, grad_accum=2)
    assert "cuda_graphs: captured micro-batch shape 2 × " in logs[True], logs[True][-3000:]
