"""The generic backend: any transformers `AutoModelForCausalLM` with peft LoRA, behind our model's interface.

For architectures without their own file here (GPT-NeoX, Phi, Gemma, Mistral, ...). The trainer sees the same
object as llama.CausalLM: `forward(input_ids, position_ids, sample_ids) -> hidden [B, T, C]`, `output_weight`
(+ `output_bias`, `logit_scale`, `logit_softcap` where the architecture has them), so the loss is ours
(token-weighted, chunked, only at trained targets), and the adapter is saved in peft's layout with the module
names peft itself resolved.

Packing. Models whose mask comes from transformers' `masking_utils` (every current architecture) see packed
samples through `position_ids` alone: restarting positions mark sample boundaries and the mask becomes
block-diagonal (with flash-attention 2 on CUDA, the varlen kernel is used the same way). Others get an explicit
per-sample 4-D additive mask built from `sample_ids`, [B, 1, T, T].
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EngineError
from ..protocol import LoraSpec


class GenericCausalLM(nn.Module):
    def __init__(self, hf: nn.Module, packing: str) -> None:
        super().__init__()
        self.hf = hf
        self.packing = packing  # "position_ids" | "mask"
        cfg = hf.config
        self.config = cfg
        self.quantization: dict[str, Any] | None = None
        # Logit post-processing some architectures apply after lm_head (applied in fp32 by loss.py).
        self.logit_softcap: float | None = getattr(cfg, "final_logit_softcapping", None) or None
        scale = 1.0
        if getattr(cfg, "logit_scale", None):  # Cohere: logits * logit_scale
            scale *= float(cfg.logit_scale)
        if getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
            scale /= float(cfg.logits_scaling)
        self.logit_scale = scale
        self.adapter_target_modules: list[str] = sorted(
            {n.rsplit(".", 1)[-1] for n, m in hf.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
        )
        self._checkpointing = False

    @property
    def gradient_checkpointing(self) -> bool:
        return self._checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self._checkpointing = on
        if on:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif getattr(self.hf, "is_gradient_checkpointing", False):
            self.hf.gradient_checkpointing_disable()

    @property
    def output_weight(self) -> torch.Tensor:
        return self.hf.get_output_embeddings().weight

    @property
    def output_bias(self) -> torch.Tensor | None:
        return getattr(self.hf.get_output_embeddings(), "bias", None)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, sample_ids: torch.Tensor
    ) -> torch.Tensor:
        """[B, T] ids, positions (restarting per sample) and sample ids → last hidden states [B, T, C]."""
        mask = None
        if self.packing == "mask":
            dtype = self.output_weight.dtype
            T = input_ids.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            allowed = (sample_ids[:, :, None] == sample_ids[:, None, :]) & causal
            mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
            mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # [B, 1, T, T]
        out = self.hf.base_model(
            input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False
        )
        return out[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        z = self.hf.get_output_embeddings()(hidden).float() * self.logit_scale
        if self.logit_softcap is not None:
            z = self.logit_softcap * torch.tanh(z / self.logit_softcap)
        return z

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Adapter parameters under peft's saved names, without the `base_model.model.` prefix."""
        out = {}
        for name, p in self.hf.named_parameters():
            if ".lora_" not in name:
                continue
            key = name.replace(".default.", ".").replace(".default", "")
            if key.endswith(".lora_magnitude_vector.weight"):
                key = key[: -len(".weight")]
            out[key] = p
        return out


def packing_mode(hf: nn.Module) -> str:
    """ "position_ids" where the model's mask is built by transformers' masking_utils (it detects packed
    samples from restarting positions), else "mask"."""
    source = inspect.getsource(inspect.getmodule(type(hf.base_model)))  # type: ignore[arg-type]
    return "position_ids" if "masking_utils" in source else "mask"


def attn_implementation(hf_cls: Any, device: torch.device, dtype: torch.dtype) -> str:
    if (
        device.type == "cuda"
        and dtype in (torch.bfloat16, torch.float16)
        and getattr(hf_cls, "_supports_flash_attn", False)
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return "sdpa" if getattr(hf_cls, "_supports_sdpa", False) else "eager"


def load_generic(
    model_dir: str,
    dtype: torch.dtype,
    device: torch.device,
    lora: LoraSpec | None,
    lora_layers: tuple[int, ...] | None,
    seed: int,
    why_not_own: str,
) -> GenericCausalLM:
    """Load `model_dir` with transformers and put peft LoRA on it. Anything that fails is
    UNSUPPORTED_ARCHITECTURE naming both attempts (our model code and this fallback)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(model_dir) / "config.json"

    def fail(reason: str) -> EngineError:
        return EngineError(
            "UNSUPPORTED_ARCHITECTURE",
            f"{why_not_own}; the generic transformers backend (AutoModelForCausalLM + peft) was tried as the "
            f"fallback and failed: {reason}",
            hint="use a Qwen3, Qwen2/2.5 or Llama 3.x model directory, or a causal LM that transformers "
            "can load (AutoModelForCausalLM)",
            field="model_type",
        )

    try:
        cfg = AutoConfig.from_pretrained(model_dir)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise fail(f"{path}: {type(e).__name__}: {first}") from e
    try:
        hf_cls = AutoModelForCausalLM._model_mapping[type(cfg)]
    except KeyError as e:
        raise fail(f"{path}: {type(cfg).__name__} has no causal-LM class in transformers") from e
    archs = getattr(cfg, "architectures", None) or []
    if archs and archs[0] != hf_cls.__name__:
        # config.json names another class (e.g. Gemma3ForCausalLM for a model_type whose auto class is the
        # multimodal one): use it when transformers has it and it is a causal LM.
        import transformers

        named = getattr(transformers, archs[0], None) if archs[0].endswith("ForCausalLM") else None
        if named is None:
            raise fail(f"{path}: architectures {archs} is not a causal-LM class of transformers")
        hf_cls = named
    try:
        hf, info = hf_cls.from_pretrained(
            model_dir,
            dtype=dtype,
            attn_implementation=attn_implementation(hf_cls, device, dtype),
            output_loading_info=True,
        )
    except Exception as e:  # transformers raises many kinds on a config it cannot build; all mean "no"
        first = str(e).splitlines()[0] if str(e) else ""
        raise fail(f"{model_dir}: {hf_cls.__name__}.from_pretrained: {type(e).__name__}: {first}") from e
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or unexpected or mismatched:
        raise EngineError(
            "MODEL_WEIGHTS_MISMATCH",
            f"{model_dir}: the checkpoint does not fit {hf_cls.__name__} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, mismatched {[m[0] if isinstance(m, tuple) else m for m in mismatched][:3]})",
            hint="config.json and the safetensors files come from different models",
        )
    hf = hf.to(device)
    if lora is not None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = list(lora.target_modules)
        peft_cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            use_rslora=lora.use_rslora,
            use_dora=lora.use_dora,
            target_modules="all-linear" if "all-linear" in targets else targets,
            layers_to_transform=list(lora_layers) if lora_layers is not None else None,
        )
        torch.manual_seed(seed)
        try:
            hf = inject_adapter_in_model(peft_cfg, hf)
        except ValueError as e:
            raise EngineError(
                "PLAN_INVALID",
                f"method.lora.target_modules: {targets} on {hf_cls.__name__}: {str(e).splitlines()[0]}",
                hint='use ["all-linear"] for an architecture whose projections have other names',
                field="method.lora.target_modules",
            ) from e
        for name, p in hf.named_parameters():
            if ".lora_" in name:
                p.data = p.data.float()  # adapter weights in fp32, as in our own models (peft autocast)
    model = GenericCausalLM(hf, packing_mode(hf))
    return model
