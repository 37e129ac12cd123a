"""``lightning-afm-bench`` (same as ``python -m lightning_afm.bench``): parameters and CPU inference throughput.

Builds the seven models at the paper's Criteo and Avazu shapes from the cardinalities alone
(no data), with the baseline and its compressed structures (+AFM MLP, +AFM EMB, SVD, TTD) and
DeepCTR-Torch 0.3.0's implementation of the same model, times them side by side, and writes
``bench.json`` and ``bench.md`` (Table 2's layout). Configured by ``conf/bench.yaml``::

    lightning-afm-bench models=[deepfm,dcn] datasets=[criteo] out=/tmp/bench
    lightning-afm-bench variants=[baseline,afm_emb,deepctr_torch] rounds=10
    lightning-afm-bench vocab_cap=100000 batch=2000          # quick run, capped tables
    lightning-afm-bench threads=1 mlp_rank=32 emb_rank=4     # other ranks, one thread

One model is built at a time (its variants share the parameters they keep), so the peak
memory is one full model plus the activations of a batch: about 4 GB for the Criteo models
(574M parameters), up to about 9 GB for FiBiNet on Avazu (its MLP reads 23,100 inputs at batch
10,000). On 2 busy CPU cores a Criteo model takes about a minute with the default 5 rounds, an
Avazu model several minutes, and FiBiNet on Avazu most of an hour (about 30 s a batch).

``run(cfg)`` does the work and returns the rows, so tests can call it on a composed config.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lightning_afm.bench.benchmark import BenchSettings, peak_rss_gb, run_benchmark, settings_dict
from lightning_afm.bench.report import machine_info, native_attention_words, now, to_markdown, write_report

__all__ = ["run", "main", "settings_from_config"]

log = logging.getLogger(__name__)

_NOT_SETTINGS = {"out", "hydra"}


def settings_from_config(cfg: DictConfig) -> BenchSettings:
    """The :class:`BenchSettings` of a composed ``bench`` config; unknown keys are an error."""
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    values = {k: v for k, v in values.items() if k not in _NOT_SETTINGS}
    known = set(BenchSettings.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown bench settings {unknown}; the settings are {sorted(known | {'out'})}")
    return BenchSettings(**values)


def _output_dir(cfg: DictConfig) -> Path:
    if cfg.get("out"):
        return Path(str(cfg.out))
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ValueError("no output directory: set out=/some/dir (or run through Hydra, which gives its run dir)")


def _command() -> str:
    if HydraConfig.initialized():
        return " ".join(["lightning-afm-bench", *HydraConfig.get().overrides.task])
    return ""


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Measure what ``cfg`` selects, write ``bench.json`` and ``bench.md`` into the output dir, return the rows."""
    settings = settings_from_config(cfg)  # validates names before any model is built
    out = _output_dir(cfg)
    started = time.perf_counter()
    machine = machine_info()
    rows = run_benchmark(settings)
    for row in rows:
        row["cpu"] = machine["cpu"]
    meta = {
        **machine,
        "native_attention": native_attention_words(),
        "date": now(),
        "command": _command(),
        "wall_s": time.perf_counter() - started,
        "peak_rss_gb": peak_rss_gb(),
        "settings": settings_dict(settings),
    }
    json_path, md_path = write_report(rows, meta, out)
    print(to_markdown(rows, meta), flush=True)
    log.info("wrote %s and %s", json_path, md_path)
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    try:
        settings_from_config(cfg)
    except ValueError as err:  # a bad selection or setting: one clear line, no traceback
        print(f"lightning-afm-bench: error: {err}", file=sys.stderr)
        sys.exit(2)
    run(cfg)


if __name__ == "__main__":
    main()
