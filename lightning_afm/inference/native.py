"""A compiled CPU kernel for AutoInt's small-head attention, built on first use with the machine's C++ compiler.

At AutoInt's Criteo shape (26 fields, heads of 8) each (sample, head) is a 26 x 26 x 8 problem, and
PyTorch's kernels (the flash kernel, ``bmm`` + softmax) spend several times the arithmetic on
per-matrix overhead. ``kernels/attention.cpp`` does one sample at a time in vector registers (see
its header). It is compiled once per machine, source and compiler into a shared library under
``$LIGHTNING_AFM_CACHE/kernels`` (else ``~/.cache/lightning_afm/kernels``), loaded with ctypes,
checked against PyTorch's attention on random inputs, and only then used.

It is an optimisation, never a requirement: without a compiler (``$CXX``, ``c++``, ``g++`` or
``clang++``), with ``LIGHTNING_AFM_NATIVE=0``, or when the build or the check fails, :func:`status`
says why and :class:`~lightning_afm.inference.attention.InferenceInteracting` runs PyTorch's
kernels. TorchScript, tracing (ONNX export) and ``torch.compile`` never see it.

Example:
    >>> import torch
    >>> from lightning_afm.inference import native
    >>> proj = torch.randn(4, 26, 64)  # [B, F, 4 d]: q, k, v, residual for 2 heads of 8
    >>> if native.available():
    ...     out = native.attend(proj, heads=2, head_dim=8, has_residual=True)
    ...     print(tuple(out.shape))
    ... else:
    ...     print((4, 26, 16))
    (4, 26, 16)
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["NativeStatus", "available", "status", "attend", "interacting", "suspended", "is_suspended", "MIN_ROWS_PER_THREAD"]

SOURCE = Path(__file__).with_name("kernels") / "attention.cpp"
#: Tried in order; the first that builds is used (``-march=native`` vectorises for this CPU; the
#: library is cached per CPU, see :func:`_cache_key`).
FLAG_SETS = (
    # the C++ runtime linked in, so an older libstdc++ already in the process (conda) cannot refuse it
    ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-static-libstdc++", "-static-libgcc"],
    ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"],
    ["-O3", "-std=c++17", "-shared", "-fPIC"],
)
#: Below this many rows per thread a batch is not split across threads (a pool hand-off costs tens
#: of microseconds; a row costs about 3 microseconds at Criteo's shape).
MIN_ROWS_PER_THREAD = 256
_ENV_SWITCH = "LIGHTNING_AFM_NATIVE"


@dataclass(frozen=True)
class NativeStatus:
    """Whether the kernel can run here; ``reason`` says why not (or where the library is)."""

    available: bool
    reason: str
    max_fields: int = 0


class _Library:
    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        self.attend = lib.afm_attend
        self.attend.restype = ctypes.c_int
        self.attend.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 7 + [ctypes.c_void_p]
        self.interacting = lib.afm_interacting
        self.interacting.restype = ctypes.c_int
        self.interacting.argtypes = ([ctypes.c_void_p] + [ctypes.c_int64] * 5 + [ctypes.c_void_p]
                                     + [ctypes.c_int64] * 4 + [ctypes.c_void_p])
        lib.afm_attend_max_fields.restype = ctypes.c_int64
        self.max_fields = int(lib.afm_attend_max_fields())


_lock = threading.Lock()
_state: tuple[NativeStatus, _Library | None] | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_suspended = 0


def _after_fork_in_child() -> None:
    """A forked child (DataLoader workers, serving processes) has none of the parent's pool threads
    and may inherit a held lock: start both afresh; the loaded library stays valid."""
    global _lock, _pool, _pool_size
    _lock = threading.Lock()
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def suspended() -> Iterator[None]:
    """Layers run PyTorch's kernels inside this block (nestable, process-wide): what an aten-level
    counter or profiler sees, e.g. the bench's multiply-add count, which cannot see into the
    compiled kernel."""
    global _suspended
    with _lock:
        _suspended += 1
    try:
        yield
    finally:
        with _lock:
            _suspended -= 1


def is_suspended() -> bool:
    """Whether a :func:`suspended` block is running."""
    return _suspended > 0


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx) or (cxx if Path(cxx).is_file() else None)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (a library built with ``-march=native`` on one CPU
    may not run on another that shares the cache folder)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(keep))


def _cache_key(compiler: str) -> str:
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    parts = [SOURCE.read_bytes(), compiler.encode(), version.encode(), repr(FLAG_SETS).encode(),
             platform.machine().encode(), _cpu_signature().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def _cache_dir() -> Path:
    root = os.environ.get("LIGHTNING_AFM_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "lightning_afm") / "kernels"


def _unsafe_folder(folder: Path) -> str | None:
    """Why a library in ``folder`` must not be loaded (another user could have written it), or None."""
    if not hasattr(os, "getuid"):
        return None
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        return (f"{folder} is not a private folder of this user (owner uid {info.st_uid}, mode "
                f"{info.st_mode & 0o777:o}); set $LIGHTNING_AFM_CACHE to one")
    return None


def _build(compiler: str, target: Path) -> str | None:
    """Compiles :data:`SOURCE` to ``target`` (atomically); the compiler's last error, or None."""
    error = "no flags tried"
    for flags in FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            built = Path(tmp) / target.name
            try:
                run = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)],
                                     capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as err:
                return f"{compiler} could not run ({err})"
            if run.returncode == 0 and built.is_file():
                os.replace(built, target)  # atomic: a concurrent process sees the whole file or none
                return None
            error = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1][:300]
    return f"{compiler} failed to build {SOURCE.name}: {error}"


def _reference(proj: torch.Tensor, heads: int, head_dim: int, has_residual: bool) -> torch.Tensor:
    """PyTorch's attention on the same layout (what the kernel must equal)."""
    b, f = proj.shape[0], proj.shape[1]
    d = heads * head_dim
    q, k, v = (proj[:, :, i * d:(i + 1) * d].unflatten(2, (heads, head_dim)).transpose(1, 2) for i in range(3))
    out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    out = out.transpose(1, 2).reshape(b, f, d)
    return (out + proj[:, :, 3 * d:] if has_residual else out).relu()


def _self_check(lib: _Library) -> str | None:
    """Runs both entry points on random shapes that cover every code path; a mismatch, or None."""
    gen = torch.Generator().manual_seed(0)
    for fields, heads, head_dim, residual in ((26, 2, 8, True), (5, 3, 3, False), (22, 2, 25, True), (9, 1, 16, True)):
        d = heads * head_dim
        width = (4 if residual else 3) * d
        proj = torch.randn(7, fields, width, generator=gen) * 2
        x = torch.randn(7, fields, d, generator=gen)
        weight = torch.randn(d, width, generator=gen) * (2 / d**0.5)
        checks = (  # threads=1: no pool, whose creation takes the lock that _get holds while this runs
            ("attention", _call(lib, proj, heads, head_dim, residual, threads=1), _reference(proj, heads, head_dim, residual)),
            ("layer", _call_interacting(lib, x, weight, heads, head_dim, residual, threads=1),
             _reference(x @ weight, heads, head_dim, residual)),
        )
        for name, got, want in checks:
            if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
                err = (got - want).abs().max().item()
                return f"self-check failed ({name}) at F={fields}, heads={heads}x{head_dim}: max error {err:.3g}"
    return None


def _load() -> tuple[NativeStatus, _Library | None]:
    if os.environ.get(_ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return NativeStatus(False, f"disabled by {_ENV_SWITCH}={os.environ[_ENV_SWITCH]}"), None
    compiler = _compiler()
    if compiler is None:
        return NativeStatus(False, "no C++ compiler found ($CXX, c++, g++ or clang++); install one to build it"), None
    folder = _cache_dir()
    target = folder / f"afm_attention_{_cache_key(compiler)}{'.dll' if os.name == 'nt' else '.so'}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        unsafe = _unsafe_folder(folder)
    except OSError as err:
        unsafe = f"cannot create {folder} ({err}); set $LIGHTNING_AFM_CACHE to a writable folder"
    if unsafe:
        return NativeStatus(False, unsafe), None
    if not target.is_file():
        try:
            error = _build(compiler, target)
        except OSError as err:
            error = f"cannot write {target.parent} ({err}); set $LIGHTNING_AFM_CACHE to a writable folder"
        if error:
            return NativeStatus(False, error), None
    try:
        lib = _Library(target)
    except OSError as err:
        return NativeStatus(False, f"cannot load {target} ({err}); delete it to rebuild"), None
    mismatch = _self_check(lib)
    if mismatch:
        return NativeStatus(False, f"{mismatch} ({target}); PyTorch's kernels are used instead"), None
    return NativeStatus(True, f"built at {target}", lib.max_fields), lib


def _get() -> tuple[NativeStatus, _Library | None]:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def status() -> NativeStatus:
    """Builds (once per process; once per machine on disk) and checks the kernel; whether it runs here."""
    return _get()[0]


def available() -> bool:
    """Whether :func:`attend` can run here (see :func:`status` for why not)."""
    return status().available


def _executor(threads: int) -> ThreadPoolExecutor:
    """A pool of at least ``threads`` workers, shared by every caller. A larger request replaces it
    without shutting the old one down: a caller that already holds it (another request, in another
    thread) still finishes on it, and its idle workers go when it is collected."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < threads:
            _pool_size = max(threads, os.cpu_count() or 1)
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="afm-attend")
        return _pool


def _split(rows: int, threads: int, run) -> None:
    """``run(start, stop)`` over ``[0, rows)``, split into up to ``threads`` parts on the pool
    (ctypes releases the GIL for each call, so the parts run in parallel); raises on a nonzero code."""
    parts = max(1, min(threads, rows // MIN_ROWS_PER_THREAD))
    if parts == 1:
        codes = [run(0, rows)]
    else:
        step = math.ceil(rows / parts)
        codes = list(_executor(parts).map(lambda s: run(s, min(rows, s + step)), range(0, rows, step)))
    if any(codes):  # the Python checks below let nothing through that the kernel refuses
        raise RuntimeError(f"the native attention kernel refused its input (codes {codes})")


def _call(lib: _Library, proj: torch.Tensor, heads: int, head_dim: int, has_residual: bool,
          threads: int) -> torch.Tensor:
    rows, fields = int(proj.shape[0]), int(proj.shape[1])
    d = heads * head_dim
    out = torch.empty(rows, fields, d, dtype=torch.float32)
    row_stride, field_stride = proj.stride(0), proj.stride(1)
    item = proj.element_size()
    _split(rows, threads, lambda start, stop: lib.attend(
        proj.data_ptr() + start * row_stride * item, stop - start, fields, row_stride, field_stride,
        heads, head_dim, int(has_residual), out.data_ptr() + start * fields * d * item))
    return out


def _call_interacting(lib: _Library, x: torch.Tensor, weight: torch.Tensor, heads: int, head_dim: int,
                      has_residual: bool, threads: int) -> torch.Tensor:
    rows, fields, d_in = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
    d = heads * head_dim
    width = weight.shape[1]
    padded = torch.nn.functional.pad(weight, (0, -width % 8)).contiguous()  # [d_in, wpad], zero columns
    out = torch.empty(rows, fields, d, dtype=torch.float32)
    row_stride, field_stride = x.stride(0), x.stride(1)
    item = x.element_size()
    _split(rows, threads, lambda start, stop: lib.interacting(
        x.data_ptr() + start * row_stride * item, stop - start, fields, row_stride, field_stride, d_in,
        padded.data_ptr(), padded.shape[1], heads, head_dim, int(has_residual),
        out.data_ptr() + start * fields * d * item))
    return out


def _checked(tensor: torch.Tensor, name: str, lib: _Library, any_strides: bool = False) -> None:
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu" or (tensor.stride(-1) != 1 and not any_strides):
        raise ValueError(f"the native attention kernel needs float32 CPU {name} with a unit last stride "
                         f"(got {tensor.dtype} on {tensor.device}, strides {tensor.stride()})")
    if tensor.requires_grad and torch.is_grad_enabled():
        raise ValueError("the native attention kernel has no backward; call it under torch.no_grad()")


def _library() -> _Library:
    state, lib = _get()
    if lib is None:
        raise RuntimeError(f"the native attention kernel is unavailable: {state.reason}")
    return lib


def attend(proj: torch.Tensor, heads: int, head_dim: int, has_residual: bool, threads: int | None = None) -> torch.Tensor:
    """``relu(softmax(q k^T) v (+ residual))`` ``[B, F, d]`` from projections ``[B, F, n d]``.

    ``proj`` holds each field's ``[q | k | v (| residual)]`` (``d = heads * head_dim`` each; the
    query already carries any logit scale), float32 on CPU, any strides with a unit last stride.
    The batch is split over ``threads`` (default: ``torch.get_num_threads()``). Raises RuntimeError
    when the kernel is unavailable (:func:`status` says why), ValueError on a tensor it cannot take.
    """
    lib = _library()
    width = (4 if has_residual else 3) * heads * head_dim
    if proj.dim() != 3 or proj.shape[2] != width:
        raise ValueError(f"attend needs projections [B, F, {width}], got {tuple(proj.shape)}")
    _checked(proj, "projections", lib)
    _check_fields(int(proj.shape[1]), lib)
    return _call(lib, proj, int(heads), int(head_dim), bool(has_residual), threads or torch.get_num_threads())


def interacting(x: torch.Tensor, weight: torch.Tensor, heads: int, head_dim: int, has_residual: bool,
                threads: int | None = None) -> torch.Tensor:
    """A whole interacting layer, ``[B, F, d_in]`` -> ``[B, F, d]``: :func:`attend` on ``x @ weight``,
    the projections made per sample inside the kernel (never written out as ``[B, F, n d]``).

    ``weight`` is ``[d_in, n d]``, columns ``[W_q (scaled) | W_k | W_v (| W_res)]``, as
    :meth:`~lightning_afm.inference.attention.InferenceInteracting.stacked_weight` gives it.
    Same threads, errors and tensor rules as :func:`attend`.
    """
    lib = _library()
    width = (4 if has_residual else 3) * heads * head_dim
    if x.dim() != 3 or weight.dim() != 2 or weight.shape != (x.shape[2], width):
        raise ValueError(f"interacting needs x [B, F, d_in] and weight [d_in, {width}], "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    _checked(x, "inputs", lib)
    _checked(weight, "weights", lib, any_strides=True)  # copied into the kernel's padded layout
    _check_fields(int(x.shape[1]), lib)
    return _call_interacting(lib, x, weight, int(heads), int(head_dim), bool(has_residual),
                             threads or torch.get_num_threads())


def _check_fields(fields: int, lib: _Library) -> None:
    if not 1 <= fields <= lib.max_fields:
        raise ValueError(f"the native attention kernel takes 1 to {lib.max_fields} fields, got {fields}")
