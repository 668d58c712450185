"""Activation offload (models/llama.py `ActivationOffload`, train.offload_activations) on CPU.

- The grouping and prefetch logic on a chain of toy layers with a fake device (`FakeDevice`: every copy is a CPU
  clone with an event object; the log says what was copied, when, and what the compute stream waited for): the
  forward releases each layer's device tensors OFFLOAD_LAG layers later after waiting for their copies; the
  backward loads layer i-1 when it first unpacks layer i, waits for each tensor's own copy, keeps at most two
  layers' reloaded copies alive, and frees host copies with the graph.
- The model: loss and grads bit-identical with offload on and off for every recompute setting, tiled MLP, the
  pinned-memory fallback, and compiled layers (inductor on CPU).
- The host memory guard (issue 5), with the host's available memory injected (`FakeHost`: a budget less the
  host copies alive): when the host runs out mid-forward the rest of the tensors stay on the device, nothing is
  copied for them, the last layers are the ones kept (whole groups where a group would not fit), loss and grads
  stay bit-identical, the step's log line and the OOM hint name the layers; /proc/meminfo and cgroup parsing,
  the margin math; the engine end to end logs what it offloaded and kept.
GPU (streams, pinned memory, peak memory): tests/gpu/test_offload_gpu.py.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import make_hf_model, random_samples
from test_lora import packed_batch

from tuna_engine.errors import EngineError
from tuna_engine.lora import set_lora_compute
from tuna_engine.models import llama, load_model
from tuna_engine.protocol import LoraSpec
from tuna_engine.train import weighted_ce_sum

LAYERS = 5


class Event:
    def __init__(self, kind: str, host: torch.Tensor) -> None:
        self.kind, self.host_id = kind, id(host)


class FakeDevice(llama.Copier):
    """Copies are CPU clones; `log` records ("d2h", group), ("h2d", group), ("wait", event); reloaded device
    copies are counted per layer. `fail_after`: to_host raises after that many copies
    (pinned memory running out)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.state: llama.ActivationOffload | None = None
        self.log: list[tuple[str, Any]] = []
        self.group_of: dict[int, int] = {}  # id(host copy) → layer
        self.fail_after = fail_after
        self.max_resident_groups = 0

    def to_host(self, span: torch.Tensor) -> tuple[torch.Tensor, Any]:
        assert self.state is not None
        if self.fail_after is not None and sum(k == "d2h" for k, _ in self.log) >= self.fail_after:
            raise RuntimeError("CUDA error: out of memory (pinned, simulated)")
        host = span.clone()
        self.group_of[id(host)] = self.state.group
        self.log.append(("d2h", self.state.group))
        return host, Event("d2h", host)

    def to_device(self, hosts: list[torch.Tensor], device: torch.device) -> list[tuple[torch.Tensor, Any]]:
        out = []
        for h in hosts:
            d = h.clone()
            g = self.group_of[id(h)]
            self.log.append(("h2d", g))
            out.append((d, Event("h2d", h)))
        self.check_resident()
        return out

    def wait(self, event: Any, device: torch.device) -> None:
        self.log.append(("wait", event))

    def resident_groups(self) -> set[int]:
        """Layers with copies loaded back and not yet handed to autograd for the last time. (A weak reference
        to the clone would not do: a view can keep a tensor's storage alive without its Python object.)"""
        assert self.state is not None
        return {
            g
            for g, refs in self.state.groups.items()
            for ref in refs
            if (h := ref()) is not None and h.gpu is not None and h.h2d is not None
        }

    def check_resident(self) -> None:
        self.max_resident_groups = max(self.max_resident_groups, len(self.resident_groups()))


def fake_hooks(min_bytes: int = 0, fail_after: int | None = None) -> tuple[llama.OffloadHooks, FakeDevice]:
    fake = FakeDevice(fail_after)
    hooks = llama.OffloadHooks(llama.ActivationOffload(min_bytes, fake))
    fake.state = hooks.state
    return hooks, fake


def toy_params(d: int = 24) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(d, d, generator=g) / d**0.5) for _ in range(LAYERS)]


def toy_forward(
    x: torch.Tensor, ws: list[torch.nn.Parameter], hooks: llama.OffloadHooks | None
) -> torch.Tensor:
    """LAYERS toy layers, each saving a few tensors (a matmul input, a tanh output, a non-contiguous slice and
    a transposed view), then a final op as a group of its own — the shape of CausalLM.forward's loop."""

    def body() -> torch.Tensor:
        h = x
        for i, w in enumerate(ws):
            if hooks is not None:
                hooks.enter_layer(i)
            a = torch.tanh(h @ w)  # saves h (for w's grad) and tanh's output
            half = h[:, : h.shape[1] // 2]  # a view covering more storage than its elements
            b = half * a[:, : h.shape[1] // 2]
            c = (h.mT * a.mT).mT  # saves transposed views
            h = h + torch.cat([b, b], dim=1) + c
        if hooks is not None:
            hooks.enter_layer(len(ws))
        return (h * h).sum()

    if hooks is None:
        return body()
    with hooks:
        return body()


def toy_grads(hooks: llama.OffloadHooks | None, retain: bool = False) -> tuple[float, list[torch.Tensor]]:
    ws = toy_params()
    x = torch.randn(16, 24, generator=torch.Generator().manual_seed(1))
    loss = toy_forward(x, ws, hooks)
    loss.backward(retain_graph=retain)
    if retain:
        loss.backward()
    return float(loss.detach()), [w.grad for w in ws]  # type: ignore[misc]


def test_toy_chain_grads_identical_and_prefetch_order() -> None:
    ref_loss, ref = toy_grads(None)
    hooks, fake = fake_hooks()
    state = hooks.state
    unpack = hooks.unpack_hook

    def logged(packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return unpack(packed)
        _, held, group = packed
        fake.log.append(("unpack", group))
        out = unpack(packed)
        if group <= LAYERS - llama.OFFLOAD_LAG:  # released in forward, so a reloaded copy
            assert fake.log[-1][0] == "wait" and fake.log[-1][1].kind == "h2d"
            assert fake.log[-1][1].host_id == id(held.host)  # waited for this tensor's own copy
        fake.check_resident()
        return out

    hooks.unpack_hook = logged
    loss, got = toy_grads(hooks)
    assert loss == ref_loss
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)

    released = LAYERS + 1 - llama.OFFLOAD_LAG  # groups 0 .. LAYERS-2 leave the device in forward
    h2d = [g for k, g in fake.log if k == "h2d"]
    assert sorted(set(h2d)) == list(range(released))  # the last OFFLOAD_LAG groups never round-trip
    d2h = [g for k, g in fake.log if k == "d2h"]
    assert sorted(h2d) == sorted(g for g in d2h if g < released)  # each released tensor copied back once
    unpacked = [g for k, g in fake.log if k == "unpack"]
    assert unpacked == sorted(unpacked, reverse=True)  # the backward goes top-down, layer by layer
    # Every reloaded layer was loaded (all of it at once) after the layer above began its backward and before
    # its own first unpack: a prefetch, never an on-demand load.
    first = {}
    for n, e in enumerate(fake.log):
        first.setdefault(e if e[0] != "wait" else n, n)
    for g in range(released):
        assert first["unpack", g + 1] < first["h2d", g] < first["unpack", g], g
        loads = [n for n, e in enumerate(fake.log) if e == ("h2d", g)]
        assert loads == list(range(loads[0], loads[0] + len(loads)))
    assert 1 <= fake.max_resident_groups <= 2
    assert not fake.resident_groups()  # all reloaded copies freed by the end of backward
    assert state.stats["h2d"] == len(h2d)


def held_of(state: llama.ActivationOffload, g: int) -> list[Any]:
    return [h for ref in state.groups.get(g, ()) if (h := ref()) is not None]


def test_forward_releases_device_tensors_lag_layers_later_after_waiting() -> None:
    hooks, fake = fake_hooks()
    state = hooks.state
    ws = toy_params()
    x = torch.randn(16, 24)
    seen: list[tuple[int, set[int], Any]] = []
    enter = hooks.enter_layer

    def watched(i: int) -> None:
        n = len(fake.log)
        enter(i)
        waits = [e for k, e in fake.log[n:] if k == "wait"]
        on_device = {g for g in state.groups if any(h.gpu is not None for h in held_of(state, g))}
        seen.append((i, on_device, waits))

    hooks.enter_layer = watched  # type: ignore[method-assign]
    loss = toy_forward(x, ws, hooks)
    for i, on_device, waits in seen:
        assert on_device == set(range(max(0, i - llama.OFFLOAD_LAG + 1), i)), (i, on_device)
        if i >= llama.OFFLOAD_LAG:
            # one wait: for the newest copy of the released layer (copies on one stream finish in order)
            released = held_of(state, i - llama.OFFLOAD_LAG)
            assert len(waits) == 1 and waits[0].kind == "d2h"
            assert waits[0].host_id == id(max(released, key=lambda h: h.seq).host)
        else:
            assert waits == []
    # every saved non-parameter tensor was copied to the host exactly once, when it was saved
    assert [g for k, g in fake.log if k == "d2h"] == sorted(g for k, g in fake.log if k == "d2h")
    loss.backward()


def dedup_case(hooks: llama.OffloadHooks | None) -> torch.Tensor:
    w = torch.nn.Parameter(torch.arange(64.0).reshape(8, 8) / 64)
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))
    with hooks if hooks is not None else torch.enable_grad():
        if hooks is not None:
            hooks.enter_layer(0)
        y = x @ w  # saves x
        z = x @ w  # saves the same x again
        u = (x.mT * w).sum() + (y * z).sum()  # mul saves the transposed view x.mT, and y, z
    u.backward()
    return w.grad  # type: ignore[return-value]


def test_same_view_saved_twice_is_copied_once_and_views_keep_strides() -> None:
    ref = dedup_case(None)
    hooks, fake = fake_hooks()
    strides = set()
    unpack = hooks.unpack_hook

    def record(packed: Any) -> torch.Tensor:
        out = unpack(packed)
        strides.add((tuple(out.shape), out.stride()))
        return out

    hooks.unpack_hook = record
    assert torch.equal(dedup_case(hooks), ref)
    assert hooks.state.stats["deduplicated"] == 1
    assert len([g for k, g in fake.log if k == "d2h"]) == 4  # x once, x.mT, y, z
    assert ((8, 8), (1, 8)) in strides  # the transposed view comes back transposed


def test_host_copies_are_freed_with_the_graph_without_the_garbage_collector() -> None:
    """No reference cycle between the graph's packed tensors and the offload state: pinned host memory goes
    back as soon as the graph is freed, not at the next garbage collection."""
    gc.disable()
    try:
        hooks, _ = fake_hooks()
        ws = toy_params()
        loss = toy_forward(torch.randn(16, 24), ws, hooks)
        hosts = [weakref.ref(h.host) for g in hooks.state.groups for h in held_of(hooks.state, g)]
        assert hosts and all(r() is not None for r in hosts)
        loss.backward()
        del loss
        assert all(r() is None for r in hosts)
    finally:
        gc.enable()


def test_retain_graph_second_backward_reloads() -> None:
    _, ref = toy_grads(None, retain=True)
    hooks, fake = fake_hooks()
    unpack = hooks.unpack_hook

    def checked(packed: Any) -> torch.Tensor:
        out = unpack(packed)
        fake.check_resident()  # the graph (and every packed tensor) lives on: copies are dropped by the hooks
        return out

    hooks.unpack_hook = checked
    _, got = toy_grads(hooks, retain=True)
    assert 1 <= fake.max_resident_groups <= 2
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)
    h2d = [g for k, g in fake.log if k == "h2d"]
    assert len(h2d) > len(set(h2d))  # the second backward copied the tensors back again


def test_pinned_failure_falls_back_to_synchronous_copies() -> None:
    _, ref = toy_grads(None)
    hooks, fake = fake_hooks(fail_after=3)
    _, got = toy_grads(hooks)
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)
    assert not hooks.state.pinned_ok
    assert sum(k == "d2h" for k, _ in fake.log) == 3  # the rest went the synchronous way
    assert hooks.state.stats["offloaded_bytes"] > 3 * 16 * 24 * 4


# ---- the model --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen3-4l")
    make_hf_model(path, "qwen3", num_hidden_layers=4)
    return path


@contextmanager
def capture_offload(monkeypatch: pytest.MonkeyPatch, fake: bool) -> Iterator[list[Any]]:
    """Every forward's offload hooks with min_bytes=0 (the tiny model's tensors are all small)."""
    made: list[Any] = []
    real = llama.offload_saved_tensors

    def make(min_bytes: int = 1 << 16, copier: llama.Copier | None = None, **kw: Any) -> llama.OffloadHooks:
        if fake:
            hooks, dev = fake_hooks()
            made.append((hooks, dev))
            return hooks
        hooks = real(min_bytes=0, host_memory=lambda: llama.HostMemory(1 << 50, 1 << 50))  # host never short
        made.append((hooks, None))
        return hooks

    monkeypatch.setattr(llama, "offload_saved_tensors", make)
    yield made
    monkeypatch.setattr(llama, "offload_saved_tensors", real)


def step(model_dir: Path, recompute: str, offload: bool, compile_layers: bool = False):
    lora = LoraSpec(
        r=4, alpha=8.0, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
    )
    model = load_model(str(model_dir), "float32", torch.device("cpu"), lora, seed=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.requires_grad_(".lora_" in n)
            if ".lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    set_lora_compute(model, "auto")
    model.recompute, model.offload_activations = recompute, offload
    model.train()
    if compile_layers:
        for layer in model.model.layers:
            layer.compile()
    batch = packed_batch(random_samples(6, seed=3), per_row=2)
    loss = weighted_ce_sum(model, batch) / batch.loss_weight[:, 1:].sum()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", ["auto", "exact"])
def test_weights_and_their_views_stay(tiny4: Path, mode: str) -> None:
    """Eager F.linear saves W.t() (a view of the frozen weight) for the input's gradient: it must not be copied."""
    lora = LoraSpec(
        r=4, alpha=8.0, dropout=0.0, target_modules=("all-linear",), use_rslora=False, use_dora=False
    )
    model = load_model(str(tiny4), "float32", torch.device("cpu"), lora, seed=1)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    set_lora_compute(model, mode)
    model.recompute = "none"
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    hooks = llama.offload_saved_tensors(min_bytes=0)
    copied: list[torch.Tensor] = []
    pack = hooks.pack_hook

    def rec(t: torch.Tensor) -> Any:
        out = pack(t)
        if out is not t:
            copied.append(t)
        return out

    hooks.pack_hook = rec
    batch = packed_batch(random_samples(4, seed=3), per_row=2)
    with hooks:
        hooks.enter_layer(0)
        model.model.layers[0](
            model.model.embed_tokens(batch.input_ids).requires_grad_(),
            *[torch.ones(*batch.input_ids.shape, 16)] * 2,
            llama.Segments(batch.sample_ids, batch.sample_ids, 0),
        )
    assert len(copied) > 5
    assert not [tuple(t.shape) for t in copied if t.untyped_storage().data_ptr() in weights]


@pytest.mark.parametrize("recompute", ["none", "mlp", "full", "mlp-tiled"])
@pytest.mark.parametrize("fake", [False, True], ids=["cpu", "fake-device"])
def test_model_offload_on_off_identical(
    tiny4: Path, monkeypatch: pytest.MonkeyPatch, recompute: str, fake: bool
) -> None:
    if recompute == "mlp-tiled":  # the long-row path: the MLP block in checkpointed tiles of 16 tokens
        monkeypatch.setattr(llama, "MLP_TILE_TOKENS", 16)
        recompute = "mlp"
    ref_loss, ref = step(tiny4, recompute, False)
    with capture_offload(monkeypatch, fake) as made:
        loss, got = step(tiny4, recompute, True)
    assert loss == ref_loss
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    [(hooks, dev)] = made
    state = hooks.state
    assert state.stats["offloaded_bytes"] > 0
    layers = 4
    # groups: one per layer + the final norm; those the forward pass releases (all but the last OFFLOAD_LAG) went to
    # the host and came back; the others were never copied (the final norm's input: no group at all)
    assert set(state.groups) <= set(range(layers)) and state.stats["kept_bytes"] > 0
    assert state.stats["h2d"] >= layers + 1 - llama.OFFLOAD_LAG
    if dev is not None:
        assert sorted({g for k, g in dev.log if k == "d2h"}) == list(range(layers + 1 - llama.OFFLOAD_LAG))
        assert sorted({g for k, g in dev.log if k == "h2d"}) == list(range(layers + 1 - llama.OFFLOAD_LAG))
        assert dev.max_resident_groups <= 2
        assert not dev.resident_groups()


@pytest.mark.parametrize("device_layers", ["0", "2"])
def test_model_offload_device_layers(
    tiny4: Path, monkeypatch: pytest.MonkeyPatch, device_layers: str
) -> None:
    """TUNA_OFFLOAD_DEVICE_LAYERS=k: the last k layers' saved tensors (and the final norm's) are never copied, the
    rest go to the host and come back; loss and grads equal offload off."""
    ref_loss, ref = step(tiny4, "full", False)
    llama.set_offload_device_layers(device_layers)
    try:
        with capture_offload(monkeypatch, True) as made:
            loss, got = step(tiny4, "full", True)
    finally:
        llama.set_offload_device_layers(None)
    assert loss == ref_loss
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    [(hooks, dev)] = made
    # copied: layers 0..3-k; loaded back: those the forward released (it never releases the last OFFLOAD_LAG groups)
    copied = 4 - int(device_layers)
    assert sorted({g for k, g in dev.log if k == "d2h"}) == list(range(copied))
    assert sorted({g for k, g in dev.log if k == "h2d"}) == list(range(min(copied, 5 - llama.OFFLOAD_LAG)))
    assert not dev.resident_groups()


def test_offload_device_layers_bad_value_names_the_variable() -> None:
    with pytest.raises(EngineError, match="TUNA_OFFLOAD_DEVICE_LAYERS: 'last4' is not a count"):
        llama.set_offload_device_layers("last4")
    assert llama.offload_device_layers() == llama.OFFLOAD_LAG - 1


def test_compiled_layers_with_mlp_recompute_and_offload(tiny4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile: each decoder layer compiled (inductor on CPU); the saved tensors of the compiled layers
    go through the hooks and come back with their strides: same loss and grads as eager without offload."""
    torch._dynamo.reset()
    ref_loss, ref = step(tiny4, "mlp", False)
    with capture_offload(monkeypatch, True) as made:
        loss, got = step(tiny4, "mlp", True, compile_layers=True)
    assert abs(loss - ref_loss) / ref_loss < 1e-5
    for k in ref:
        rel = float((got[k] - ref[k]).abs().max() / ref[k].abs().max())
        assert rel < 1e-4, (k, rel)
    [(hooks, dev)] = made
    assert dev.max_resident_groups <= 2 and hooks.state.stats["h2d"] > 0


# ---- the host memory guard --------------------------------------------------------------------------------


class FakeHost:
    """Injected `host_memory`: the host has `budget` bytes above the margin, less the host copies alive (a copy
    gives its memory back when freed). `reads` lists the group each reading was made in."""

    def __init__(self, budget: int, total: int = 8 << 30) -> None:
        self.budget, self.total, self.live = budget, total, 0
        self.state: llama.ActivationOffload | None = None
        self.reads: list[int] = []

    def track(self, host: torch.Tensor) -> None:
        n = host.numel() * host.element_size()
        self.live += n
        weakref.finalize(host, self._free, n)

    def _free(self, n: int) -> None:
        self.live -= n

    def __call__(self) -> llama.HostMemory:
        self.reads.append(self.state.group if self.state is not None else -1)
        return llama.HostMemory(llama.host_margin(self.total) + self.budget - self.live, self.total)


class TrackedDevice(FakeDevice):
    def __init__(self, host: FakeHost) -> None:
        super().__init__()
        self.host = host

    def to_host(self, span: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out, event = super().to_host(span)
        self.host.track(out)
        return out, event


def guarded_hooks(budget: int) -> tuple[llama.OffloadHooks, TrackedDevice, FakeHost, llama.OffloadReport]:
    host = FakeHost(budget)
    dev = TrackedDevice(host)
    report = llama.OffloadReport(LAYERS)
    hooks = llama.OffloadHooks(llama.ActivationOffload(0, dev, host_memory=host, report=report))
    dev.state = host.state = hooks.state
    return hooks, dev, host, report


def toy_group_bytes() -> dict[int, int]:
    """Host bytes each toy layer group copies with the host never short."""
    hooks, dev, _, _ = guarded_hooks(1 << 40)
    toy_grads(hooks)
    return dict(hooks.state.group_cost)


def test_margin_math() -> None:
    gib = 1 << 30
    assert llama.host_margin(0) == 4 * gib
    assert llama.host_margin(64 * gib) == 4 * gib  # 5% = 3.2 GiB < 4 GiB
    assert llama.host_margin(80 * gib) == 4 * gib
    assert llama.host_margin(125 * gib) == 125 * gib // 20  # the 125 GiB machine of issue 5: 6.25 GiB
    assert llama.host_margin(2048 * gib) == 2048 * gib // 20
    # pinned copies are charged as the power-of-two blocks the host allocator hands out
    assert llama.StreamCopier.host_bytes(None, 2_952_790_016) == 4 * gib  # type: ignore[arg-type]
    assert llama.StreamCopier.host_bytes(None, 4 * gib) == 4 * gib  # type: ignore[arg-type]
    assert llama.StreamCopier.host_bytes(None, 4 * gib + 1) == 8 * gib  # type: ignore[arg-type]
    assert llama.Copier().host_bytes(3_000_000_000) == 3_000_000_000


MEMINFO = """MemTotal:       131072000 kB
MemFree:         1024000 kB
MemAvailable:   20971520 kB
Buffers:          123456 kB
Cached:         40000000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_parse_meminfo() -> None:
    mem = llama.parse_meminfo(MEMINFO)
    assert mem == llama.HostMemory(20971520 * 1024, 131072000 * 1024)
    assert llama.parse_meminfo(MEMINFO.replace("MemAvailable", "MemFreeish")) is None  # kernels before 3.14
    assert llama.parse_meminfo("") is None
    real = llama.read_host_memory()  # this machine: Linux
    assert real is not None and 0 < real.available <= real.total


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("17179869184\n")  # 16 GiB
    (tmp_path / "memory.current").write_text(str(10 << 30) + "\n")
    (tmp_path / "memory.stat").write_text(f"anon 1234\nfile 99\ninactive_file {3 << 30}\nactive_file 5\n")
    # usage less the reclaimable inactive file pages: 7 GiB of 16 used
    assert llama.cgroup_memory(tmp_path) == llama.HostMemory(9 << 30, 16 << 30)
    (tmp_path / "memory.max").write_text("max\n")
    assert llama.cgroup_memory(tmp_path) is None
    assert llama.cgroup_memory(tmp_path / "absent") is None


def test_guard_keeps_the_last_layers_on_the_device_when_the_host_runs_out() -> None:
    """The host can take layers 0 and 1 and half of layer 2: layers 2.. and the final op stay on the device,
    whole (layer 2 would not fit whole), nothing is copied for them, and the grads do not change."""
    ref_loss, ref = toy_grads(None)
    cost = toy_group_bytes()
    hooks, dev, host, report = guarded_hooks(cost[0] + cost[1] + cost[2] // 2)
    loss, got = toy_grads(hooks)
    assert loss == ref_loss
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)
    state = hooks.state
    assert state.kept_from == 2
    assert sorted({g for k, g in dev.log if k == "d2h"}) == [0, 1]  # nothing copied for the kept tensors
    assert set(state.groups) == {0, 1}  # kept tensors are autograd's own: not tracked
    assert host.reads == [0, 1, 2]  # one reading a group, none once the guard keeps the rest
    assert state.stats["guard_kept_bytes"] > 0 and state.stats["offloaded_bytes"] > 0
    assert report.kept_from == 2 and report.forwards == 1
    line = report.end_step()
    assert line is not None and line.startswith("offload: host memory available ")
    assert "keeping layers 2..4 and the final norm's input on the GPU" in line
    assert report.kept_from is None and report.forwards == 0  # counts start over each step


def test_guard_mid_group_keeps_the_rest_of_the_pass() -> None:
    """Layer 0 itself does not fit (no group to judge by yet): its first tensors go to the host, the one that
    would not fit and everything after stays on the device."""
    ref_loss, ref = toy_grads(None)
    cost = toy_group_bytes()
    hooks, dev, _, report = guarded_hooks(cost[0] // 2)
    loss, got = toy_grads(hooks)
    assert loss == ref_loss
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)
    d2h = [g for k, g in dev.log if k == "d2h"]
    assert d2h and set(d2h) == {0}
    assert hooks.state.group_cost[0] <= cost[0] // 2
    assert hooks.state.kept_from == 0 and not [g for k, g in dev.log if k == "h2d" and g > 0]
    assert "keeping layers 0..4 and the final norm's input" in (report.guard_note() or "")


def test_guard_with_room_changes_nothing() -> None:
    cost = toy_group_bytes()
    # enough for all, and for the largest group on top at the last reading (a group is judged by the largest)
    hooks, dev, host, report = guarded_hooks(sum(cost.values()) + max(cost.values()))
    toy_grads(hooks)
    assert hooks.state.kept_from is None and hooks.state.stats["guard_kept_bytes"] == 0
    assert host.reads == list(range(LAYERS + 1))
    assert report.guard_note() is None
    line = report.end_step()  # the first step: totals
    assert line is not None and "went to host memory" in line and "stayed on the GPU" in line
    assert report.end_step() is None  # later steps say nothing unless the guard acts


def test_model_guard_kept_layers_identical(tiny4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model, synchronous copies: the host runs out after two layers (a reading per layer group:
    plenty, plenty, then nothing); loss and grads equal offload off, layers 2.. never went to the host."""
    ref_loss, ref = step(tiny4, "mlp", False)
    made: list[llama.OffloadHooks] = []
    reads: list[int] = []
    real = llama.offload_saved_tensors

    def host() -> llama.HostMemory:
        reads.append(made[-1].state.group)
        free = 1 << 40 if len(reads) <= 2 else 0
        return llama.HostMemory(llama.host_margin(1 << 33) + free, 1 << 33)

    def make(min_bytes: int = 1 << 16, copier: llama.Copier | None = None, **kw: Any) -> llama.OffloadHooks:
        made.append(real(0, copier, host_memory=host))
        return made[-1]

    monkeypatch.setattr(llama, "offload_saved_tensors", make)
    loss, got = step(tiny4, "mlp", True)
    assert loss == ref_loss
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    [hooks] = made
    state = hooks.state
    assert reads == [0, 1, 2] and state.kept_from == 2
    # No copy made from layer 2 on: what later groups hold are tensors copied before (the rotary tables every
    # layer saves again, deduplicated).
    early = {id(h) for g in (0, 1) for h in held_of(state, g)}
    assert all(id(h) in early for g in state.groups if g >= 2 for h in held_of(state, g))
    assert state.stats["h2d"] > 0 and state.stats["guard_kept_bytes"] > 0


def test_oom_hint_names_host_memory(tmp_path: Path) -> None:
    from helpers import make_plan

    from tuna_engine.protocol import parse_train_plan
    from tuna_engine.train import oom_error

    plan = parse_train_plan(make_plan(tmp_path, tmp_path, [tmp_path / "x.safetensors"]))
    report = llama.OffloadReport(4)
    plain = oom_error("CUDA out of memory. Tried to allocate 2 GiB", "forward", plan, 3, report.guard_note())
    assert "host memory" not in (plain.hint or "")
    hooks, _, _, report = guarded_hooks(0)
    toy_grads(hooks)
    err = oom_error("CUDA out of memory. Tried to allocate 2 GiB", "forward", plan, 3, report.guard_note())
    assert "host memory ran short" in (err.hint or "") and "keeping layers 0..4" in (err.hint or "")


def test_engine_logs_offload_and_the_guard(tmp_path: Path) -> None:
    """`train` end to end on CPU with offload on: the first step logs what went to the host; with the host's
    memory patched to nothing left, every step logs the guard's line and the losses equal offload off."""
    from helpers import make_plan, run_engine, write_plan, write_shard

    make_hf_model(tmp_path / "model", "qwen3", num_hidden_layers=4)
    shard = write_shard(tmp_path / "train.safetensors", random_samples(8, seed=4))

    def run(name: str, offload: bool, prelude: str = "") -> tuple[list[float], str]:
        plan = make_plan(
            tmp_path / name, tmp_path / "model", [shard], max_steps=2, offload_activations=offload
        )
        code, events, err = run_engine("train", write_plan(plan), prelude=prelude)
        assert code == 0, err
        return [e["loss"] for e in events if e["event"] == "step"], err

    # the tiny model's tensors are all under the 64 KiB floor: offload them all
    every = (
        "from tuna_engine.models import llama\n"
        "real = llama.offload_saved_tensors\n"
        "llama.offload_saved_tensors = lambda min_bytes=0, copier=None, **kw: real(0, copier, **kw)\n"
    )
    off, _ = run("off", False)
    on, err = run("on", True, every)
    assert on == off
    [line] = [x for x in err.splitlines() if "went to host memory" in x]
    assert (
        line.startswith("offload: ") and not line.startswith("offload: 0.00 MiB") and "over 2 forward" in line
    )
    short = every + "llama.read_host_memory = lambda: llama.HostMemory(llama.HOST_MARGIN_MIN, 1 << 33)\n"
    guarded, err = run("guarded", True, short)
    assert guarded == off
    lines = [x for x in err.splitlines() if x.startswith("offload: host memory available 4.0 GiB of 8.0")]
    assert len(lines) == 2, err  # once a step
    assert "keeping layers 0..3 and the final norm's input on the GPU" in lines[0]


def test_auto_offloads_only_passes_with_large_layer_inputs() -> None:
    # Meta tensors: only the sizes matter. Qwen3-0.6B at 8 × 2048 (28 layers of [16384, 1024] bf16 inputs,
    # 0.88 GiB) stays on the GPU; Qwen3-8B at 4 × 2048 (36 × [8192, 4096], 2.25 GiB) offloads.
    small = torch.empty(8, 2048, 1024, dtype=torch.bfloat16, device="meta")
    large = torch.empty(4, 2048, 4096, dtype=torch.bfloat16, device="meta")
    assert not llama.offload_this_pass("auto", small, 28)
    assert llama.offload_this_pass("auto", large, 36)
    # Explicit settings are obeyed whatever the size.
    assert llama.offload_this_pass(True, small, 28)
    assert not llama.offload_this_pass(False, large, 36)
    # The threshold itself: exactly AUTO_OFFLOAD_MIN_BYTES offloads, one byte less does not.
    at = torch.empty(llama.AUTO_OFFLOAD_MIN_BYTES // 2, dtype=torch.bfloat16, device="meta")
    assert llama.offload_this_pass("auto", at, 1)
    assert not llama.offload_this_pass("auto", at[:-1], 1)
