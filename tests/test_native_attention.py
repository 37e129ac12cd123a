"""The compiled attention kernel (``lightning_afm.inference.native``) against float64 numpy, and its fallbacks.

Shapes cover every code path of ``kernels/attention.cpp``: field counts on both sides of each
multiple of 8 up to its limit, heads under 8 wide (the padded-field path), multiples of 8 and
widths with a tail (the direct path), with and without the residual, strided projections (as the
first layer folded onto the codes writes them) and a batch split over threads. Then NaN
propagation, the errors, and the build's failure modes (no compiler, a broken source, a kernel
that computes the wrong thing), each of which must leave PyTorch's kernels running.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_afm.inference import Tensors, native
from lightning_afm.inference.attention import InferenceInteracting
from lightning_afm.models.layers.attention import InteractingLayer

needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernel unavailable: {native.status().reason}")


def numpy_attend(proj: np.ndarray, heads: int, head_dim: int, residual: bool) -> np.ndarray:
    """``relu(softmax(q k^T) v (+ res))`` in float64, head by head."""
    d = heads * head_dim
    out = np.empty(proj.shape[:2] + (d,))
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        q, k, v = (proj[:, :, i * d:(i + 1) * d][..., cols] for i in range(3))
        logits = np.einsum("bic,bjc->bij", q, k)
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(-1, keepdims=True)
        out[..., cols] = np.einsum("bij,bjc->bic", p, v)
    if residual:
        out += proj[:, :, 3 * d:]
    return np.maximum(out, 0.0)


def test_the_kernel_builds_wherever_a_compiler_is_present():
    has_compiler = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    state = native.status()
    if has_compiler:
        assert state.available, state.reason
        assert state.max_fields == 128 and "built at" in state.reason
    else:
        assert not state.available and "compiler" in state.reason


@needs_native
@pytest.mark.parametrize("fields", [1, 7, 8, 9, 26, 64, 65, 128])
@pytest.mark.parametrize("heads,head_dim", [(1, 1), (2, 3), (2, 8), (3, 16), (2, 25), (1, 33)])
@pytest.mark.parametrize("residual", [True, False])
def test_attend_equals_numpy(fields, heads, head_dim, residual):
    g = torch.Generator().manual_seed(fields * 100 + heads * 10 + head_dim)
    width = (4 if residual else 3) * heads * head_dim
    proj = torch.randn(5, fields, width, generator=g) * (2.0 / head_dim**0.5)  # logits of order 1-4
    got = native.attend(proj, heads, head_dim, residual)
    assert got.shape == (5, fields, heads * head_dim) and got.is_contiguous()
    np.testing.assert_allclose(got.numpy(), numpy_attend(proj.double().numpy(), heads, head_dim, residual),
                               rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("fields,d_in,heads,head_dim,residual", [
    (26, 16, 2, 8, True),  # Criteo's layer: 64 projection columns, one block of 8 vectors
    (22, 50, 2, 25, False),  # Avazu's without the residual: 150 columns, 2 blocks and 3 tail vectors, padded
    (22, 50, 2, 25, True),  # 200 columns
    (3, 5, 1, 5, True),  # 20 columns: tail vectors only, padded
    (130 // 2, 7, 3, 4, False),
])
def test_the_whole_layer_equals_numpy_projections_then_attention(fields, d_in, heads, head_dim, residual):
    g = torch.Generator().manual_seed(fields + d_in)
    width = (4 if residual else 3) * heads * head_dim
    x = torch.randn(2 * native.MIN_ROWS_PER_THREAD + 1, fields, d_in, generator=g)
    weight = torch.randn(width, d_in, generator=g).t() / d_in**0.5  # a transposed view, as layers give it
    expected = numpy_attend(x.double().numpy() @ weight.double().numpy(), heads, head_dim, residual)
    for threads in (1, 2):
        got = native.interacting(x, weight, heads, head_dim, residual, threads=threads)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    strided = torch.randn(fields, x.shape[0], d_in, generator=g).transpose(0, 1)  # [B, F, d_in], field-major
    np.testing.assert_allclose(native.interacting(strided, weight, heads, head_dim, residual).numpy(),
                               numpy_attend(strided.double().numpy() @ weight.double().numpy(), heads, head_dim, residual),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"weight \[d_in, "):
        native.interacting(x, weight[:, :-1], heads, head_dim, residual)


@needs_native
def test_attend_reads_strided_projections_and_splits_the_batch_over_threads():
    rows = 4 * native.MIN_ROWS_PER_THREAD + 3  # not a multiple of the thread count
    g = torch.Generator().manual_seed(0)
    by_field = torch.randn(26, rows, 64, generator=g)  # [F, B, 4 d], as CodeInteracting writes it
    proj = by_field.transpose(0, 1)
    expected = numpy_attend(proj.double().numpy(), 2, 8, True)
    for threads in (1, 2, 3):
        np.testing.assert_allclose(native.attend(proj, 2, 8, True, threads=threads).numpy(), expected,
                                   rtol=1e-5, atol=1e-5)
    assert native.attend(proj[:0], 2, 8, True).shape == (0, 26, 16)


@needs_native
def test_large_logits_stay_finite_and_nan_goes_where_pytorch_puts_it():
    g = torch.Generator().manual_seed(1)
    proj = torch.randn(6, 26, 64, generator=g) * 30  # logits in the thousands: exp underflows, no NaN
    exact = numpy_attend(proj.double().numpy(), 2, 8, True)
    got = native.attend(proj, 2, 8, True)
    assert torch.isfinite(got).all()
    # float32 logits this large are rounded by ~1e-4, so judge against PyTorch's own float32 error
    own_error = np.abs(native._reference(proj, 2, 8, True).numpy() - exact).max()
    assert np.abs(got.numpy() - exact).max() <= 2 * own_error + 1e-5
    proj = torch.randn(6, 26, 64, generator=g)
    proj[1, 3, 2] = float("nan")  # a query of sample 1, field 3, head 0
    proj[2, 5, 16 + 9] = float("nan")  # a key of sample 2, field 5, head 1
    proj[3, 7, 32 + 1] = float("nan")  # a value of sample 3, field 7, head 0, column 1
    proj[4, 0, 48 + 12] = float("nan")  # a residual of sample 4
    got = native.attend(proj, 2, 8, True)
    want = torch.from_numpy(numpy_attend(proj.double().numpy(), 2, 8, True)).float()
    assert torch.equal(got.isnan(), want.isnan()) and want.isnan().any()
    ok = ~want.isnan()
    torch.testing.assert_close(got[ok], want[ok], rtol=1e-5, atol=1e-5)


@needs_native
def test_attend_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match=r"projections \[B, F, 64\], got \(2, 3, 48\)"):
        native.attend(torch.zeros(2, 3, 48), 2, 8, True)
    with pytest.raises(ValueError, match="float32 CPU projections"):
        native.attend(torch.zeros(2, 3, 64, dtype=torch.float64), 2, 8, True)
    with pytest.raises(ValueError, match="1 to 128 fields, got 129"):
        native.attend(torch.zeros(2, 129, 64), 2, 8, True)
    with pytest.raises(ValueError, match="no backward"):
        native.attend(torch.zeros(2, 3, 64, requires_grad=True), 2, 8, True)


def _layer(d: int = 16, heads: int = 2) -> InteractingLayer:
    torch.manual_seed(0)
    layer = InteractingLayer(d, heads, True, False).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    return layer


@needs_native
def test_the_layer_runs_native_eagerly_and_portable_kernels_where_it_cannot():
    layer = _layer()
    fast = InferenceInteracting(layer, Tensors())
    x = torch.randn(11, 26, 16)
    with torch.no_grad():
        expected = layer(x)
    assert fast.current_kernel() == "native"
    calls = []
    original = native.attend, native.interacting
    try:
        native.attend = lambda *a, **k: calls.append(1) or original[0](*a, **k)
        native.interacting = lambda *a, **k: calls.append(1) or original[1](*a, **k)
        torch.testing.assert_close(fast(x), expected, rtol=0, atol=1e-5)
        assert calls, "the eager call did not reach the native kernel"
        calls.clear()
        torch.testing.assert_close(torch.jit.script(fast)(x), expected, rtol=0, atol=1e-5)
        traced = torch.jit.trace(fast, x, check_trace=False)  # the check would re-run it eagerly
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=1e-5)
        assert not calls, "scripting or tracing reached the native kernel"
        wide = torch.randn(3, 130, 16)  # more fields than the kernel takes
        with torch.no_grad():
            torch.testing.assert_close(fast(wide), layer(wide), rtol=0, atol=1e-5)
        assert not calls, "130 fields reached the native kernel"
    finally:
        native.attend, native.interacting = original
    xg = x.clone().requires_grad_(True)  # a gradient is wanted: PyTorch's kernels, which have one
    fast(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """``native`` with its cached state cleared and its build folder in ``tmp_path``; restored after."""
    monkeypatch.setenv("LIGHTNING_AFM_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", None)
    return native


def test_disabled_or_without_a_compiler_the_layer_falls_back(fresh_native, monkeypatch):
    monkeypatch.setenv("LIGHTNING_AFM_NATIVE", "0")
    assert fresh_native.status() == native.NativeStatus(False, "disabled by LIGHTNING_AFM_NATIVE=0")
    layer = _layer()
    fast = InferenceInteracting(layer, Tensors())
    assert fast.current_kernel() in ("sdpa", "bmm")
    x = torch.randn(4, 26, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), layer(x), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="'native' is unavailable here: disabled by LIGHTNING_AFM_NATIVE=0"):
        InferenceInteracting(layer, Tensors(), "native")
    with pytest.raises(RuntimeError, match="unavailable: disabled"):
        native.attend(torch.zeros(1, 2, 64), 2, 8, True)

    monkeypatch.delenv("LIGHTNING_AFM_NATIVE")
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert "no C++ compiler found" in fresh_native.status().reason


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="needs a C++ compiler")
@pytest.mark.parametrize("edit,message", [
    (lambda src: src + "\nthis is not C++;\n", "failed to build attention.cpp"),
    (lambda src: src.replace("acc += loadu(res + t);", "acc += loadu(res + t) * splat(2.f);"), "self-check failed"),
])
def test_a_broken_build_or_a_wrong_kernel_is_never_used(fresh_native, monkeypatch, tmp_path, edit, message):
    source = tmp_path / "attention.cpp"
    source.write_text(edit(native.SOURCE.read_text()))
    monkeypatch.setattr(native, "SOURCE", source)
    state = fresh_native.status()
    assert not state.available and message in state.reason, state.reason
    assert InferenceInteracting(_layer(), Tensors()).current_kernel() in ("sdpa", "bmm")


def test_the_built_library_is_reused_from_the_cache(fresh_native, tmp_path):
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("needs a C++ compiler")
    first = fresh_native.status()
    assert first.available, first.reason
    built = sorted(Path(tmp_path, "kernels").glob("afm_attention_*"))
    assert len(built) == 1 and str(built[0]) in first.reason
    stamp = built[0].stat().st_mtime_ns
    native._state = None
    assert fresh_native.status() == first and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


@needs_native
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_splits_batches_over_a_fresh_pool():
    proj = torch.randn(4 * native.MIN_ROWS_PER_THREAD, 26, 64)
    expected = native.attend(proj, 2, 8, True, threads=2).numpy()  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: no torch op that runs OpenMP (torch's own limit after a fork), only ours
        code = 1
        try:
            got = native.attend(proj, 2, 8, True, threads=2).numpy()
            code = 0 if np.array_equal(got, expected) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the child's result differs or it failed"
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in the native kernel's pool")


@needs_native
def test_concurrent_calls_of_different_sizes_share_the_pool_safely():
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(rows, 26, 64, generator=g) for rows in (300, 600, 1200, 2400) for _ in range(3)]
    expected = [numpy_attend(p.double().numpy(), 2, 8, True) for p in inputs]

    def call(i):  # each caller asks for more threads than the last, so the pool keeps being replaced
        return native.attend(inputs[i], 2, 8, True, threads=1 + i % 4 + i // 4)

    with ThreadPoolExecutor(6) as callers:
        results = list(callers.map(call, range(len(inputs))))
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@needs_native
def test_underflowing_and_infinite_logits_match_pytorch():
    proj = torch.zeros(3, 5, 64)
    proj[..., 32:48] = 1.0  # values
    proj[0, :, 0] = 1.0  # sample 0: query . key = -200 for every key but field 2's
    proj[0, :, 16] = -200.0
    proj[0, 2, 16] = 0.0
    proj[0, 4, 32] = 1e38  # a huge value behind a weight PyTorch underflows to 0
    proj[1, :, 16] = float("-inf")  # sample 1: every logit of head 0 is -inf -> NaN, as in PyTorch
    proj[1, :, 0] = 1.0
    proj[2, :, 0] = 1.0  # sample 2: logits of -1e35 but one: the max is that one, not the padding
    proj[2, :, 16] = -1e35
    proj[2, 3, 16] = -1e34
    proj[2, 3, 33] = 5.0
    got = native.attend(proj, 2, 8, True)
    want = native._reference(proj, 2, 8, True)
    assert torch.equal(got.isnan(), want.isnan()) and got[1].isnan().any()
    ok = ~want.isnan()
    torch.testing.assert_close(got[ok], want[ok], rtol=1e-5, atol=1e-5)


def test_a_vmap_wrapped_input_runs_pytorchs_kernels():
    layer = _layer()
    fast = InferenceInteracting(layer, Tensors())
    with torch.no_grad():
        x = torch.randn(3, 4, 5, 16)
        torch.testing.assert_close(torch.vmap(fast)(x), torch.stack([layer(xi) for xi in x]), rtol=0, atol=1e-5)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_kernel_folder_others_can_write_is_refused(fresh_native, tmp_path):
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("needs a C++ compiler")
    folder = tmp_path / "kernels"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    state = fresh_native.status()
    assert not state.available and "not a private folder" in state.reason and "LIGHTNING_AFM_CACHE" in state.reason


def test_a_trace_or_a_count_never_builds_the_kernel(fresh_native, monkeypatch):
    from lightning_afm.bench.throughput import Timed, matmul_multiply_adds

    builds = []
    monkeypatch.setattr(native, "_load", lambda: builds.append(1) or (native.NativeStatus(False, "test"), None))
    fast = InferenceInteracting(_layer(), Tensors())  # "auto": asks nothing yet
    x = torch.randn(2, 26, 16)
    assert matmul_multiply_adds(Timed(fast, [x])) > 0
    torch.jit.trace(fast, x, check_trace=False)
    assert builds == []
    fast(x)  # the first eager call asks
    assert builds == [1]


needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="needs a C++ compiler")


@needs_compiler
def test_a_compiler_that_refuses_the_native_flags_builds_the_portable_kernel(fresh_native, monkeypatch):
    # e.g. a compiler that does not know this CPU: the next flag set, without -march, must build and pass
    portable = native.FLAG_SETS[-1]
    assert not any(flag.startswith("-march") for flag in portable)
    monkeypatch.setattr(native, "FLAG_SETS", (["-march=no-such-cpu", *portable], portable))
    state = fresh_native.status()
    assert state.available, state.reason
    proj = torch.randn(300, 26, 64, dtype=torch.float32)
    got = native.attend(proj, 2, 8, True, threads=1).numpy()
    np.testing.assert_allclose(got, numpy_attend(proj.double().numpy(), 2, 8, True), rtol=1e-5, atol=1e-5)


@needs_compiler
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 targets")
@pytest.mark.parametrize("march", ["cascadelake", "x86-64"])
def test_the_source_compiles_for_the_papers_xeon_and_for_any_x86_64(march, tmp_path):
    # The paper timed an Intel Xeon Gold 5220R (Cascade Lake, AVX-512; line 597); x86-64 has no AVX
    # at all. Only compiled: this machine may lack the instructions, which the native build picks.
    flags = [f if not f.startswith("-march") else f"-march={march}" for f in native.FLAG_SETS[1]]
    run = subprocess.run([native._compiler(), *flags, str(native.SOURCE), "-o", str(tmp_path / "k.so")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
