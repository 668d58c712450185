"""CUDA graphs for the training step (train.cuda_graphs; issue 5, docs/performance.md).

A micro-batch's forward, loss and backward are captured once as one CUDA graph per micro-batch shape and then
replayed: the CPU issues one launch instead of ~2,000 kernels and the Python around them. A small model's step
is CPU-bound without it, and more so when the step is split into micro-batches (gradient accumulation, to hold
fewer activations at once): measured on an H200 (2026-11-28, bench/train/run.py), Qwen3-0.6B without
recomputation, 8 × 2048 tokens a step, ran 108.8k tok/s as one micro-batch and 47.4k as four of 2 × 2048 (the
profiler: 413 ms of CPU for 159 ms of GPU work a step).

A graph replays the same kernels on the same addresses, so what varies from batch to batch becomes a tensor of
fixed size, filled before each replay (`_Graph.load`):
- the rows: token ids, positions and sample ids [B, T]; packed rows lengthened to a bucket of T (≤ 12.5% more
  tokens, padding as a sample of its own), so nearly full packs of different lengths share a shape;
- the trained targets: their flat row indices, token ids and weights, padded with weight 0 up to a bucket
  (4 an octave: ≤ 25% more rows through the output layer than the batch trains);
- packed samples: the varlen kernel's cu_seqlens, padded with empty samples up to a power of two; its maximum
  length is T (an upper bound serves);
- the loss scale (the fp16 scaler's scale over the step's trained tokens) as a 0-dim tensor.
Real packed data (support transcripts, prompts untrained) varies in all three; with these buckets a simulated
mix of 2,680 first-fit-decreasing packs of 2,048 tokens falls into 14–22 shapes at micro-batches of 1–4 rows,
the 8 commonest covering 87–94% of micro-batches (8 buckets an octave, no lengthening: 113–243 shapes, 24–64%).
TUNA_GRAPH_KEYS=fine keeps the finer buckets and unlengthened rows (the A/B: on an H200, Qwen3-0.6B on such
packs, 4 micro-batches a step, coarse keys trained 3.0x the tokens/s of fine ones — docs/benchmarks.md, session 9).
Gradients accumulate in place into the parameters' `.grad`, so those must stay the same tensors: the training
loop zeroes them with set_to_none=False, and a replay first checks the addresses it was captured with (a changed
one drops the graph and captures the shape again).

`true` graphs every shape, "auto" only small micro-batches (AUTO_MAX_TOKEN_PARAMS). A shape is captured the
second time it is seen (the first runs the same fixed-shape computation eagerly, which compiles the layers for
it and warms the capture stream): a run on one shape (the benchmarks, packed data of one length) graphs every
step after the first; real data whose shapes all differ keeps running eagerly, never paying a capture for a shape
seen once. At most MAX_GRAPHS shapes are kept; they share one memory pool, which holds the largest one's
activations for the rest of the run. Not graphed: several processes (their collectives), offloaded passes (their
host copies and events), dropout (below), CPU.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .data import Batch, pad_length
from .errors import EngineError
from .models.llama import Segments, cu_seqlens, offload_this_pass
from .protocol import log

MAX_GRAPHS = 8

# train.cuda_graphs "auto" graphs a micro-batch when its tokens × the model's parameters are at most this: where
# launching the kernels takes longer than running them. Measured on an H200 (2026-11-28, docs/benchmarks.md),
# Qwen3-0.6B without recomputation: micro-batches of 2 × 2048 (2.5e12 with the adapters) ran 2.2× faster graphed
# (39.2k → 85.5k tok/s, same run; 95.9k once the optimizer step stopped waiting for the loss). At 8 × 2048 (1e13)
# graphing gained +1.8% without recomputation and, with full recomputation on a host whose CPU was busy, +33% (same
# runs) — but a graph's pool keeps its activations for the whole run (recompute none: 20 GiB), on top of what eager
# shapes allocate: larger micro-batches stay eager.
AUTO_MAX_TOKEN_PARAMS = 3e12


def bucket(n: int, cap: int, least: int = 8, per_octave: int = 8) -> int:
    """n rounded up to one of `per_octave` (a power of two) sizes an octave (8: ≤ 12.5% more, 4: ≤ 25%), at least
    `least`, at most `cap`."""
    if n <= least:
        return min(least, cap)
    step = 1 << max(0, n.bit_length() - per_octave.bit_length())
    return min(cap, -(-n // step) * step)


GRAPH_KEYS = ("coarse", "fine")


def graph_keys_mode() -> str:
    """TUNA_GRAPH_KEYS: how finely packed micro-batches are told apart (module docstring); coarse unless set."""
    mode = os.environ.get("TUNA_GRAPH_KEYS") or "coarse"
    if mode not in GRAPH_KEYS:
        raise EngineError(
            "PLAN_INVALID",
            f"environment variable TUNA_GRAPH_KEYS: {mode!r} is not one of {', '.join(GRAPH_KEYS)}",
            hint="unset it for the default (coarse)",
        )
    return mode


@dataclass(frozen=True)
class GraphKey:
    rows: int  # B
    length: int  # T
    targets: int  # trained targets' bucket (rows through the output layer)
    samples: int  # cu_seqlens' sample capacity
    one_per_row: bool  # every row one sample, no padding (the cuDNN rows path)


@dataclass(frozen=True)
class HostBatch:
    """A CPU micro-batch in the graph's static form (before padding targets and samples to the key's sizes)."""

    batch: Batch  # the micro-batch, its rows lengthened to the key's length (coarse keys, packed rows)
    row_index: torch.Tensor  # [N] flat index (b·T + t) of each trained target's hidden row
    targets: torch.Tensor  # [N] its token id
    weights: torch.Tensor  # [N] its weight
    cu_seqlens: torch.Tensor  # [S + 1] int32
    one_per_row: bool
    coarse: bool  # the key's buckets (graph_key)
    source: Batch | None = None  # the micro-batch as given, when `batch` is a lengthened copy


def host_batch(b: Batch, coarse: bool = True) -> HostBatch:
    """b's graph inputs. Coarse keys lengthen packed rows to a bucket of their length (≤ 12.5% more tokens, as
    padding: its own sample, weight 0), so micro-batches of nearly full packs (2,040–2,048 tokens) share one shape;
    rows of one sample each keep their length (padding would take them off the cuDNN path)."""
    source = b
    B, T = b.input_ids.shape
    cu = cu_seqlens(b.sample_ids)
    one_per_row = cu.numel() - 1 == B
    if coarse and not one_per_row and bucket(T, 1 << 62) > T:
        b = pad_length(b, bucket(T, 1 << 62))
        B, T = b.input_ids.shape
        cu = cu_seqlens(b.sample_ids)
    # Row-major, the order of `hidden[:, :-1][keep]` in train.weighted_ce_sum.
    at = torch.nonzero(b.loss_weight[:, 1:] > 0)
    row_index = at[:, 0] * T + at[:, 1]
    # By flat index, not by boolean mask: CPU mask indexing took 6–9 ms a micro-batch on the GPU host (2026-11-28
    # trace), time the GPU waited for.
    targets = b.input_ids.reshape(-1).index_select(0, row_index + 1)
    weights = b.loss_weight.reshape(-1).index_select(0, row_index + 1)
    return HostBatch(
        b, row_index, targets, weights, cu, one_per_row, coarse, source if b is not source else None
    )


def graph_key(h: HostBatch) -> GraphKey:
    """Coarse: trained targets in 4 buckets an octave (≤ 25% more rows through the output layer) and sample slots
    a power of two (empty slots are free in the varlen kernel); fine: 8 buckets an octave for both."""
    B, T = h.batch.input_ids.shape
    n_samples = h.cu_seqlens.numel() - 1
    if h.one_per_row:
        samples = B
    elif h.coarse:
        samples = min(B * T, 1 << max(3, (n_samples - 1).bit_length()))
    else:
        samples = bucket(n_samples, B * T)
    targets = bucket(len(h.targets), B * (T - 1), per_octave=4 if h.coarse else 8)
    return GraphKey(B, T, targets, samples, h.one_per_row)


class _Graph:
    """Static inputs and output of one captured micro-batch shape."""

    def __init__(self, key: GraphKey, device: torch.device) -> None:
        B, T, N, S = key.rows, key.length, key.targets, key.samples
        self.key = key
        self.input_ids = torch.zeros(B, T, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(B, T, dtype=torch.long, device=device)
        self.sample_ids = torch.zeros(B, T, dtype=torch.long, device=device)
        self.row_index = torch.zeros(N, dtype=torch.long, device=device)
        self.targets = torch.zeros(N, dtype=torch.long, device=device)
        self.weights = torch.zeros(N, dtype=torch.float32, device=device)
        self.cu_seqlens = torch.full((S + 1,), B * T, dtype=torch.int32, device=device)
        self.scale = torch.zeros((), dtype=torch.float32, device=device)
        self.segments = Segments(self.sample_ids, self.cu_seqlens, T, one_per_row=key.one_per_row)
        self.graph: Any = None  # the torch.cuda.CUDAGraph, once captured
        self.ce_sum: torch.Tensor | None = None
        self.addresses: list[int] = []

    def load(self, h: HostBatch, scale: float) -> None:
        b, n, s = h.batch, len(h.targets), h.cu_seqlens.numel()
        # Padded targets: weight 0 (no loss, no gradient) on a trained row (finite logits wherever the batch's are:
        # 0 × an overflowed logit would be NaN), token 0; padded samples: empty, at the end.
        pad = self.targets.numel() - n
        fill = int(h.row_index[0]) if n else 0
        cu = h.cu_seqlens
        for dst, src in (
            (self.input_ids, b.input_ids),
            (self.position_ids, b.position_ids),
            (self.sample_ids, b.sample_ids),
            (self.row_index, torch.cat([h.row_index, h.row_index.new_full((pad,), fill)])),
            (self.targets, torch.cat([h.targets, h.targets.new_zeros(pad)])),
            (self.weights, torch.cat([h.weights, h.weights.new_zeros(pad)])),
            (self.cu_seqlens, torch.cat([cu, cu.new_full((self.cu_seqlens.numel() - s,), int(cu[-1]))])),
        ):
            # From page-locked memory: a copy from pageable memory first waits for the stream to drain (the
            # previous replay), so the GPU would idle while this one is launched. PyTorch's pinned-memory cache
            # keeps each buffer until its copy is done.
            dst.copy_(src.pin_memory() if dst.is_cuda else src, non_blocking=True)
        self.scale.fill_(scale)


def tensor_addresses(params: list[torch.nn.Parameter]) -> list[int]:
    return [p.data_ptr() for p in params] + [p.grad.data_ptr() if p.grad is not None else 0 for p in params]


class StepGraphs:
    """Runs each micro-batch of a graphed shape's forward, loss and backward (`run`): through its captured graph,
    or eagerly (the same static computation) the first time the shape is seen — both on one side stream,
    the capture stream. That stream is the one autograd's gradient-accumulation nodes are made on (each
    parameter keeps its node while any autograd graph holds it), so the capture never depends on another
    stream's work. Shapes not graphed at all are left to the caller (`run` returns None).

    `graph_loss(model, input_ids, position_ids, sample_ids, segments, row_index, targets, weights)` is the
    micro-batch's Σ w·CE in fixed shapes (train.static_ce_sum), the same computation as train.weighted_ce_sum.
    Trainable parameters all hold a gradient tensor (zeros at least) once a graph exists: one that never gets a
    gradient would then see AdamW's decay where eager leaves it alone (our models use every adapter)."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: list[torch.nn.Parameter],
        device: torch.device,
        graph_loss: Callable[..., torch.Tensor],
        max_graphs: int = MAX_GRAPHS,
        max_token_params: float | None = None,
    ) -> None:
        """max_token_params: graph only micro-batches whose tokens × model parameters are at most this ("auto");
        None graphs every shape (true)."""
        self.model, self.params, self.device = model, params, device
        self.max_token_params = max_token_params
        self.n_params = sum(p.numel() for p in model.parameters())
        self.graph_loss = graph_loss
        self.max_graphs = max_graphs
        self.graphs: dict[GraphKey, _Graph] = {}
        self.seen: Counter[GraphKey] = Counter()
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)
        self.replays = 0
        self.coarse = graph_keys_mode() == "coarse"
        self.disabled: str | None = None
        # Recomputation reads and restores the RNG state, which a capture cannot; graph only models that draw
        # no random numbers (no dropout).
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
            self.disabled = "dropout draws random numbers"
            log("train.cuda_graphs: off for this run (dropout > 0); micro-batches run eagerly")

    def graphable(self, rows: int, length: int) -> bool:
        if self.max_token_params is not None and rows * length * self.n_params > self.max_token_params:
            return False
        core: Any = self.model
        # Sized in the decoder's activation dtype, as the forward's offload_this_pass sizes them.
        dtype = core.model.embed_tokens.weight.dtype
        hidden = torch.empty(rows, length, core.config.hidden_size, device="meta", dtype=dtype)
        return not offload_this_pass(core.offload_activations, hidden, len(core.model.layers))

    def prepare(self, b: Batch) -> HostBatch | None:
        """b's graph inputs, built on the CPU (`host_batch`) — ahead of time while the GPU still works on the step
        before (train.py) — or None for a shape that is not graphed."""
        if self.disabled is not None or not self.graphable(*b.input_ids.shape):
            return None
        h = host_batch(b, self.coarse)
        # Judged again at the lengthened shape: up to 12.5% more tokens can cross the offload threshold (an
        # offloaded pass must not be captured: its host copies and events) or "auto"'s size limit.
        return h if h.batch is b or self.graphable(*h.batch.input_ids.shape) else None

    def run(self, b: Batch, scale: float, host: HostBatch | None = None) -> torch.Tensor | None:
        """Micro-batch b (on the CPU): forward, loss, and backward of the loss times `scale` (gradients add up in
        the parameters' .grad). Returns its Σ w·CE, a 0-dim tensor ready on the current stream — or None for a
        shape that is not graphed at all (too large for "auto", offloaded, graphs off): the caller runs it
        eagerly on its own stream, and must drop its autograd graph after the backward (a capture must not find
        accumulation nodes of another stream alive). `host`: b's `prepare`d inputs, if the caller has them."""
        if self.disabled is not None:
            return None
        if host is None or (host.source if host.source is not None else host.batch) is not b:
            host = self.prepare(b)
            if host is None:
                return None
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # the optimizer's last step and zeroing come first
        with torch.cuda.stream(self.stream):
            ce = self._run(b, scale, host)
        current.wait_stream(self.stream)
        if not any(ce is g.ce_sum for g in self.graphs.values()):
            ce.record_stream(current)  # an eager result, allocated on the side stream, read on this one
        return ce

    def _forward_backward(self, g: _Graph) -> torch.Tensor:
        ce = self.graph_loss(
            self.model,
            g.input_ids,
            g.position_ids,
            g.sample_ids,
            g.segments,
            g.row_index,
            g.targets,
            g.weights,
        )
        (ce * g.scale).backward()
        return ce.detach()

    def _eager(self, key: GraphKey, h: HostBatch, scale: float) -> torch.Tensor:
        """The static path run eagerly in fresh buffers: a shape's first sighting warms exactly what its capture
        will record (compiled code for these inputs, kernels' lazy set-up, this stream's workspaces)."""
        g = _Graph(key, self.device)
        g.load(h, scale)
        return self._forward_backward(g)

    def _run(self, b: Batch, scale: float, h: HostBatch) -> torch.Tensor:
        key = graph_key(h)
        g = self.graphs.get(key)
        if g is not None and g.addresses != tensor_addresses(self.params):
            del self.graphs[key]  # a parameter or its gradient is another tensor now: capture again
            g, self.seen[key] = None, 1
        if g is None:
            self.seen[key] += 1
            if self.seen[key] >= 2 and len(self.graphs) < self.max_graphs and self.disabled is None:
                g = self._capture(key, h, scale)
            if g is None:
                return self._eager(key, h, scale)
        g.load(h, scale)
        g.graph.replay()
        self.replays += 1
        assert g.ce_sum is not None
        return g.ce_sum

    def _capture(self, key: GraphKey, h: HostBatch, scale: float) -> _Graph | None:
        """Records the shape's graph (nothing runs); None if the capture failed (graphs are then off)."""
        g = _Graph(key, self.device)
        g.load(h, scale)
        # A gradient tensor made during the capture would be overwritten by each replay, not added to.
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        try:
            g.addresses = tensor_addresses(self.params)
            g.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g.graph, pool=self.pool, stream=self.stream):
                g.ce_sum = self._forward_backward(g)
        except Exception as e:  # noqa: BLE001 — a failed capture leaves the eager path, which works
            self.disabled = f"{type(e).__name__}: {e}"
            self.graphs.clear()
            log(
                "train.cuda_graphs: capture failed, the run goes on without graphs; set train.cuda_graphs: false "
                f"to skip the attempt ({self.disabled[:300]})"
            )
            return None
        self.graphs[key] = g
        log(
            f"train.cuda_graphs: captured micro-batch shape {key.rows} × {key.length} ({key.targets} target rows, "
            f"{'one sample a row' if key.one_per_row else f'{key.samples} sample slots'})"
        )
        return g
