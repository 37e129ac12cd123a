"""Streaming output statistics (mean and covariance) of Linear layers and embedding tables.

AFM needs, for every target module, the mean ``mu`` and covariance ``C`` of the module's
output over the whole training set. Both come from three sums, kept in float64::

    n,   S1 = sum y  [m],   S2 = sum y y^T  [m, m]
    mu = S1 / n,   C = S2 / n - mu mu^T          (biased, like numpy.cov(bias=True))

Sums add up across data shards, so :class:`OutputCovariance` is a ``torchmetrics.Metric``
whose states are reduced with ``"sum"``: under ``torch.distributed`` its ``compute()``
gathers and adds every rank's sums before the maths, and every rank gets the same result.

:func:`collect_statistics` runs one no-grad pass of a model with forward hooks on the
targets; only the accumulators are kept, never the activations.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = ["OutputStatistics", "OutputCovariance", "collect_statistics", "statistics_for", "target_kind"]

#: Kinds of module whose output statistics AFM uses.
KINDS = ("linear", "embedding")


class OutputStatistics(NamedTuple):
    """Mean and (biased) covariance of a module's output over ``count`` rows.

    Shapes: ``mean`` ``[m]``, ``cov`` ``[m, m]``, both float64.
    """

    mean: Tensor
    cov: Tensor
    count: int

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])


class OutputCovariance(Metric):
    """Streaming mean and covariance of ``m``-dim outputs, summed over batches and DDP ranks.

    Args:
        num_features: ``m``, the width of the output (last dimension).
        name: the module this metric watches, used in error messages.
        **kwargs: passed to :class:`torchmetrics.Metric` (``process_group``, ...).

    Shapes:
        ``update(y)``: ``y`` is ``[..., m]``; every leading index counts as one row.
        ``compute()``: :class:`OutputStatistics` with ``mean [m]``, ``cov [m, m]`` (float64).

    Example:
        >>> metric = OutputCovariance(3)
        >>> metric.update(torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 0.0]]))
        >>> stats = metric.compute()
        >>> stats.mean.tolist(), stats.cov[0, 0].item(), stats.count
        ([2.0, 2.0, 0.0], 1.0, 2)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    count: Tensor
    sum_y: Tensor
    sum_yy: Tensor

    def __init__(self, num_features: int, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_features) <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self.num_features = int(num_features)
        self.name = name
        m = self.num_features
        # float64 because C = S2/n - mu mu^T cancels: with float32 sums the covariance of an
        # output whose mean is large next to its spread would be mostly rounding error.
        self.add_state("count", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_y", default=torch.zeros(m, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_yy", default=torch.zeros(m, m, dtype=torch.float64), dist_reduce_fx="sum")

    def _label(self) -> str:
        return f"module {self.name!r}" if self.name else "OutputCovariance"

    def update(self, y: Tensor) -> None:
        """Add the rows of ``y`` (``[..., m]``) to the sums."""
        if y.dim() == 0 or y.shape[-1] != self.num_features:
            raise ValueError(
                f"{self._label()}: expected outputs of shape [..., {self.num_features}], got {tuple(y.shape)}"
            )
        y = y.detach().reshape(-1, self.num_features)
        rows = y.shape[0]
        if rows == 0:
            return
        if y.device != self.sum_y.device:
            y = y.to(self.sum_y.device)
        # The outer-product sum is the expensive part (rows * m^2). It runs in the output's own
        # precision (float32 for a float32 model: 2-3x faster than float64 on CPU), but on
        # data centred on the batch mean, so there is no cancellation inside the batch; the
        # exact re-centring identity below is done in float64:
        #   sum y y^T = sum d d^T + c (sum d)^T + (sum d) c^T + rows c c^T,  d = y - c.
        if y.dtype not in (torch.float32, torch.float64):
            y = y.float()
        # autocast off: a statistics pass run under mixed precision must not do the Gram in fp16
        with torch.autocast(device_type=y.device.type, enabled=False):
            c = y.mean(dim=0)
            d = y - c
            d_sum = d.sum(dim=0).double()
            c64 = c.double()
            gram = (d.T @ d).double()
            cross = torch.outer(c64, d_sum)
        self.count += rows
        self.sum_y += d_sum + rows * c64
        self.sum_yy += gram + cross + cross.T + rows * torch.outer(c64, c64)

    def compute(self) -> OutputStatistics:
        """Mean ``[m]`` and biased covariance ``[m, m]`` over all rows (of all ranks)."""
        n = int(self.count.item())
        if n == 0:
            raise ValueError(f"{self._label()}: no rows were seen, so there is no mean or covariance")
        if not (torch.isfinite(self.sum_y).all() and torch.isfinite(self.sum_yy).all()):
            raise ValueError(
                f"{self._label()}: its outputs contained NaN or Inf during the statistics pass "
                "(or overflowed); check the model's weights and the input data before compressing"
            )
        mean = self.sum_y / n
        cov = self.sum_yy / n - torch.outer(mean, mean)
        cov = (cov + cov.T) / 2
        # A constant output (a dead ReLU unit) has variance exactly 0 up to rounding; clamp the
        # tiny negatives so a later sqrt or ratio cannot produce NaN.
        cov.diagonal().clamp_(min=0.0)
        return OutputStatistics(mean=mean, cov=cov, count=n)


def statistics_for(
    stats: OutputStatistics | Mapping[str, OutputStatistics] | None, name: str, width: int
) -> OutputStatistics:
    """The statistics of module ``name`` (``stats``: its own, or :func:`collect_statistics`'s dict),
    checked to be finite and of the module's output ``width`` (``mean`` ``[width]``, ``cov`` ``[width, width]``)."""
    if stats is None:
        raise ValueError(f"AFM needs the output statistics of {name!r}; run collect_statistics first")
    if isinstance(stats, Mapping):
        if name not in stats:
            raise ValueError(f"no statistics for {name!r}; statistics were collected for {sorted(stats)}")
        stats = stats[name]
    mean, cov = stats.mean, stats.cov
    if mean.shape != (width,) or cov.shape != (width, width):
        raise ValueError(
            f"statistics for {name!r} have mean {tuple(mean.shape)} / cov {tuple(cov.shape)}, "
            f"but the module's output width is {width}"
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ValueError(f"statistics for {name!r} contain NaN or Inf; no module was changed")
    return stats


def target_kind(module: nn.Module) -> str:
    """``"linear"`` for ``nn.Linear``, ``"embedding"`` for ``nn.Embedding``; ValueError otherwise."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    raise ValueError(
        f"statistics can be collected for nn.Linear or nn.Embedding modules, not {type(module).__name__}"
    )


def _output_width(module: nn.Module, kind: str) -> int:
    return int(module.out_features if kind == "linear" else module.embedding_dim)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _resolve_targets(model: nn.Module, targets: Mapping[str, str] | Sequence[str]) -> dict[str, tuple[nn.Module, str]]:
    named = dict(model.named_modules())
    wanted = dict(targets) if isinstance(targets, Mapping) else {name: None for name in targets}
    if not wanted:
        raise ValueError("collect_statistics needs at least one target module name")
    resolved: dict[str, tuple[nn.Module, str]] = {}
    for name, kind in wanted.items():
        if name not in named:
            candidates = [n for n, m in named.items() if isinstance(m, (nn.Linear, nn.Embedding))]
            close = difflib.get_close_matches(name, candidates, n=5)
            hint = f"; did you mean {close}?" if close else ""
            raise ValueError(
                f"the model has no module named {name!r}{hint} Linear/Embedding modules: {candidates}"
            )
        module = named[name]
        actual = target_kind(module) if isinstance(module, (nn.Linear, nn.Embedding)) else None
        if actual is None:
            raise ValueError(
                f"module {name!r} is a {type(module).__name__}; statistics need an nn.Linear or nn.Embedding"
            )
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown target kind {kind!r} for {name!r}; use one of {KINDS}")
        if kind is not None and kind != actual:
            raise ValueError(f"module {name!r} was given as {kind!r} but is an {type(module).__name__}")
        resolved[name] = (module, actual)
    return resolved


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class _TargetsDone(BaseException):
    """Raised by the hook of the last target to run in a batch, to skip the rest of the forward.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that a model's own ``except Exception``
    cannot swallow it; :func:`collect_statistics` catches it around each forward.
    """


class _StopAfterTargets:
    """Tracks which targets have run in the current batch and cuts the forward short after the last.

    The first batch runs in full and counts how often each target is called. Only if every
    target ran exactly once are later forwards stopped early: a module called twice per forward
    (weight sharing) must see all its calls, and a target that did not run at all is reported
    by the caller.
    """

    def __init__(self, names: Iterable[str], enabled: bool) -> None:
        self.names = frozenset(names)
        self.enabled = enabled
        self.calls = dict.fromkeys(self.names, 0)
        self.probing = True
        self.active = False
        self.pending: set[str] = set()

    def start_batch(self) -> None:
        self.pending = set(self.names)

    def end_batch(self) -> None:
        if self.probing:
            self.probing = False
            self.active = self.enabled and all(count == 1 for count in self.calls.values())

    def seen(self, name: str) -> None:
        if self.probing:
            self.calls[name] += 1
            return
        self.pending.discard(name)
        if self.active and not self.pending:
            raise _TargetsDone


def collect_statistics(
    model: nn.Module,
    targets: Mapping[str, str] | Sequence[str],
    batches: Iterable[Any],
    forward: Callable[[Any], Any],
    progress: bool = True,
    description: str = "AFM statistics",
    stop_after_targets: bool = True,
) -> dict[str, OutputStatistics]:
    """One no-grad, eval-mode pass that returns the output mean and covariance of each target.

    For an ``nn.Linear`` the rows are its outputs ``y = W x + b`` (``[..., m]``); for an
    ``nn.Embedding`` (e.g. a field table ``embeddings.C1`` of ``FieldEmbedding``) they are the
    looked-up vectors, so a row counts as often as it is looked up.

    Args:
        model: any module; each target is found by its dotted name in ``model.named_modules()``.
        targets: names, or ``{name: "linear" | "embedding"}`` to also check each module's kind.
        batches: the data (e.g. a DataLoader); it is iterated once.
        forward: ``forward(batch)`` runs the model on one batch (moving it to the device if
            needed); its return value is ignored.
        progress: show a tqdm progress bar.
        description: the progress bar's label.
        stop_after_targets: once every target has produced its output for a batch, skip the
            rest of that forward (the layers after the targets cost time and add nothing). Used
            only when the first batch, run in full, shows each target called exactly once. Turn
            it off if ``forward`` must run to the end (side effects after the model call).

    Returns:
        ``{name: OutputStatistics(mean [m], cov [m, m], count)}`` in float64. Under
        ``torch.distributed`` the sums are added over all ranks first, so every rank returns
        the same statistics (every rank must call this function).

    Raises:
        ValueError: unknown or unsupported targets, an empty ``batches``, a target that never
            ran, or outputs containing NaN/Inf (the message names the module).

    The model's train/eval flags (module by module) are restored afterwards, and the hooks
    are removed even if the pass is interrupted, so an exception leaves the model unchanged.
    """
    resolved = _resolve_targets(model, targets)
    metrics = {
        name: OutputCovariance(_output_width(module, kind), name=name).to(_module_device(module))
        for name, (module, kind) in resolved.items()
    }

    tracker = _StopAfterTargets(resolved, enabled=stop_after_targets)

    def make_hook(name: str, metric: OutputCovariance) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            metric.update(output)
            tracker.seen(name)

        return hook

    training_flags = {m: m.training for m in model.modules()}
    handles = []
    num_batches = 0
    try:
        for name, (module, _) in resolved.items():
            handles.append(module.register_forward_hook(make_hook(name, metrics[name])))
        model.eval()
        iterator: Iterable[Any] = batches
        if progress:
            from tqdm.auto import tqdm

            try:
                total = len(batches)  # type: ignore[arg-type]
            except TypeError:  # generators, iterable-style datasets
                total = None
            iterator = tqdm(batches, total=total, desc=description, leave=False)
        with torch.no_grad():
            for batch in iterator:
                tracker.start_batch()
                try:
                    forward(batch)
                except _TargetsDone:
                    pass
                tracker.end_batch()
                num_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training_flags.items():
            module.training = flag

    # Under DDP every rank must reach the collective sync inside compute(), so a rank with an
    # empty shard does not raise here; the summed counts decide below, identically on all ranks.
    if num_batches == 0 and not _distributed():
        raise ValueError(
            "the statistics pass got no batches: the data iterable is empty "
            "(check the training dataloader, its length and drop_last)"
        )
    results: dict[str, OutputStatistics] = {}
    for name, metric in metrics.items():
        if int(metric.count.item()) == 0 and not _distributed():
            raise ValueError(
                f"module {name!r} never ran during the statistics pass; check that `forward` "
                "calls the model and that the module is used by its forward"
            )
        with warnings.catch_warnings():
            # torchmetrics warns when compute() comes before update(); under DDP a rank with an
            # empty shard legitimately does that (its zero sums are still added).
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            try:
                results[name] = metric.compute()
            except ValueError as err:
                if "no rows" in str(err):
                    raise ValueError(
                        f"module {name!r} saw no rows on any rank during the statistics pass "
                        "(empty training data, or the module is not used by the model's forward)"
                    ) from err
                raise
    return results
