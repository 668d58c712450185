"""4-bit NormalFloat (NF4) weights in bitsandbytes' exact layout, so `*-bnb-4bit` checkpoints load unchanged.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) stores a frozen weight W as:

- codes: W flattened row-major, cut into blocks of 64; each value divided by its block's absmax and replaced
  by the index (0..15) of the nearest NF4 level. Two codes per byte, the FIRST value in the HIGH nibble
  (`byte = q[2i] << 4 | q[2i+1]`), stored as uint8 of shape [ceil(n / 2), 1].
- absmax: one float per block. With double quantization (section 3, "Double Quantization") the absmax values
  are themselves quantized: offset = mean(absmax); (absmax - offset) is 8-bit blockwise-quantized with the
  signed dynamic map in blocks of 256 -> `absmax` uint8, `nested_absmax` float32 per 256 blocks,
  `nested_quant_map` = the 256-entry table, `nested_offset` a float in the quant-state JSON.
- dequantized value = NF4[code] * absmax, computed in float32 then cast to the stored dtype.

A checkpoint holds, per quantized linear `<name>`: `<name>.weight` (packed uint8), `.weight.absmax`,
`.weight.quant_map`, `.weight.nested_absmax`, `.weight.nested_quant_map`, and
`.weight.quant_state.bitsandbytes__nf4` (uint8 bytes of a JSON dict: quant_type, blocksize, dtype, shape,
nested_blocksize, nested_dtype, nested_offset). See docs/qlora.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from .blockwise import dequantize_blockwise, dynamic_map, quantize_blockwise

# The 16 NF4 levels: quantiles of N(0, 1) normalised to [-1, 1], with an exact 0 (QLoRA appendix E). These
# are bitsandbytes' float32 values, written out so the table is data, not a computation that could drift.
NF4_LEVELS: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

# Decision thresholds between neighbouring levels, as the float literals of bitsandbytes' CUDA `dQuantizeNF4`
# (a value x gets the number of thresholds it is strictly greater than). They are the midpoints of NF4_LEVELS.
NF4_THRESHOLDS: tuple[float, ...] = (
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
)

DEFAULT_BLOCKSIZE = 64
DEFAULT_NESTED_BLOCKSIZE = 256
QUANT_STATE_KEY = "quant_state.bitsandbytes__nf4"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def nf4_code(device: torch.device | str | None = None) -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}; expected one of {sorted(_DTYPES)}")


def parse_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


# ---- the 4-bit codes ----------------------------------------------------------------------------------------


def quantize_nf4(w: torch.Tensor, blocksize: int = DEFAULT_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """w (any shape, float) -> (packed uint8 [ceil(n/2), 1], absmax float32 [ceil(n / blocksize)])."""
    if not w.is_floating_point():
        raise ValueError(f"quantize_nf4 needs a floating-point tensor, got {w.dtype}")
    flat = w.reshape(-1).float()
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.nn.functional.pad(flat, (0, blocks * blocksize - n)).view(blocks, blocksize)
    absmax = padded.abs().amax(dim=1)
    # x * (1 / absmax) like the CUDA kernel; an all-zero block gives NaN there, which its comparison tree
    # sends to code 0 (we do the same, so such blocks match GPU-made checkpoints byte for byte).
    scaled = (padded * (1.0 / absmax).unsqueeze(1)).clamp(-1, 1).view(-1)
    # An odd count leaves a spare low nibble in the last byte: it holds the code of 0.0 (7), as the kernels
    # pad a partial block with zeros.
    scaled = scaled[: n + n % 2]
    thresholds = torch.tensor(NF4_THRESHOLDS, dtype=torch.float32, device=w.device)
    q = torch.bucketize(
        scaled, thresholds, out_int32=True
    )  # counts the thresholds x is > than, like the kernel
    q = torch.where(scaled.isnan(), 0, q).to(torch.uint8)
    packed = (q[0::2] << 4) | q[1::2]
    return packed.unsqueeze(1), absmax


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    blocksize: int = DEFAULT_BLOCKSIZE,
    dtype: torch.dtype = torch.bfloat16,
    code: torch.Tensor | None = None,
) -> torch.Tensor:
    """The PyTorch reference dequantizer (quant/triton_nf4.py is the fast CUDA one): NF4[q] * absmax."""
    n = math.prod(shape)
    if packed.numel() * 2 < n:
        raise ValueError(
            f"{packed.numel()} packed bytes hold {packed.numel() * 2} codes, shape {tuple(shape)} needs {n}"
        )
    code = nf4_code(packed.device) if code is None else code.to(packed.device, torch.float32)
    bytes_ = packed.reshape(-1)
    q = torch.stack([bytes_ >> 4, bytes_ & 0xF], dim=1).view(-1)[:n]
    return dequantize_blockwise(q, absmax, code, blocksize).view(shape).to(dtype)


# ---- whole quantized weights, with double quantization -----------------------------------------------------


@dataclass
class NF4Weight:
    """One quantized weight: the tensors a bnb checkpoint stores, plus the JSON quant-state fields."""

    packed: torch.Tensor  # uint8 [ceil(n/2), 1]
    absmax: torch.Tensor  # uint8 [blocks] when double-quantized, else float32 [blocks]
    quant_map: torch.Tensor  # float32 [16]
    shape: tuple[int, ...]
    dtype: torch.dtype  # dtype the weight dequantizes to
    blocksize: int = DEFAULT_BLOCKSIZE
    nested_absmax: torch.Tensor | None = None  # float32 [ceil(blocks / nested_blocksize)]
    nested_quant_map: torch.Tensor | None = None  # float32 [256]
    nested_offset: float | None = None
    nested_blocksize: int = DEFAULT_NESTED_BLOCKSIZE

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    def absmax_float(self) -> torch.Tensor:
        return decode_absmax(
            self.absmax, self.nested_absmax, self.nested_quant_map, self.nested_offset, self.nested_blocksize
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_nf4(
            self.packed, self.absmax_float(), self.shape, self.blocksize, dtype or self.dtype, self.quant_map
        )

    def state_json(self) -> dict[str, object]:
        d: dict[str, object] = {
            "quant_type": "nf4",
            "blocksize": self.blocksize,
            "dtype": dtype_name(self.dtype),
            "shape": list(self.shape),
        }
        if self.double_quant:
            d.update(
                nested_blocksize=self.nested_blocksize,
                nested_dtype="float32",
                nested_offset=self.nested_offset,
            )
        return d

    def to_bnb_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The checkpoint tensors, keyed as transformers + bitsandbytes save them (`prefix` e.g. "x.weight")."""
        p = f"{prefix}." if prefix else ""
        out = {prefix or "weight": self.packed, f"{p}absmax": self.absmax, f"{p}quant_map": self.quant_map}
        if self.double_quant:
            assert self.nested_absmax is not None and self.nested_quant_map is not None
            out[f"{p}nested_absmax"] = self.nested_absmax
            out[f"{p}nested_quant_map"] = self.nested_quant_map
        out[f"{p}{QUANT_STATE_KEY}"] = pack_quant_state(self.state_json())
        return out


def decode_absmax(
    absmax: torch.Tensor,
    nested_absmax: torch.Tensor | None,
    nested_quant_map: torch.Tensor | None,
    nested_offset: float | torch.Tensor | None,
    nested_blocksize: int = DEFAULT_NESTED_BLOCKSIZE,
) -> torch.Tensor:
    """float32 absmax per 64-block; undoes double quantization: code[q] * nested_absmax + offset."""
    if nested_absmax is None:
        return absmax.float()
    if nested_quant_map is None or nested_offset is None:
        raise ValueError("double-quantized absmax needs nested_quant_map and nested_offset")
    decoded = dequantize_blockwise(absmax, nested_absmax, nested_quant_map, nested_blocksize)
    offset = torch.as_tensor(nested_offset, dtype=torch.float32, device=decoded.device)
    return decoded + offset


def quantize_weight(
    w: torch.Tensor,
    blocksize: int = DEFAULT_BLOCKSIZE,
    double_quant: bool = True,
    nested_blocksize: int = DEFAULT_NESTED_BLOCKSIZE,
) -> NF4Weight:
    """Quantize a float weight exactly as bitsandbytes' `quantize_4bit(..., quant_type="nf4")` does."""
    packed, absmax = quantize_nf4(w, blocksize)
    weight = NF4Weight(
        packed=packed,
        absmax=absmax,
        quant_map=nf4_code(w.device),
        shape=tuple(w.shape),
        dtype=w.dtype,
        blocksize=blocksize,
        nested_blocksize=nested_blocksize,
    )
    if double_quant:
        offset = absmax.mean()
        nested_map = dynamic_map(signed=True).to(w.device)
        weight.absmax, weight.nested_absmax = quantize_blockwise(
            absmax - offset, nested_map, nested_blocksize
        )
        weight.nested_quant_map = nested_map
        weight.nested_offset = offset.item()
    return weight


# ---- the quant-state JSON ----------------------------------------------------------------------------------


def pack_quant_state(d: dict[str, object]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(d).encode("utf-8")), dtype=torch.uint8)


def unpack_quant_state(t: torch.Tensor) -> dict[str, object]:
    return json.loads(bytes(t.to("cpu", torch.uint8).tolist()).decode("utf-8"))


def nf4_weight_from_bnb(tensors: dict[str, torch.Tensor], where: str = "weight") -> NF4Weight:
    """Build an NF4Weight from one linear's checkpoint tensors, keyed without the `<name>.weight.` prefix
    ("weight" for the packed codes, "absmax", "quant_map", ..., QUANT_STATE_KEY). `where` names the tensor in
    error messages."""

    def need(key: str) -> torch.Tensor:
        if key not in tensors:
            raise ValueError(f"{where}: missing `{key}` (keys present: {sorted(tensors)})")
        return tensors[key]

    state_keys = [k for k in tensors if k.startswith("quant_state.")]
    if state_keys != [QUANT_STATE_KEY]:
        raise ValueError(f"{where}: expected exactly one `{QUANT_STATE_KEY}` entry, found {state_keys}")
    state = unpack_quant_state(tensors[QUANT_STATE_KEY])
    if state.get("quant_type") != "nf4":
        raise ValueError(f"{where}: quant_type {state.get('quant_type')!r} is not supported; expected 'nf4'")
    shape = tuple(int(s) for s in state["shape"])  # type: ignore[union-attr]
    blocksize = int(state["blocksize"])  # type: ignore[arg-type]
    n = math.prod(shape)
    packed = need("weight")
    if packed.dtype != torch.uint8 or packed.numel() != -(-n // 2):
        raise ValueError(
            f"{where}: packed weight is {packed.dtype} with {packed.numel()} bytes; shape {list(shape)} "
            f"needs uint8 with {-(-n // 2)} bytes"
        )
    blocks = -(-n // blocksize)
    absmax = need("absmax")
    if absmax.numel() != blocks:
        raise ValueError(
            f"{where}: absmax has {absmax.numel()} values, expected {blocks} (blocksize {blocksize})"
        )
    weight = NF4Weight(
        packed=packed.view(-1, 1),
        absmax=absmax,
        quant_map=need("quant_map").float(),
        shape=shape,
        dtype=parse_dtype(str(state["dtype"])),
        blocksize=blocksize,
    )
    if "nested_absmax" in tensors or "nested_offset" in state:
        if absmax.dtype != torch.uint8:
            raise ValueError(f"{where}: double-quantized absmax must be uint8, got {absmax.dtype}")
        weight.nested_blocksize = int(state["nested_blocksize"])  # type: ignore[arg-type]
        weight.nested_absmax = need("nested_absmax").float()
        weight.nested_quant_map = need("nested_quant_map").float()
        weight.nested_offset = float(state["nested_offset"])  # type: ignore[arg-type]
        want = -(-blocks // weight.nested_blocksize)
        if weight.nested_absmax.numel() != want:
            raise ValueError(
                f"{where}: nested_absmax has {weight.nested_absmax.numel()} values, expected {want}"
            )
    else:
        weight.absmax = absmax.float()
    return weight
