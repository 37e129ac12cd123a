"""``lightning-afm-export``: a run (or checkpoint) to a verified serving artifact.

    lightning-afm-export outputs/2026-11-30/12-00-00 format=onnx out=exported/deepfm
    lightning-afm-export run/checkpoints/last.ckpt --format torchscript -o exported/ts --rows 5000

The model comes from the checkpoint (a compressed one replays its plan), the encoder from the
checkpoint or the run's ``encoder/`` and is copied next to the artifact. The artifact is checked
against eager PyTorch on up to ``--rows`` rows of the run's test split (read from the cache its
``summary.json`` names, else rebuilt by the DataModule of its Hydra config); a checkpoint away
from its run folder is
checked on random ids within the model's vocabularies, and the manifest says so. A failed check
exits 1 and writes nothing. ``int8=true`` (ONNX) quantises tables and matrix products and is
checked by its test AUC against fp32 instead (refused beyond a 0.001 drop unless ``force=true``).
``key=value`` arguments are the same as ``--key value``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_afm.data.schema import CATEGORICAL, LABEL, NUMERIC
from lightning_afm.export.artifact import ExportCheckFailed, export_model
from lightning_afm.export.formats import FORMATS, MissingExtra

_KEY_VALUE = re.compile(r"^(format|out|rows|tolerance|model_class|overwrite|int8|force)=(.*)$")
_FLAGS = ("overwrite", "int8", "force")


def _normalise(argv: list[str]) -> list[str]:
    """``format=onnx`` -> ``--format onnx`` (the issue's and Hydra's spelling), ``overwrite=true`` -> ``--overwrite``."""
    out: list[str] = []
    for token in argv:
        match = _KEY_VALUE.match(token)
        if not match:
            out.append(token)
        elif match.group(1) in _FLAGS:
            if match.group(2).lower() in ("1", "true", "yes"):
                out.append(f"--{match.group(1)}")
        else:
            out += [f"--{match.group(1).replace('_', '-')}", match.group(2)]
    return out


def run_folder(path: Path, checkpoint_path: Path) -> Path | None:
    """The run folder (holding ``summary.json`` or ``.hydra/config.yaml``) a checkpoint belongs to, if any."""
    for folder in (path, checkpoint_path.parent, checkpoint_path.parent.parent):
        if (folder / "summary.json").is_file() or (folder / ".hydra" / "config.yaml").is_file():
            return folder
    return None


Rows = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # categorical [n, F] int64, numeric [n, N] float32, label [n]


def _cached_test_rows(run: Path, limit: int) -> Rows | None:
    """The test split of the cache the run's ``summary.json`` names, if it is still there."""
    from lightning_afm.data.cache import load_split

    summary = run / "summary.json"
    cache = (json.loads(summary.read_text()).get("data_report") or {}).get("cache") if summary.is_file() else None
    if not cache or not (Path(cache) / "test").is_dir():
        return None
    split = load_split(Path(cache) / "test", mmap=True)
    label = split.get(LABEL)
    return (np.asarray(split[CATEGORICAL][:limit], dtype=np.int64), np.asarray(split[NUMERIC][:limit], dtype=np.float32),
            None if label is None else np.asarray(label[:limit], dtype=np.float64))


def _datamodule_test_rows(run: Path, limit: int) -> Rows | None:
    """The test split of the DataModule the run's Hydra config builds (synthetic data is regenerated)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    datamodule = instantiate(OmegaConf.load(config).data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test")
    categorical, numeric, label, seen = [], [], [], 0
    for batch in datamodule.test_dataloader():
        categorical.append(batch[CATEGORICAL].numpy())
        numeric.append(batch[NUMERIC].numpy())
        label.append(batch[LABEL].numpy())
        seen += len(categorical[-1])
        if seen >= limit:
            break
    return (np.concatenate(categorical)[:limit].astype(np.int64), np.concatenate(numeric)[:limit].astype(np.float32),
            np.concatenate(label)[:limit].astype(np.float64))


def test_rows(run: Path, limit: int) -> Rows | None:
    """Up to ``limit`` rows of the run's test split (``categorical [n, F]`` int64, ``numeric [n, N]``
    float32, ``label [n]``): from its cache, else from its Hydra config; None when neither is there."""
    return _cached_test_rows(run, limit) or _datamodule_test_rows(run, limit)


def random_rows(model: torch.nn.Module, limit: int, seed: int = 0) -> Rows:
    """Ids drawn uniformly within each field's vocabulary and numeric values in [0, 1); no labels."""
    rng = np.random.default_rng(seed)
    schema = model.schema
    categorical = np.stack([rng.integers(0, v, limit) for v in schema.vocab_sizes], 1).astype(np.int64)
    return categorical, rng.random((limit, schema.num_numeric), dtype=np.float32), None


def no_rows_message(checkpoint_path: Path, model: torch.nn.Module, no_encoder: bool) -> str:
    """Why a checkpoint of a user's own module (no schema) away from a run's test split cannot be
    exported from the command line, and how to do it."""
    from lightning_afm.data.encoder import no_encoder_message

    encoder = f"{no_encoder_message(checkpoint_path)}. " if no_encoder else ""
    return (f"{encoder}The export is verified on encoded rows, and there are none here: no run folder with a test "
            f"split next to {checkpoint_path}, and {type(model).__name__} has no schema (lightning-afm's models "
            "carry one) to draw ids from. Export from its run folder, or in Python with your own encoded rows: "
            "lightning_afm.export.export_model(model, out, 'onnx', categorical [n, fields] int64, numeric [n, N] "
            "float32)")


def export_run(path: str | Path, fmt: str, out: str | Path, rows: int = 10_000, tolerance: float = 1e-5,
               model_class: str | None = None, overwrite: bool = False, int8: bool = False,
               force: bool = False) -> dict[str, Any]:
    """Export the run or checkpoint at ``path``; returns the manifest (see :func:`export_model`)."""
    from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY
    from lightning_afm.data.encoder import ENCODER_DIR, ENCODER_FILE, Encoder, find_checkpoint
    from lightning_afm.serve.runtime import load_model

    path = Path(path).expanduser()
    checkpoint_path = find_checkpoint(path)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model = load_model(checkpoint, model_class)
    run = run_folder(path, checkpoint_path)
    encoder = Encoder.from_checkpoint(checkpoint)
    if encoder is None and run is not None and (run / ENCODER_DIR / ENCODER_FILE).is_file():
        encoder = Encoder.load(run / ENCODER_DIR)
    found = test_rows(run, rows) if run is not None else None
    if found is not None:
        categorical, numeric, labels = found
        source = f"the run's test split ({run})"
    elif getattr(model, "schema", None) is None:
        raise ValueError(no_rows_message(checkpoint_path, model, encoder is None))
    else:
        categorical, numeric, labels = random_rows(model, rows)
        source = f"random ids within the model's vocabularies (no run folder found next to {checkpoint_path})"
    plan = (checkpoint.get(PLAN_CHECKPOINT_KEY) or {}).get("entries", [])
    return export_model(model, out, fmt, categorical, numeric if numeric.shape[1] else None, source=source,
                        plan=plan, encoder=encoder, tolerance=tolerance, overwrite=overwrite, labels=labels,
                        int8=int8, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-afm-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a run folder (outputs/...) or a checkpoint file (.ckpt)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the artifact's format")
    parser.add_argument("-o", "--out", required=True, help="the folder to write (artifact, encoder/, manifest.json)")
    parser.add_argument("--rows", type=int, default=10_000, help="test rows the artifact is checked on")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="the largest |Δp| against eager PyTorch")
    parser.add_argument("--model-class", default=None, help="package.module.Class, for checkpoints that do not name it")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    parser.add_argument("--int8", action="store_true",
                        help="(onnx) int8 tables and matrix products, refused if test AUC drops by more than 0.001")
    parser.add_argument("--force", action="store_true", help="(int8) write it even when the AUC drops more")
    args = parser.parse_args(_normalise(sys.argv[1:] if argv is None else argv))
    if args.rows < 1:
        parser.error("--rows must be >= 1")
    try:
        manifest = export_run(args.model, args.format, args.out, args.rows, args.tolerance, args.model_class,
                              args.overwrite, args.int8, args.force)
    except (ExportCheckFailed, MissingExtra, FileExistsError, ValueError, TypeError, OSError) as exc:
        print(f"lightning-afm-export: error: {exc}", file=sys.stderr)
        return 1
    if manifest["encoder"] is None:
        from lightning_afm.data.encoder import no_encoder_message

        print(f"lightning-afm-export: note: the artifact takes encoded ids only: {no_encoder_message(Path(args.model))}",
              file=sys.stderr)
    check = manifest["verification"]
    shown = ("max_abs_diff", "rows", "source", "auc_change", "logloss_change")
    print(json.dumps({"out": str(args.out), "file": manifest["file"], "bytes": manifest["bytes"],
                      **{k: check[k] for k in shown if k in check}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
