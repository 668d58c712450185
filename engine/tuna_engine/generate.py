"""python -m tuna_engine generate --plan plan.json: a long-lived generation server on stdin/stdout.

After loading the model it emits `ready`, then reads one JSON object per stdin line:
  {"id", "prompt_ids", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed",
   "stop_ids", "adapter"}                       a request (optionally "type": "generate")
  {"type": "cancel", "id"}                      stop a request
and streams `{"event": "token", "id", "token_ids"}` per generated token, then `{"event": "finished", "id",
"reason": "stop" | "length" | "cancelled", "prompt_tokens", "generated_tokens", "elapsed_s"}`. The stop id
is emitted as a token (TypeScript drops it when it decodes). A bad request gets an `error` event with its
`id`; the server keeps going. End of stdin: finish what is running, then exit 0.

How it runs (continuous batching, one process, one device):
  - A KV cache of `max_batch_size` slots; each request takes a free slot, its prompt is prefilled alone
    (causal attention over its own slot) and from then on it decodes one token per step together with every
    other active request, each at its own length (a per-row mask over the slot's positions).
  - New requests join between decode steps; a finished or cancelled one frees its slot at once.
  - LoRA adapters stay separate from the base weights (nothing is merged): each targeted projection computes
    base(x) and then, for the rows of the batch that chose adapter a, adds s_a·B_a(A_a(x)) (DoRA: peft's
    magnitude rescaling), so requests for different adapters and for the base model share one batch.
  - Sampling per request with its own seeded generator, in transformers' order: repetition penalty,
    temperature, top-k, top-p. temperature 0 = greedy.
The model is the engine's own (models/llama.py) with its parameters read as-is; this file adds the cached
attention path the training forward does not need. A `*-bnb-4bit` model directory loads as NF4 (quant/).
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from . import lora as lora_mod
from .decode import Decoder, kernels_from_env
from .errors import EngineError
from .models import build_model, load_model, model_config
from .models.llama import CausalLM, rotate_half
from .protocol import GeneratePlan, GenerateRequest, emit, log, parse_generate_request

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("graph", "eager", "reference")
DEFAULT_MAX_MODEL_LEN = 4096
PROJECTIONS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


# ---- adapters ---------------------------------------------------------------------------------------------


@dataclass
class AdapterWeights:
    """One projection's adapter: delta(x) = scaling · (x Aᵀ) Bᵀ, in fp32 (peft keeps adapters in fp32)."""

    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scaling: float
    dora_scale: torch.Tensor | None = None  # DoRA: magnitude / ||W + s·BA||_row, [out]


def _base_weight(module: nn.Module) -> torch.Tensor:
    deq = getattr(module, "dequantize", None)
    return deq(torch.float32) if callable(deq) else module.weight.float()  # type: ignore[union-attr]


def load_adapter(model: CausalLM, name: str, adapter_dir: str) -> dict[str, AdapterWeights]:
    """A PEFT adapter directory → {module path: AdapterWeights}; every tensor must match a projection."""
    spec, _layers = lora_mod.read_adapter_config(adapter_dir)
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise EngineError(
            "ADAPTER_NOT_FOUND",
            f"{path}: not found",
            hint=f"adapters.{name} must be a PEFT adapter directory",
        )
    scaling = lora_mod.lora_scaling(spec)
    modules = dict(model.named_modules())
    parts: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), "pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118
            if not key.startswith(lora_mod.PEFT_PREFIX):
                raise EngineError(
                    "ADAPTER_MISMATCH", f"{path}: tensor {key}: expected the prefix {lora_mod.PEFT_PREFIX!r}"
                )
            rest = key[len(lora_mod.PEFT_PREFIX) :]
            for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"):
                if rest.endswith(suffix):
                    parts.setdefault(rest[: -len(suffix)], {})[suffix] = f.get_tensor(key).float()
                    break
            else:
                raise EngineError("ADAPTER_MISMATCH", f"{path}: tensor {key} is not a LoRA/DoRA tensor")
    out: dict[str, AdapterWeights] = {}
    for mod_name, t in parts.items():
        module = modules.get(mod_name)
        if module is None or not hasattr(module, "in_features"):
            raise EngineError(
                "ADAPTER_MISMATCH",
                f"{path}: adapter for {mod_name}, which is not a projection of the model at {model_config_name(model)}",
                hint="the adapter was trained on a different base model",
            )
        A, B = t.get(".lora_A.weight"), t.get(".lora_B.weight")
        if A is None or B is None:
            raise EngineError("ADAPTER_MISMATCH", f"{path}: {mod_name} needs both lora_A and lora_B")
        want_a, want_b = (A.shape[0], module.in_features), (module.out_features, A.shape[0])
        if tuple(A.shape) != want_a or tuple(B.shape) != want_b:
            raise EngineError(
                "ADAPTER_MISMATCH",
                f"{path}: {mod_name}: lora_A {list(A.shape)} / lora_B {list(B.shape)} do not fit the layer "
                f"(expected {list(want_a)} / {list(want_b)})",
                hint="the adapter was trained on a different base model",
            )
        device = next(model.parameters()).device
        w = AdapterWeights(A.to(device), B.to(device), scaling)
        if spec.use_dora:
            mag = t.get(".lora_magnitude_vector")
            if mag is None:
                raise EngineError(
                    "ADAPTER_MISMATCH", f"{path}: {mod_name}: DoRA adapter without lora_magnitude_vector"
                )
            weight = _base_weight(module)
            norm = torch.linalg.norm(weight + scaling * (w.B @ w.A), dim=1)
            w.dora_scale = mag.to(device) / norm
        out[mod_name] = w
    return out


def model_config_name(model: CausalLM) -> str:
    c = model.config
    return f"{c.model_type} (hidden {c.hidden_size}, {c.num_layers} layers)"


# ---- the KV cache -----------------------------------------------------------------------------------------


class KVCache:
    """k/v per layer: [slots, capacity, kv_heads, head_dim]; capacity grows by doubling as sequences grow."""

    def __init__(
        self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.shape = (slots, 0, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.k = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    def ensure(self, length: int) -> None:
        if length <= self.capacity:
            return
        cap = max(length, 2 * self.capacity, 64)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                new = torch.zeros((old.shape[0], cap, *old.shape[2:]), dtype=self.dtype, device=self.device)
                new[:, : old.shape[1]] = old
                store[i] = new


# ---- one sequence -----------------------------------------------------------------------------------------


@dataclass
class Sequence:
    req: GenerateRequest
    slot: int
    adapter: int  # index into Engine.adapter_names, -1 = base model
    generator: torch.Generator
    started: float
    length: int = 0  # tokens in the cache
    generated: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # prompt + generated ids, for the repetition penalty

    @property
    def next_input(self) -> int:
        return self.generated[-1]


# ---- the engine -------------------------------------------------------------------------------------------


def resolve_mode(mode: str | None, device: torch.device) -> str:
    """`graph` (static cache + CUDA graphs) on CUDA, `eager` (static cache, no graphs) on CPU; TUNA_GENERATE_MODE
    (graph | eager | reference) overrides the default; `reference` is the original dynamic-cache path."""
    mode = mode or os.environ.get("TUNA_GENERATE_MODE") or "auto"
    if mode == "auto":
        return "graph" if device.type == "cuda" else "eager"
    if mode not in MODES:
        raise EngineError(
            "PLAN_INVALID",
            f"TUNA_GENERATE_MODE: expected one of auto, {', '.join(MODES)}, got {mode!r}",
        )
    if mode == "graph" and device.type != "cuda":
        raise EngineError(
            "NO_CUDA",
            f"generation mode graph needs a CUDA device, the model is on {device}",
            hint="use TUNA_GENERATE_MODE=eager (or auto) on CPU",
        )
    return mode


def resolve_max_model_len(max_model_len: int | None) -> int:
    if max_model_len is not None:
        return max_model_len
    raw = os.environ.get("TUNA_MAX_MODEL_LEN")
    if raw is None:
        return DEFAULT_MAX_MODEL_LEN
    if not raw.isdigit() or int(raw) < 1:
        raise EngineError("PLAN_INVALID", f"TUNA_MAX_MODEL_LEN: expected a positive integer, got {raw!r}")
    return int(raw)


def resolve_switch(value: bool | None, env: str, default: bool) -> bool:
    """A boolean setting: the value given, else the env var (0/1) when set, else the default."""
    if value is not None:
        return value
    raw = os.environ.get(env)
    if raw is None:
        return default
    if raw not in ("0", "1"):
        raise EngineError("PLAN_INVALID", f"{env}: expected 0 or 1, got {raw!r}")
    return raw == "1"


def _plan_or_env(arg: Any, env: str, plan_value: Any) -> Any:
    """A setting for Engine: the caller's argument, else None where the env var is set (Engine reads it: env
    vars override the plan), else the plan's field (None = not given)."""
    if arg is not None:
        return arg
    return None if os.environ.get(env) is not None else plan_value


class Engine:
    """Batched, KV-cached generation over one model and any number of named LoRA adapters.

    mode: "graph" / "eager" run decode.Decoder (KV cache of max_batch_size × max_model_len positions
    allocated here; a request longer than max_model_len is refused); "reference" is the original path (a cache
    that grows, per-adapter row groups, one host sync per row), kept as the plain reference the static path is
    tested against. Default: resolve_mode(). fused (default on, TUNA_GENERATE_FUSED) / compile (default on in graph mode,
    TUNA_GENERATE_COMPILE): the Decoder's fused layer and its torch.compile (decode.py; True = scope "layer", the
    whole layer with the Triton attention; "regions" = the two regions around an eager attention, for comparison)."""

    def __init__(
        self,
        model: CausalLM,
        adapters: dict[str, dict[str, AdapterWeights]] | None = None,
        max_batch_size: int = 8,
        max_model_len: int | None = None,
        mode: str | None = None,
        fused: bool | None = None,
        compile: bool | str | None = None,
    ) -> None:
        self.model = model.eval()
        c = model.config
        self.c = c
        p = next(model.parameters())
        self.device = p.device
        self.dtype = model.model.embed_tokens.weight.dtype
        self.adapter_names = list(adapters or {})
        # module path -> one entry per adapter (None where that adapter does not touch the module)
        self.adapter_weights: dict[str, list[AdapterWeights | None]] = {}
        for i, name in enumerate(self.adapter_names):
            for mod, w in (adapters or {})[name].items():
                self.adapter_weights.setdefault(mod, [None] * len(self.adapter_names))[i] = w
        self.max_batch_size = max_batch_size
        self.mode = resolve_mode(mode, self.device)
        self.max_model_len = resolve_max_model_len(max_model_len)
        self.decoder: Decoder | None = None
        if self.mode == "reference":
            self.cache = KVCache(
                c.num_layers, max_batch_size, c.num_kv_heads, c.head_dim, self.dtype, self.device
            )
        else:
            self._check_cache_fits()
            self.decoder = Decoder(
                model,
                self.adapter_weights,
                len(self.adapter_names),
                max_batch_size,
                self.max_model_len,
                use_graphs=self.mode == "graph",
                fused=resolve_switch(fused, "TUNA_GENERATE_FUSED", True),
                # On with CUDA graphs (H200, scope "regions": Qwen3-0.6B 2.83 → 1.97 ms per decode step, 8B 7.12 →
                # 5.85 ms; setup 2 → 7 s; scope "layer" is the default now); the eager/CPU path stays uncompiled.
                compile=resolve_switch(compile, "TUNA_GENERATE_COMPILE", self.mode == "graph"),  # type: ignore[arg-type]
            )
            # Prompt + generated ids per slot, for the repetition penalty (on the device: no host round trip).
            self.seen = torch.zeros(max_batch_size, c.vocab_size, dtype=torch.bool, device=self.device)
        self.free_slots = list(range(max_batch_size))
        self.active: dict[str, Sequence] = {}

    def _check_cache_fits(self) -> None:
        c = self.c
        elt = torch.empty((), dtype=self.dtype).element_size()
        need = 2 * c.num_layers * self.max_batch_size * c.num_kv_heads * self.max_model_len * c.head_dim * elt
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            if need > 0.9 * free:
                raise EngineError(
                    "OOM",
                    f"generate: a KV cache of max_batch_size {self.max_batch_size} x max_model_len "
                    f"{self.max_model_len} needs {need / 2**30:.1f} GiB; {free / 2**30:.1f} GiB of GPU memory is free",
                    hint="lower max_batch_size or TUNA_MAX_MODEL_LEN",
                )

    # -- model math ----------------------------------------------------------------------------------------

    def _proj(
        self, name: str, module: nn.Module, x: torch.Tensor, groups: list[tuple[int, torch.Tensor]]
    ) -> torch.Tensor:
        """module(x) plus, for each (adapter, rows) group, that adapter's delta on those rows (lora.Linear's
        math: the input cast to fp32 for the adapter path, the sum cast back)."""
        result = module(x)
        per_adapter = self.adapter_weights.get(name)
        if per_adapter is None or not groups:
            return result
        out = result.clone()
        for a, rows in groups:
            w = per_adapter[a]
            if w is None:
                continue
            xr = x[rows].float()
            lora_result = (xr @ w.A.T) @ w.B.T
            base = result[rows]
            if w.dora_scale is None:
                out[rows] = (base + lora_result * w.scaling).to(result.dtype)
            else:
                bias = getattr(module, "bias", None)
                base_nobias = base if bias is None else base - bias
                scale = w.dora_scale.view(1, -1)
                out[rows] = (base + (scale - 1) * base_nobias + scale * lora_result * w.scaling).to(
                    result.dtype
                )
        return out

    @torch.no_grad()
    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, adapters: list[int]
    ) -> torch.Tensor:
        """ids/positions [B, T] (row b at positions[b], written to cache slot slots[b]) → next-token logits of
        each row's last position, fp32 [B, vocab]. Attention sees the slot's cached keys up to each position."""
        model, c = self.model, self.c
        B, T = ids.shape
        D = c.head_dim
        groups = [
            (a, torch.tensor([i for i, x in enumerate(adapters) if x == a], device=ids.device))
            for a in sorted(set(adapters))
            if a >= 0
        ]
        x = model.model.embed_tokens(ids)
        freqs = positions[..., None].float() * model.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * model.rope_scale).to(x.dtype)[:, None]  # [B, 1, T, D]
        sin = (emb.sin() * model.rope_scale).to(x.dtype)[:, None]
        S = int(positions.max()) + 1  # keys to look at
        key_pos = torch.arange(S, device=ids.device)
        mask = (key_pos[None, None, :] <= positions[:, :, None])[:, None]  # [B, 1, T, S]
        for li, layer in enumerate(model.model.layers):
            pre = f"model.layers.{li}."
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = self._proj(pre + "self_attn.q_proj", attn.q_proj, h, groups).view(B, T, -1, D)
            k = self._proj(pre + "self_attn.k_proj", attn.k_proj, h, groups).view(B, T, -1, D)
            v = self._proj(pre + "self_attn.v_proj", attn.v_proj, h, groups).view(B, T, -1, D)
            if c.qk_norm:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, heads, T, D]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            ck, cv = self.cache.k[li], self.cache.v[li]
            ck[slots[:, None], positions] = k.transpose(1, 2)
            cv[slots[:, None], positions] = v
            keys = ck[slots, :S].transpose(1, 2)  # [B, kv_heads, S, D]
            values = cv[slots, :S].transpose(1, 2)
            y = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != keys.shape[1]
            )
            x = x + self._proj(
                pre + "self_attn.o_proj", attn.o_proj, y.transpose(1, 2).reshape(B, T, -1), groups
            )
            mlp = layer.mlp
            h = layer.post_attention_layernorm(x)
            gate = self._proj(pre + "mlp.gate_proj", mlp.gate_proj, h, groups)
            up = self._proj(pre + "mlp.up_proj", mlp.up_proj, h, groups)
            x = x + self._proj(pre + "mlp.down_proj", mlp.down_proj, F.silu(gate) * up, groups)
        x = model.model.norm(x[:, -1])
        return model.logits(x).float()

    # -- sampling ------------------------------------------------------------------------------------------

    @staticmethod
    def process_logits(
        logits: torch.Tensor, req: GenerateRequest, seen: set[int] | torch.Tensor
    ) -> torch.Tensor:
        """transformers' logits processors in generate()'s order: repetition penalty (over prompt and generated
        ids: a set, or a bool mask [vocab] on the logits' device), then for sampling temperature, top-k, top-p.
        fp32 [vocab] → fp32 [vocab] (-inf = excluded)."""
        logits = logits.clone()
        if req.repetition_penalty != 1.0:
            p = req.repetition_penalty
            if isinstance(seen, torch.Tensor):
                penalized = torch.where(logits < 0, logits * p, logits / p)
                logits = torch.where(seen, penalized, logits)
            elif seen:
                ids = torch.tensor(sorted(seen), device=logits.device)
                sel = logits[ids]
                logits[ids] = torch.where(sel < 0, sel * p, sel / p)
        if req.temperature == 0:
            return logits
        logits = logits / req.temperature
        if 0 < req.top_k < logits.numel():
            kth = torch.topk(logits, req.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if req.top_p < 1.0:
            # TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p, always keeping the top token.
            sorted_logits, order = torch.sort(logits, descending=False)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            remove = cum <= 1 - req.top_p
            remove[-1] = False
            logits = logits.masked_fill(remove.scatter(0, order, remove), -math.inf)
        return logits

    @classmethod
    def sample_tensor(
        cls, logits: torch.Tensor, seq: Sequence, seen: set[int] | torch.Tensor
    ) -> torch.Tensor:
        """One row's next token as a 0-d tensor on the logits' device (no host sync): argmax when temperature
        is 0, else a draw from the request's own seeded generator."""
        logits = cls.process_logits(logits, seq.req, seen)
        if seq.req.temperature == 0:
            return logits.argmax()
        return torch.multinomial(logits.softmax(-1), 1, generator=seq.generator)[0]

    @classmethod
    def sample(cls, logits: torch.Tensor, seq: Sequence) -> int:
        return int(cls.sample_tensor(logits, seq, seq.seen))

    @staticmethod
    def plain_greedy(req: GenerateRequest) -> bool:
        """Greedy with no logits processing: the decode step's own argmax is the answer."""
        return req.temperature == 0 and req.repetition_penalty == 1.0

    # -- requests ------------------------------------------------------------------------------------------

    def check(self, req: GenerateRequest) -> None:
        if req.id in self.active:
            raise EngineError("REQUEST_INVALID", f"request {req.id}: id is already running", field="id")
        if req.adapter is not None and req.adapter not in self.adapter_names:
            known = ", ".join(self.adapter_names) or "none"
            raise EngineError(
                "ADAPTER_UNKNOWN",
                f"request {req.id}: adapter: {req.adapter!r} is not loaded (loaded: {known})",
                hint="name an adapter from the plan's adapters, or null for the base model",
                field="adapter",
            )
        bad = [t for t in req.prompt_ids if t >= self.c.vocab_size]
        if bad:
            raise EngineError(
                "REQUEST_INVALID",
                f"request {req.id}: prompt_ids: {bad[:5]} are outside the vocabulary (size {self.c.vocab_size})",
                field="prompt_ids",
            )
        total = len(req.prompt_ids) + req.max_new_tokens
        if self.decoder is not None and total > self.max_model_len:
            raise EngineError(
                "REQUEST_TOO_LONG",
                f"request {req.id}: prompt_ids ({len(req.prompt_ids)} tokens) + max_new_tokens "
                f"({req.max_new_tokens}) = {total} tokens, more than max_model_len {self.max_model_len}",
                hint="shorten the prompt or lower max_new_tokens, or start generation with a larger "
                "max_model_len (TUNA_MAX_MODEL_LEN)",
                field="max_new_tokens",
            )

    def start(self, req: GenerateRequest) -> tuple[Sequence, int]:
        """Prefill a request's prompt into a free slot; returns the sequence and its first token."""
        self.check(req)
        if not self.free_slots:
            raise RuntimeError("no free slot")  # the caller admits only when one is free
        slot = self.free_slots.pop(0)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(req.seed if req.seed is not None else int(torch.randint(0, 2**62, (1,))))
        seq = Sequence(
            req, slot, self.adapter_names.index(req.adapter) if req.adapter else -1, gen, time.monotonic()
        )
        P = len(req.prompt_ids)
        ids = torch.tensor(req.prompt_ids, device=self.device)
        if self.decoder is None:
            seq.seen.update(req.prompt_ids)
            self.cache.ensure(P + req.max_new_tokens)
            logits = self.forward(
                ids[None],
                torch.arange(P, device=self.device)[None],
                torch.tensor([slot], device=self.device),
                [seq.adapter],
            )[0]
            seq.length = P
            self.active[req.id] = seq
            return seq, self._accept(seq, int(self.sample(logits, seq)))
        try:
            logits = self.decoder.prefill(ids, slot, seq.adapter + 1)
        except BaseException:
            self.free_slots.append(slot)
            self.free_slots.sort()
            raise
        seen = self.seen[slot]
        seen.zero_()
        seen[ids] = True
        seq.length = P
        self.active[req.id] = seq
        token = self.sample_tensor(logits, seq, seen)
        seen[token] = True
        return seq, self._accept(seq, int(token))

    def _accept(self, seq: Sequence, token: int) -> int:
        seq.generated.append(token)
        seq.seen.add(token)
        return token

    def step(self) -> list[tuple[Sequence, int]]:
        """One decode step for every active sequence (each feeds its last token)."""
        seqs = list(self.active.values())
        if not seqs:
            return []
        if self.decoder is None:
            return self._step_reference(seqs)
        n = max(s.slot for s in seqs) + 1
        ids, positions, adapters = [0] * n, [0] * n, [0] * n
        for s in seqs:
            # check() keeps this from happening; never write past the cache
            if s.length >= self.max_model_len:
                raise EngineError(
                    "REQUEST_TOO_LONG",
                    f"request {s.req.id}: position {s.length} is past max_model_len {self.max_model_len}",
                )
            ids[s.slot], positions[s.slot], adapters[s.slot] = s.next_input, s.length, s.adapter + 1
        logits, tokens = self.decoder.decode(ids, positions, adapters)
        special = [s for s in seqs if not self.plain_greedy(s.req)]
        if special:
            tokens = tokens.clone()  # the decoder's output may be a graph's static buffer
            for s in special:
                tokens[s.slot] = self.sample_tensor(logits[s.slot], s, self.seen[s.slot])
            if any(s.req.repetition_penalty != 1.0 for s in seqs):
                self.seen[torch.arange(tokens.shape[0], device=self.device), tokens] = True
        values = tokens.tolist()  # the step's one host sync
        if self.decoder.persistent is not None and self.decoder.persistent.error_count():
            # decode.Kernels.persistent: a program gave up waiting at a grid barrier, so this step's numbers are
            # wrong (its grid was not all resident). Never hand them out.
            raise EngineError(
                "INTERNAL",
                "decode kernel 'persistent': a grid barrier timed out (the kernel's programs were not all "
                "resident on the GPU), so the step's tokens are invalid",
                hint="unset TUNA_DECODE_KERNELS (or drop 'persistent' from it)",
            )
        out = []
        for s in seqs:
            s.length += 1
            out.append((s, self._accept(s, values[s.slot])))
        return out

    def _step_reference(self, seqs: list[Sequence]) -> list[tuple[Sequence, int]]:
        self.cache.ensure(max(s.length + 1 for s in seqs))
        ids = torch.tensor([[s.next_input] for s in seqs], device=self.device)
        positions = torch.tensor([[s.length] for s in seqs], device=self.device)
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        logits = self.forward(ids, positions, slots, [s.adapter for s in seqs])
        out = []
        for i, s in enumerate(seqs):
            s.length += 1
            out.append((s, self._accept(s, self.sample(logits[i], s))))
        return out

    def finish_reason(self, seq: Sequence) -> str | None:
        if seq.generated and seq.generated[-1] in seq.req.stop_ids:
            return "stop"
        if len(seq.generated) >= seq.req.max_new_tokens:
            return "length"
        return None

    def release(self, seq: Sequence) -> None:
        del self.active[seq.req.id]
        self.free_slots.append(seq.slot)
        self.free_slots.sort()

    def generate(self, reqs: list[GenerateRequest]) -> dict[str, list[int]]:
        """Run requests to completion (batched, in order of arrival); {id: generated ids}. For tests and scripts."""
        results: dict[str, list[int]] = {}
        pending = deque(reqs)
        while pending or self.active:
            while pending and self.free_slots:
                seq, _ = self.start(pending.popleft())
                if self.finish_reason(seq):
                    results[seq.req.id] = seq.generated
                    self.release(seq)
            for seq, _ in self.step():
                if self.finish_reason(seq):
                    results[seq.req.id] = seq.generated
                    self.release(seq)
        return results


# ---- loading and the stdin/stdout loop --------------------------------------------------------------------


def pick_device(device: str) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise EngineError(
                "NO_CUDA",
                'device: "cuda" was asked for, but torch sees no CUDA GPU',
                hint='use device "auto" or "cpu"',
            )
        return torch.device("cuda")
    return torch.device("cpu")


def load_for_generation(
    plan: GeneratePlan,
    max_model_len: int | None = None,
    mode: str | None = None,
    fused: bool | None = None,
    compile: bool | None = None,
) -> Engine:
    """The model, its adapters and an Engine. Each setting is the argument when given, else its env var
    (TUNA_MAX_MODEL_LEN, TUNA_GENERATE_MODE, TUNA_GENERATE_FUSED, TUNA_GENERATE_COMPILE) when set, else the
    plan's field, else the default (4096; graph on CUDA, eager on CPU; fused; compiled in graph mode)."""
    max_model_len = _plan_or_env(max_model_len, "TUNA_MAX_MODEL_LEN", plan.max_model_len)
    mode = _plan_or_env(mode, "TUNA_GENERATE_MODE", plan.mode)
    fused = _plan_or_env(fused, "TUNA_GENERATE_FUSED", plan.fused)
    compile = _plan_or_env(compile, "TUNA_GENERATE_COMPILE", plan.compile)
    device = pick_device(plan.device)
    kernels_from_env()  # a bad TUNA_DECODE_KERNELS fails here, before the model loads
    from .quant import read_quantization_config
    from .quant.convert import load_prequantized

    try:
        qcfg = read_quantization_config(plan.model.path)
    except FileNotFoundError:
        qcfg = None  # load_model reports the missing directory / config with its own error
    except ValueError as e:
        raise EngineError("UNSUPPORTED_QUANTIZATION", str(e)) from e
    if qcfg is None:
        model = load_model(plan.model.path, plan.model.dtype, device)
    else:
        model = build_model(model_config(plan.model.path), device, DTYPES[plan.model.dtype], None, None)
        missing, unexpected = load_prequantized(
            model,
            plan.model.path,
            compute_dtype=DTYPES[plan.model.dtype],
            strict=False,
            types=(lora_mod.Linear,),
        )
        if model.config.tie_word_embeddings:
            missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise EngineError(
                "MODEL_WEIGHTS_MISMATCH",
                f"{plan.model.path}: 4-bit checkpoint: missing {missing[:5]}, unexpected {unexpected[:5]}",
            )
    adapters = {name: load_adapter(model, name, d) for name, d in plan.adapters.items()}
    return Engine(model, adapters, plan.max_batch_size, max_model_len, mode, fused, compile)


def _reader(stream: TextIO, q: queue.Queue[str | None]) -> None:
    for line in stream:
        if line.strip():
            q.put(line)
    q.put(None)


def serve(plan: GeneratePlan, stdin: TextIO | None = None) -> None:
    """The `generate` command: load, emit `ready`, serve requests from stdin until it closes."""
    engine = load_for_generation(plan)
    emit({"event": "ready", "device": str(engine.device), "dtype": plan.model.dtype})
    log(
        f"generate: ready on {engine.device} ({engine.mode}, max_model_len {engine.max_model_len}); "
        f"adapters: {', '.join(engine.adapter_names) or 'none'}"
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(stdin or sys.stdin, lines), daemon=True).start()
    pending: deque[GenerateRequest] = deque()
    eof = False

    def finished(seq: Sequence, reason: str) -> None:
        emit(
            {
                "event": "finished",
                "id": seq.req.id,
                "reason": reason,
                "prompt_tokens": len(seq.req.prompt_ids),
                "generated_tokens": len(seq.generated),
                "elapsed_s": round(time.monotonic() - seq.started, 4),
            }
        )
        engine.release(seq)

    def handle(line: str) -> None:
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            emit(
                {
                    "event": "error",
                    "code": "REQUEST_INVALID",
                    "message": f"stdin: not valid JSON ({e.msg}): {line[:80]!r}",
                }
            )
            return
        rid = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and raw.get("type") == "cancel":
            for i, r in enumerate(pending):
                if r.id == rid:
                    del pending[i]
                    emit(
                        {
                            "event": "finished",
                            "id": r.id,
                            "reason": "cancelled",
                            "prompt_tokens": len(r.prompt_ids),
                            "generated_tokens": 0,
                            "elapsed_s": 0.0,
                        }
                    )
                    return
            if rid in engine.active:
                finished(engine.active[rid], "cancelled")
            return  # an id that already finished: nothing to do
        try:
            req = parse_generate_request(raw)
            if any(r.id == req.id for r in pending):
                raise EngineError("REQUEST_INVALID", f"request {req.id}: id is already queued", field="id")
            engine.check(req)
            pending.append(req)
        except EngineError as e:
            ev = e.event()
            if isinstance(rid, str):
                ev["id"] = rid
            emit(ev)

    while True:
        # Take every line that is waiting; block only when there is nothing to compute.
        while True:
            try:
                item = lines.get(block=not (engine.active or pending) and not eof)
            except queue.Empty:
                break
            if item is None:
                eof = True
                break
            handle(item)
        if eof and not engine.active and not pending:
            return
        while pending and engine.free_slots:
            req = pending.popleft()
            try:
                seq, token = engine.start(req)
            except EngineError as e:
                emit({**e.event(), "id": req.id})
                continue
            emit({"event": "token", "id": req.id, "token_ids": [token]})
            if reason := engine.finish_reason(seq):
                finished(seq, reason)
        for seq, token in engine.step():
            emit({"event": "token", "id": seq.req.id, "token_ids": [token]})
            if reason := engine.finish_reason(seq):
                finished(seq, reason)


def requests_from_dicts(items: list[dict[str, Any]]) -> list[GenerateRequest]:
    return [parse_generate_request(x) for x in items]
