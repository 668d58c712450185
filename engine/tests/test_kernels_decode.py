"""The decode step's hand-written kernels (issue 7): tuna::skinny_linear and its fused forms (kernels/skinny_gemm.py),
tuna::argmax_rows (kernels/argmax.py), and the decode step that uses them (decode.Kernels).

The Triton kernels run in Triton's interpreter on CPU (TRITON_INTERPRET=1, chosen when triton.jit runs, hence
fresh processes) against the eager torch ops they replace: shapes that are not multiples of the blocks, 1 to 4
K splits, inputs that are column views of wider tensors whose extra columns are NaN (a kernel that read past K
would return NaN), fp32 within fp32 rounding and bf16 within bf16 rounding (the interpreter rounds fp32 → bf16
toward zero, the GPU to nearest: the GPU tests compare bf16 tightly). The argmax must equal torch.argmax
exactly, ties and NaN included. Then a whole compiled decode (CPU Inductor, fp32, LoRA/DoRA and base rows) with
every kernel on, run through the interpreted kernels, must give the baseline step's greedy tokens."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
import torch
from helpers import ENGINE_DIR, run_interpreted
from test_generate import PROMPTS, _adapters, models, plan, req  # noqa: F401  (models: the module fixture)

from tuna_engine.decode import Kernels
from tuna_engine.errors import EngineError
from tuna_engine.generate import load_for_generation
from tuna_engine.kernels import skinny_gemm as sg
from tuna_engine.protocol import parse_generate_plan

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


def _interpreted(script: str, *args: str, env: dict[str, str] | None = None) -> list:
    return run_interpreted(textwrap.dedent(script), *args, env=env)


def test_kernels_parse():
    assert Kernels.parse(None) == Kernels() and Kernels.parse("") == Kernels()
    assert Kernels.parse("gemm, argmax") == Kernels(gemm=True, argmax=True)
    assert Kernels.parse("all") == Kernels(True, True, True, True, persistent=False)
    assert Kernels.parse("persistent") == Kernels(persistent=True)
    assert Kernels.parse("all,persistent") == Kernels(True, True, True, True, persistent=True)
    with pytest.raises(ValueError, match="unknown \\['gem'\\]"):
        Kernels.parse("gem,silu")
    with pytest.raises(ValueError, match="^environment variable TUNA_DECODE_KERNELS: unknown"):
        Kernels.parse("argmx", "environment variable TUNA_DECODE_KERNELS")


def test_heuristic_config_fills_the_card():
    """About two programs per SM for the 0.6B and 8B shapes on 132 SMs; ≥ 512 of K per split."""
    for n, k in [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072), (6144, 4096), (4096, 12288)]:
        c = sg.heuristic_config(n, k, 132)
        programs = -(-n // c.block_n) * c.split_k
        assert programs >= 132 and k // c.split_k >= 512, (n, k, c)
    assert (
        sg.heuristic_config(1024, 2048, 132).split_k == 4
    )  # 64 column tiles alone would leave half the SMs idle


def test_skinny_ops_registration():
    """Schemas, fake (meta) implementations and the CPU reference dispatch are consistent (what torch.compile
    relies on), and on CPU each op is its eager form exactly."""
    g = torch.Generator().manual_seed(0)
    x, d = torch.randn(3, 1, 24, generator=g), torch.randn(3, 1, 24, generator=g)
    w, nw = torch.randn(40, 24, generator=g), torch.randn(24, generator=g)
    r, gu, wd = (
        torch.randn(3, 1, 40, generator=g),
        torch.randn(3, 1, 48, generator=g),
        torch.randn(40, 24, generator=g),
    )
    ops = torch.ops.tuna
    cases = [
        (ops.skinny_linear.default, (x, w, None), x @ w.T),
        (ops.skinny_linear.default, (x, w, r), r + x @ w.T),
        (
            ops.skinny_silu_linear.default,
            (gu, wd),
            torch.nn.functional.silu(gu[..., :24]) * gu[..., 24:] @ wd.T,
        ),
        (ops.skinny_norm_linear.default, (x, nw, 1e-6, w), sg._norm_ref(x, nw, 1e-6) @ w.T),
        (ops.skinny_add_norm_linear.default, (x, d, nw, 1e-6, w), sg._norm_ref(x + d, nw, 1e-6) @ w.T),
    ]
    for op, args, want in cases:
        torch.library.opcheck(op, args)
        got = op(*args)
        got = got[0] if isinstance(got, tuple) else got
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.library.opcheck(ops.argmax_rows.default, (torch.randn(3, 50, generator=g),))


SKINNY = """
import json, sys
import torch
from tuna_engine.kernels import skinny_gemm as sg

def view_of_wider(t, g):
    # t's values in a tensor whose rows are longer: columns past t's are NaN
    wide = torch.full((*t.shape[:-1], t.shape[-1] + 7), float("nan"), dtype=t.dtype)
    wide[..., : t.shape[-1]] = t
    return wide[..., : t.shape[-1]]

out = []
g = torch.Generator().manual_seed(0)
# (M, N, K, config): N and K not multiples of the blocks, 1..4 splits, M = 1 and 16 (the decode bucket) and 33
for M, N, K, cfg in [
    (3, 40, 70, sg.Config(16, 32, 1)),
    (16, 100, 300, sg.Config(32, 64, 2)),
    (5, 33, 600, sg.Config(16, 64, 4)),
    (1, 64, 256, sg.Config(64, 64, 3)),
    (33, 48, 96, sg.Config(16, 32, 2)),
]:
    for dtype in (torch.float32, torch.bfloat16):
        w = view_of_wider(torch.randn(N, K, generator=g).to(dtype), g)
        x = view_of_wider(torch.randn(M, 1, K, generator=g).to(dtype), g)
        d = torch.randn(M, 1, K, generator=g).to(dtype)
        r = torch.randn(M, 1, N, generator=g).to(dtype)
        nw = (1 + 0.1 * torch.randn(K, generator=g)).to(dtype)
        gu = view_of_wider(torch.randn(M, 1, 2 * K, generator=g).to(dtype), g)
        for name, xi, kw in [
            ("plain", x, {}),
            ("residual", x, dict(residual=r)),
            ("silu", gu, dict(prologue=sg.SILU_MUL)),
            ("norm", x, dict(prologue=sg.NORM, norm_w=nw, eps=1e-6)),
            ("add_norm", x, dict(prologue=sg.NORM, norm_w=nw, eps=1e-6, d=d)),
        ]:
            got, s = sg.skinny_triton(xi, w, config=cfg, **kw)
            again, _ = sg.skinny_triton(xi, w, config=cfg, **kw)
            want, ws = sg.reference(xi, w, **kw)
            scale = want.double().abs().max().item()
            err = (got.double() - want.double()).abs().max().item() / scale
            s_err = 0.0 if s is None else (s.double() - ws.double()).abs().max().item()
            counters_zero = all(int(c.abs().sum()) == 0 for c in sg._COUNTERS.values())
            out.append([M, N, K, cfg.split_k, str(dtype), name, err, s_err, s is None, kw.get("d") is None,
                        list(got.shape) == [M, 1, N] and got.dtype == dtype, torch.equal(got, again), counters_zero])
print(json.dumps(out))
"""


@needs_triton
def test_skinny_gemm_kernel_interpreted_equals_eager_ops():
    """Every prologue/epilogue, fp32 and bf16, 1–4 K splits: within rounding of the eager ops; x + d written out
    by the add-norm form (exactly in fp32); a second call gives the same bits (split-K sums in a fixed order) and
    the split counters are back at zero after each call."""
    rows = _interpreted(SKINNY)
    assert len(rows) == 5 * 2 * 5
    for M, N, K, split, dtype, name, err, s_err, s_none, d_none, shape_ok, same, zero in rows:
        where = (M, N, K, split, dtype, name)
        assert shape_ok and same and zero, where
        assert err < (1e-5 if dtype == "torch.float32" else 3e-2), (*where, err)
        assert s_none == d_none, where
        assert s_err <= (0.0 if dtype == "torch.float32" else 2e-2 * 4), (*where, s_err)


ARGMAX = """
import json
import torch
from tuna_engine.kernels.argmax import argmax_triton

g = torch.Generator().manual_seed(0)
x = torch.randn(6, 5000, generator=g)
x[1, 100] = x[1].max() + 1
x[1, 4000] = x[1, 100]            # a tie across chunks: the first index
x[2, 1030] = x[2].max() + 1
x[2, 1031] = x[2, 1030]           # a tie inside a chunk
x[3, 4500] = float("nan")
x[3, 10] = float("nan")           # NaN counts as the maximum: the first NaN
x[3, 11] = float("inf")
x[4] = float("-inf")              # all -inf: index 0
x[5, 4999] = 1e30                 # the last column (a partial chunk)
out = []
for chunk in (1024, 2048, 512):
    for t in (x, x.bfloat16(), x[:, :4097]):
        out.append([chunk, str(t.dtype), argmax_triton(t, chunk).tolist(), t.argmax(-1).tolist()])
print(json.dumps(out))
"""


@needs_triton
def test_argmax_kernels_interpreted_equal_torch_argmax():
    rows = _interpreted(ARGMAX)
    assert len(rows) == 9
    for chunk, dtype, got, want in rows:
        assert got == want, (chunk, dtype, got, want)
    assert rows[0][3] == [rows[0][3][0], 100, 1030, 10, 0, 4999]  # the cases are what they claim


DECODE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import torch
from tuna_engine.kernels import argmax as am, skinny_gemm as sg
from tuna_engine.generate import load_for_generation
from tuna_engine.protocol import parse_generate_plan
from test_generate import PROMPTS, plan, req

calls = {}
def counted(name, fn):
    def wrapped(*a, **kw):
        key = name if name == "argmax" else f"{name}:{a[2] if len(a) > 2 else kw.get('prologue', 0)}"
        if name != "argmax" and (a[3] if len(a) > 3 else kw.get("residual")) is not None:
            key += "+residual"
        if name != "argmax" and (a[4] if len(a) > 4 else kw.get("d")) is not None:
            key += "+d"
        calls[key] = calls.get(key, 0) + 1
        return fn(*a, **kw)
    return wrapped
sg.skinny_triton = counted("skinny", sg.skinny_triton)
am.argmax_triton = counted("argmax", am.argmax_triton)

base = Path(sys.argv[1])
p = parse_generate_plan(plan(base, {"lora": base.parent / "lora", "dora": base.parent / "dora"}, batch=2))
e = load_for_generation(p, mode="eager", compile=True)
assert e.decoder.kernels == e.decoder.kernels._replace(gemm=True, silu=True, norm=True, argmax=True)
runs = {
    "mixed": [req("a", PROMPTS[0], 5, "lora"), req("b", PROMPTS[3], 5, None)],
    "dora": [req("c", PROMPTS[2], 4, "dora"), req("d", PROMPTS[4], 4, None)],
    "base": [req("e", PROMPTS[5], 5, None), req("f", PROMPTS[1], 5, None)],
}
print(json.dumps([{k: e.generate(r) for k, r in runs.items()}, calls]))
"""


@needs_triton
def test_compiled_decode_with_every_kernel_gives_the_baseline_tokens(models):  # noqa: F811
    """TUNA_DECODE_KERNELS=all on the compiled whole-layer step (CPU Inductor, fp32, batch bucket 2, K split in two
    by TUNA_SKINNY_CONFIG), the Triton kernels interpreted: greedy tokens equal the uncompiled fused step's for
    steps with LoRA rows (q/v/o adapters: the qkv and o groups keep their eager form with the skinny base GEMM),
    DoRA rows (every group eager) and base rows (every fused form); each fused form and the argmax ran."""
    got, calls = _interpreted(
        DECODE,
        str(models["dir"]),
        str(ENGINE_DIR / "tests"),
        env={"TUNA_DECODE_KERNELS": "all", "TUNA_SKINNY_CONFIG": "16,32,2,4,2"},
    )
    p = parse_generate_plan(plan(models["dir"], _adapters(models), batch=2))
    baseline = load_for_generation(p, mode="eager")
    assert baseline.decoder is not None and baseline.decoder.kernels == Kernels()
    want = {
        "mixed": baseline.generate([req("a", PROMPTS[0], 5, "lora"), req("b", PROMPTS[3], 5, None)]),
        "dora": baseline.generate([req("c", PROMPTS[2], 4, "dora"), req("d", PROMPTS[4], 4, None)]),
        "base": baseline.generate([req("e", PROMPTS[5], 5, None), req("f", PROMPTS[1], 5, None)]),
    }
    assert got == want
    print(calls)
    # add-norm qkv, o + residual, norm gate/up, SiLU down (base steps); plain skinny base GEMMs (adapter steps)
    for key in ("skinny:2+d", "skinny:0+residual", "skinny:2", "skinny:1", "skinny:0", "argmax"):
        assert calls.get(key, 0) > 0, (key, calls)


def test_persistent_kernel_is_refused_where_it_cannot_launch(models, monkeypatch):  # noqa: F811
    """TUNA_DECODE_KERNELS=persistent on a CPU without Triton's interpreter: refused when the decoder is built,
    naming the kernel and what it needs, rather than failing at the first decode step."""
    monkeypatch.setenv("TUNA_DECODE_KERNELS", "persistent")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    p = parse_generate_plan(plan(models["dir"], batch=2))
    with pytest.raises(
        EngineError, match="decode kernel 'persistent' needs the triton package and a CUDA device"
    ):
        load_for_generation(p, mode="eager", compile=True)


def test_a_bad_decode_kernels_variable_is_refused_before_the_model_loads(models, monkeypatch):  # noqa: F811
    """TUNA_DECODE_KERNELS with an unknown name: PLAN_INVALID naming the variable, raised before any weight is read
    (the plan points at a directory that does not exist, which would be another error had loading begun)."""
    monkeypatch.setenv("TUNA_DECODE_KERNELS", "persistant")
    p = parse_generate_plan(plan(models["dir"].parent / "no-such-model", batch=2))
    with pytest.raises(
        EngineError, match=r"environment variable TUNA_DECODE_KERNELS: unknown \['persistant'\]"
    ) as e:
        load_for_generation(p, mode="eager", compile=True)
    assert e.value.code == "PLAN_INVALID"
