"""QLoRA's 4-bit NormalFloat weights in bitsandbytes' layout (see docs/qlora.md)."""

from .blockwise import dequantize_blockwise, dynamic_map, quantize_blockwise
from .convert import (
    BnbQuantConfig,
    linear4bit_from_checkpoint,
    load_prequantized,
    quantize_model,
    read_quantization_config,
)
from .linear4bit import Linear4bit
from .nf4 import NF4_LEVELS, NF4Weight, dequantize_nf4, nf4_weight_from_bnb, quantize_nf4, quantize_weight

__all__ = [
    "NF4_LEVELS",
    "BnbQuantConfig",
    "Linear4bit",
    "NF4Weight",
    "dequantize_blockwise",
    "dequantize_nf4",
    "dynamic_map",
    "linear4bit_from_checkpoint",
    "load_prequantized",
    "nf4_weight_from_bnb",
    "quantize_blockwise",
    "quantize_model",
    "quantize_nf4",
    "quantize_weight",
    "read_quantization_config",
]
