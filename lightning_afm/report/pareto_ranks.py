"""The uniform rank pair (MLP rank, embedding rank) whose compressed model comes nearest a budget.

The pareto recipe (``recipes/pareto.sh``) compares budgeted AFM (``compression=afm_auto``, one
rank per MLP layer and per field) with uniform ranks (``compression=afm``: one MLP rank, one
embedding rank) at the same parameter count. For each budget ``ratio`` (x fewer parameters than
the model as it comes) this module prices the model of the given overrides without training
anything, with the prices the budgeted runs use (:func:`lightning_afm.callbacks.budgeting.price_stages`),
and picks the pair by the rule a size budget's own uniform candidate uses
(:func:`lightning_afm.callbacks.uniform.choose_pair`, whose docstring gives it). Prints one line
per ratio: ``RATIO MLP_RANK EMB_RANK PARAMS``, or ``RATIO infeasible`` when not even the smallest
structure (MLP rank ``multiple``, rank 1 per field) fits, which a budget cannot meet either.

::

    python -m lightning_afm.report.pareto_ranks --ratios 2 3 5 8 16 -- experiment=small_synthetic
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_afm.compress.pricing import Price
# the pair's rule lives beside the budget, whose own uniform candidate uses it too
from lightning_afm.callbacks.uniform import PAPER_PROPORTION, UniformPair, choose_pair, uniform_params  # noqa: F401

__all__ = ["UniformPair", "uniform_params", "choose_pair", "main"]


def _price_config(overrides: Sequence[str]) -> tuple[int, list[Price]]:
    """The model of ``overrides`` (built with its data's schema, untrained): its parameters after the
    fixed-rank stages (none under ``compression=afm_auto``) and its auto targets' prices."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from lightning_afm.callbacks.budgeting import price_stages
    from lightning_afm.callbacks.factory import build_compression_callback

    with initialize_config_module(config_module="lightning_afm.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "compression=afm_auto"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model, schema=datamodule.schema.to_dict(), _convert_="all")
    callback = build_compression_callback(cfg.compression)
    # the callback's own plan: the same targets and fold width the budgeted runs are priced with
    planned = callback.planned_stages(model)
    prices = price_stages(model, planned, 0)
    return prices.params_now + prices.fixed, prices.auto  # as the budget's uniform candidate is priced


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_afm.report.pareto_ranks",
                                     description="The uniform (MLP, embedding) rank pair per budget ratio.")
    parser.add_argument("--ratios", nargs="+", type=float, required=True, help="x fewer parameters, e.g. 2 3 5 8 16")
    parser.add_argument("--multiple", type=int, default=8, help="the MLP rank step (as compression.budget.multiple)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the runs (data, model), after --")
    args = parser.parse_args(argv)
    params_now, prices = _price_config(args.overrides)
    for ratio in args.ratios:
        if ratio <= 1:
            print(f"pareto_ranks: error: ratio {ratio:g} must be above 1 (x fewer parameters)", file=sys.stderr)
            raise SystemExit(2)
        try:
            pair = choose_pair(params_now, prices, int(params_now / ratio), args.multiple)
        except ValueError as err:  # the budgeted runs cannot meet it either (same smallest structure)
            print(f"pareto_ranks: ratio {ratio:g} is left out: {err}", file=sys.stderr)
            print(f"{ratio:g} infeasible")
            continue
        print(f"{ratio:g} {pair.mlp} {pair.emb} {pair.params}")


if __name__ == "__main__":
    main()
