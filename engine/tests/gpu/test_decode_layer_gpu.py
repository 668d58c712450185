"""The persistent decode-layer kernel (kernels/decode_layer.py) on a GPU: ONE launch of all phases with grid
barriers, on Qwen3-0.6B and Qwen3-8B layer shapes at batch 16 (random weights, bf16).

- Four consecutive decode steps (every row's position + 0..3, row 0 starting at 0, the last row ending at the last
  cache position) equal eager decode._decode_layer (its Triton decode attention) within bf16 rounding, the caches
  carried from step to step by each side: new k/v at pos[b] close, every other cache entry untouched.
- The one launch equals the phase-per-launch form bit for bit (the reductions are in a fixed order, so any
  difference is a barrier or memory-ordering fault), and the error flag stays 0 (every program passed every
  barrier: the grid was co-resident).
- Inside a CUDA graph (36 launches, as a decode step runs them layer after layer), replayed with new positions and
  inputs: the replay equals eager calls bit for bit; the barrier counter grew by exactly 4·P per launch.

    PYTHONPATH=engine python -m pytest engine/tests/gpu/test_decode_layer_gpu.py -q
"""

from __future__ import annotations

import pytest
import torch
from test_decode_layer import compare, kernel, make_case, reference

from tuna_engine.kernels.decode_layer import BARRIERS, PersistentState, decode_layer_persistent

pytestmark = pytest.mark.gpu

# (B, C, H, KV, D, I, capacity, slots)
SHAPES = {
    "qwen3-0.6b": (16, 1024, 16, 8, 128, 3072, 512, 16),
    "qwen3-8b": (16, 4096, 32, 8, 128, 12288, 512, 16),
}
BF16_LIMIT = 2e-2  # max |kernel − eager| over max |eager|: about two bf16 steps (2^-8) at the largest value


def _step_inputs(case: dict, step: int, seed: int) -> dict:
    """The case moved to the next decode step: each row one position further (capped at the capacity), new x
    and d."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    cap = case["ck"].shape[2]
    x = torch.randn(case["x"].shape, generator=g, device="cuda").to(case["x"].dtype)
    d = torch.randn(case["d"].shape, generator=g, device="cuda").to(case["d"].dtype)
    pos = torch.clamp(case["pos0"] + step, max=cap - 1)
    return {**case, "x": x, "d": d, "pos": pos}


@pytest.mark.parametrize("model", list(SHAPES))
def test_one_launch_equals_decode_layer_over_steps(model):
    shape = SHAPES[model]
    case = make_case(shape, torch.bfloat16, seed=0, device="cuda")
    cap = shape[6]
    case["pos0"] = case["pos"].clone()
    case["pos0"][-1] = cap - 4  # the last row ends at the last position
    state = PersistentState("cuda")
    ref_k, ref_v = case["ck"].clone(), case["cv"].clone()
    ker_k, ker_v = case["ck"].clone(), case["cv"].clone()
    phase_k, phase_v = case["ck"].clone(), case["cv"].clone()
    for step in range(4):
        s = _step_inputs(case, step, seed=step + 1)
        want = reference({**s, "ck": ref_k, "cv": ref_v})
        got = kernel({**s, "ck": ker_k, "cv": ker_v}, state, one_launch=True)
        per_phase = kernel({**s, "ck": phase_k, "cv": phase_v}, state, one_launch=False)
        torch.cuda.synchronize()
        assert state.error_count() == 0, (model, step)
        for a, b, name in zip(got, per_phase, ("x2", "out", "k cache", "v cache"), strict=True):
            assert torch.equal(a, b), (model, step, name, "one launch differs from the phase-per-launch form")
        err = compare({**s, "ck": ker_k, "cv": ker_v}, got, want)
        assert err["untouched"] == 0, (model, step, err)
        for key in ("x2", "out", "k_new", "v_new"):
            assert err[key] < BF16_LIMIT, (model, step, key, err)
        ref_k, ref_v, ker_k, ker_v, phase_k, phase_v = (
            want[2],
            want[3],
            got[2],
            got[3],
            per_phase[2],
            per_phase[3],
        )
    assert torch.equal(ker_k, phase_k) and torch.equal(ker_v, phase_v)


@pytest.mark.parametrize("model", list(SHAPES))
def test_cuda_graph_of_layers_replays_with_new_positions(model):
    """36 launches (one per 'layer', each with its own caches) captured once; every replay with new inputs and
    positions equals the same calls made eagerly, bit for bit, and the flag stays 0."""
    shape = SHAPES[model]
    layers = 36 if model == "qwen3-0.6b" else 8  # 8B: 8 layers' caches and weights are enough (memory)
    case = make_case(shape, torch.bfloat16, seed=1, device="cuda")
    state = PersistentState("cuda")
    x = case["x"].clone()
    d = case["d"].clone()
    pos = case["pos"].clone()
    caches = [(case["ck"].clone(), case["cv"].clone()) for _ in range(layers)]
    w = case["w"]

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        h, dd = x, d
        for ck, cv in caches:
            h, dd = decode_layer_persistent(
                h,
                dd,
                w,
                ck,
                cv,
                pos,
                case["cos"],
                case["sin"],
                case["perm"],
                case["heads"],
                case["eps"],
                state,
            )
        return h, dd

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_h, out_d = run()
    P = state.programs
    for step in range(3):
        s = _step_inputs({**case, "pos0": case["pos"]}, step + 1, seed=10 + step)
        x.copy_(s["x"])
        d.copy_(s["d"])
        pos.copy_(s["pos"])
        saved = [(ck.clone(), cv.clone()) for ck, cv in caches]
        before = int(state.barrier.item())
        graph.replay()
        torch.cuda.synchronize()
        assert int(state.barrier.item()) - before == layers * BARRIERS * P
        got = (out_h.clone(), out_d.clone(), [(ck.clone(), cv.clone()) for ck, cv in caches])
        for (ck, cv), (sk, sv) in zip(caches, saved, strict=True):  # the same step again, eagerly
            ck.copy_(sk)
            cv.copy_(sv)
        eager_h, eager_d = run()
        torch.cuda.synchronize()
        assert torch.equal(got[0], eager_h) and torch.equal(got[1], eager_d), (model, step)
        for (gk, gv), (ck, cv) in zip(got[2], caches, strict=True):
            assert torch.equal(gk, ck) and torch.equal(gv, cv), (model, step)
        assert state.error_count() == 0, (model, step)
