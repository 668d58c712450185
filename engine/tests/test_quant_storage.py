"""NF4 codes held as bf16-typed bytes (Linear4bit.use_float_storage, used under FSDP2): same weight, same
checkpoint bytes, and a dtype cast of the module leaves the bytes alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuna_engine.quant import Linear4bit


@pytest.mark.parametrize("double_quant", [True, False])
def test_float_storage_keeps_weight_and_checkpoint_bytes(double_quant: bool) -> None:
    torch.manual_seed(0)
    q = Linear4bit.from_linear(nn.Linear(128, 96, bias=True).to(torch.bfloat16), double_quant=double_quant)
    w0 = q.dequantize(torch.float32)
    sd0 = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    y0 = q(x)

    q.use_float_storage(torch.bfloat16)
    assert q.weight.dtype == torch.bfloat16 and q.weight.numel() * 2 == sd0["weight"].numel()
    if double_quant:
        assert q.absmax.dtype == torch.bfloat16
    assert torch.equal(q.dequantize(torch.float32), w0)
    assert torch.equal(q(x), y0)
    sd1 = q.state_dict()
    assert sd1.keys() == sd0.keys()
    for k, v in sd0.items():
        got = sd1[k]
        if k == "weight":
            got = got.reshape(-1).view(torch.uint8).reshape(v.shape)  # bnb reads any quant storage dtype
        assert got.dtype == v.dtype and torch.equal(got, v), k

    q.to(torch.float32)  # a dtype cast must not convert the bytes numerically
    assert torch.equal(q.dequantize(torch.float32), w0)
