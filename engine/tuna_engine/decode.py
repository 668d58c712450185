"""Static-shape decoding for generate.py: the KV cache allocated once, every decode step the same tensor shapes
for a given bucket, LoRA adapters picked per row on the device, and on CUDA the step captured as a CUDA graph
per bucket and replayed (issue 7: a decode step was ~10x the weight-read floor, all launch overhead).

What is notable:
  - Rows are slots. Row b of a decode step is cache slot b; the step covers slots 0..Bk-1 where Bk is the
    smallest batch bucket (1, 2, 4, ... max_batch_size) holding every active slot. Free slots inside the
    bucket are padding rows (token 0 at position 0, no adapter): they write position 0 of a free slot, which
    the next prefill of that slot overwrites. Slots are handed out lowest first, so the bucket stays small.
  - KV cache per layer [slots, kv_heads, capacity, head_dim], written in place with `index_copy_` at each
    row's position. Attention reads keys 0..S-1 of every row, S a key bucket (key_block·2^j, at most the
    capacity) covering the longest row, with an additive length mask built on the device from the positions:
    reading the whole capacity every step would cost more than the weights for small models at short lengths.
  - A decode step has one query per row, so grouped-query attention needs no repeated K/V: the G = H/KV query
    heads of a KV head are laid out as G query rows ([B, KV, G, D]) of an ordinary SDPA call.
  - Adapters: for each projection, the A matrices of every adapter that targets it are stacked ([m·r, in], B
    likewise, rank padded with zeros); x·Aᵀ is computed for all of them, a per-row 0/1 selection keeps the
    row's own adapter's columns, then ·Bᵀ and the row's scaling. Row adapter 0 = none (a zero delta, so its
    output is exactly the base output). DoRA's per-row magnitude scale is a gather of [n+1, out] (1 = none).
    The math is lora.Linear's (and generate.Engine._proj's): the input cast to fp32, the sum cast back.
  - CUDA graphs: one per (batch bucket, key bucket, any adapter row), captured on first use (or all at once
    by `capture_all`) after two warm-up runs on a side stream, all in one memory pool. Inputs are copied into
    static device buffers from a pinned host buffer; logits and argmax ids are the graph's static outputs.
    A warm-up run executes the step for real: its cache writes are the same values the replay writes.
  - Fused step (`fused`, the default; issue 7's small-model factor: a 0.6B step was ~40 launches per layer):
    q/k/v are ONE matmul over their weights concatenated at load, gate/up another (the modules' weights become
    row views of the concatenated tensor, so no memory is added), their adapters stacked the same way (one x·Aᵀ,
    one ·Bᵀ over a block matrix whose zero blocks add exact zeros); q_norm and k_norm are one RMSNorm over the
    H+KV heads with a per-head weight table; rotary is one gather + multiply-add for q and k together
    (rotate_half(x)·sin = x[perm]·sin± with sin± = (-sin₁, sin₂), exact). Same numbers as the unfused step
    in fp32 (the CPU tests compare tokens); the 4-bit base keeps the per-projection path.
  - `compile` (True = scope "layer", the default on CUDA): each whole decoder layer of a decode step is ONE
    torch.compile'd graph (`_decode_layer`, dynamic=False, fullgraph) shared by every layer (the weights and the
    layer's caches are inputs, not constants): the previous layer's residual add + norm, qkv, q/k norm + rotary
    with the K/V cache writes (an in-place index_put_ Inductor fuses into the same kernel), attention as the
    custom op tuna::decode_attention (kernels/decode_attn.py: Triton on CUDA, each row reading its own keys
    0..pos[b], so no mask and no key bucket), o, residual + norm, gate/up, SiLU·up, down. The layer returns
    (x, MLP output) and the next layer adds them, so that add fuses with its norm across the layer boundary.
    The final add, norm, lm head and argmax are a second compiled graph (`_decode_head`). One graph per (batch
    bucket, adapter rows or not) for the layer, per batch bucket for the head; one CUDA graph per (batch bucket,
    adapter rows or not) serves every length. CPU Inductor: 9 kernels per layer (bench/generate/count_ops.py).
    Scope "regions" (the previous path, kept for comparison): the two regions around an eager attention (cache
    write + SDPA with a length mask) compiled apart. Prefill runs the uncompiled fused layer.
Prefill (one request, its whole prompt) stays eager: causal SDPA over the prompt (flash on CUDA), K/V written
into the request's slot.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import EngineError
from .kernels import argmax as _argmax_op  # noqa: F401  (defines tuna::argmax_rows)
from .kernels import decode_layer, skinny_gemm
from .kernels.decode_attn import decode_attention as _register_op  # noqa: F401  (defines tuna::decode_attention)
from .kernels.decode_attn import default_splits
from .models.llama import CausalLM, rotate_half

KEY_BLOCK = 256  # smallest key bucket; buckets double up to the capacity


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below max_batch_size, then max_batch_size itself."""
    out, b = [], 1
    while b < max_batch_size:
        out.append(b)
        b *= 2
    return [*out, max_batch_size]


def bucket_for(n: int, buckets: list[int]) -> int:
    return next(b for b in buckets if b >= n)


# ---- adapters stacked per projection ----------------------------------------------------------------------


@dataclass
class AdapterStack:
    """The adapters that target one projection, side by side. Columns j·r..(j+1)·r-1 belong to `owner[j·r]`."""

    A: torch.Tensor  # [m·r, in] fp32
    B: torch.Tensor  # [out, m·r] fp32
    owner: torch.Tensor  # [m·r] long: adapter index (1..n) of each column; one tensor per distinct layout
    dora: torch.Tensor | None  # [n+1, out] fp32: DoRA magnitude scale per adapter, 1 where not DoRA / none


def stack_adapters(
    adapter_weights: dict[str, list[Any]], n_adapters: int, device: torch.device
) -> tuple[dict[str, AdapterStack], torch.Tensor]:
    """{module path: [AdapterWeights | None per adapter]} → ({module path: AdapterStack}, scalings [n+1])."""
    stacks: dict[str, AdapterStack] = {}
    owners: dict[tuple[int, ...], torch.Tensor] = {}
    scalings = torch.zeros(n_adapters + 1, dtype=torch.float32)
    for name, per_adapter in adapter_weights.items():
        members = [(i + 1, w) for i, w in enumerate(per_adapter) if w is not None]
        if not members:
            continue
        r = max(w.A.shape[0] for _, w in members)
        out_f, in_f = members[0][1].B.shape[0], members[0][1].A.shape[1]
        A = torch.zeros(len(members) * r, in_f, dtype=torch.float32, device=device)
        B = torch.zeros(out_f, len(members) * r, dtype=torch.float32, device=device)
        owner: list[int] = []
        dora = None
        for j, (a, w) in enumerate(members):
            rank = w.A.shape[0]
            A[j * r : j * r + rank] = w.A
            B[:, j * r : j * r + rank] = w.B
            owner += [a] * r
            scalings[a] = w.scaling
            if w.dora_scale is not None:
                if dora is None:
                    dora = torch.ones(n_adapters + 1, out_f, dtype=torch.float32, device=device)
                dora[a] = w.dora_scale
        key = tuple(owner)
        if key not in owners:
            owners[key] = torch.tensor(owner, dtype=torch.long, device=device)
        stacks[name] = AdapterStack(A, B, owners[key], dora)
    return stacks, scalings.to(device)


class _Rows:
    """Per-forward adapter state shared by every projection: the rows' adapter ids, their scalings, and the
    column selection per distinct stack layout (computed once per forward, not once per projection)."""

    def __init__(self, aidx: torch.Tensor, scalings: torch.Tensor) -> None:
        self.aidx = aidx  # [B] long
        self.scale = scalings[aidx][:, None, None]  # [B, 1, 1]
        self._select: dict[int, torch.Tensor] = {}

    def select(self, owner: torch.Tensor) -> torch.Tensor:
        sel = self._select.get(id(owner))
        if sel is None:
            sel = (self.aidx[:, None] == owner[None, :]).float()[:, None, :]  # [B, 1, m·r]
            self._select[id(owner)] = sel
        return sel


# ---- the decoder ------------------------------------------------------------------------------------------


def _norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """models/llama.py's RMSNorm (fp32, cast back, then the weight) with F.rms_norm's fused kernel in the
    middle: 4 kernels instead of 8 (bitwise equal on CPU; the decode step has four norms per layer)."""
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=module.eps)  # type: ignore[arg-type]
    return module.weight * y.to(x.dtype)


# ---- the fused layer (pure functions of tensors: what torch.compile sees, shared by every layer) ------------


class _Group(NamedTuple):
    """Projections that read the same input, as one matmul: q/k/v, gate/up, or a single o/down projection."""

    weight: torch.Tensor  # [Σ out, in]; each module's weight is a row view of it
    bias: torch.Tensor | None  # [Σ out]
    A: torch.Tensor | None  # [Σ m·r, in] fp32: every member's stacked adapters, one after the other
    B: torch.Tensor | None  # [Σ out, Σ m·r] fp32, block diagonal (a member's rows read its own columns)
    owner: torch.Tensor | None  # [Σ m·r] long
    dora: torch.Tensor | None  # [n+1, Σ out] fp32


class _LayerW(NamedTuple):
    ln1: torch.Tensor  # input_layernorm.weight [C]
    ln2: torch.Tensor  # post_attention_layernorm.weight [C]
    qk_norm: torch.Tensor | None  # [H+KV, D]: q_norm.weight for the H query heads, then k_norm.weight for KV
    qkv: _Group
    o: _Group
    gate_up: _Group
    down: _Group


class _Sel(NamedTuple):
    """One step's per-row adapter selection for each group of a layer (None: no adapter row in the step)."""

    qkv: torch.Tensor | None
    o: torch.Tensor | None
    gate_up: torch.Tensor | None
    down: torch.Tensor | None


class Kernels(NamedTuple):
    """Hand-written kernels the compile-scope-"layer" step may use instead of what Inductor and cuBLAS make
    (issue 7's 0.6B step; each switchable for A/B runs, all off = the baseline path). Static per compiled graph.
      gemm:   the four projections through tuna::skinny_linear (kernels/skinny_gemm.py) instead of cuBLAS.
      silu:   SiLU(gate)·up as the down projection's prologue (tuna::skinny_silu_linear): one kernel fewer.
      norm:   the residual add + RMSNorm as the qkv and gate/up projections' prologue, o's residual add as its
              epilogue (tuna::skinny_add_norm_linear, skinny_norm_linear, skinny_linear + residual): two fewer.
      argmax: the head's greedy ids by tuna::argmax_rows (kernels/argmax.py) instead of Inductor's reduction.
      persistent: each whole layer as ONE launch of kernels/decode_layer.py's persistent kernel (all programs
              resident, its five phases split by grid barriers) instead of the compiled layer — an experiment
              against the 0.6B step's ~12 kernels a layer and the gaps between them. Steps with adapter rows,
              more than 16 rows or a projection with a bias keep the compiled layer.
    A group with adapter rows in the step keeps its eager form (the LoRA delta needs the base output and the
    normed input apart), as does a group with a bias or a batch over skinny_gemm.MAX_M rows."""

    gemm: bool = False
    silu: bool = False
    norm: bool = False
    argmax: bool = False
    persistent: bool = False

    @staticmethod
    def parse(spec: str | None, source: str = "decode kernels") -> Kernels:
        """ "gemm,silu,norm,argmax,persistent" (any subset; "all" = the four kernels inside the compiled layer,
        not persistent, which replaces that layer; "" or None = none) → Kernels. `source` names where the spec came
        from in the error (the environment variable, when it came from there)."""
        names = {n.strip() for n in (spec or "").split(",") if n.strip()}
        if "all" in names:
            names = (names - {"all"}) | (set(Kernels._fields) - {"persistent"})
        unknown = names - set(Kernels._fields)
        if unknown:
            raise ValueError(
                f"{source}: unknown {sorted(unknown)} in {spec!r}; expected some of "
                f"{', '.join(Kernels._fields)} or all"
            )
        return Kernels(**{n: True for n in names})


NO_KERNELS = Kernels()


def kernels_from_env() -> Kernels:
    """TUNA_DECODE_KERNELS as Kernels; a bad value is a PLAN_INVALID naming the variable (read before the model
    loads, by load_for_generation, and again when the decoder is built)."""
    try:
        return Kernels.parse(
            os.environ.get("TUNA_DECODE_KERNELS"), "environment variable TUNA_DECODE_KERNELS"
        )
    except ValueError as e:
        raise EngineError(
            "PLAN_INVALID", str(e), hint="unset TUNA_DECODE_KERNELS for the default (none)"
        ) from e


def _fnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """_norm in 2 ops: F.rms_norm on a 16-bit input computes in fp32 and rounds once, the same numbers as the
    explicit x.float() … .to(x.dtype) (bitwise on CPU, tested), without the two casts."""
    return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)


def _group_forward(
    g: _Group,
    x: torch.Tensor,
    sel: torch.Tensor | None,
    scale: torch.Tensor,
    aidx: torch.Tensor,
    skinny: bool = False,
) -> torch.Tensor:
    """Decoder._proj's math for a whole group at once (`skinny`: the base product by tuna::skinny_linear)."""
    if skinny and g.bias is None and skinny_gemm.usable(x, g.weight):
        result = torch.ops.tuna.skinny_linear(x, g.weight)
    else:
        result = F.linear(x, g.weight, g.bias)
    if sel is None or g.A is None or g.B is None:
        return result
    lora_result = ((x.float() @ g.A.T) * sel) @ g.B.T
    if g.dora is None:
        return (result + lora_result * scale).to(result.dtype)
    d = g.dora[aidx][:, None, :]
    base_nobias = result if g.bias is None else result - g.bias
    return (result + (d - 1) * base_nobias + d * lora_result * scale).to(result.dtype)


def _attn_in(
    x: torch.Tensor,
    w: _LayerW,
    sel: _Sel,
    scale: torch.Tensor,
    aidx: torch.Tensor,
    cos: torch.Tensor,
    sin_pm: torch.Tensor,
    perm: torch.Tensor,
    heads: tuple[int, int, int],
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, T, C] → q [B, T, H, D], k and v [B, T, KV, D] after q/k norm and rotary. cos/sin± [B|1, T, 1, D]."""
    H, KV, D = heads
    B, T, _ = x.shape
    h = _fnorm(x, w.ln1, eps)
    qkv = _group_forward(w.qkv, h, sel.qkv, scale, aidx).view(B, T, H + 2 * KV, D)
    qk, v = qkv[:, :, : H + KV], qkv[:, :, H + KV :]
    if w.qk_norm is not None:
        qk = _fnorm(qk, w.qk_norm, eps)
    qk = qk * cos + qk.index_select(-1, perm) * sin_pm  # rotary for q and k at once
    return qk[:, :, :H], qk[:, :, H:], v


def _attn_out_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    w: _LayerW,
    sel: _Sel,
    scale: torch.Tensor,
    aidx: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """The rest of the layer: x + o_proj(y), then x + down(silu(gate)·up) of its norm."""
    x = x + _group_forward(w.o, y, sel.o, scale, aidx)
    h = _fnorm(x, w.ln2, eps)
    gu = _group_forward(w.gate_up, h, sel.gate_up, scale, aidx)
    inter = gu.shape[-1] // 2
    return x + _group_forward(w.down, F.silu(gu[..., :inter]) * gu[..., inter:], sel.down, scale, aidx)


def _decode_layer(
    x: torch.Tensor,
    d: torch.Tensor,
    w: _LayerW,
    sel: _Sel,
    scale: torch.Tensor,
    aidx: torch.Tensor,
    ck: torch.Tensor,
    cv: torch.Tensor,
    pos: torch.Tensor,
    cos_t: torch.Tensor,
    sin_t: torch.Tensor,
    perm: torch.Tensor,
    heads: tuple[int, int, int],
    eps: float,
    n_split: int,
    kern: Kernels = NO_KERNELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole decoder layer of a decode step (compile scope "layer": one compiled graph shared by every
    layer). x [B, 1, C] is the residual stream before the previous layer's MLP output d [B, 1, C] is added: the
    add happens here, inside the same graph as this layer's first norm, so it fuses with it across the layer
    boundary (the first layer gets d = 0). Returns (x + attention, MLP output), the pair for the next layer.
    The K/V of each row go into the caches [slots, KV, capacity, D] at its position (an in-place index_put_
    that Inductor fuses with q/k norm and rotary); attention is tuna::decode_attention over keys 0..pos[b]."""
    H, KV, D = heads
    B = x.shape[0]
    if _fuse(kern.norm, w.qkv, sel.qkv, x):  # x + d and the norm inside the qkv kernel
        qkv, x = torch.ops.tuna.skinny_add_norm_linear(x, d, w.ln1, eps, w.qkv.weight)
        qkv = qkv.view(B, H + 2 * KV, D)
    else:
        x = x + d
        h = _fnorm(x, w.ln1, eps)
        qkv = _group_forward(w.qkv, h, sel.qkv, scale, aidx, kern.gemm).view(B, H + 2 * KV, D)
    qk, v = qkv[:, : H + KV], qkv[:, H + KV :]
    if w.qk_norm is not None:
        qk = _fnorm(qk, w.qk_norm, eps)
    cos, sin = cos_t[pos][:, None], sin_t[pos][:, None]  # [B, 1, D]
    qk = qk * cos + qk.index_select(-1, perm) * sin  # rotary for q and k at once
    rows = torch.arange(B, device=x.device)[:, None]
    kv_heads = torch.arange(KV, device=x.device)[None, :]
    ck.index_put_((rows, kv_heads, pos[:, None]), qk[:, H:])  # [B, KV, D] at (b, h, pos[b])
    cv.index_put_((rows, kv_heads, pos[:, None]), v)
    y = torch.ops.tuna.decode_attention(qk[:, :H], ck, cv, pos, n_split)  # [B, H, D]
    y = y.reshape(B, 1, H * D)
    if _fuse(kern.norm, w.o, sel.o, y):  # the residual add as the o kernel's epilogue
        x = torch.ops.tuna.skinny_linear(y, w.o.weight, x)
    else:
        x = x + _group_forward(w.o, y, sel.o, scale, aidx, kern.gemm)
    if _fuse(kern.norm, w.gate_up, sel.gate_up, x):
        gu = torch.ops.tuna.skinny_norm_linear(x, w.ln2, eps, w.gate_up.weight)
    else:
        h = _fnorm(x, w.ln2, eps)
        gu = _group_forward(w.gate_up, h, sel.gate_up, scale, aidx, kern.gemm)
    if _fuse(kern.silu, w.down, sel.down, gu):  # SiLU(gate)·up as the down kernel's prologue
        return x, torch.ops.tuna.skinny_silu_linear(gu, w.down.weight)
    inter = gu.shape[-1] // 2
    return x, _group_forward(
        w.down, F.silu(gu[..., :inter]) * gu[..., inter:], sel.down, scale, aidx, kern.gemm
    )


def _fuse(on: bool, g: _Group, sel: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether a fused skinny kernel takes group g this step: switched on, no adapter row (the LoRA delta needs
    the base output and the kernel's input apart), no bias, a batch the kernel takes (static per graph)."""
    return on and sel is None and g.bias is None and skinny_gemm.usable(x, g.weight)


def _decode_head(
    x: torch.Tensor,
    d: torch.Tensor,
    norm_w: torch.Tensor,
    out_w: torch.Tensor,
    eps: float,
    argmax_op: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's residual add, the final norm, the lm head: logits fp32 [B, vocab] and greedy ids [B]
    (`argmax_op`: by tuna::argmax_rows, the same ids as torch.argmax)."""
    logits = F.linear(_fnorm((x + d)[:, -1], norm_w, eps), out_w).float()
    return logits, torch.ops.tuna.argmax_rows(logits) if argmax_op else logits.argmax(-1)


def _fusable(modules: list[nn.Module]) -> bool:
    """16-bit weights (a 4-bit base has no `weight`), same dtype and device, bias on all or none."""
    ws = [getattr(m, "weight", None) for m in modules]
    for w, m in zip(ws, modules, strict=True):
        quantized = getattr(m, "base_layer", None) is not None or hasattr(m, "dequantize")
        if quantized or not isinstance(w, torch.Tensor) or tuple(w.shape) != (m.out_features, m.in_features):
            return False
    biases = [getattr(m, "bias", None) for m in modules]
    return (
        len({(w.dtype, w.device) for w in ws if w is not None}) == 1 and len({b is None for b in biases}) == 1
    )


def _concat_rows(modules: list[nn.Module], attr: str) -> torch.Tensor | None:
    """The modules' `attr` tensors concatenated along dim 0, each module's parameter then rebound to its row
    view (values unchanged, the old storage freed)."""
    ts = [getattr(m, attr) for m in modules]
    if ts[0] is None:
        return None
    if len(ts) == 1:
        return ts[0]
    cat = torch.cat([t.detach() for t in ts])
    start = 0
    for t in ts:
        t.data = cat[start : start + t.shape[0]]
        start += t.shape[0]
    return cat


def _group_stack(
    stacks: list[AdapterStack | None],
    outs: list[int],
    n_adapters: int,
    device: torch.device,
    owners: dict[tuple[int, ...], torch.Tensor],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The members' adapter stacks as one: A rows and owners concatenated, B block diagonal, DoRA scales
    side by side (1 where a member is not DoRA or has no adapter)."""
    if all(st is None for st in stacks):
        return None, None, None, None
    cols = sum(st.A.shape[0] for st in stacks if st is not None)
    A = torch.cat([st.A for st in stacks if st is not None])
    owner = torch.cat([st.owner for st in stacks if st is not None])
    owner = owners.setdefault(tuple(owner.tolist()), owner)  # one selection per step per distinct layout
    B = torch.zeros(sum(outs), cols, dtype=torch.float32, device=device)
    dora = None
    if any(st is not None and st.dora is not None for st in stacks):
        dora = torch.ones(n_adapters + 1, sum(outs), dtype=torch.float32, device=device)
    r0 = c0 = 0
    for st, out in zip(stacks, outs, strict=True):
        if st is not None:
            B[r0 : r0 + out, c0 : c0 + st.A.shape[0]] = st.B
            if st.dora is not None:
                assert dora is not None
                dora[:, r0 : r0 + out] = st.dora
            c0 += st.A.shape[0]
        r0 += out
    return A, B, owner, dora


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor  # [Bk, vocab] fp32, static
    next_ids: torch.Tensor  # [Bk] long, static (greedy argmax)


class Decoder:
    """Prefill and static-shape decode over a preallocated KV cache of `slots` × `capacity` positions."""

    def __init__(
        self,
        model: CausalLM,
        adapter_weights: dict[str, list[Any]],
        n_adapters: int,
        slots: int,
        capacity: int,
        use_graphs: bool,
        key_block: int = KEY_BLOCK,
        fused: bool = True,
        compile: bool | str = False,
        kernels: Kernels | str | None = None,
    ) -> None:
        self.model, c = model, model.config
        self.c = c
        self.device = next(model.parameters()).device
        self.dtype = model.model.embed_tokens.weight.dtype
        if use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.use_graphs = use_graphs
        self.slots, self.capacity, self.key_block = slots, capacity, key_block
        self.buckets = batch_buckets(slots)
        KV, D, dev = c.num_kv_heads, c.head_dim, self.device
        shape = (slots, KV, capacity, D)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(c.num_layers)]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(c.num_layers)]
        self.stacks, self.scalings = stack_adapters(adapter_weights, n_adapters, dev)
        # Rotary tables for every position, computed as models/llama.py does per call (fp32, scaled, cast).
        freqs = torch.arange(capacity, device=dev).float()[:, None] * model.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * model.rope_scale).to(self.dtype)  # [capacity, D]
        self.sin = (emb.sin() * model.rope_scale).to(self.dtype)
        half = c.head_dim // 2
        self.sin_pm = torch.cat((-self.sin[:, :half], self.sin[:, half:]), dim=-1)  # rotate_half folded in
        self.perm = torch.cat((torch.arange(half, c.head_dim), torch.arange(half))).to(dev)
        self.key_pos = torch.arange(capacity, device=dev)
        # Flat row of (slot b, kv head h, position 0) in a cache viewed as [slots·KV·capacity, D].
        self.row_base = (torch.arange(slots * KV, device=dev) * capacity).view(slots, KV)
        # Step inputs: token ids, positions, adapter index (0 = none) per slot; static on the device.
        self.inputs = torch.zeros(3, slots, dtype=torch.long, device=dev)
        self.host = torch.zeros(3, slots, dtype=torch.long)
        if dev.type == "cuda":
            self.host = self.host.pin_memory()
        self.graphs: dict[tuple[int, int, bool], _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle() if use_graphs else None
        self.stats = {"captures": 0, "replays": 0, "eager_steps": 0}
        scopes = {False: None, True: "layer", "layer": "layer", "regions": "regions"}
        if compile not in scopes:
            raise ValueError(f"compile: expected True, False, 'layer' or 'regions', got {compile!r}")
        self.layer_w = self._fuse_layers(n_adapters) if fused or compile else None
        self.fused = self.layer_w is not None
        # "layer": the whole layer, attention and cache write included, one compiled graph shared by every
        # layer (plus the final norm + lm head); "regions": the two regions around an eager attention (before).
        self.compile_scope: str | None = scopes[compile] if self.fused else None
        self.compiled = self.compile_scope is not None
        # Hand-written kernels for the scope-"layer" step (Kernels; default TUNA_DECODE_KERNELS, else none).
        if kernels is None:
            kernels = kernels_from_env()
        elif isinstance(kernels, str):
            kernels = Kernels.parse(kernels)
        self.kernels = kernels if self.compile_scope == "layer" else Kernels()
        # The persistent kernel's barrier counter, split counters and error flag: one per decoder (its graphs and
        # eager steps run one at a time on one stream, so they share it).
        self.persistent: decode_layer.PersistentState | None = None
        if self.kernels.persistent:
            if decode_layer.triton is None or (
                dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
            ):
                raise EngineError(
                    "PLAN_INVALID",
                    "decode kernel 'persistent' needs the triton package and a CUDA device (or TRITON_INTERPRET=1, "
                    f"for tests); here: triton {'missing' if decode_layer.triton is None else 'present'}, "
                    f"device {dev}",
                    hint="drop 'persistent' from TUNA_DECODE_KERNELS",
                )
            self.persistent = decode_layer.PersistentState(dev)
        self._zero = torch.zeros(1, dtype=torch.long, device=dev)
        out_w = model.output_weight
        self._head_w = out_w if out_w.is_floating_point() and out_w.dim() == 2 else None
        if self.compiled:
            # One graph per (batch bucket, adapters on/off) and function: more than dynamo's default limit of 8.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        if self.compile_scope == "regions":
            self._in = torch.compile(_attn_in, dynamic=False, fullgraph=True)
            self._out = torch.compile(_attn_out_mlp, dynamic=False, fullgraph=True)
        elif self.compile_scope == "layer":
            self._layer = torch.compile(_decode_layer, dynamic=False, fullgraph=True)
            self._head = torch.compile(_decode_head, dynamic=False, fullgraph=True)

    def _fuse_layers(self, n_adapters: int) -> list[_LayerW] | None:
        """Every layer's weights as _LayerW (q/k/v and gate/up concatenated), or None where a layer cannot be
        fused (a 4-bit base, mixed biases, unequal norm eps): the per-projection path then runs."""
        c, model = self.c, self.model
        eps = {m.eps for m in model.modules() if hasattr(m, "eps")}
        if len(eps) != 1:
            return None
        self.eps = float(eps.pop())
        layers = list(model.model.layers)
        groups = [("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",))]
        groups += [("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",))]
        for layer in layers:
            for parent, names in groups:
                if not _fusable([getattr(getattr(layer, parent), n) for n in names]):
                    return None
        out, owners = [], {}
        for li, layer in enumerate(layers):
            built = []
            for parent, names in groups:
                mods = [getattr(getattr(layer, parent), n) for n in names]
                stacks = [self.stacks.get(f"model.layers.{li}.{parent}.{n}") for n in names]
                outs = [m.out_features for m in mods]
                weight = _concat_rows(mods, "weight")
                assert weight is not None
                bias = _concat_rows(mods, "bias")
                built.append(
                    _Group(weight, bias, *_group_stack(stacks, outs, n_adapters, self.device, owners))
                )
            attn = layer.self_attn
            qk_norm = None
            if c.qk_norm:
                qk_norm = torch.cat(
                    (
                        attn.q_norm.weight.detach().expand(c.num_heads, -1),
                        attn.k_norm.weight.detach().expand(c.num_kv_heads, -1),
                    )
                )
            out.append(
                _LayerW(
                    layer.input_layernorm.weight.detach(),
                    layer.post_attention_layernorm.weight.detach(),
                    qk_norm,
                    *built,
                )
            )
        return out

    @property
    def cache_bytes(self) -> int:
        return 2 * sum(t.numel() * t.element_size() for t in self.k)

    def key_bucket(self, length: int) -> int:
        """Keys a step reads: the smallest key_block·2^j ≥ length, at most the capacity."""
        blocks = max(1, math.ceil(length / self.key_block))
        return min(self.capacity, self.key_block * (1 << (blocks - 1).bit_length()))

    # -- projections with per-row adapters -----------------------------------------------------------------

    def _proj(self, name: str, module: nn.Module, x: torch.Tensor, rows: _Rows | None) -> torch.Tensor:
        """module(x), plus each row's adapter delta (lora.Linear's math: input in fp32, sum cast back)."""
        # The frozen base only (a generation model has no built-in adapter; the loaded ones are stacked here).
        base_forward = getattr(module, "base_forward", None)
        result = base_forward(x) if callable(base_forward) else module(x)
        st = self.stacks.get(name) if rows is not None else None
        if st is None:
            return result
        assert rows is not None
        u = (x.float() @ st.A.T) * rows.select(st.owner)  # [B, T, m·r], other adapters' columns zeroed
        lora_result = u @ st.B.T  # [B, T, out]
        if st.dora is None:
            return (result + lora_result * rows.scale).to(result.dtype)
        g = st.dora[rows.aidx][:, None, :]  # [B, 1, out]
        base_bias = getattr(module, "base_bias", None)
        bias = base_bias() if callable(base_bias) else getattr(module, "bias", None)
        base_nobias = result if bias is None else result - bias
        return (result + (g - 1) * base_nobias + g * lora_result * rows.scale).to(result.dtype)

    def _layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend, rows: _Rows | None):
        """The decoder stack over x [B, T, C]; `attend(layer, q, k, v)` ([B, T, heads, D] each, after q/k
        norm and rotary) writes the cache and returns [B, T, H·D]."""
        if self.layer_w is not None:
            return self._layers_fused(x, cos, sin, attend, rows)
        model, c = self.model, self.c
        B, T, _ = x.shape
        D = c.head_dim
        for li, layer in enumerate(model.model.layers):
            pre = f"model.layers.{li}."
            attn = layer.self_attn
            h = _norm(layer.input_layernorm, x)
            q = self._proj(pre + "self_attn.q_proj", attn.q_proj, h, rows).view(B, T, -1, D)
            k = self._proj(pre + "self_attn.k_proj", attn.k_proj, h, rows).view(B, T, -1, D)
            v = self._proj(pre + "self_attn.v_proj", attn.v_proj, h, rows).view(B, T, -1, D)
            if c.qk_norm:
                q, k = _norm(attn.q_norm, q), _norm(attn.k_norm, k)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            y = attend(li, q, k, v)
            x = x + self._proj(pre + "self_attn.o_proj", attn.o_proj, y, rows)
            mlp = layer.mlp
            h = _norm(layer.post_attention_layernorm, x)
            gate = self._proj(pre + "mlp.gate_proj", mlp.gate_proj, h, rows)
            up = self._proj(pre + "mlp.up_proj", mlp.up_proj, h, rows)
            x = x + self._proj(pre + "mlp.down_proj", mlp.down_proj, F.silu(gate) * up, rows)
        return x

    def _layers_fused(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend, rows: _Rows | None
    ):
        """_layers with each layer as _attn_in → attend → _attn_out_mlp (compiled for decode steps when
        `compile`; prefill, whose T varies, runs them uncompiled). `sin` is the sin± table here."""
        c = self.c
        B, T, _ = x.shape
        heads = (c.num_heads, c.num_kv_heads, c.head_dim)
        compiled = self.compile_scope == "regions" and T == 1
        f_in = self._in if compiled else _attn_in
        f_out = self._out if compiled else _attn_out_mlp
        scale, aidx = (rows.scale, rows.aidx) if rows is not None else (self._zero, self._zero)
        assert self.layer_w is not None
        for li, w in enumerate(self.layer_w):
            sel = _Sel(*(None if rows is None or g.owner is None else rows.select(g.owner) for g in w[3:]))
            q, k, v = f_in(x, w, sel, scale, aidx, cos, sin, self.perm, heads, self.eps)
            y = attend(li, q, k, v)
            x = f_out(x, y, w, sel, scale, aidx, self.eps)
        return x

    # -- prefill -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, slot: int, adapter: int) -> torch.Tensor:
        """ids [P] (on the device) → next-token logits fp32 [vocab]; K/V of positions 0..P-1 go to `slot`."""
        P = ids.shape[0]
        if P > self.capacity:
            raise ValueError(f"prompt of {P} tokens does not fit the cache ({self.capacity} positions)")
        rows = _Rows(torch.full((1,), adapter, dtype=torch.long, device=self.device), self.scalings)
        x = self.model.model.embed_tokens(ids[None])  # [1, P, C]
        sin_table = self.sin_pm if self.fused else self.sin
        cos, sin = self.cos[:P][None, :, None], sin_table[:P][None, :, None]  # [1, P, 1, D]
        gqa = self.c.num_heads != self.c.num_kv_heads

        def attend(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [1, KV, P, D]
            self.k[li][slot, :, :P] = k[0]
            self.v[li][slot, :, :P] = v[0]
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True, enable_gqa=gqa)
            return y.transpose(1, 2).reshape(1, P, -1)

        x = self._layers(x, cos, sin, attend, rows if adapter > 0 else None)
        return self.model.logits(_norm(self.model.model.norm, x[0, -1])).float()

    # -- decode --------------------------------------------------------------------------------------------

    def graph_S(self, S: int) -> int:
        """The key bucket a step's graph is keyed by: S, or the capacity for compile scope "layer", whose
        attention reads each row's own length from the positions (one graph serves every length)."""
        return self.capacity if self.compile_scope == "layer" else S

    @torch.no_grad()
    def _step(self, Bk: int, S: int, lora: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for slots 0..Bk-1 from the static inputs, attending to keys 0..S-1. No host syncs, no
        host-to-device copies, shapes fixed by (Bk, S): this is what a CUDA graph captures."""
        c = self.c
        KV, D = c.num_kv_heads, c.head_dim
        G = c.num_heads // KV
        ids, pos, aidx = self.inputs[0, :Bk], self.inputs[1, :Bk], self.inputs[2, :Bk]
        rows = _Rows(aidx, self.scalings) if lora else None
        if self.compile_scope == "layer":
            return self._step_layers(ids, pos, rows)
        x = self.model.model.embed_tokens(ids)[:, None]  # [Bk, 1, C]
        sin_table = self.sin_pm if self.fused else self.sin
        cos, sin = self.cos[pos][:, None, None], sin_table[pos][:, None, None]  # [Bk, 1, 1, D]
        flat = (self.row_base[:Bk] + pos[:, None]).reshape(-1)  # [Bk·KV] rows of the flat cache
        valid = self.key_pos[:S][None, :] <= pos[:, None]  # [Bk, S]
        mask = torch.zeros(Bk, 1, 1, S, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~valid[:, None, None], -math.inf)

        def attend(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            ck, cv = self.k[li], self.v[li]
            ck.view(-1, D).index_copy_(0, flat, k.reshape(-1, D))
            cv.view(-1, D).index_copy_(0, flat, v.reshape(-1, D))
            y = F.scaled_dot_product_attention(
                q[:, 0].view(Bk, KV, G, D), ck[:Bk, :, :S], cv[:Bk, :, :S], attn_mask=mask
            )  # [Bk, KV, G, D]: the G query heads of a KV head as G query rows (a view: heads are contiguous)
            return y.reshape(Bk, 1, KV * G * D)

        x = self._layers(x, cos, sin, attend, rows)
        logits = self.model.logits(_norm(self.model.model.norm, x[:, -1])).float()
        return logits, logits.argmax(-1)

    def _step_layers(
        self, ids: torch.Tensor, pos: torch.Tensor, rows: _Rows | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """_step for compile scope "layer": embedding, then the compiled _decode_layer once per layer (each row's
        K/V written and attended to inside it), then the compiled _decode_head. No mask, no key bucket."""
        c = self.c
        assert self.layer_w is not None
        Bk = ids.shape[0]
        heads = (c.num_heads, c.num_kv_heads, c.head_dim)
        n_split = default_splits(Bk, c.num_kv_heads, self.device)
        scale, aidx = (rows.scale, rows.aidx) if rows is not None else (self._zero, self._zero)
        x = self.model.model.embed_tokens(ids)[:, None]  # [Bk, 1, C]
        d = torch.zeros_like(x)
        persistent = self.persistent is not None and rows is None and Bk <= decode_layer.M_PAD
        for li, w in enumerate(self.layer_w):
            if persistent and all(g.bias is None for g in w[3:]):
                x, d = decode_layer.decode_layer_persistent(
                    x, d, w, self.k[li], self.v[li], pos, self.cos, self.sin_pm, self.perm, heads, self.eps,
                    self.persistent,
                )  # fmt: skip
                continue
            sel = _Sel(*(None if rows is None or g.owner is None else rows.select(g.owner) for g in w[3:]))
            x, d = self._layer(
                x, d, w, sel, scale, aidx, self.k[li], self.v[li], pos, self.cos, self.sin_pm, self.perm,
                heads, self.eps, n_split, self.kernels,
            )  # fmt: skip
        norm = self.model.model.norm
        if self._head_w is not None and getattr(norm, "eps", None) == self.eps:
            return self._head(x, d, norm.weight, self._head_w, self.eps, self.kernels.argmax)
        logits = self.model.logits(_norm(norm, (x + d)[:, -1])).float()
        return logits, torch.ops.tuna.argmax_rows(logits) if self.kernels.argmax else logits.argmax(-1)

    def _capture(self, key: tuple[int, int, bool]) -> _Graph:
        # Warm up on a side stream (cuBLAS handles, Triton compiles, allocator), then capture into the pool
        # shared by every bucket's graph (they never run concurrently; each keeps its outputs alive).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(*key)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits, next_ids = self._step(*key)
        g = _Graph(graph, logits, next_ids)
        self.graphs[key] = g
        self.stats["captures"] += 1
        return g

    def decode(
        self, ids: list[int], positions: list[int], adapters: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step for slots 0..len(ids)-1 (row b = slot b; a free slot passes token 0, position 0,
        adapter 0). Returns logits fp32 [Bk, vocab] and greedy ids [Bk] for the bucket Bk ≥ len(ids); rows
        past len(ids) are padding. The tensors may be a graph's static outputs: read them before the next call."""
        n = len(ids)
        Bk = bucket_for(n, self.buckets)
        top = max(positions)
        if top >= self.capacity:
            raise ValueError(f"position {top} is outside the cache ({self.capacity} positions)")
        S = self.graph_S(self.key_bucket(top + 1))
        lora = any(a > 0 for a in adapters) and bool(self.stacks)
        h = self.host.numpy()
        h[:, :Bk] = 0
        h[0, :n], h[1, :n], h[2, :n] = ids, positions, adapters
        # Whole buffers (contiguous, pinned): an async copy; the caller's per-step sync keeps the host buffer
        # from being rewritten before the copy has run.
        self.inputs.copy_(self.host, non_blocking=True)
        key = (Bk, S, lora)
        if not self.use_graphs:
            self.stats["eager_steps"] += 1
            return self._step(*key)
        g = self.graphs.get(key) or self._capture(key)
        g.graph.replay()
        self.stats["replays"] += 1
        return g.logits, g.next_ids

    def capture_all(self, max_len: int | None = None, lora: bool | None = None) -> None:
        """Capture every bucket's graph for lengths up to max_len (default: the capacity) now rather than on
        first use. Only while no sequence is active: the warm-up runs write position 0 of every slot."""
        if not self.use_graphs:
            return
        top = min(max_len or self.capacity, self.capacity)
        key_buckets = sorted(
            {self.graph_S(self.key_bucket(n)) for n in range(1, top + 1, self.key_block)}
            | {self.graph_S(self.key_bucket(top))}
        )
        variants = [False, True] if lora is None and self.stacks else [bool(lora) and bool(self.stacks)]
        self.inputs.zero_()
        for Bk in reversed(self.buckets):  # largest first: the pool is sized by the first capture
            for S in reversed(key_buckets):
                for v in variants:
                    if (Bk, S, v) not in self.graphs:
                        self._capture((Bk, S, v))
        torch.cuda.synchronize()
