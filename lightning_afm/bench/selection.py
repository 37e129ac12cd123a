"""``runtime=best``: time every candidate runtime of one variant side by side and keep the fastest.

For one variant's inference form, each candidate of :data:`DEFAULT_CANDIDATES` (or the ones asked
for) is prepared by :func:`~lightning_afm.bench.runtimes.prepare` (exported / compiled before any
timing), its outputs on every batch are checked against the eager form's, and the candidates that
pass are timed interleaved round by round on the bench's batches (:func:`time_interleaved`, so
machine load hits them alike). The fastest by median batch time is kept; the others are dropped
before the bench's timed rounds begin, which then time the chosen runner against the other variants.

Every variant of a model goes through the same selection, so a gain is never that of a
well-served variant over a badly served baseline. A candidate that cannot run the variant
(exporter or compiler error) or whose outputs differ from eager's by more than ``tolerance`` is
left out, with the reason, in :attr:`RuntimeChoice.refused`.

The exporting runtimes (``torchscript``, ``onnx``) each hold their own copy of the model's
tensors: for a module holding more than ``export_limit_gb`` (the full-vocabulary Criteo models
hold 2.3 GB; ONNX files stop at 2 GB) they are left out, with that reason, and the run's memory
stays that of the eager variants.

``compile`` (``torch.compile``, inductor) is not a default candidate: it took 7-18 s to compile one
Criteo variant against 0.5-3 s for the exports, and beat the best of them by at most 3 % (1 thread,
loaded AMD EPYC; ``benchmarks/bench_runtimes.py``, README's runtime paragraph); add it with
``best_of=[eager,torchscript,onnx,compile]``.

Example (one candidate, so nothing is timed):
    >>> from lightning_afm.bench.shapes import paper_shape
    >>> from lightning_afm.bench.throughput import make_batches
    >>> from torch import nn
    >>> class NumericMean(nn.Module):
    ...     def forward(self, categorical, numeric):
    ...         return numeric.mean(dim=1)
    >>> batches = make_batches(paper_shape("criteo", vocab_cap=10), batch=4, count=1, seed=0)
    >>> choice = choose_runtime(NumericMean(), batches, candidates=["eager"], rounds=1)
    >>> choice.runtime, choice.samples_per_s
    ('eager', {})
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lightning_afm.bench.runtimes import Prepared, RuntimeUnavailable, check_runtime, prepare
from lightning_afm.bench.throughput import InferenceBatch, Timed, summarize, time_interleaved

__all__ = ["DEFAULT_CANDIDATES", "EXPORTING", "RuntimeChoice", "check_candidates", "choose_runtime", "outputs_mismatch",
           "tensor_gb"]

#: What ``runtime=best`` tries by default: every runtime that prepares in seconds.
DEFAULT_CANDIDATES = ("eager", "torchscript", "onnx")
#: The runtimes that run a copy of the module's tensors (written to a file and loaded back).
EXPORTING = ("torchscript", "onnx")


@dataclass
class RuntimeChoice:
    """What :func:`choose_runtime` found for one variant.

    Attributes:
        runtime: the chosen runtime.
        prepared: its runner (and note, when it runs the plain model instead of the inference form).
        samples_per_s: every candidate that ran, measured in the selection rounds.
        prepare_s: seconds each candidate took to prepare (export, compile, first call).
        refused: candidates left out, with why.
    """

    runtime: str
    prepared: Prepared
    samples_per_s: dict[str, float] = field(default_factory=dict)
    prepare_s: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        """The selection as plain JSON values (``bench.json``'s ``runtime_selection``)."""
        return {"samples_per_s": dict(self.samples_per_s), "prepare_s": dict(self.prepare_s),
                "refused": dict(self.refused)}


def check_candidates(candidates: Sequence[str] | str) -> list[str]:
    """``candidates`` lower-cased, duplicates dropped; ValueError if empty or one is not a runtime."""
    if isinstance(candidates, str):
        candidates = [candidates]
    names = list(dict.fromkeys(check_runtime(c) for c in candidates))
    if not names:
        raise ValueError(f"best_of is empty; list the runtimes to choose from, e.g. {list(DEFAULT_CANDIDATES)}")
    return names


def tensor_gb(module: nn.Module) -> float:
    """GB held by ``module``'s parameters and buffers, each storage counted once (shared weights)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 1e9


def _outputs(timed: Timed) -> list[np.ndarray]:
    """``timed``'s outputs on each of its inputs as float64 vectors (torch tensors or numpy arrays)."""
    with torch.inference_mode():
        return [np.asarray(timed.forward(x), dtype=np.float64).reshape(-1) for x in timed.inputs]


def outputs_mismatch(got: Sequence[np.ndarray], expected: Sequence[np.ndarray], tolerance: float) -> str | None:
    """None if every ``got[i]`` is within ``tolerance`` of ``expected[i]`` (absolute plus relative, as
    ``np.allclose``), else what differs."""
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g.shape != e.shape:
            return f"batch {i}: {g.size} outputs, eager gives {e.size}"
        bad = ~np.isclose(g, e, rtol=tolerance, atol=tolerance)
        if bad.any():
            worst = float(np.max(np.abs(g - e)))
            return f"batch {i}: {int(bad.sum())} of {g.size} outputs differ from eager's by up to {worst:.2e} " \
                   f"(tolerance {tolerance:g})"
    return None


def choose_runtime(
    module: nn.Module,
    batches: Sequence[InferenceBatch],
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    rounds: int = 1,
    export_fallback: nn.Module | None = None,
    tolerance: float = 1e-5,
    export_limit_gb: float | None = None,
    held_gb: float | None = None,
) -> RuntimeChoice:
    """The fastest of ``candidates`` running ``module(categorical, numeric)`` on ``batches``.

    Each candidate is prepared (untimed), checked against eager on every batch, then all that
    pass are timed interleaved for ``rounds`` rounds over ``batches``; ties go to the earlier
    candidate (a lone one is not timed). ``export_limit_gb``: leave out :data:`EXPORTING` runtimes
    when ``module`` holds more (None: no limit); ``held_gb``: the size to compare instead of
    ``module``'s (the bench gives every variant of a model its baseline's, so all get the same
    candidates). Raises :class:`RuntimeUnavailable` (with every candidate's reason) if none passes.
    """
    candidates = check_candidates(candidates)
    batches = list(batches)
    expected: list[np.ndarray] | None = None  # eager's outputs, computed once a candidate needs them
    runners: dict[str, Prepared] = {}
    prepare_s: dict[str, float] = {}
    refused: dict[str, str] = {}
    held = 0.0 if export_limit_gb is None else tensor_gb(module) if held_gb is None else held_gb
    for runtime in candidates:
        if runtime in EXPORTING and export_limit_gb is not None and held > export_limit_gb:
            refused[runtime] = (f"runtime={runtime} would copy the model's tensors, {held:.1f} GB for the "
                                f"baseline (more than export_limit_gb={export_limit_gb:g})")
            continue
        started = time.perf_counter()
        try:
            prepared = prepare(module, runtime, batches, export_fallback=export_fallback)
        except RuntimeUnavailable as err:
            refused[runtime] = str(err)
            continue
        prepare_s[runtime] = time.perf_counter() - started
        if runtime == "eager":  # the reference itself (its outputs below also warm it up)
            runners[runtime] = prepared
            continue
        if expected is None:
            expected = _outputs(Timed(lambda b: module(b.categorical, b.numeric), batches))
        mismatch = outputs_mismatch(_outputs(prepared.timed), expected, tolerance)
        if mismatch is not None:
            refused[runtime] = f"runtime={runtime} does not give the eager outputs ({mismatch})"
            continue
        runners[runtime] = prepared
    if not runners:
        raise RuntimeUnavailable("no runtime of best_of can run it: " + "; ".join(refused.values()))
    if len(runners) == 1:  # nothing to choose between
        (only,) = runners
        return RuntimeChoice(only, runners[only], {}, prepare_s, refused)
    # every candidate has run once on every batch (the output check): no further warm-up needed
    times = time_interleaved({name: p.timed for name, p in runners.items()}, rounds, warmup=0)
    size = batches[0].size
    samples_per_s = {name: summarize(t, size).samples_per_s for name, t in times.items()}
    best = max(samples_per_s, key=lambda name: samples_per_s[name])  # max keeps the first of equals
    return RuntimeChoice(best, runners[best], samples_per_s, prepare_s, refused)
