"""The Llama family: Llama 3.x, Qwen2/2.5 and Qwen3 dense, one decoder with config-driven differences.

What is notable, per family (all: pre-norm RMSNorm, SwiGLU MLP, rotary positions, grouped-query attention):
  - Qwen3: RMSNorm on each head of q and k before rotary (`q_norm`, `k_norm`); explicit `head_dim`; tied
    embeddings on the small models (0.6B–4B).
  - Qwen2/2.5: bias on q, k and v (not o).
  - Llama 3.x: "llama3" rotary scaling (long wavelengths divided by `factor`, a smooth ramp between).
  - Any of them: YaRN rotary scaling (`rope_scaling: {rope_type: "yarn", factor, original_max_position_embeddings}`).
Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`), so checkpoints load unchanged.
Numerics follow transformers 5.x: RMSNorm and softmax in fp32, rotary cos/sin computed in fp32 and cast to the
activation dtype. Packed rows: `position_ids` restart at 0 per sample and `sample_ids` confine attention to
its own sample (the block-diagonal causal mask in `attention`, the one function a varlen kernel replaces).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..errors import EngineError
from ..lora import Linear, lora_forward, resolve_targets
from ..protocol import LoraSpec

SUPPORTED = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


@dataclass(frozen=True)
class Config:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # None = plain rotary
    tie_word_embeddings: bool
    qk_norm: bool  # Qwen3
    qkv_bias: bool  # Qwen2, or attention_bias
    o_bias: bool  # attention_bias (Llama, Qwen3)
    mlp_bias: bool  # Llama's mlp_bias

    @staticmethod
    def from_hf(cfg: dict[str, Any]) -> Config:
        """From a config.json dict (already checked for model_type by models/__init__.py)."""
        mt = cfg["model_type"]
        heads = cfg["num_attention_heads"]
        # transformers 5 writes rope_parameters {rope_type, rope_theta, ...}; older files rope_theta + rope_scaling.
        rope = dict(cfg.get("rope_parameters") or {})
        if not rope:
            rope = dict(cfg.get("rope_scaling") or {})
            rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        attention_bias = bool(cfg.get("attention_bias", False))
        return Config(
            model_type=mt,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope["rope_theta"]),
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=mt == "qwen3",
            qkv_bias=mt == "qwen2" or attention_bias,
            o_bias=mt != "qwen2" and attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
        )


def rope_inv_freq(c: Config) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the cos/sin scale, as transformers' modeling_rope_utils computes them."""
    dim, base = c.head_dim, c.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = c.rope_scaling
    if s is None:
        return inv_freq, 1.0
    kind = s["rope_type"]
    if kind == "linear":
        return inv_freq / s["factor"], 1.0
    if kind == "llama3":
        # Llama 3.1 report / transformers `_compute_llama3_parameters`: wavelengths above old_ctx/low_freq_factor
        # are divided by `factor`, below old_ctx/high_freq_factor kept, a smooth interpolation between.
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_ctx = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_ctx / hi) & ~(wavelen > old_ctx / lo)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        # YaRN (Peng et al. 2023) §3.2-3.4 / transformers `_compute_yarn_parameters`.
        factor = s["factor"]
        orig = s["original_max_position_embeddings"]
        attention_factor = s.get("attention_factor")
        mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
            else:
                attention_factor = get_mscale(factor)
        beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

        def correction_dim(rotations: float) -> float:
            return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if s.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        extrapolation = 1 - ramp
        inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
        return inv, float(attention_factor)
    raise ValueError(f"rope type {kind!r}")  # rejected earlier by models/__init__.py with a proper error


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """In fp32, cast back, then scaled (transformers' order: weight * normed.to(input_dtype))."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x₁, x₂) → (−x₂, x₁) over the last dimension: chunk + cat when run eagerly (two kernels), views + where
    when compiled (`rotate_half_views`: the same values, but ops the partitioner may recompute)."""
    if torch.compiler.is_compiling():
        return rotate_half_views(x)
    return rotate_half_kept(x)


def rotate_half_views(x: torch.Tensor) -> torch.Tensor:
    """rotate_half with views and a `where` instead of chunk + cat: only ops the compiler's partitioner may
    recompute (aten.cat is not among them), so a compiled layer can rebuild rotated q and k in backward from the
    projections it keeps instead of saving them too (recompute "elementwise": 6 KB a token a Qwen3-0.6B layer).
    Not a gather (x[..., perm]): its gradient is an accumulating index_put (atomic adds); this one's is two
    slices and a sum over 2."""
    halves = x.unflatten(-1, (2, x.shape[-1] // 2))  # [..., 2, d/2]
    first = torch.arange(2, device=x.device).view(2, 1) == 0
    return torch.where(first, -halves[..., 1:2, :], halves[..., 0:1, :]).flatten(-2)


def rotate_half_kept(x: torch.Tensor) -> torch.Tensor:
    """rotate_half through chunk + cat, which the partitioner does not recompute: a compiled layer that uses it
    keeps rotated q and k saved even under recompute "elementwise" (Attention.rebuild_rotary)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass(frozen=True)
class Segments:
    """Packed-sample boundaries over the flattened [B*T] tokens, computed once per forward for the varlen
    kernel. Padding at a row's end is a sample of its own, so it attends only to itself."""

    sample_ids: torch.Tensor  # [B, T]
    cu_seqlens: torch.Tensor  # [N+1] int32, sample starts in the flattened batch, then B*T
    max_len: int
    one_per_row: bool = False  # every row is one sample, no padding: dense causal attention serves it


def cu_seqlens(sample_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] sample ids → [N+1] int32 sample starts in the flattened batch, then B*T (on sample_ids' device)."""
    B, T = sample_ids.shape
    # Sample ids restart in every row; offsetting each row by T+1 makes them unique across the batch.
    flat = (sample_ids + torch.arange(B, device=sample_ids.device)[:, None] * (T + 1)).reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    idx = torch.nonzero(starts).flatten()
    return torch.cat([idx, idx.new_tensor([B * T])]).to(torch.int32)


def segments(sample_ids: torch.Tensor) -> Segments:
    cu = cu_seqlens(sample_ids)
    B = sample_ids.shape[0]
    return Segments(sample_ids, cu, int((cu[1:] - cu[:-1]).max()), one_per_row=cu.numel() - 1 == B)


def _load_varlen():  # the flash-attention varlen kernel PyTorch ships (2.9+), where it exists
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, set()
    return varlen_attn, set(inspect.signature(varlen_attn).parameters)


_VARLEN, _VARLEN_ARGS = _load_varlen()


ATTENTION_MODES = ("auto", "varlen", "cudnn", "sdpa")


def attention_mode() -> str:
    """TUNA_ATTENTION: auto (cuDNN for one-sample rows on Hopper, else flash-attention varlen, on CUDA in
    bf16/fp16), varlen, cudnn (one-sample rows through cuDNN on any CUDA card), sdpa (the masked reference)."""
    mode = os.environ.get("TUNA_ATTENTION") or "auto"
    if mode not in ATTENTION_MODES:
        raise EngineError(
            "PLAN_INVALID",
            f"environment variable TUNA_ATTENTION: {mode!r} is not an attention path; expected one of "
            + ", ".join(ATTENTION_MODES),
            hint="unset TUNA_ATTENTION for the default (auto)",
        )
    return mode


def use_varlen(q: torch.Tensor) -> bool:
    return (
        _VARLEN is not None
        and q.is_cuda
        and q.dtype in (torch.bfloat16, torch.float16)
        and attention_mode() != "sdpa"
    )


@functools.cache
def _is_hopper(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] == 9


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments) -> torch.Tensor:
    """q [B, T, H, D], k/v [B, T, KV, D] → [B, T, H, D], causal within each sample (flash-attention varlen):
    no [T, T] mask, no padding work, and attention FLOPs only inside samples."""
    B, T, H, D = q.shape
    kw: dict = {}
    if "is_causal" in _VARLEN_ARGS:
        kw["is_causal"] = True
    else:
        kw["window_size"] = (-1, 0)  # left unlimited, right 0: causal
    if k.shape[2] != H:
        if "enable_gqa" in _VARLEN_ARGS:
            kw["enable_gqa"] = True
        else:
            k = k.repeat_interleave(H // k.shape[2], dim=2)
            v = v.repeat_interleave(H // v.shape[2], dim=2)
    out = _VARLEN(
        q.reshape(B * T, H, D),
        k.reshape(B * T, -1, D),
        v.reshape(B * T, -1, D),
        seg.cu_seqlens,
        seg.cu_seqlens,
        seg.max_len,
        seg.max_len,
        **kw,
    )
    return out.view(B, T, H, D)


def use_cudnn_rows(q: torch.Tensor, seg: Segments) -> bool:
    """cuDNN's attention for micro-batches of one sample a row (long context, unpacked data, the benchmarks): on
    Hopper it ran 1.6-1.8x faster than flash-attention 2 forward + backward on Qwen3's shapes (2 × H200,
    2026-11-28, bench/train/attention.py); slower on Ampere and Blackwell by published measurements, so Hopper only.
    Packed rows keep the varlen kernel (cuDNN's ragged layout is not wired here)."""
    mode = attention_mode()
    if mode not in ("auto", "cudnn") or not seg.one_per_row or not use_varlen(q):
        return False
    # Head sizes cuDNN's backward is known to serve (tested: 64, 128); others keep the varlen kernel.
    if q.shape[-1] > 128 or q.shape[-1] % 8:
        return False
    return mode == "cudnn" or _is_hopper(q.device.index if q.device.index is not None else 0)


def cudnn_rows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, T, H, D], k/v [B, T, KV, D], each row one sample → [B, T, H, D], causal. cuDNN reads the
    [B, H, T, D] views in place (strided) and serves GQA without repeating k/v."""
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        None,
        torch.is_grad_enabled(),
        0.0,
        True,
        False,
    )[0]
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
    """Causal attention confined to each packed sample — the reference path.

    q [B, H, T, D], k/v [B, KV, T, D], sample_ids [B, T] (padding is a sample of its own) → [B, H, T, D].
    A block-diagonal causal mask over SDPA; on CUDA in bf16/fp16 `varlen_attention` replaces it.
    """
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    mask = (sample_ids[:, :, None] == sample_ids[:, None, :]) & causal  # [B, T, T]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask[:, None], enable_gqa=q.shape[1] != k.shape[1]
    )


class Attention(nn.Module):
    def __init__(self, c: Config, lora: LoraSpec | None, targets: tuple[str, ...]) -> None:
        super().__init__()
        self.c = c
        H, KV, D, C = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size

        def lin(name: str, i: int, o: int, bias: bool) -> Linear:
            return Linear(i, o, bias, lora if name in targets else None)

        self.q_proj = lin("q_proj", C, H * D, c.qkv_bias)
        self.k_proj = lin("k_proj", C, KV * D, c.qkv_bias)
        self.v_proj = lin("v_proj", C, KV * D, c.qkv_bias)
        self.o_proj = lin("o_proj", H * D, C, c.o_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(D, c.rms_norm_eps)
            self.k_norm = RMSNorm(D, c.rms_norm_eps)
        # Under recompute "elementwise", whether this layer rebuilds rotated q/k in backward (6 KB a token for
        # Qwen3-0.6B, ~0.13 ms a layer and micro-batch of 4 × 2048 on an H200) or keeps them saved.
        self.rebuild_rotary = True

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        seg: Segments,
        keep: frozenset[str] = frozenset(),
    ) -> torch.Tensor:
        """keep: what recompute "full" keeps through the recomputation (TUNA_RECOMPUTE_KEEP; DecoderLayer.forward)."""
        B, T, _ = x.shape
        D = self.c.head_dim
        q, k, v = lora_forward((self.q_proj, self.k_proj, self.v_proj), x)  # one x·Aᵀ GEMM for the three
        if "qkv" in keep:  # the projections as the norms and rotary read them: their GEMMs are not rerun
            q, k, v = kept(q), kept(k), kept(v)
        q, k, v = q.view(B, T, -1, D), k.view(B, T, -1, D), v.view(B, T, -1, D)
        if self.c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = cos[:, :, None], sin[:, :, None]  # [B, T, 1, D]
        rotate = rotate_half if self.rebuild_rotary else rotate_half_kept
        q = q * cos + rotate(q) * sin
        k = k * cos + rotate(k) * sin
        if use_cudnn_rows(q, seg):
            y = cudnn_rows_attention(q, k, v)
        elif use_varlen(q):
            y = varlen_attention(q, k, v, seg)  # [B, T, H, D]
        else:
            y = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), seg.sample_ids).transpose(
                1, 2
            )
        out = self.o_proj(y.reshape(B, T, -1))
        return kept(out) if "o" in keep else out  # "o": the residual's operand; o_proj's GEMM is not rerun


# Training micro-batches longer than 2 × this many tokens run the MLP block in tiles (DecoderLayer.tiled_mlp_block).
MLP_TILE_TOKENS = 32768


class MLP(nn.Module):
    def __init__(self, c: Config, lora: LoraSpec | None, targets: tuple[str, ...]) -> None:
        super().__init__()

        def lin(name: str, i: int, o: int) -> Linear:
            return Linear(i, o, c.mlp_bias, lora if name in targets else None)

        self.gate_proj = lin("gate_proj", c.hidden_size, c.intermediate_size)
        self.up_proj = lin("up_proj", c.hidden_size, c.intermediate_size)
        self.down_proj = lin("down_proj", c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = lora_forward((self.gate_proj, self.up_proj), x)
        return self.down_proj(F.silu(gate) * up)


@torch.library.custom_op("tuna::kept", mutates_args=())
def kept(x: torch.Tensor) -> torch.Tensor:
    """A copy of x that recompute "full"'s selective checkpoint saves (TUNA_RECOMPUTE_KEEP "qkv", "o"): marks a
    tensor to keep by the operation that made it, which the checkpoint's policy sees (the projections' own GEMMs
    cannot be told apart by shape: Qwen3-8B's q and o are both 4096 × 4096). One copy of the tensor a layer."""
    return x.clone()


@kept.register_fake
def _kept_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _kept_backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    return grad


kept.register_autograd(_kept_backward)


def _is_attention_forward(op: Any) -> bool:
    name = str(op)
    return ("attention" in name or "varlen_attn" in name) and "backward" not in name


def _keep_policy(keep: frozenset[str]) -> Callable[..., CheckpointPolicy]:
    """The selective-checkpoint policy of TUNA_RECOMPUTE_KEEP: save what `kept` marked, and with "attention" the
    attention kernel's forward outputs (its output and log-sum-exp, which its backward reads); recompute the rest."""

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        if op is torch.ops.tuna.kept.default or ("attention" in keep and _is_attention_forward(op)):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def recomputed(fn: Any, *args: Any, keep: frozenset[str] = frozenset()) -> Any:
    """fn(*args), its activations recomputed in backward except what `keep` names (_keep_policy). Under CUDA graph
    capture (graphs.py) the RNG state cannot be read, and graphs.py captures only models that draw no random
    numbers, so there is none to keep. Inside a compiled region the compiler handles the RNG itself."""
    kw: dict[str, Any] = {"use_reentrant": False}
    if keep:
        kw["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_policy(keep))
    if not torch.compiler.is_compiling():
        capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
        kw["preserve_rng_state"] = not capturing
    return checkpoint(fn, *args, **kw)


class DecoderLayer(nn.Module):
    def __init__(self, c: Config, lora: LoraSpec | None, targets: tuple[str, ...]) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c, lora, targets)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c, lora, targets)
        self.checkpoint_mlp = False  # recompute "mlp": the MLP block's activations are recomputed in backward

    def mlp_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(x))

    def tiled_mlp_block(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP block over tiles of MLP_TILE_TOKENS tokens, each recomputed in backward. The block is
        token-wise, so this is the same math; what changes is that its four [tokens, intermediate] activations
        (8 GiB each for Qwen3-8B at 350k tokens) exist for one tile at a time — the long-context path, as
        Unsloth's and ArcticTraining's tiled MLP do."""
        B, T, C = x.shape
        tiles = x.reshape(B * T, C).split(MLP_TILE_TOKENS)
        return torch.cat([recomputed(self.mlp_block, t) for t in tiles]).view(B, T, C)

    def tiles_mlp(self, x: torch.Tensor) -> bool:
        """Whether a training forward over x runs the MLP in tiles (tiled_mlp_block)."""
        return self.training and torch.is_grad_enabled() and x.shape[0] * x.shape[1] > 2 * MLP_TILE_TOKENS

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        seg: Segments,
        recompute_keeping: frozenset[str] | None = None,
    ) -> torch.Tensor:
        """recompute_keeping (recompute "full"; None: no recomputation): the layer's input and what this names
        (RECOMPUTE_KEEPS) are kept, the rest recomputed in backward — by a checkpoint taken here, inside the layer,
        so that a compiled layer's backward graph holds the recomputation and the compiler recomputes only what the
        backward reads: not down_proj's GEMM, whose output nothing in backward needs, nor what is kept (a checkpoint
        around the compiled layer reruns its whole forward). Same math. Eager layers keep nothing but the input:
        selective checkpointing in eager holds kept tensors in its own cache, on the device, out of the offload's
        reach (compiled, they are the compiled graph's saved tensors and move with the input)."""
        keep = recompute_keeping
        if keep is not None and self.training and torch.is_grad_enabled():
            if not torch.compiler.is_compiling():
                keep = frozenset()
            return recomputed(functools.partial(self.body, keep=keep), x, cos, sin, seg, keep=keep)
        return self.body(x, cos, sin, seg)

    def body(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        seg: Segments,
        keep: frozenset[str] = frozenset(),
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, seg, keep)
        if self.tiles_mlp(x):
            return x + self.tiled_mlp_block(x)
        if self.checkpoint_mlp and self.training and torch.is_grad_enabled():
            # Only x [B, T, C] is kept; gate, up, silu(gate) and their product (4 × [B, T, intermediate],
            # the largest activations of the layer) are recomputed in the backward pass.
            return x + recomputed(self.mlp_block, x)
        return x + self.mlp_block(x)


RECOMPUTE = ("full", "mlp", "none")

# Where recompute "full" takes each layer's checkpoint: "inside" the layer (DecoderLayer.forward) or "outside",
# around the (compiled) layer as before session 11. TUNA_LAYER_CHECKPOINT sets it; unset, it is "inside" (CUDA-graphed
# micro-batches too: their replays equal eager within bf16 noise, GPU-tested in session 12) except in DDP/FSDP runs,
# where it has not run on several GPUs yet: train.py lowers the default to "outside" there
# (set_layer_checkpoint_default).
LAYER_CHECKPOINTS = ("inside", "outside")
_layer_checkpoint: str | None = None  # TUNA_LAYER_CHECKPOINT; None: unset
_layer_checkpoint_default = "inside"


def set_layer_checkpoint(mode: str | None) -> None:
    """TUNA_LAYER_CHECKPOINT: "inside", "outside" or None (unset); anything else names the variable."""
    global _layer_checkpoint
    if mode and mode not in LAYER_CHECKPOINTS:
        raise EngineError(
            "PLAN_INVALID",
            f"environment variable TUNA_LAYER_CHECKPOINT: {mode!r} is not one of {', '.join(LAYER_CHECKPOINTS)}",
            hint="unset it for the default (inside, where proved)",
        )
    _layer_checkpoint = mode or None


def layer_checkpoint() -> str:
    """Where recompute "full" takes each layer's checkpoint now: TUNA_LAYER_CHECKPOINT, else the default."""
    return _layer_checkpoint or _layer_checkpoint_default


def set_layer_checkpoint_default(mode: str) -> None:
    """Sets the default of layer_checkpoint() (TUNA_LAYER_CHECKPOINT still wins)."""
    global _layer_checkpoint_default
    if mode not in LAYER_CHECKPOINTS:
        raise ValueError(f"layer checkpoint: expected one of {LAYER_CHECKPOINTS}, got {mode!r}")
    _layer_checkpoint_default = mode


# What recompute "full" keeps of each layer besides its input (TUNA_RECOMPUTE_KEEP: a comma list, "none", or unset for
# "auto"), saved so that the backward does not recompute it — per layer of Qwen3-8B at 4 × 2048 tokens:
#   attention: attention's output and log-sum-exp, 64 MiB: its forward is not rerun;
#   qkv: the q/k/v projections' outputs, 96 MiB: their GEMMs are not rerun (q/k norms and rotary are);
#   o: o_proj's output, 64 MiB: its GEMM is not rerun.
# "auto" keeps all three in passes whose saved tensors go to host memory (offload_activations: there they cost PCIe
# time on the side stream, not GPU memory; Qwen3-8B, H200, 2026-11-29: 1.93× HF with the checkpoint outside the
# layer, 2.14× keeping attention, 2.26× keeping all three, 0.55–0.56× HF memory), and attention alone in the others
# (Qwen3-0.6B, 8 × 2048, not offloaded: 3.1 GiB outside, 4.7 GiB keeping attention, 9.0 keeping all three).
# Only in compiled layers (DecoderLayer.forward says why) with the checkpoint inside (TUNA_LAYER_CHECKPOINT=inside,
# untiled MLP).
RECOMPUTE_KEEPS = ("attention", "qkv", "o")
_recompute_keep: frozenset[str] | None = None  # None: "auto"


def set_recompute_keep(value: str | None) -> None:
    """TUNA_RECOMPUTE_KEEP: a comma list of RECOMPUTE_KEEPS, "none", or unset/"auto" for the default; anything else
    names the variable."""
    global _recompute_keep
    names = [n.strip() for n in (value or "auto").split(",") if n.strip()]
    if names in (["auto"], ["none"]):
        _recompute_keep = None if names == ["auto"] else frozenset()
        return
    bad = [n for n in names if n not in RECOMPUTE_KEEPS]
    if bad or not names:
        raise EngineError(
            "PLAN_INVALID",
            f"environment variable TUNA_RECOMPUTE_KEEP: {value!r} is not auto, none or a comma list of "
            + ", ".join(RECOMPUTE_KEEPS),
            hint="unset it for the default (auto)",
        )
    _recompute_keep = frozenset(names)


def recompute_keep(offloading: bool) -> frozenset[str]:
    """What recompute "full" keeps in a forward pass that offloads (or not): TUNA_RECOMPUTE_KEEP resolved."""
    if _recompute_keep is not None:
        return _recompute_keep
    return frozenset(RECOMPUTE_KEEPS) if offloading else frozenset({"attention"})


# "auto" offloads a forward pass only when its layer inputs (what full recompute keeps: tokens × hidden × layers)
# come to at least this much. Measured on an H200 (2026-11-28): Qwen3-0.6B at 8 × 2048 (0.88 GiB of layer inputs)
# ran 61,780 tok/s with the offload and 72,972 without it (+18%; the step is short and launch-bound, and the
# copies' hooks and events cost more than 0.9 GiB saves), while Qwen3-8B at 4 × 2048 (2.25 GiB) runs at the same
# speed either way and its peak falls 19.9 → 17.7 GiB; Qwen3-32B QLoRA at 2 × 2048 (2.5 GiB) keeps the offload
# its 21.6 GiB was measured with.
AUTO_OFFLOAD_MIN_BYTES = 1 << 30


def offload_this_pass(mode: bool | str, x: torch.Tensor, n_layers: int) -> bool:
    """Whether a training forward pass offloads: `mode` is train.offload_activations as resolved (True, False,
    or "auto"); x is the decoder's input [B, T, hidden]."""
    if mode == "auto":
        return x.numel() * x.element_size() * n_layers >= AUTO_OFFLOAD_MIN_BYTES
    return bool(mode)


# Activation offload (train.offload_activations). The decoder's saved tensors go to host memory while the forward
# pass runs on, grouped by decoder layer, and come back one layer ahead of the backward pass:
#   forward: each saved tensor is copied device→host on a side stream as soon as it is saved; the device tensor is
#     kept until the forward pass enters the layer OFFLOAD_LAG layers later, where the compute stream waits for
#     those copies and the device tensors are dropped (no record_stream: the block is freed on the compute stream
#     after that wait, so the allocator reuses it at once and at most ~OFFLOAD_LAG layers' tensors are in flight).
#   backward: the first unpack of a layer-i tensor loads layer i (if not already there) and starts the
#     host→device copies of layer i-1 on the side stream; each unpack makes the compute stream wait for the copy
#     of that one tensor. A tensor's device copy is dropped once autograd has unpacked it as often as it was packed.
# The groups the forward pass never releases (the last OFFLOAD_LAG - 1 layers and the final norm's) are not copied:
# their device tensors live until backward anyway, and copying them would only put their bytes on the link ahead of
# the backward's first loads. TUNA_OFFLOAD_DEVICE_LAYERS=k keeps the last k layers so (more device memory, fewer
# bytes over the link in both directions).
#
# The host memory guard (issue 5: a 360k-token step offloaded 36 × 2.95 GB into pinned blocks of 4 GiB each — the
# host allocator rounds to powers of two — and the kernel's OOM killer ended the engine with no error event).
# Host memory is read once per layer group (MemAvailable, lowered to a cgroup v2 limit where one applies; plus
# the pinned blocks torch's host allocator holds free for reuse); each copy is charged against it, less a margin
# of max(4 GiB, 5% of the total). When a copy would not fit, that tensor and every later one of the forward pass
# stay on the device: the layers kept are the last ones (the first the backward needs, so they cost no wait), and
# a group that would not fit whole (judged by the largest group so far) is kept whole. The step's log line and
# an OOM error name the layers kept (`OffloadReport`).
OFFLOAD_LAG = 2
_offload_device_layers: int | None = None  # TUNA_OFFLOAD_DEVICE_LAYERS; None: OFFLOAD_LAG - 1


def set_offload_device_layers(value: str | None) -> None:
    """TUNA_OFFLOAD_DEVICE_LAYERS: a count of last layers whose saved tensors stay on the device, or unset."""
    global _offload_device_layers
    if value is None or value == "":
        _offload_device_layers = None
        return
    if not value.isdigit():
        raise EngineError(
            "PLAN_INVALID",
            f"environment variable TUNA_OFFLOAD_DEVICE_LAYERS: {value!r} is not a count of layers (0, 1, 2, ...)",
            hint=f"unset it for the default ({OFFLOAD_LAG - 1}: the layers the forward pass never releases)",
        )
    _offload_device_layers = int(value)


def offload_device_layers() -> int:
    """How many last decoder layers an offloaded pass keeps on the device, uncopied."""
    return OFFLOAD_LAG - 1 if _offload_device_layers is None else _offload_device_layers


HOST_MARGIN_MIN = 4 << 30
GIB = float(1 << 30)


@dataclass(frozen=True)
class HostMemory:
    available: int  # bytes the host can still give without swapping or killing
    total: int


def host_margin(total: int) -> int:
    """Host memory the offload never takes: max(4 GiB, 5% of the total) for the rest of the process and the OS."""
    return max(HOST_MARGIN_MIN, total // 20)


def parse_meminfo(text: str) -> HostMemory | None:
    """/proc/meminfo → MemAvailable and MemTotal in bytes; None when either is missing (kernels before 3.14)."""
    kb: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name in ("MemTotal", "MemAvailable") and fields and fields[0].isdigit():
            scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            kb[name] = int(fields[0]) * scale
    if "MemTotal" not in kb or "MemAvailable" not in kb:
        return None
    return HostMemory(kb["MemAvailable"], kb["MemTotal"])


def cgroup_memory(root: Path = Path("/sys/fs/cgroup")) -> HostMemory | None:
    """The cgroup v2 limit of this process's cgroup (a container's): limit − (usage − inactive file pages, which
    the kernel reclaims before it kills). None without a v2 limit ("max" or no memory.max)."""
    try:
        limit = (root / "memory.max").read_text().strip()
        if not limit.isdigit():
            return None
        usage = int((root / "memory.current").read_text().strip())
        inactive = 0
        for line in (root / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "inactive_file" and value.strip().isdigit():
                inactive = int(value)
    except (OSError, ValueError):
        return None
    return HostMemory(max(0, int(limit) - max(0, usage - inactive)), int(limit))


def read_host_memory() -> HostMemory | None:
    """Available host memory: Linux /proc/meminfo (and the cgroup v2 limit, whichever is lower); elsewhere psutil
    if installed; None (no guard) otherwise."""
    if sys.platform.startswith("linux"):
        try:
            mem = parse_meminfo(Path("/proc/meminfo").read_text())
        except OSError:
            mem = None
        if mem is not None:
            cg = cgroup_memory()
            return cg if cg is not None and cg.available < mem.available else mem
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    vm = psutil.virtual_memory()
    return HostMemory(int(vm.available), int(vm.total))


def reusable_pinned_bytes() -> int:
    """Pinned blocks torch's host allocator holds free for reuse (last step's copies): host memory the offload can
    take again without the kernel giving more. 0 without CUDA."""
    if not torch.cuda.is_available() or not hasattr(torch.cuda, "host_memory_stats"):
        return 0
    stats = torch.cuda.host_memory_stats()
    return max(0, int(stats.get("allocated_bytes.current", 0)) - int(stats.get("active_bytes.current", 0)))


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / (1 << 20):.2f} MiB"


@dataclass
class OffloadReport:
    """What the offload did over one training step (all its forward passes): the model keeps one
    (`CausalLM.offload_report`), the trainer logs `end_step()` once a step and adds `guard_note()` to an OOM
    error's hint. `layers` = the decoder's layer count (group `layers` is the final norm's input)."""

    layers: int
    offloaded_bytes: int = 0
    pinned_bytes: int = 0
    kept_bytes: int = 0  # saved tensors that stayed on the device (the guard's and wide views)
    guard_kept_bytes: int = 0  # of which the host memory guard kept
    kept_from: int | None = None  # the first group the guard kept (the lowest over the step's forward passes)
    last_group: int = -1
    host: HostMemory | None = None  # the reading when the guard first kept a tensor this step
    room: int = 0  # what the guard could still give then (available + reusable pinned − margin)
    forwards: int = 0
    steps: int = 0

    def add(self, state: ActivationOffload) -> None:
        s = state.stats
        self.forwards += 1
        self.offloaded_bytes += s["offloaded_bytes"]
        self.pinned_bytes += s["pinned_bytes"]
        self.kept_bytes += s["kept_bytes"]
        self.guard_kept_bytes += s["guard_kept_bytes"]
        self.last_group = max(self.last_group, state.group)
        if state.kept_from is not None and (self.kept_from is None or state.kept_from < self.kept_from):
            self.kept_from, self.host, self.room = state.kept_from, state.kept_reading, state.kept_room

    def kept_layers(self) -> str:
        assert self.kept_from is not None
        last = min(self.last_group, self.layers)
        if self.kept_from >= self.layers:
            return "the final norm's input"
        norm = " and the final norm's input" if last >= self.layers else ""
        return f"layers {self.kept_from}..{min(last, self.layers - 1)}{norm}"

    def guard_note(self) -> str | None:
        """One line on what the guard did this step, or None when it kept nothing."""
        if self.kept_from is None:
            return None
        avail = f"{self.host.available / GIB:.1f} GiB" if self.host is not None else "?"
        total = f" of {self.host.total / GIB:.1f}" if self.host is not None else ""
        return (
            f"offload: host memory available {avail}{total} (margin "
            f"{host_margin(self.host.total if self.host else 0) / GIB:.1f} GiB), keeping {self.kept_layers()} "
            f"on the GPU ({_size(self.guard_kept_bytes)} kept, {_size(self.offloaded_bytes)} offloaded)"
        )

    def end_step(self) -> str | None:
        """The step's log line (the first step's totals; the guard's line at every step it kept tensors), then
        the counts start over for the next step."""
        self.steps += 1
        line = self.guard_note()
        if line is None and self.steps == 1 and self.forwards:
            line = (
                f"offload: {_size(self.offloaded_bytes)} of saved tensors went to host memory "
                f"({_size(self.pinned_bytes)} of it pinned) over {self.forwards} forward pass(es); "
                f"{_size(self.kept_bytes)} stayed on the GPU"
            )
        self.__dict__.update(OffloadReport(self.layers, steps=self.steps).__dict__)
        return line


class Copier:
    """Synchronous copies into ordinary host memory: the CPU path, and the fallback on CUDA when pinned memory
    cannot be had. `to_host`/`to_device` return (tensor, event) where event None means the copy is complete in
    the order of the current stream."""

    def to_host(self, span: torch.Tensor) -> tuple[torch.Tensor, Any]:
        host = torch.empty(span.shape, dtype=span.dtype)
        host.copy_(span)
        return host, None

    def to_device(self, hosts: list[torch.Tensor], device: torch.device) -> list[tuple[torch.Tensor, Any]]:
        # From pageable memory, non_blocking only skips a stream synchronisation: the source is staged at once.
        return [(h.to(device, non_blocking=True) if device.type != "cpu" else h.clone(), None) for h in hosts]

    def wait(self, event: Any, device: torch.device) -> None:
        pass

    def host_bytes(self, nbytes: int) -> int:
        """Host memory a copy of `nbytes` takes."""
        return nbytes


class StreamCopier(Copier):
    """Copies on a side CUDA stream into pinned host memory (torch's caching host allocator keeps the pinned
    blocks across steps; it reuses a block only after the copies recorded on it are done)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)

    def to_host(self, span: torch.Tensor) -> tuple[torch.Tensor, Any]:
        # Raises when pinned memory runs out (the caller falls back to the synchronous copy).
        host = torch.empty(span.shape, dtype=span.dtype, pin_memory=True)
        self.stream.wait_stream(
            torch.cuda.current_stream(span.device)
        )  # span is produced on the compute stream
        with torch.cuda.stream(self.stream):
            host.copy_(span, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return host, event

    def to_device(self, hosts: list[torch.Tensor], device: torch.device) -> list[tuple[torch.Tensor, Any]]:
        # Allocated on the compute stream, which frees them after use in its own order; the side stream waits
        # for the compute stream first because a new block may be one the compute stream is still reading.
        outs = [torch.empty(h.shape, dtype=h.dtype, device=device) for h in hosts]
        self.stream.wait_stream(torch.cuda.current_stream(device))
        done = []
        with torch.cuda.stream(self.stream):
            for out, host in zip(outs, hosts, strict=True):
                out.copy_(host, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
                done.append((out, event))
        return done

    def wait(self, event: Any, device: torch.device) -> None:
        if event is not None:
            torch.cuda.current_stream(device).wait_event(event)

    def host_bytes(self, nbytes: int) -> int:
        # The caching host allocator hands out power-of-two blocks (a 2.95 GB layer input takes 4 GiB).
        return 1 << max(0, nbytes - 1).bit_length()


class _Held:
    """One saved tensor: its host copy (the flat span of storage it covers), and its device tensor while there
    is one (the original until released in forward, or the copy loaded for backward)."""

    __slots__ = (
        "host", "device", "size", "stride", "copier", "gpu", "d2h", "h2d", "seq", "packs", "unpacks", "last_group",
        "owner", "version", "__weakref__",
    )  # fmt: skip


def _span(t: torch.Tensor) -> int:
    """Elements of storage that `t` covers from its offset (= numel for a dense tensor in any dim order)."""
    return 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0


class ActivationOffload:
    """The state of one forward pass's offload: `pack`/`unpack` are the saved-tensor hooks, `enter_layer(i)` is
    called by the forward loop before layer i (and before the final norm, as one more group).

    Not offloaded: parameters and views of them (the frozen weights every GEMM saves, W.t() in eager F.linear:
    copying 16 GB of 8B weights each step would be the cost, which torch's `save_on_cpu` pays), tensors under
    `min_bytes`, tensor subclasses, and views that cover more than twice their own size of storage. The same
    view of the same storage saved twice (normed x by several projections, the rotary tables by every layer) is
    copied once.

    `host_memory` (None: no guard) reads the host's available memory for the guard (see above; injected in
    tests); `report` sums this pass's stats into the model's `OffloadReport` when the forward pass ends."""

    def __init__(
        self,
        min_bytes: int = 1 << 16,
        copier: Copier | None = None,
        max_pinned_bytes: int | None = None,
        host_memory: Callable[[], HostMemory | None] | None = None,
        report: OffloadReport | None = None,
    ) -> None:
        self.min_bytes = min_bytes
        self.copier = copier  # injected (tests); None: a StreamCopier per CUDA device, synchronous otherwise
        self.max_pinned_bytes = max_pinned_bytes
        self.host_memory = host_memory
        self.report = report
        self.room: int | None = None  # host bytes the current group may still take (None: no reading)
        self.room_group = -1  # the group `room` was read for
        self.group_cost: dict[int, int] = {}  # host bytes each group's copies took
        self.kept_from: int | None = None  # the guard keeps this group and every later one on the device
        # Groups from this one on are never copied (None: every group is): the forward pass ends before it would
        # release them, so their device tensors live until backward anyway (CausalLM.forward sets it from
        # offload_device_layers()).
        self.device_from: int | None = None
        self.reading: HostMemory | None = None  # the current group's reading
        self.kept_reading: HostMemory | None = None
        self.kept_room = 0
        self.sync = Copier()
        self.streams: dict[torch.device, StreamCopier] = {}
        self.groups: dict[int, list[weakref.ref[_Held]]] = {}
        self.group = 0
        self.released = -1  # groups ≤ this one have dropped their device originals (forward)
        self.started: set[int] = set()  # groups whose backward has begun
        self.seen: dict[tuple, weakref.ref[_Held]] = {}
        self.seq = 0
        self.in_backward = False
        self.pinned_ok = True
        self.stats = {
            "offloaded_bytes": 0, "pinned_bytes": 0, "kept_bytes": 0, "guard_kept_bytes": 0, "deduplicated": 0,
            "h2d": 0,
        }  # fmt: skip

    # ---- forward -------------------------------------------------------------------------------------------
    def enter_layer(self, i: int) -> None:
        self.group = i
        self._release_through(i - OFFLOAD_LAG)

    def _release_through(self, last: int) -> None:
        latest: dict[Copier, tuple[int, Any, torch.device]] = {}
        drop = []
        for g in range(self.released + 1, last + 1):
            for ref in self.groups.get(g, ()):
                held = ref()
                if held is None or held.gpu is None or held.last_group > last:
                    continue
                drop.append(held)
                if held.d2h is not None and held.seq > latest.get(held.copier, (-1,))[0]:
                    latest[held.copier] = (held.seq, held.d2h, held.device)
        # Copies on one side stream finish in order: waiting for the latest covers the group.
        for copier, (_, event, device) in latest.items():
            copier.wait(event, device)
        for held in drop:
            held.gpu = None
            held.d2h = None
        self.released = max(self.released, last)

    def pack(self, t: torch.Tensor) -> Any:
        if isinstance(t, nn.Parameter) or type(t) is not torch.Tensor or t.layout != torch.strided:
            return t
        if isinstance(t._base, nn.Parameter):  # W.t(), saved by eager F.linear: a weight, not an activation
            return t
        nbytes = t.numel() * t.element_size()
        extent = _span(t)
        if nbytes < self.min_bytes:
            return t
        if extent > 2 * t.numel():
            self.stats["kept_bytes"] += nbytes
            return t
        key = (
            t.device,
            t.dtype,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
        )
        ref = self.seen.get(key)
        held = ref() if ref is not None else None
        # The same storage only while the tensor first seen (or its base) lives: a freed block can come back.
        if held is not None and (held.owner() is None or held.version != t._version):
            held = None
        if held is None and self.device_from is not None and self.group >= self.device_from:
            self.stats["kept_bytes"] += nbytes
            return t
        if held is None:
            copier = self._copier_for(t, extent * t.element_size())
            if not self._host_takes(copier.host_bytes(extent * t.element_size())):
                self.stats["kept_bytes"] += nbytes
                self.stats["guard_kept_bytes"] += nbytes
                return t  # stays on the device: autograd holds it as without offload, nothing is copied
            held = self._offload(t, extent, nbytes, copier)
            self.seen[key] = weakref.ref(held)
        else:
            self.stats["deduplicated"] += 1
        held.packs += 1
        held.last_group = self.group
        self.groups.setdefault(self.group, []).append(weakref.ref(held))
        return (self, held, self.group)

    def _copier_for(self, t: torch.Tensor, host_bytes: int) -> Copier:
        if not self.pinned_ok:
            return self.sync
        if self.copier is not None:
            return self.copier
        if not t.is_cuda:
            return self.sync
        if (
            self.max_pinned_bytes is not None
            and self.stats["pinned_bytes"] + host_bytes > self.max_pinned_bytes
        ):
            return self.sync
        if t.device not in self.streams:
            self.streams[t.device] = StreamCopier(t.device)
        return self.streams[t.device]

    def _host_takes(self, cost: int) -> bool:
        """The host memory guard: whether a copy taking `cost` bytes of host memory fits (and charge it)."""
        if self.kept_from is not None:
            return False
        if self.host_memory is None:
            return True
        if self.room_group != self.group:  # one reading per group
            self.room_group = self.group
            mem = self.host_memory()
            self.room = None
            if mem is not None:
                self.room = mem.available + reusable_pinned_bytes() - host_margin(mem.total)
                expected = max(self.group_cost.values(), default=0)  # a layer's copies, as the largest so far
                if expected > self.room:  # would run out inside this group: keep all of it
                    return self._keep(mem)
                self.reading = mem
        if self.room is None:
            return True
        if cost > self.room:
            return self._keep(self.reading)
        self.room -= cost
        self.group_cost[self.group] = self.group_cost.get(self.group, 0) + cost
        return True

    def _keep(self, mem: HostMemory | None) -> bool:
        self.kept_from, self.kept_reading, self.kept_room = self.group, mem, max(0, self.room or 0)
        return False

    def end_forward(self) -> None:
        if self.report is not None:
            self.report.add(self)

    def _offload(self, t: torch.Tensor, extent: int, nbytes: int, copier: Copier) -> _Held:
        span = t.as_strided((extent,), (1,))
        try:
            host, event = copier.to_host(span)
        except RuntimeError:  # pinned memory exhausted: this and the rest of the pass go the synchronous way
            if copier is self.sync:
                raise
            self.pinned_ok = False
            copier = self.sync
            host, event = copier.to_host(span)
        held = _Held()
        held.host, held.device, held.size, held.stride = host, t.device, t.shape, t.stride()
        held.copier, held.gpu, held.d2h, held.h2d = copier, t, event, None
        self.seq += 1
        held.seq, held.packs, held.unpacks, held.last_group = self.seq, 0, 0, self.group
        held.owner = weakref.ref(t._base if t._base is not None else t)
        held.version = t._version
        self.stats["offloaded_bytes"] += nbytes
        if isinstance(copier, StreamCopier):
            self.stats["pinned_bytes"] += host.numel() * host.element_size()
        return held

    # ---- backward ------------------------------------------------------------------------------------------
    def unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        _, held, group = packed
        if not self.in_backward:
            self.in_backward = True
            try:  # reset at the end of this backward pass (a second one, retain_graph, starts over)
                torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
            except RuntimeError:  # unpacked outside a backward pass (grad_fn._saved_* from Python)
                self.in_backward = False
        if group not in self.started:
            self.started.add(group)
            self._load(group)
            below = [g for g in self.groups if g < group]
            if below:
                self._load(max(below))  # prefetch: overlaps with this layer's backward
        if held.gpu is None:  # consumed already (a second unpack), or never grouped
            self._load_all([held])
        out = held.gpu
        held.copier.wait(held.h2d, held.device)  # the compute stream waits for this tensor's copy only
        held.unpacks += 1
        if held.unpacks >= held.packs:
            held.gpu = held.h2d = None  # autograd holds it now; freed on the compute stream after use
        return out

    def _load(self, group: int) -> None:
        todo = {id(h): h for ref in self.groups.get(group, ()) if (h := ref()) is not None and h.gpu is None}
        self._load_all(list(todo.values()))

    def _load_all(self, helds: list[_Held]) -> None:
        by: dict[tuple[Copier, torch.device], list[_Held]] = {}
        for h in helds:
            by.setdefault((h.copier, h.device), []).append(h)
        for (copier, device), hs in by.items():
            for h, (flat, event) in zip(hs, copier.to_device([h.host for h in hs], device), strict=True):
                h.gpu = flat.as_strided(h.size, h.stride, 0)
                h.h2d = event
                self.stats["h2d"] += 1

    def _end_backward(self) -> None:
        """Device copies loaded but never unpacked are dropped after the compute stream waits for them."""
        for refs in self.groups.values():
            for ref in refs:
                held = ref()
                if held is not None and held.gpu is not None:
                    held.copier.wait(held.h2d, held.device)
                    held.gpu = held.h2d = None
                if held is not None:
                    held.unpacks = 0
        self.started.clear()
        self.in_backward = False


class OffloadHooks(torch.autograd.graph.saved_tensors_hooks):
    """The context manager over the decoder's forward: saved_tensors_hooks of one `ActivationOffload`."""

    def __init__(self, state: ActivationOffload) -> None:
        super().__init__(state.pack, state.unpack)
        self.state = state

    def enter_layer(self, i: int) -> None:
        self.state.enter_layer(i)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.state.end_forward()  # also when the forward pass raised (an OOM error names what the guard kept)


def offload_saved_tensors(
    min_bytes: int = 1 << 16,
    copier: Copier | None = None,
    report: OffloadReport | None = None,
    host_memory: Callable[[], HostMemory | None] | None = None,
) -> OffloadHooks:
    """Hooks that send the decoder's saved tensors to host memory and bring them back a layer ahead of the
    backward pass (see OFFLOAD_LAG above), keeping on the device what the host cannot take (the guard above;
    `host_memory` None: `read_host_memory`). TUNA_OFFLOAD_PINNED_GIB caps the pinned memory of one forward pass;
    beyond it (or when a pinned allocation fails) tensors are copied synchronously to ordinary memory."""
    cap = os.environ.get("TUNA_OFFLOAD_PINNED_GIB")
    pinned = int(float(cap) * (1 << 30)) if cap else None
    read = host_memory if host_memory is not None else read_host_memory
    return OffloadHooks(ActivationOffload(min_bytes, copier, pinned, read, report))


class Body(nn.Module):
    """Hugging Face's `model.` prefix: embeddings, decoder layers, final norm."""

    def __init__(self, c: Config, lora: LoraSpec | None, lora_layers: tuple[int, ...] | None) -> None:
        super().__init__()
        targets = resolve_targets(lora) if lora is not None else ()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(c, lora if lora_layers is None or i in lora_layers else None, targets)
            for i in range(c.num_layers)
        )
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(
        self, c: Config, lora: LoraSpec | None = None, lora_layers: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.config = c
        self.model = Body(c, lora, lora_layers)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        inv_freq, self.rope_scale = rope_inv_freq(c)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # train.recompute: "full" = checkpoint every decoder layer, "mlp" = only each MLP block, "none".
        self._recompute = "none"
        # train.offload_activations: tensors saved for backward by the decoder go to (pinned) CPU memory; what
        # the offload did in a step (offloaded, kept by the host memory guard) adds up in offload_report.
        # True, False, or "auto" (`offload_this_pass`: only passes whose layer inputs are large).
        self.offload_activations: bool | str = False
        self.offload_report = OffloadReport(c.num_layers)
        # Set by the loader for QLoRA: how the 4-bit base was made (saved beside the adapter for merging).
        self.quantization: dict[str, Any] | None = None
        # Set by train.py after convert_to_fp8 (train.base_precision "fp8"): the projections' bases are FP8.
        self.fp8_base = False

    @property
    def recompute(self) -> str:
        return self._recompute

    @recompute.setter
    def recompute(self, mode: str) -> None:
        if mode not in RECOMPUTE:
            raise ValueError(f"recompute: expected one of {RECOMPUTE}, got {mode!r}")
        self._recompute = mode
        for layer in self.model.layers:
            layer.checkpoint_mlp = mode == "mlp"

    @property
    def gradient_checkpointing(self) -> bool:
        """The older switch: True = recompute "full", False = "none"."""
        return self._recompute != "none"

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.recompute = "full" if on else "none"

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (after building on the meta device and `to_empty`)."""
        self.inv_freq = rope_inv_freq(self.config)[0].to(self.inv_freq.device)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        sample_ids: torch.Tensor,
        seg: Segments | None = None,
    ) -> torch.Tensor:
        """input_ids/position_ids/sample_ids [B, T] → final hidden states [B, T, C] (after the last norm).
        `seg`: the samples' boundaries when the caller has them (graphs.py: computed on the CPU, no device sync);
        otherwise computed here."""
        x = self.model.embed_tokens(input_ids)
        # Rotary tables in fp32, scaled, then cast to the activation dtype (transformers does the same).
        freqs = position_ids[..., None].float() * self.inv_freq.float()  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(x.dtype)
        sin = (emb.sin() * self.rope_scale).to(x.dtype)
        if seg is None:
            seg = segments(sample_ids) if use_varlen(x) else Segments(sample_ids, sample_ids, 0)
        training = self.training and torch.is_grad_enabled()
        on = training and offload_this_pass(self.offload_activations, x, len(self.model.layers))
        offload = offload_saved_tensors() if on else None
        if offload is not None:
            offload.state.report = self.offload_report  # this pass's stats add up in the model's step report
            offload.state.device_from = len(self.model.layers) - offload_device_layers()
        with offload if offload is not None else contextlib.nullcontext():
            for i, layer in enumerate(self.model.layers):
                if offload is not None:
                    offload.enter_layer(i)  # saved tensors are grouped by layer for the backward prefetch
                if self._recompute == "full" and training:
                    # Saved: the layer's inputs and what recompute_keep names (offloaded too when the offload is
                    # on). The checkpoint goes inside the layer (DecoderLayer.forward) except around tiled MLPs,
                    # whose own checkpoints stay out of a compiled graph; for 4-bit bases (Qwen3-32B QLoRA at 2 ×
                    # 2048, H200: 21.6 GiB outside, 22.1–22.3 inside, over issue 5's 22 GiB); for FP8 bases in passes
                    # not offloaded (_checkpoint_inside); and under layer_checkpoint() "outside" (TUNA_LAYER_CHECKPOINT,
                    # the A/B switch; the default in DDP/FSDP runs).
                    # Outside, the layer's input alone is kept.
                    if self._checkpoint_inside(layer, x, on):
                        x = layer(x, cos, sin, seg, recompute_keeping=recompute_keep(on))
                    else:
                        x = recomputed(layer, x, cos, sin, seg)
                else:
                    x = layer(x, cos, sin, seg)
            if offload is not None:
                offload.enter_layer(len(self.model.layers))  # the final norm's inputs: a group of their own
            return self.model.norm(x)

    def _checkpoint_inside(self, layer: DecoderLayer, x: torch.Tensor, offloading: bool) -> bool:
        """Whether recompute "full" checkpoints `layer` from inside (see forward) in a pass that offloads or not."""
        if layer_checkpoint() != "inside" or self.quantization is not None or layer.tiles_mlp(x):
            return False
        # FP8 bases: inside only where the pass offloads. Not offloaded, Qwen3-0.6B's FP8 step (2 × 2048, H200,
        # 2026-11-29) peaked at 1.77 GiB inside against 1.35 outside (bf16: 1.71 either way) with the same saved
        # tensors listed per layer — cause not found; offloaded, Qwen3-8B's FP8 step ran 2.94× HF inside (2.50×
        # outside) at the same 0.49× memory.
        return offloading or not self.fp8_base

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.output_weight)
