"""The training fast path on CPU: the fused LoRA Function (lora.py), shared-input adapters, recompute and
offload settings (models/llama.py), and their plan fields. GPU speed and memory: bench/train/run.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import make_hf_model, make_plan, random_samples, run_engine, write_plan, write_shard
from test_lora import packed_batch
from torch.utils._python_dispatch import TorchDispatchMode

from tuna_engine import lora
from tuna_engine.errors import EngineError
from tuna_engine.lora import Linear, lora_forward, set_lora_compute
from tuna_engine.models import llama, load_model
from tuna_engine.protocol import LoraSpec, parse_train_plan
from tuna_engine.quant import Linear4bit
from tuna_engine.train import set_compiled_recompute, weighted_ce_sum


def spec(r: int = 4, dropout: float = 0.0, dora: bool = False) -> LoraSpec:
    return LoraSpec(
        r=r, alpha=2.0 * r, dropout=dropout, target_modules=("all-linear",), use_rslora=False, use_dora=dora
    )


def make_linears(in_f: int, outs: list[int], r: int, seed: int, dtype: torch.dtype, bias: bool = False):
    """Adapted `Linear`s with random base weights (in `dtype`) and random non-zero fp32 adapters."""
    g = torch.Generator().manual_seed(seed)
    lins = []
    for o in outs:
        lin = Linear(in_f, o, bias, spec(r))
        with torch.no_grad():
            lin.weight.copy_(torch.randn(o, in_f, generator=g) / in_f**0.5)
            if bias:
                lin.bias.copy_(torch.randn(o, generator=g))
            lin.lora_A.weight.copy_(torch.randn(r, in_f, generator=g) / in_f**0.5)
            lin.lora_B.weight.copy_(torch.randn(o, r, generator=g) / r**0.5)
        lin.weight.data = lin.weight.data.to(dtype)
        if bias:
            lin.bias.data = lin.bias.data.to(dtype)
        lin.weight.requires_grad_(False)
        if bias:
            lin.bias.requires_grad_(False)
        lins.append(lin)
    return lins


def run_group(lins, x: torch.Tensor, mode: str, seed: int = 9):
    """Outputs and grads (x, every A and B) of `lins` reading x, with a random upstream gradient. Under
    TUNA_LORA_ADD=augmented, "auto" first stores the group's weights in a FusedGroup (where it can hold them)."""
    if mode == "auto" and lora.lora_add_mode() == "augmented" and lins[0].fused is None:
        for lin in lins:
            lin.lora_compute = "auto"
        if lora._fusable(lins):
            lora.FusedGroup(lins)
    for lin in lins:
        lin.lora_compute = mode
        lin.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    ys = lora_forward(lins, x)
    g = torch.Generator().manual_seed(seed)
    loss = sum((y.float() * torch.randn(y.shape, generator=g)).sum() for y in ys)
    loss.backward()
    grads = [x.grad] + [p.grad for lin in lins for p in (lin.lora_A.weight, lin.lora_B.weight)]
    return [y.detach() for y in ys], grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


SHAPES = [  # (tokens per row, in_features, out_features of the group, r): several not multiples of 16
    (7, 33, [19], 3),
    (50, 64, [64, 16, 16], 8),
    (13, 45, [90, 90], 5),
]


@pytest.fixture(params=["gemm", "separate", "inplace", "epilogue", "augmented"])
def lora_add(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every way the adapter product reaches the base output (lora.set_lora_add, TUNA_LORA_ADD)."""
    lora.set_lora_add(request.param)
    yield request.param
    lora.set_lora_add(None)


@pytest.mark.parametrize("T,in_f,outs,r", SHAPES)
def test_fast_function_equals_exact_in_fp32(
    T: int, in_f: int, outs: list[int], r: int, lora_add: str
) -> None:
    lins = make_linears(in_f, outs, r, seed=T, dtype=torch.float32, bias=True)
    x = torch.randn(2, T, in_f, generator=torch.Generator().manual_seed(1))
    ref_y, ref_g = run_group(lins, x, "exact")
    got_y, got_g = run_group(lins, x, "auto")
    for a, b in zip(got_y + got_g, ref_y + ref_g, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert rel(a, b) < 1e-6, rel(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,in_f,outs,r", SHAPES)
def test_fast_function_16bit_error_no_worse_than_peft(
    dtype: torch.dtype, T: int, in_f: int, outs: list[int], r: int, lora_add: str
) -> None:
    """16-bit: both paths measured against the same model in fp64; the fast path's error may be at most about
    twice the exact (peft) path's."""
    lins = make_linears(in_f, outs, r, seed=T, dtype=dtype)
    x = torch.randn(2, T, in_f, generator=torch.Generator().manual_seed(2)).to(dtype)
    exact_y, exact_g = run_group(lins, x, "exact")
    fast_y, fast_g = run_group(lins, x, "auto")
    ref_lins = make_linears(in_f, outs, r, seed=T, dtype=dtype)
    for lin in ref_lins:  # the same (16-bit-rounded) weights, computed in fp64
        lin.to(torch.float64)
    ref_y, ref_g = run_group(ref_lins, x.double(), "exact")
    for fast, exact, ref in zip(fast_y + fast_g, exact_y + exact_g, ref_y + ref_g, strict=True):
        assert fast.dtype == exact.dtype  # outputs and dx in 16 bits, adapter grads in fp32
        assert rel(fast, ref) <= 2 * rel(exact, ref) + 2e-3, (rel(fast, ref), rel(exact, ref))


def test_lora_add_modes_run_their_ops_and_a_bad_value_names_the_variable(lora_add: str) -> None:
    """ "gemm" adds the adapter product in addmm (whose C ATen first copies from the base output); "separate" runs
    plain GEMMs and adds elementwise; "inplace" adds into the base outputs themselves through tuna::lora_addmm_;
    "epilogue" computes the adapter products first (x·Aᵀ, then one GEMM of inner size r a projection) and runs each
    base GEMM as tuna::lora_addmm_ into its product — forward, and in backward for dx (g·A first, then each
    dy_i·W_i added into it)."""
    lins = make_linears(64, [64, 16, 16], 8, seed=3, dtype=torch.bfloat16)
    for lin in lins:
        lin.lora_compute = "auto"
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    if lora_add == "augmented":
        lora.FusedGroup(lins)
    with CountMM() as mm:
        ys = lora_forward(lins, x)
    assert (mm.addmm, mm.inplace, len(mm.shapes)) == {
        "gemm": (3, 0, 3 + 1 + 3),
        "separate": (0, 0, 3 + 1 + 3),
        "inplace": (0, 3, 3 + 1),
        "epilogue": (0, 3, 1 + 3),
        "augmented": (0, 0, 1 + 1),  # x·Aᵀ, then [x | xA]·[W | s·B]ᵀ for the three at once
    }[lora_add]
    if lora_add == "augmented":
        assert mm.shapes == [(10, 24), (10, 96)]
    with CountMM() as mm:
        sum(y.float().sum() for y in ys).backward()
    # g_i (3), dx = g·A (1), dA (1), dB (3); "epilogue" adds the base GEMMs' dx into g·A (3 in place), the other
    # modes run them as plain GEMMs (3) whose results autograd sums; "augmented": g (1), g·A (1) with the group's
    # one dy·W added into it (1 in place), dA (1), dB (3)
    assert (mm.addmm, mm.inplace, len(mm.shapes)) == {
        "epilogue": (0, 3, 3 + 1 + 1 + 3),
        "augmented": (0, 1, 1 + 1 + 1 + 3),
    }.get(lora_add, (0, 0, 3 + 1 + 1 + 3 + 3))
    with pytest.raises(
        EngineError,
        match="TUNA_LORA_ADD: 'fused' is not one of auto, epilogue, augmented, inplace, gemm, separate",
    ):
        lora.set_lora_add("fused")


def test_lora_add_auto_takes_epilogue_for_groups_at_least_4096_wide() -> None:
    """The default ("auto") runs a group through LoraLinearFunction when its input is at least
    EPILOGUE_MIN_IN_FEATURES (4096) wide — Qwen3-8B's every group — and as "inplace" below (Qwen3-0.6B's); without
    autograd (evaluation, generation with adapters) the same path gives the same outputs."""
    lora.set_lora_add(None)
    assert lora.EPILOGUE_MIN_IN_FEATURES == 4096
    for width, epilogue in ((4095, False), (4096, True)):
        lins = make_linears(width, [8, 8], 2, seed=5, dtype=torch.bfloat16)
        for lin in lins:
            lin.lora_compute = "auto"
        x = torch.randn(1, 3, width, dtype=torch.bfloat16, requires_grad=True)
        with CountMM() as mm:
            ys = lora_forward(lins, x)
        with torch.no_grad(), CountMM() as mm_no_grad:
            ys_no_grad = lora_forward(lins, x)
        assert mm_no_grad.shapes == mm.shapes
        assert all(torch.equal(a, b) for a, b in zip(ys, ys_no_grad, strict=True))
        # epilogue: x·Aᵀ [3, 2r], 2 products, then 2 base GEMMs in place; inplace: 2 base GEMMs, x·Aᵀ, then the
        # 2 products in place
        assert (mm.shapes, mm.inplace) == (
            ([(3, 4), (3, 8), (3, 8)], 2) if epilogue else ([(3, 8), (3, 8), (3, 4)], 2)
        )
        assert lora._epilogue_group(lins, x) is epilogue


@pytest.mark.parametrize("case", ["bias", "nf4", "dora", "exact", "trainable_base"])
def test_lora_add_epilogue_leaves_groups_it_cannot_take_to_the_other_paths(case: str) -> None:
    """Under "epilogue" a group with a biased, NF4 or trainable base, a DoRA or an "exact" projection does not go
    through LoraLinearFunction: it runs the ops "inplace" runs (base GEMMs as plain GEMMs), with the same numbers."""
    lins = make_linears(64, [64, 16], 8, seed=4, dtype=torch.bfloat16, bias=case == "bias")
    for lin in lins:
        lin.lora_compute = "auto"
    if case == "nf4":
        for lin in lins:
            lin.base_layer = Linear4bit.from_linear(lin, compute_dtype=torch.bfloat16)
            del lin.weight
            lin.weight = None  # type: ignore[assignment]
    elif case == "dora":
        dora = Linear(64, 16, False, spec(8, dora=True))
        dora.load_state_dict(lins[1].state_dict(), strict=False)
        with torch.no_grad():
            dora.weight.data = lins[1].weight.data
            dora.lora_magnitude_vector.copy_(dora.dora_weight_norm(dora.weight.float()))
        dora.weight.requires_grad_(False)
        dora.lora_compute = "auto"
        lins[1] = dora
    elif case == "exact":
        lins[1].lora_compute = "exact"
    elif case == "trainable_base":
        lins[0].weight.requires_grad_(True)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    assert not lora._epilogue_group(lins, x)
    outs, ops = {}, {}
    for mode in ("epilogue", "inplace"):
        lora.set_lora_add(mode)
        with CountMM() as mm:
            outs[mode] = lora_forward(lins, x)
        ops[mode] = (mm.shapes, mm.addmm, mm.inplace)
    lora.set_lora_add(None)
    assert ops["epilogue"] == ops["inplace"]
    for a, b in zip(outs["epilogue"], outs["inplace"], strict=True):
        assert torch.equal(a, b)


def one_layer_06b(dtype: torch.dtype, rebuild_rotary: bool = True) -> llama.CausalLM:
    """A Qwen3-0.6B-shaped model of one decoder layer (vocab 512), LoRA r=16 on all linear projections (the
    adapters alone trainable, fast path, nothing recomputed), random weights, its layer compiled: what the
    compiled-layer tests below inspect. Seeded, so each call builds the same model."""
    root = Path(__file__).resolve().parents[2]
    preset = json.loads((root / "src/model/presets.json").read_text())
    config = llama.Config.from_hf(dict(preset["qwen3-0.6b"]["config"], num_hidden_layers=1, vocab_size=512))
    spec = LoraSpec(
        r=16, alpha=32, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
    )
    torch.manual_seed(0)
    model = llama.CausalLM(config, spec, None).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02)
            p.requires_grad = "lora_" in name
    set_lora_compute(model, "auto")
    model.train()
    model.recompute = "none"
    model.model.layers[0].self_attn.rebuild_rotary = rebuild_rotary
    model.model.layers[0].compile()
    return model


def test_lora_add_inplace_and_epilogue_run_in_place_in_a_compiled_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compiled (CPU Inductor, one Qwen3-0.6B-shaped layer, fp32): with "gemm" the generated code calls addmm into
    new buffers (on CUDA ATen first copies the base output into each: session 9's device-to-device copies); with
    "inplace" it calls tuna::lora_addmm_ on the base GEMM's own output buffer and no addmm at all — and the
    gradients are the same."""
    from torch._inductor.utils import run_and_get_code

    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench/train"))
    from saved_tensors import saved_by_layer

    results = {}
    for mode in ("gemm", "inplace", "epilogue"):
        lora.set_lora_add(mode)
        torch._dynamo.reset()
        model = one_layer_06b(torch.float32)
        torch.manual_seed(1)
        _, code = run_and_get_code(lambda m=model: saved_by_layer(m, 1, 32))
        grads = [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]
        results[mode] = (code, grads)
    lora.set_lora_add(None)
    torch._dynamo.reset()
    (gemm_code, *_), gemm_grads = results["gemm"]
    (inplace_code, *_), inplace_grads = results["inplace"]
    assert gemm_code.count("extern_kernels.addmm(") == 7 and "lora_addmm_" not in gemm_code
    assert "extern_kernels.addmm(" not in inplace_code
    calls = re.findall(r"torch\.ops\.tuna\.lora_addmm_\.default\((buf\d+),", inplace_code)
    assert len(calls) == 7
    for buf in calls:  # the buffer it adds into is a base GEMM's output, written by extern_kernels.mm
        assert re.search(rf"extern_kernels\.mm\([^\n]*out={buf}\)", inplace_code), buf
    for a, b in zip(inplace_grads, gemm_grads, strict=True):
        assert rel(a, b) < 1e-6
    # "epilogue": each of the 7 base GEMMs runs as tuna::lora_addmm_ into the adapter product's buffer, written by a
    # GEMM of inner size r = 16 (its second operand [16, out]); in backward the 7 base dx GEMMs add into the
    # adapters' dx (q/k/v into one, gate/up into one). Same gradients within fp32 rounding (other summation order).
    (forward_code, backward_code), epilogue_grads = results["epilogue"]
    assert "extern_kernels.addmm(" not in forward_code + backward_code
    calls = re.findall(r"torch\.ops\.tuna\.lora_addmm_\.default\((buf\d+), [^\n]*primals_", forward_code)
    assert len(calls) == 7
    for buf in calls:
        assert re.search(
            rf"extern_kernels\.mm\([^\n]*\(16, \d+\), \(1, 16\), 0\), out={buf}\)", forward_code
        ), buf
    calls = re.findall(r"torch\.ops\.tuna\.lora_addmm_\.default\((buf\d+), [^\n]*primals_", backward_code)
    assert len(calls) == 7 and len(set(calls)) == 4
    for a, b in zip(epilogue_grads, inplace_grads, strict=True):
        assert rel(a, b) < 1e-5


def test_lora_add_augmented_runs_one_gemm_a_group_in_a_compiled_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TUNA_LORA_ADD=augmented on one compiled Qwen3-0.6B-shaped layer (CPU Inductor, fp32): the frozen weights of
    q/k/v, o, gate/up and down sit in 4 buffers with their adapters, and the generated forward runs 8 GEMMs (x·Aᵀ
    and [x | xA]·[W | s·B]ᵀ a group: q/k/v in one, gate/up in one) where "inplace" runs 11 and 7 in-place adds;
    the backward runs one frozen GEMM a group (4, each adding into g·A), reading ONE gradient buffer a group that
    the producing kernel writes (no copy of it: no `cpp_fused_cat` kernel of its own); the state dict (names,
    shapes, values) is unchanged; the gradients equal "inplace"'s within fp32 rounding."""
    from torch._inductor.utils import run_and_get_code

    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench/train"))
    from saved_tensors import saved_by_layer

    results = {}
    try:
        for mode in ("inplace", "augmented"):
            lora.set_lora_add(mode)
            torch._dynamo.reset()
            model = one_layer_06b(torch.float32)
            before = {k: v.clone() for k, v in model.state_dict().items()}
            groups = lora.fuse_projection_groups(model) if mode == "augmented" else []
            after = model.state_dict()
            assert after.keys() == before.keys()
            assert all(torch.equal(after[k], v) for k, v in before.items())
            torch.manual_seed(1)
            _, code = run_and_get_code(lambda m=model: saved_by_layer(m, 1, 32))
            grads = [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]
            results[mode] = (code, len(groups), grads)
    finally:
        lora.set_lora_add(None)
        torch._dynamo.reset()
    (inplace_code, _), _, inplace_grads = results["inplace"]
    (augmented_code, augmented_backward), n_groups, augmented_grads = results["augmented"]
    assert n_groups == 4
    assert inplace_code.count("extern_kernels.mm(") == 11 and inplace_code.count("lora_addmm_.default(") == 7
    assert augmented_code.count("extern_kernels.mm(") == 8 and "lora_addmm_" not in augmented_code
    assert "extern_kernels.addmm(" not in augmented_code + augmented_backward
    calls = re.findall(r"torch\.ops\.tuna\.lora_addmm_\.default\(buf\d+, ([^,]+),", augmented_backward)
    assert len(calls) == 4
    assert not re.search(r"cpp_fused_cat_\d+\(", augmented_backward)  # a cat only inside its producer kernel
    for a, b in zip(augmented_grads, inplace_grads, strict=True):
        assert rel(a, b) < 1e-5


def test_augmented_group_set_back_to_exact_takes_peft_path_on_its_views() -> None:
    """A fused group whose projections are set to "exact" afterwards computes peft's math (on the weights' views),
    as the same projections unfused do."""
    x = torch.randn(2, 5, 64)
    ref = [
        y.detach()
        for y in run_group(make_linears(64, [64, 16], 8, seed=7, dtype=torch.float32), x, "exact")[0]
    ]
    lins = make_linears(64, [64, 16], 8, seed=7, dtype=torch.float32)
    for lin in lins:
        lin.lora_compute = "auto"
    lora.FusedGroup(lins)
    lora.set_lora_add("augmented")
    try:
        got = run_group(lins, x, "exact")[0]
    finally:
        lora.set_lora_add(None)
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


def test_augmented_buffer_is_a_weight_to_the_activation_offload() -> None:
    """LoraFusedFunction saves its group's buffer for backward; the offload must treat it as a weight (kept where
    it is), not as an activation to copy to the host each step — which it does for a frozen Parameter."""
    from test_offload import fake_hooks

    group = lora.FusedGroup(make_linears(64, [64, 16], 8, seed=6, dtype=torch.bfloat16))
    hooks, _ = fake_hooks()
    assert isinstance(group.weight, torch.nn.Parameter) and not group.weight.requires_grad
    assert hooks.state.pack(group.weight) is group.weight


def test_engine_train_augmented_follows_inplace_and_refreshes_its_adapter_slots(tmp_path: Path) -> None:
    """`train` on a tiny fp32 Qwen3 with TUNA_LORA_ADD=augmented: the log names the groups it fused, and the step
    losses and the validation losses (the no-grad forward) equal "inplace"'s — which needs the buffers' adapter
    slots copied from the parameters after every optimizer step (with stale slots the adapters would stay at their
    initial B = 0)."""
    make_hf_model(tmp_path / "m", "qwen3")
    write_shard(tmp_path / "t.safetensors", random_samples(4, seed=4))
    write_shard(tmp_path / "v.safetensors", random_samples(2, seed=5))
    losses, val_losses, logs = {}, {}, {}
    for mode in ("inplace", "augmented"):
        plan = make_plan(
            tmp_path / mode,
            tmp_path / "m",
            [tmp_path / "t.safetensors"],
            [tmp_path / "v.safetensors"],
            learning_rate=1e-2,
            max_steps=5,
            eval_every=2,
        )
        plan["train"]["lora_compute"] = "auto"
        code, events, err = run_engine(
            "train", write_plan(plan), prelude=f"import os; os.environ['TUNA_LORA_ADD'] = {mode!r}"
        )
        assert code == 0, err[-2000:]
        losses[mode], logs[mode] = [e["loss"] for e in events if e["event"] == "step"], err
        val_losses[mode] = [e["val_loss"] for e in events if "val_loss" in e]
    assert (
        "TUNA_LORA_ADD=augmented: 8 projection groups share a buffer with their adapters" in logs["augmented"]
    )
    assert len(losses["augmented"]) == 5 and losses["augmented"][-1] < losses["augmented"][0]
    assert len(val_losses["augmented"]) >= 2
    for a, b in zip(
        losses["augmented"] + val_losses["augmented"], losses["inplace"] + val_losses["inplace"], strict=True
    ):
        assert abs(a - b) <= 1e-5 * abs(b), (losses, val_losses)

    # A run of 2 steps (its checkpoint at the end) resumed to 5: the slots are refreshed from the loaded adapters, so steps
    # 3-5 equal the straight run's.
    plan = make_plan(
        tmp_path / "resumed",
        tmp_path / "m",
        [tmp_path / "t.safetensors"],
        learning_rate=1e-2,
        max_steps=2,
        save_every=2,
    )
    plan["train"]["lora_compute"] = "auto"
    prelude = "import os; os.environ['TUNA_LORA_ADD'] = 'augmented'"
    assert run_engine("train", write_plan(plan), prelude=prelude)[0] == 0
    plan = dict(plan, resume_from=plan["run_dir"], train=dict(plan["train"], max_steps=5))
    code, events, err = run_engine("train", write_plan(plan), prelude=prelude)
    assert code == 0, err[-2000:]
    resumed = [e["loss"] for e in events if e["event"] == "step"]
    assert len(resumed) == 3
    for a, b in zip(resumed, losses["augmented"][2:], strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (resumed, losses["augmented"])


class CountMM(TorchDispatchMode):
    """Records the output shapes of the matrix products run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.addmm = 0
        self.inplace = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.shapes.append(tuple(out.shape))
        self.addmm += func.overloadpacket is torch.ops.aten.addmm
        self.inplace += func.overloadpacket is torch.ops.tuna.lora_addmm_
        return out


def test_qkv_share_one_x_times_A_gemm_and_save_no_fp32_copy() -> None:
    """q/k/v on the fast path: x·[A_q;A_k;A_v]ᵀ is ONE GEMM of width 3r (exact: three of width r), and
    what is saved for backward is x itself (same storage, once for the three) plus xA — no fp32 copy."""
    N, C, r = 100, 48, 4  # N·C above any weight's size, so "big" below means activations
    lins = make_linears(C, [48, 24, 24], r, seed=0, dtype=torch.bfloat16)
    x = torch.randn(1, N, C).bfloat16().requires_grad_()
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    for mode, widths in (("exact", [r, r, r]), ("auto", [3 * r])):
        for lin in lins:
            lin.lora_compute = mode
        saved.clear()
        with CountMM() as mm, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lora_forward(lins, x)
        assert sorted(s[1] for s in mm.shapes if s[0] == N and s[1] <= 3 * r) == widths, mode
        big = [t for t in saved if t.numel() >= N * C and not isinstance(t, torch.nn.Parameter)]
        if mode == "exact":
            assert sum(t.dtype == torch.float32 for t in big) == 3  # peft: x in fp32, once per projection
        else:
            assert all(
                t.dtype == torch.bfloat16 and t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                for t in big
            )
            xa = [t for t in saved if tuple(t.shape) == (N, 3 * r)]
            assert len(xa) == 1 and xa[0].dtype == torch.bfloat16


def test_dora_and_dropout_take_the_exact_path() -> None:
    x = torch.randn(2, 5, 16)
    lin = Linear(16, 8, False, spec(dora=True))
    lin.lora_compute = "auto"
    assert not lin.fast_path(x, x[..., :8])
    lin = Linear(16, 8, False, spec(dropout=0.1))
    lin.lora_compute = "auto"
    assert not lin.fast_path(x, x[..., :8])  # training mode: dropout would need its mask saved
    lin.eval()
    assert lin.fast_path(x, x[..., :8])  # no dropout at evaluation


def lora_loss_and_grads(model_dir: Path, dtype: str, prepare) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and adapter grads of one packed batch through our model (every adapter randomised, B ≠ 0);
    `prepare(model)` sets the path under test (lora_compute, recompute, offload, an FP8 base) before training."""
    model = load_model(str(model_dir), dtype, torch.device("cpu"), spec(r=4), seed=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.requires_grad_(".lora_" in n)
            if ".lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    prepare(model)
    model.train()
    batch = packed_batch(random_samples(5, seed=3), per_row=2)
    loss = weighted_ce_sum(model, batch) / batch.loss_weight[:, 1:].sum()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def model_step(model_dir: Path, dtype: str, mode: str, recompute: str = "none", offload: bool = False):
    def prepare(model: llama.CausalLM) -> None:
        assert set_lora_compute(model, mode) == 14
        model.recompute, model.offload_activations = recompute, offload

    return lora_loss_and_grads(model_dir, dtype, prepare)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen3")
    make_hf_model(path, "qwen3")
    return path


def test_fp32_model_auto_equals_exact(tiny_dir: Path) -> None:
    ref_loss, ref = model_step(tiny_dir, "float32", "exact")
    loss, got = model_step(tiny_dir, "float32", "auto")
    assert abs(loss - ref_loss) / ref_loss < 1e-6
    for k in ref:
        assert rel(got[k], ref[k]) < 1e-5, k


def test_bf16_model_auto_close_to_exact(tiny_dir: Path) -> None:
    ref_loss, ref = model_step(tiny_dir, "float32", "exact")
    exact_loss, exact = model_step(tiny_dir, "bfloat16", "exact")
    loss, got = model_step(tiny_dir, "bfloat16", "auto")
    assert abs(loss - ref_loss) <= 2 * abs(exact_loss - ref_loss) + 2e-3
    for k in ref:
        assert rel(got[k], ref[k]) <= 2 * rel(exact[k], ref[k]) + 2e-2, k


@pytest.mark.parametrize(
    "recompute,offload", [("full", False), ("mlp", False), ("none", True), ("full", True)]
)
def test_recompute_and_offload_settings_give_the_same_loss_and_grads(
    tiny_dir: Path, recompute: str, offload: bool
) -> None:
    ref_loss, ref = model_step(tiny_dir, "float32", "exact", "none")
    loss, got = model_step(tiny_dir, "float32", "exact", recompute, offload)
    assert abs(loss - ref_loss) / ref_loss < 1e-6
    for k in ref:
        assert rel(got[k], ref[k]) < 1e-5, (k, recompute, offload)


def saved_bytes(model_dir: Path, recompute: str) -> int:
    """Bytes the forward pass keeps for backward (parameters excluded), as the autograd hooks see them."""
    model = load_model(str(model_dir), "float32", torch.device("cpu"), spec(r=4))
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    model.recompute = recompute
    model.train()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if not isinstance(t, torch.nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    batch = packed_batch(random_samples(4, min_len=20, max_len=24, seed=1), per_row=1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch.input_ids, batch.position_ids, batch.sample_ids)
    return total


def test_memory_order_none_mlp_full(tiny_dir: Path) -> None:
    none, mlp, full = (saved_bytes(tiny_dir, m) for m in ("none", "mlp", "full"))
    assert none > mlp > full, (none, mlp, full)


def record_offloaded(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The tensors the activation offload will copy to host memory (every size: min_bytes 0; every layer, the last one
    too: TUNA_OFFLOAD_DEVICE_LAYERS=0), as they are saved."""
    monkeypatch.setattr(llama, "_offload_device_layers", 0)
    copied: list[torch.Tensor] = []
    real_hooks = llama.offload_saved_tensors

    def recording() -> torch.autograd.graph.saved_tensors_hooks:
        hooks = real_hooks(min_bytes=0)
        pack = hooks.pack_hook

        def rec(t: torch.Tensor):  # type: ignore[no-untyped-def]
            out = pack(t)
            if out is not t:
                copied.append(t)
            return out

        hooks.pack_hook = rec
        return hooks

    monkeypatch.setattr(llama, "offload_saved_tensors", recording)
    return copied


def test_offload_with_full_recompute_moves_only_layer_inputs(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With full recompute in eager layers, what goes to CPU is each layer's input [B, T, C] (plus the rotary tables
    and the final norm's inputs), never the layers' internals; parameters are never copied."""
    copied = record_offloaded(monkeypatch)
    model_step(tiny_dir, "float32", "auto", "full", offload=True)
    C = 64
    assert not any(isinstance(t, torch.nn.Parameter) for t in copied)
    hidden = [t for t in copied if t.dim() == 3 and t.shape[-1] == C]
    assert len(hidden) >= 2  # the two layers' inputs
    assert all(t.shape[-1] in (C, 16, 1) for t in copied), [
        tuple(t.shape) for t in copied
    ]  # C, head_dim, rstd


def test_compiled_layer_runs_the_fast_path_and_mlp_recompute(tiny_dir: Path) -> None:
    """Regional torch.compile (train.compile) over a decoder layer with the LoRA Function and the MLP
    checkpoint inside: same loss and grads as eager (inductor on CPU, a few seconds of compilation)."""
    torch._dynamo.reset()
    ref_loss, ref = model_step(tiny_dir, "float32", "auto", "mlp")
    model = load_model(str(tiny_dir), "float32", torch.device("cpu"), spec(r=4), seed=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.requires_grad_(".lora_" in n)
            if ".lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    set_lora_compute(model, "auto")
    model.recompute = "mlp"
    model.train()
    for layer in model.model.layers:
        layer.compile()
    batch = packed_batch(random_samples(5, seed=3), per_row=2)
    loss = weighted_ce_sum(model, batch) / batch.loss_weight[:, 1:].sum()
    loss.backward()
    assert abs(float(loss) - ref_loss) / ref_loss < 1e-5
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert rel(p.grad, ref[n]) < 1e-4, n


def full_recompute_backward(
    checkpoint: str, keep: str
) -> tuple[list[tuple[str, list]], list[torch.Tensor], list[torch.Tensor]]:
    """One compiled Qwen3-0.6B-shaped layer (CPU Inductor, fp32) under recompute "full" with TUNA_LAYER_CHECKPOINT /
    TUNA_RECOMPUTE_KEEP as given: the operations its backward ran (profiler: name, input shapes), the tensors its
    forward saved (parameters aside) and the adapter gradients. The second of two steps (the first compiles)."""
    from torch.profiler import profile

    llama.set_layer_checkpoint(checkpoint)
    llama.set_recompute_keep(keep)
    torch._dynamo.reset()
    try:
        model = one_layer_06b(torch.float32)
        model.recompute = "full"
        ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))
        pos, sids = torch.arange(64)[None], torch.zeros(1, 64, dtype=torch.long)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: list[torch.Tensor] = []
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            saved.clear()
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
                hidden = model(ids, pos, sids)
            with profile(record_shapes=True) as prof:
                hidden.pow(2).sum().backward()
    finally:
        llama.set_layer_checkpoint(None)
        llama.set_recompute_keep(None)
    ops = [(e.name, e.input_shapes) for e in prof.events()]
    kept = [t for t in saved if t.untyped_storage().data_ptr() not in params]
    return ops, kept, [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]


def test_full_recompute_inside_the_compiled_layer_reruns_only_what_backward_reads() -> None:
    """recompute "full" takes each layer's checkpoint inside the compiled layer (TUNA_LAYER_CHECKPOINT=inside, the
    default), so the backward graph recomputes only what it reads: down_proj's forward GEMM ([64, 3072] × [3072,
    1024]; its output feeds only the residual) runs once fewer than with the checkpoint around the compiled layer
    (the whole forward rerun). TUNA_RECOMPUTE_KEEP=attention (the default) saves attention's output and log-sum-exp,
    and attention's forward no longer runs in backward; "qkv" and "o" keep those projections' outputs, and their
    forward GEMMs no longer run in backward. The gradients stay the same throughout."""
    from collections import Counter

    def big_gemms(ops: list[tuple[str, list]]) -> Counter:
        """The base GEMMs' operand shapes: aten::mm's, or tuna::lora_addmm_'s after its C (TUNA_LORA_ADD=epilogue)."""
        operands = [
            shapes[:2] if name == "aten::mm" else shapes[1:3]
            for name, shapes in ops
            if name in ("aten::mm", "tuna::lora_addmm_")
        ]
        return Counter(str(pair) for pair in operands if min(pair[1]) >= 1024)

    def attention_forwards(ops: list[tuple[str, list]]) -> list[str]:
        return [name for name, _ in ops if "attention" in name and "backward" not in name]

    runs = {
        (checkpoint, keep): full_recompute_backward(checkpoint, keep)
        for checkpoint, keep in (
            ("outside", "none"),
            ("inside", "none"),
            ("inside", "attention"),
            ("inside", "attention,qkv,o"),
        )
    }
    outside, plain, attention, projections = runs.values()
    down, q, kv, o = (
        [[64, 3072], [3072, 1024]],
        [[64, 1024], [1024, 2048]],
        [[64, 1024], [1024, 1024]],
        [[64, 2048], [2048, 1024]],
    )
    assert big_gemms(outside[0]) - big_gemms(plain[0]) == Counter({str(down): 1})
    assert big_gemms(plain[0]) - big_gemms(outside[0]) == Counter()
    assert big_gemms(attention[0]) == big_gemms(plain[0])
    assert big_gemms(attention[0]) - big_gemms(projections[0]) == Counter({str(q): 1, str(kv): 2, str(o): 1})
    assert attention_forwards(outside[0]) and attention_forwards(plain[0])
    assert not attention_forwards(attention[0]) and not attention_forwards(projections[0])

    def head_shaped(saved: list[torch.Tensor]) -> list[tuple[int, ...]]:
        return sorted(tuple(t.shape) for t in saved if t.dim() >= 3 and t.shape[1] == 16)

    # [1, heads, T, head_dim] output and [1, heads, T] log-sum-exp, kept only with "attention"
    assert head_shaped(plain[1]) == []
    assert head_shaped(attention[1]) == [(1, 16, 64), (1, 16, 64, 128)]

    # "qkv", "o": the projections' outputs [1, T, 2048], [1, T, 1024] × 2 (k, v), [1, T, 1024] (o) besides x
    def widths(saved: list[torch.Tensor]) -> Counter:
        return Counter(t.shape[-1] for t in saved if t.dim() == 3 and t.shape[:2] == (1, 64))

    assert widths(projections[1]) - widths(attention[1]) == Counter({1024: 3, 2048: 1})
    assert widths(attention[1]) - widths(projections[1]) == Counter()
    for run in (plain, attention, projections):
        for a, b in zip(outside[2], run[2], strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_compiled_layers_offload_what_full_recompute_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """In an offloaded pass of compiled layers, what recompute "full" keeps ("auto": attention's output and
    log-sum-exp, the q/k/v and o projections' outputs) is among the compiled graph's saved tensors, so it goes to
    host memory with the layer's input — the 8B default's 0.56× HF memory rests on this (it would stay on the GPU in
    eager selective checkpointing, which the layers therefore do not use)."""
    copied = record_offloaded(monkeypatch)
    torch._dynamo.reset()
    model = one_layer_06b(torch.float32)
    model.recompute, model.offload_activations = "full", True
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    hidden = model(ids, torch.arange(64)[None], torch.zeros(1, 64, dtype=torch.long))
    hidden.pow(2).sum().backward()
    shapes = sorted(tuple(t.shape) for t in copied)
    for kept in ((1, 16, 64, 128), (1, 16, 64), (1, 64, 2048)):  # attention's output, log-sum-exp; q
        assert kept in shapes, shapes
    assert shapes.count((1, 64, 1024)) >= 4, shapes  # the layer input; k, v, o
    assert not any(isinstance(t, torch.nn.Parameter) for t in copied)


def test_recompute_keep_resolves_auto_and_rejects_unknown_names() -> None:
    """TUNA_RECOMPUTE_KEEP unset ("auto"): all of attention, qkv, o in passes that offload, attention alone in the
    others; "none" keeps nothing; a list is taken as given; anything else names the variable."""
    try:
        llama.set_recompute_keep(None)
        assert llama.recompute_keep(True) == {"attention", "qkv", "o"}
        assert llama.recompute_keep(False) == {"attention"}
        llama.set_recompute_keep("none")
        assert llama.recompute_keep(True) == llama.recompute_keep(False) == frozenset()
        llama.set_recompute_keep("qkv, o")
        assert llama.recompute_keep(False) == {"qkv", "o"}
        with pytest.raises(
            EngineError, match="TUNA_RECOMPUTE_KEEP: 'attention,mlp' is not auto, none or a comma"
        ):
            llama.set_recompute_keep("attention,mlp")
    finally:
        llama.set_recompute_keep(None)


def test_eager_layers_keep_nothing_but_their_input(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a compiled graph, recompute "full" takes a plain checkpoint whatever TUNA_RECOMPUTE_KEEP says: eager
    selective checkpointing would hold the kept tensors in its own cache on the device, out of the offload's reach
    (Qwen3-8B at 4 × 2048: 7.9 GiB more GPU memory with the offload on). Same loss and gradients."""
    calls: list[dict] = []
    real = llama.checkpoint

    def recording(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return real(fn, *args, **kwargs)

    ref_loss, ref = model_step(tiny_dir, "float32", "auto", "full", offload=True)
    monkeypatch.setattr(llama, "checkpoint", recording)
    monkeypatch.setattr(llama, "_recompute_keep", frozenset(llama.RECOMPUTE_KEEPS))
    loss, grads = model_step(tiny_dir, "float32", "auto", "full", offload=True)
    assert len(calls) == 2 and not any("context_fn" in kw for kw in calls), calls  # one a layer
    assert loss == ref_loss
    for n, g in grads.items():
        assert torch.equal(g, ref[n]), n


@pytest.mark.parametrize("base", ["16-bit", "nf4", "fp8", "fp8-offloaded"])
def test_where_full_recompute_takes_its_checkpoint(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, base: str
) -> None:
    """recompute "full" checkpoints each layer from inside (DecoderLayer.forward with what to keep) — except for 4-bit
    bases, whose layers are checkpointed from outside as before (Qwen3-32B QLoRA measured 22.1–22.3 GiB inside
    against 21.5 outside, over issue 5's 22 GiB), and FP8 bases in passes that are not offloaded (Qwen3-0.6B, 2 ×
    2048: 1.77 GiB inside against 1.35 outside; offloaded, Qwen3-8B's FP8 step is 2.94× HF inside, 2.50× outside)."""
    inside: list[frozenset[str] | None] = []
    real = llama.DecoderLayer.forward

    def recording(self, x, cos, sin, seg, recompute_keeping=None):  # type: ignore[no-untyped-def]
        inside.append(recompute_keeping)
        return real(self, x, cos, sin, seg, recompute_keeping)

    def prepare(model: llama.CausalLM) -> None:
        set_lora_compute(model, "auto")
        model.recompute = "full"
        # what the loader sets for QLoRA and train.py for FP8 bases; the layers themselves stay 16-bit here
        model.quantization = {"quant_type": "nf4"} if base == "nf4" else None
        model.fp8_base = base.startswith("fp8")
        model.offload_activations = base == "fp8-offloaded"

    monkeypatch.setattr(llama.DecoderLayer, "forward", recording)
    lora_loss_and_grads(tiny_dir, "float32", prepare)
    # forward + recomputation under the outside checkpoint: the layer is called twice, keeping nothing; eager layers
    # called from inside keep nothing either (DecoderLayer.forward), whatever recompute_keep says
    expected = {
        "16-bit": [frozenset({"attention"})] * 2,
        "nf4": [None] * 4,
        "fp8": [None] * 4,
        "fp8-offloaded": [frozenset(llama.RECOMPUTE_KEEPS)] * 2,
    }[base]
    assert inside == expected, inside


def engine_losses(tmp: Path, dtype: str, **train: object) -> tuple[list[float], str]:
    """Step losses and stderr of `train` on a tiny Qwen3 (made once under tmp) over the same 4 samples."""
    if not (tmp / "m").exists():
        make_hf_model(tmp / "m", "qwen3")
        write_shard(tmp / "t.safetensors", random_samples(4, seed=4))
    run = tmp / "-".join(f"{k}={v}" for k, v in train.items())
    plan = make_plan(run, tmp / "m", [tmp / "t.safetensors"], learning_rate=1e-2, **train)
    plan["model"]["dtype"] = dtype
    code, events, err = run_engine("train", write_plan(plan))
    assert code == 0, err[-2000:]
    return [e["loss"] for e in events if e["event"] == "step"], err


def test_engine_train_auto_vs_exact_in_bf16(tmp_path: Path) -> None:
    """A few steps of `train` on a tiny bf16 model: the loss curves of auto and exact agree within bf16 noise
    (every step sees the same 4 samples, so the loss must fall)."""
    losses = {
        mode: engine_losses(
            tmp_path, "bfloat16", max_steps=6, lora_compute=mode, recompute="mlp", gradient_checkpointing=True
        )[0]
        for mode in ("exact", "auto")
    }
    assert len(losses["auto"]) == 6
    for a, b in zip(losses["auto"], losses["exact"], strict=True):
        assert abs(a - b) / b < 2e-2, losses
    assert losses["auto"][-1] < losses["auto"][0]


def test_elementwise_without_compiled_layers_runs_as_none_and_says_so(tmp_path: Path) -> None:
    """recompute "elementwise" through the engine where nothing is compiled (CPU): the run is recompute "none" —
    the same losses step for step — and its log says so, so nobody believes the setting saved memory here."""
    runs = {
        mode: engine_losses(tmp_path, "float32", max_steps=3, recompute=mode, gradient_checkpointing=False)
        for mode in ("none", "elementwise")
    }
    (none, none_log), (elementwise, elementwise_log) = runs["none"], runs["elementwise"]
    assert len(none) == 3 and elementwise == none
    assert "train.recompute elementwise: no decoder layer is compiled here" in elementwise_log
    assert "train.recompute elementwise" not in none_log


@pytest.mark.parametrize(
    "train,want",
    [
        ({"gradient_checkpointing": True}, ("auto", "full", "auto")),
        ({"gradient_checkpointing": False}, ("auto", "none", "auto")),
        (
            {"gradient_checkpointing": True, "recompute": "mlp", "offload_activations": True},
            ("auto", "mlp", True),
        ),
        (
            {"gradient_checkpointing": False, "recompute": "none", "lora_compute": "exact"},
            ("exact", "none", "auto"),
        ),
        ({"gradient_checkpointing": True, "offload_activations": False}, ("auto", "full", False)),
        ({"gradient_checkpointing": True, "cuda_graphs": False}, ("auto", "full", "auto", False)),
        ({"gradient_checkpointing": True, "cuda_graphs": True}, ("auto", "full", "auto", True)),
        ({"gradient_checkpointing": False, "recompute": "elementwise"}, ("auto", "elementwise", "auto")),
    ],
)
def test_plan_fields(tmp_path: Path, train: dict, want: tuple) -> None:
    plan = make_plan(tmp_path, tmp_path, [tmp_path / "t"], **train)
    t = parse_train_plan(plan).train
    got = (t.lora_compute, t.recompute, t.offload_activations, t.cuda_graphs)
    assert got == (want if len(want) == 4 else (*want, "auto"))


@pytest.mark.parametrize(
    "train,msg",
    [
        ({"gradient_checkpointing": False, "recompute": "mlp"}, 'train.recompute: "mlp" contradicts'),
        ({"gradient_checkpointing": True, "recompute": "none"}, 'train.recompute: "none" contradicts'),
        (
            {"gradient_checkpointing": True, "recompute": "elementwise"},
            'train.recompute: "elementwise" contradicts train.gradient_checkpointing: true',
        ),
        ({"lora_compute": "fast"}, 'train.lora_compute: expected one of "auto", "exact", got "fast"'),
        ({"recompute": "attn"}, "train.recompute: expected one of"),
        (
            {"offload_activations": "yes"},
            'train.offload_activations: expected true, false or "auto", got "yes"',
        ),
        ({"cuda_graphs": 1}, 'train.cuda_graphs: expected true, false or "auto", got 1'),
    ],
)
def test_plan_field_errors(tmp_path: Path, train: dict, msg: str) -> None:
    plan = make_plan(tmp_path, tmp_path, [tmp_path / "t"], **train)
    with pytest.raises(EngineError) as e:
        parse_train_plan(plan)
    assert msg in e.value.message


@pytest.mark.parametrize("recompute,mode", [("full", "auto"), ("none", "exact")])
def test_tiled_mlp_for_long_rows_is_the_same_math(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, recompute: str, mode: str
) -> None:
    """Rows longer than 2 × MLP_TILE_TOKENS run the MLP in tiles, each recomputed: same loss and grads, and
    the MLP's intermediate activations are never saved for the whole row."""
    ref_loss, ref = model_step(tiny_dir, "float32", mode, recompute)
    monkeypatch.setattr(llama, "MLP_TILE_TOKENS", 7)  # tiles that do not divide the row or align to samples
    calls = []
    orig = llama.DecoderLayer.tiled_mlp_block
    monkeypatch.setattr(
        llama.DecoderLayer, "tiled_mlp_block", lambda self, x: calls.append(1) or orig(self, x)
    )
    loss, got = model_step(tiny_dir, "float32", mode, recompute)
    assert calls, "the tiled path did not run"
    assert abs(loss - ref_loss) / ref_loss < 1e-6
    for k in ref:
        assert rel(got[k], ref[k]) < 1e-5, k


def test_attention_mode_rejects_unknown_values_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNA_ATTENTION", "flash3")
    with pytest.raises(EngineError, match="TUNA_ATTENTION: 'flash3'.*auto, varlen, cudnn, sdpa"):
        llama.attention_mode()
    monkeypatch.setenv("TUNA_ATTENTION", "cudnn")
    assert llama.attention_mode() == "cudnn"
    # On CPU the one-sample-row cuDNN path never applies, whatever the setting.
    seg = llama.segments(torch.zeros(2, 8, dtype=torch.long))
    assert seg.one_per_row
    assert not llama.use_cudnn_rows(torch.zeros(2, 8, 4, 16, dtype=torch.bfloat16), seg)
    # and a head size past 128 keeps the varlen kernel even where cuDNN would run (meta: no device needed)
    monkeypatch.setattr(llama, "use_varlen", lambda q: True)
    assert llama.use_cudnn_rows(torch.empty(2, 8, 4, 128, device="meta"), seg)
    assert not llama.use_cudnn_rows(torch.empty(2, 8, 4, 256, device="meta"), seg)


@pytest.mark.parametrize(
    "variable,value",
    [
        ("TUNA_ATTENTION", "flash3"),
        ("TUNA_LORA_ADD", "fusion"),
        ("TUNA_GRAPH_KEYS", "tight"),
        ("TUNA_LAYER_CHECKPOINT", "around"),
        ("TUNA_RECOMPUTE_KEEP", "mlp"),
    ],
)
def test_bad_engine_variable_stops_training_before_loading(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad value of an engine environment variable stops the run before the model loads (on the CPU too, where
    graphs never run), naming the variable."""
    shard = write_shard(tmp_path / "t.safetensors", random_samples(4, vocab=64), max_length=32)
    plan = make_plan(tmp_path / "run", tiny_dir, [shard], max_steps=1)
    monkeypatch.setenv(variable, value)
    code, events, err = run_engine("train", write_plan(plan))
    assert code != 0
    errors = [e for e in events if e["event"] == "error"]
    assert errors and errors[0]["code"] == "PLAN_INVALID", (events, err[-2000:])
    assert f"{variable}: '{value}'" in errors[0]["message"]
    # Nothing before the error: the model was never loaded (the start event follows the load).
    assert [e["event"] for e in events] == ["error"], events


def test_saved_tensors_lists_the_trainers_adapter_path() -> None:
    """bench/train/saved_tensors.py builds the layer as the trainer does: its adapters keep xA in bf16 (the
    `lora_compute: auto` LoraFunction, [tokens, 3r] for q/k/v), not peft's fp32 copies; recompute "mlp" keeps less
    than "none"."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            sys.executable,
            str(root / "bench/train/saved_tensors.py"),
            "--length",
            "32",
            "--recompute",
            "none,mlp",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root / "engine")},
    ).stdout
    blocks = out.split("== ")[1:]
    assert [b.split(",")[1].strip() for b in blocks] == ["recompute none", "recompute mlp"]
    per_token = [int(b.split(": ")[1].split(" bytes")[0].replace(",", "")) for b in blocks]
    assert per_token[1] < per_token[0], out
    assert "(32, 48)                   torch.bfloat16" in blocks[0], out


def test_rotate_half_is_chunk_and_cat_exactly() -> None:
    """llama.rotate_half_views (what compiled layers run, so the compiler may recompute it) gives chunk + cat's
    values and gradients bit for bit."""

    def chunk_cat(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((2, 5, 3, 128), (1, 7, 2, 64), (3, 2)):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            up = torch.randn(shape, dtype=dtype)
            got = llama.rotate_half_views(x)
            (g_got,) = torch.autograd.grad((got * up).sum(), x)
            want = chunk_cat(x)
            (g_want,) = torch.autograd.grad((want * up).sum(), x)
            assert torch.equal(got, want) and torch.equal(g_got, g_want)


def test_elementwise_recompute_saves_less_with_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """recompute "elementwise" (train.set_compiled_recompute) on one compiled Qwen3-0.6B-shaped layer (CPU): the
    backward keeps fewer bytes — among them no rotated q or k, rebuilt from the projections instead, unless the
    layer keeps them (Attention.rebuild_rotary False) — and computes the same adapter gradients."""
    import torch._functorch.config as functorch_config

    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench/train"))
    from saved_tensors import saved_by_layer

    flags = (
        "ban_recompute_materialized_backward",
        "ban_recompute_used_far_apart",
        "ban_recompute_long_fusible_chains",
    )
    results = []
    # config.patch puts the process-wide flags back afterwards, for the other tests' compiles (pytest's monkeypatch
    # would delete them: a config module's attributes are not plain ones).
    with functorch_config.patch(**dict.fromkeys(flags, True)):
        for elementwise, rebuild in ((False, True), (True, True), (True, False)):
            set_compiled_recompute(None, elementwise)  # resets compiled code when the settings change
            model = one_layer_06b(torch.bfloat16, rebuild_rotary=rebuild)
            torch.manual_seed(1)
            saved, _ = saved_by_layer(model, 1, 64)
            grads = [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]
            # head-shaped [1, heads, 64, 128]: q and k after rotary, attention's output, v
            heads = sorted(t.shape[1] for t in saved if t.dim() == 4 and t.shape[2:] == (64, 128))
            results.append((sum(t.untyped_storage().nbytes() for t in saved), grads, heads))
    assert all(getattr(functorch_config, f) for f in flags)
    (
        (bytes_default, grads_default, heads_default),
        (bytes_elementwise, grads_elementwise, heads_elementwise),
        (bytes_kept, grads_kept, heads_kept),
    ) = results
    assert heads_default == [8, 8, 16, 16]  # k, v; q, output
    assert heads_elementwise == [8, 16]  # v; output — rotated q and k recomputed
    assert heads_kept == [8, 8, 16, 16]  # rebuild_rotary False: kept
    assert bytes_elementwise < bytes_kept < 0.85 * bytes_default
    assert bytes_elementwise < 0.75 * bytes_default
    # chunk + cat fuses differently from views + where, so bf16 roundings move (measured 0.01–0.4% of the norm)
    for a, b in zip(grads_kept, grads_elementwise, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-2
    for a, b in zip(grads_default, grads_elementwise, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-5)


def test_trace_ops_names_the_operations_that_launched_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/train/trace_ops.py on a hand-made Chrome trace: a copy launched inside mm_inner inside mm inside linear
    is charged to that chain (mm_inner starts with mm and is listed first), one launched after mm to linear alone;
    other kernels and other threads' operations are not; names match without regard to case."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench/train"))
    from trace_ops import owners

    def ev(cat: str, name: str, ts: float, dur: float, tid: int = 1, **args: object) -> dict:
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid, "args": args}

    events = [
        ev("cpu_op", "aten::mm_inner", 10, 20),  # starts with mm, inside it: listed first, sorted after
        ev("cpu_op", "aten::linear", 0, 100),
        ev("cpu_op", "aten::mm", 10, 40),
        ev("cpu_op", "aten::other_thread", 0, 1000, tid=2),
        ev("cuda_runtime", "cudaMemcpyAsync", 20, 2, correlation=7),
        ev("cuda_runtime", "cudaMemcpyAsync", 60, 2, correlation=8),
        ev("cuda_runtime", "cudaLaunchKernel", 30, 2, correlation=9),
        ev("gpu_memcpy", "memcpy128", 200, 13, tid=7, correlation=7),
        ev("gpu_memcpy", "memcpy128", 230, 5, tid=7, correlation=8),
        ev("kernel", "nvjet_gemm", 215, 50, tid=7, correlation=9),
        ev("kernel", "memcpy_orphan", 300, 1, tid=7, correlation=99),
        ev(
            "gpu_memcpy", "Memcpy DtoD (Device -> Device)", 240, 4, tid=7, correlation=8
        ),  # the profiler's own name
    ]
    assert owners(events, "memcpy128", depth=3) == [
        ("aten::linear > aten::mm > aten::mm_inner", 1, 13.0),
        ("aten::linear", 1, 5.0),
    ]
    # case-insensitive: session 9's first trace of the 394 copies matched nothing, their events are "Memcpy DtoD"
    assert owners(events, "memcpy", depth=1) == [
        ("aten::mm_inner", 1, 13.0),
        ("aten::linear", 2, 9.0),
        ("<no launch found>", 1, 1.0),
    ]


def test_trace_streams_splits_the_compute_streams_idle_time_by_what_else_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bench/train/trace_streams.py on a hand-made trace: the compute stream (most kernel time) idles 50 µs while a
    DtoH copy runs on the side stream and 50 µs with nothing on the GPU; the copy's rate is its bytes over its time."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench/train"))
    from trace_streams import analyse

    def ev(cat: str, name: str, ts: float, dur: float, stream: int, **args: object) -> dict:
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"stream": stream, **args}}

    events = [
        ev("kernel", "gemm", 0, 100, 7),
        ev("kernel", "gemm", 150, 100, 7),
        ev("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 50, 150, 20, bytes=7.5e6),
        ev("kernel", "gemm", 300, 10, 7),
        ev("cpu_op", "aten::mm", 0, 400, 7),  # not GPU work
    ]
    out = analyse(events)
    assert "compute stream = 7" in out
    assert "DtoH: 1 copies, 0.01 GiB in 0.1 ms (50.0 GB/s while copying)" in out
    assert "idle 0.1 ms: 0.1 ms of it while another stream copied or ran, 0.1 ms with nothing else" in out
    assert "longest gaps (ms): 0.05, 0.05" in out


def test_lora_gemms_ways_compute_the_same_numbers_and_a_wrong_slot_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bench/train/lora_gemms.py times each TUNA_LORA_ADD way of a layer's GEMMs alone; its CPU check (fp32) that all
    ways give the same outputs and dx holds for Qwen3-8B's group shapes (shrunk), and fails when augmented's buffer
    holds a wrong adapter slot — so its timings compare the same computation."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench/train"))
    from lora_gemms import Group, check_same_numbers, groups_of

    config = json.loads((root / "src/model/presets.json").read_text())["qwen3-8b"]["config"]
    assert groups_of(config) == {
        "qkv": (4096, [4096, 1024, 1024]),
        "o": (4096, [4096]),
        "gate_up": (4096, [12288, 12288]),
        "down": (12288, [4096]),
    }
    for n_in, outs in groups_of(config).values():
        shrink = n_in // 64
        group = Group(19, n_in // shrink, [o // shrink for o in outs], 3, torch.float32, torch.device("cpu"))
        check_same_numbers(group)
    group.buf[0, group.n_in] += 1.0  # s·B_1's first element, in the buffer only
    with pytest.raises(AssertionError, match="fwd_augmented"):
        check_same_numbers(group)
