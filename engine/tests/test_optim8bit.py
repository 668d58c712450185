"""AdamW8bit: follows torch's fp32 AdamW closely, checkpoints exactly, and holds ~2 bytes of state per value."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from tuna_engine.optim8bit import AdamW8bit
from tuna_engine.quant.blockwise import dynamic_map


def _problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small regression MLP; its first weight (64*128 values) gets 8-bit state, the biases fp32 state."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 1))
    x = torch.randn(512, 128)
    y = torch.sin(x[:, :4].sum(1, keepdim=True))
    return model, x, y


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> list[float]:
    losses = []
    for i in range(steps):
        batch = slice((i * 64) % 512, (i * 64) % 512 + 64)
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tracks_fp32_adamw():
    model8, x, y = _problem()
    model32 = copy.deepcopy(model8)
    kw = dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt8 = AdamW8bit(model8.parameters(), **kw)
    opt32 = torch.optim.AdamW(model32.parameters(), **kw)
    assert "exp_avg_codes" in opt8._init_state(model8[0].weight)  # the big weight really is 8-bit
    opt8.state.clear()
    l8 = _train(model8, opt8, x, y, 100)
    l32 = _train(model32, opt32, x, y, 100)
    assert l8[-1] < 0.5 * l8[0]  # it learns
    # Same loss curve within a few percent, and the weights moved the same way.
    for a, b in zip(l8[::10], l32[::10], strict=True):
        assert abs(a - b) <= 0.05 * b + 1e-3, (a, b)
    w8, w32, w0 = model8[0].weight, model32[0].weight, _problem()[0][0].weight
    moved8, moved32 = (w8 - w0).flatten(), (w32 - w0).flatten()
    cos = torch.nn.functional.cosine_similarity(moved8, moved32, dim=0)
    assert cos > 0.98, cos
    assert (moved8 - moved32).norm() < 0.2 * moved32.norm()


def test_first_step_is_exactly_adamw():
    """Step 1 uses the unquantized moments, so the update equals torch's AdamW (up to float rounding)."""
    torch.manual_seed(1)
    p8 = torch.randn(100, 100, requires_grad=True)
    p32 = p8.detach().clone().requires_grad_()
    g = torch.randn(100, 100)
    p8.grad, p32.grad = g.clone(), g.clone()
    AdamW8bit([p8], lr=1e-2, weight_decay=0.1).step()
    torch.optim.AdamW([p32], lr=1e-2, weight_decay=0.1).step()
    torch.testing.assert_close(p8, p32, rtol=0, atol=1e-6)


def test_states_are_blockwise_quantized_with_the_dynamic_maps():
    torch.manual_seed(2)
    p = torch.randn(3000, 3, requires_grad=True)  # 9000 values: 5 blocks of 2048, the last partial
    opt = AdamW8bit([p], lr=1e-3, betas=(0.5, 0.75))
    g = torch.randn(3000, 3)
    g[:100] *= 1000  # an outlier region only spoils the precision of its own block
    p.grad = g
    opt.step()
    s = opt.state[p]
    assert s["exp_avg_codes"].dtype == torch.uint8 and s["exp_avg_codes"].shape == p.shape
    assert s["exp_avg_absmax"].shape == (5,) and s["exp_avg_sq_absmax"].shape == (5,)
    m, v = (0.5 * g).flatten(), (0.25 * g * g).flatten()
    for name, exact, signed in (("exp_avg", m, True), ("exp_avg_sq", v, False)):
        code = dynamic_map(signed)
        absmax = s[f"{name}_absmax"]
        assert torch.equal(
            absmax, torch.nn.functional.pad(exact.abs(), (0, 5 * 2048 - 9000)).view(5, 2048).amax(1)
        )
        decoded = code[s[f"{name}_codes"].flatten().long()] * absmax.repeat_interleave(2048)[:9000]
        rel = (decoded - exact).abs() / absmax.repeat_interleave(2048)[:9000]
        assert rel.max() < 0.05  # the dynamic map's widest gap near 1 is ~0.03 of the block's absmax
        # relative precision in the blocks without outliers
        clean = slice(2048, 9000)
        big = exact[clean].abs() > 0.01 * absmax.repeat_interleave(2048)[:9000][clean]
        assert ((decoded - exact)[clean][big].abs() / exact[clean][big].abs()).median() < 0.02


def test_state_dict_round_trip_resumes_exactly():
    model, x, y = _problem(3)
    model = model.to(torch.bfloat16)
    x, y = x.to(torch.bfloat16), y.to(torch.bfloat16)
    opt = AdamW8bit(model.parameters(), lr=1e-3)
    _train(model, opt, x, y, 5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed = _problem(3)[0].to(torch.bfloat16)
    resumed.load_state_dict(saved["model"])
    opt2 = AdamW8bit(resumed.parameters(), lr=1e-3)
    opt2.load_state_dict(saved["opt"])
    s = opt2.state[resumed[0].weight]
    assert s["exp_avg_absmax"].dtype == torch.float32  # not cast to the bf16 parameter's dtype
    assert opt2.state[resumed[0].bias]["exp_avg"].dtype == torch.float32
    for key, t in opt.state[model[0].weight].items():
        assert torch.equal(s[key], t), key
    a = _train(model, opt, x, y, 5)
    b = _train(resumed, opt2, x, y, 5)
    assert a == b
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_is_about_two_bytes_per_parameter():
    torch.manual_seed(4)
    params = [nn.Parameter(torch.randn(1024, 1024)), nn.Parameter(torch.randn(4096, 300))]
    n = sum(p.numel() for p in params)
    opt = AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    per_param = (opt.state_bytes() - 4 * len(params)) / n  # minus the float32 step counters
    assert 2.0 < per_param < 2.01, per_param
    ref = torch.optim.AdamW(params, lr=1e-3)
    ref.step()
    ref_bytes = sum(t.numel() * t.element_size() for s in ref.state.values() for t in s.values())
    assert ref_bytes / n > 7.9  # fp32 AdamW: 8 bytes per parameter


def test_small_parameters_keep_fp32_state_and_match_adamw():
    torch.manual_seed(5)
    p8 = torch.randn(10, 10, requires_grad=True)
    p32 = p8.detach().clone().requires_grad_()
    o8, o32 = AdamW8bit([p8], lr=1e-2), torch.optim.AdamW([p32], lr=1e-2)
    for _ in range(20):
        g = torch.randn(10, 10)
        p8.grad, p32.grad = g.clone(), g.clone()
        o8.step()
        o32.step()
    assert set(o8.state[p8]) == {"step", "exp_avg", "exp_avg_sq"}
    torch.testing.assert_close(p8, p32, rtol=0, atol=1e-6)


def test_first_step_matches_bitsandbytes():
    try:
        import bitsandbytes as bnb
    except Exception as e:  # pragma: no cover
        pytest.skip(f"bitsandbytes does not import here: {e!r}")
    torch.manual_seed(6)
    p8 = torch.randn(64, 100, requires_grad=True)
    pb = p8.detach().clone().requires_grad_()
    ours = AdamW8bit([p8], lr=1e-2, weight_decay=0.1, blocksize=256)  # bnb 0.45+ uses 256-value blocks
    theirs = bnb.optim.AdamW8bit([pb], lr=1e-2, weight_decay=0.1)
    g = torch.randn(64, 100)
    p8.grad, pb.grad = g.clone(), g.clone()
    ours.step()
    theirs.step()
    assert torch.equal(p8, pb)
    assert torch.equal(ours.state[p8]["exp_avg_absmax"], theirs.state[pb]["absmax1"])
    assert torch.equal(ours.state[p8]["exp_avg_sq_absmax"], theirs.state[pb]["absmax2"])
    assert torch.equal(dynamic_map(True), theirs.state[pb]["qmap1"])
    assert torch.equal(dynamic_map(False), theirs.state[pb]["qmap2"])
    # (The codes themselves differ in places: bitsandbytes' CPU quantizer does not always pick the nearest
    # code of the unsigned map; ours does, see test_states_are_blockwise_quantized_with_the_dynamic_maps.)
