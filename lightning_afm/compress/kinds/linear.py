"""Kind ``"linear"``: an ``nn.Linear`` ``n -> m`` becomes a :class:`LowRankLinear` ``n -> k -> m``.

Methods: ``"afm"`` (from the output statistics, :func:`afm_factors`), ``"svd"`` (from the weights,
:func:`svd_factors`) and ``"random"`` (AFM's structure at nn.Linear's default initialisation, to
train the small model from scratch: the paper's Table 14; its entry says method ``"afm"``, the
structure to rebuild, and ``flags["init"] == "random"``, where the weights came from).

Options read by :meth:`LowRankLinearKind.build`: ``relu``, ``relu_init``, ``shift_std`` (see
:func:`afm_factors`; with SVD the ReLU is placed as asked, with no sign or bias adjustment).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lightning_afm.compress.factorize import DEFAULT_SHIFT_STD, afm_factors, kept_variance, svd_factors
from lightning_afm.compress.modules import LowRankLinear
from lightning_afm.compress.plan import PlanEntry
from lightning_afm.compress.registry import LowRankKind, Structure
from lightning_afm.compress.statistics import statistics_for
from lightning_afm.compress.surgery import get_submodule, plain_linear

__all__ = ["LowRankLinearKind"]


class LowRankLinearKind(LowRankKind):
    name = "linear"
    replaces = nn.Linear
    produces = LowRankLinear

    def max_rank(self, module: nn.Module) -> int:
        return min(module.in_features, module.out_features)

    def planned_entry(self, name: str, module: nn.Linear, method: str, rank: int, relu: bool = False) -> PlanEntry:
        """The entry :meth:`build` records for ``module`` (structure flags only), without computing factors.

        Which factor has a bias, per method: AFM both (``U^T b`` and ``mu - U U^T mu``); SVD only the
        second, and only where the layer had a bias; a random start both (AFM's structure).
        """
        m, n = module.weight.shape
        if method == "random":
            flags: dict[str, Any] = {"init": "random", "first_bias": True, "second_bias": True}
            method = "afm"
        else:
            flags = {"first_bias": method == "afm", "second_bias": method == "afm" or module.bias is not None}
        return PlanEntry(name=name, kind=self.name, method=method, rank=int(rank), shape=[m, n], relu=bool(relu),
                         flags=flags)

    def build(self, model: nn.Module, name: str, stats: Any, rank: int, method: str,
              options: Mapping[str, Any]) -> tuple[PlanEntry, LowRankLinear]:
        module = get_submodule(model, name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Linear")
        relu = bool(options.get("relu", False))
        relu_init = options.get("relu_init", "shift")
        provenance: dict[str, Any] = {}
        try:
            if method == "random":
                new = LowRankLinear(module.in_features, module.out_features, int(rank), relu=relu,
                                    device=module.weight.device, dtype=module.weight.dtype)
            else:
                if method == "afm":
                    s = statistics_for(stats, name, module.out_features)
                    factors = afm_factors(module.weight, module.bias, s.mean, s.cov, rank, relu=relu,
                                          relu_init=relu_init,
                                          shift_std=options.get("shift_std", DEFAULT_SHIFT_STD))
                    provenance["kept_variance"] = kept_variance(s.cov, rank)
                    if relu:
                        provenance["relu_init"] = relu_init
                else:
                    factors = svd_factors(module.weight, module.bias, rank)
                new = LowRankLinear.from_factors(factors, relu=relu)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name!r}: {err}") from err
        entry = self.planned_entry(name, module, method, rank, relu)
        entry.flags = {**provenance, **entry.flags}
        return entry, new

    def replay(self, model: nn.Module, entry: PlanEntry) -> LowRankLinear:
        module = self.replaced_module(model, entry)
        m, n = entry.shape
        return LowRankLinear(n, m, entry.rank, relu=entry.relu, first_bias=bool(entry.flags.get("first_bias", True)),
                             second_bias=bool(entry.flags.get("second_bias", True)),
                             device=module.weight.device, dtype=module.weight.dtype)

    def rank_of(self, module: LowRankLinear) -> int:
        return module.rank

    def structure(self, entry: PlanEntry) -> Structure:
        (m, n), k = entry.shape, entry.rank
        first, second = bool(entry.flags.get("first_bias", True)), bool(entry.flags.get("second_bias", True))
        return Structure(parameters=k * n + k * first + m * k + m * second, multiply_adds=k * (n + m),
                         biases={"first": first, "second": second})

    def plain_module(self, name: str, module: LowRankLinear, state_dict: Mapping[str, Any]) -> nn.Linear:
        bias = f"{name}.bias" in state_dict if state_dict else module.second.bias is not None
        return plain_linear(module.in_features, module.out_features, bias, module.second.weight)
