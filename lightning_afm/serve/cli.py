"""``lightning-afm-predict``: score a raw file with a trained run.

    lightning-afm-predict outputs/2024-06-01/12-00-00 test.txt.gz -o scores.csv
    lightning-afm-predict run/last.ckpt rows.parquet -o scores.parquet --on-bad-rows skip -q

The model comes from the run folder's ``last.ckpt`` (or the checkpoint given), the encoder from
the checkpoint (or the run's ``encoder/``). The input is read in the training file's format
(Criteo TSV, Avazu or any CSV; Parquet by suffix; ``.gz``/``.bz2``/``.zst`` decompressed), with or
without its label column, ``--chunk-rows`` rows at a time. Output: ``row``, ``probability`` (and
``label`` if the input has one), CSV or Parquet by suffix.
"""

from __future__ import annotations

import argparse
import json
import sys

from lightning_afm.data.errors import ON_BAD_ROWS, DataError
from lightning_afm.serve.runtime import RUNTIMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-afm-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a run folder (outputs/...) or a checkpoint file (.ckpt)")
    parser.add_argument("input", help="the raw rows: the training file's format, or Parquet; .gz etc. decompressed")
    parser.add_argument("-o", "--output", required=True, help="where to write the probabilities (.csv, .csv.gz, .parquet)")
    parser.add_argument("--format", choices=["csv", "parquet"], default=None, help="output format (default: by suffix)")
    parser.add_argument("--on-bad-rows", choices=ON_BAD_ROWS, default="error",
                        help="a bad row: stop with an error naming line and column (default), or skip and count it")
    parser.add_argument("--chunk-rows", type=int, default=65536, help="rows read and scored at a time (bounds memory)")
    parser.add_argument("--batch-size", type=int, default=8192, help="rows per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="auto (default): ONNX Runtime for forward passes of up to 256 rows, TorchScript above "
                             "(AutoInt: its eager form with our compiled attention, above 48 rows on one thread; "
                             "TorchScript alone without the serve extra); torchscript: the inference layer compiled "
                             "(the faster from batch 1,024); eager; onnx: exported to ONNX at load and run by ONNX "
                             "Runtime (the faster for small batches; needs the serve extra)")
    parser.add_argument("--export", default=None,
                        help="a lightning-afm-export out= folder (format=onnx) of this run: ONNX Runtime opens its "
                             "verified model.onnx instead of exporting at load, if its manifest's weights checksum "
                             "matches (an export in the run folder or its subfolders is found without this)")
    parser.add_argument("--model-class", default=None,
                        help="package.module.Class of the LightningModule, for checkpoints that do not name it")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no report on stderr")
    args = parser.parse_args(argv)
    if args.chunk_rows < 1 or args.batch_size < 1:
        parser.error("--chunk-rows and --batch-size must be >= 1")

    from .predictor import Predictor

    try:
        predictor = Predictor.load(args.model, model_class=args.model_class, device=args.device, batch_size=args.batch_size,
                                   runtime=args.runtime, export=args.export)
        report = predictor.predict_file(args.input, args.output, on_bad_rows=args.on_bad_rows, chunk_rows=args.chunk_rows,
                                        file_format=args.format, progress=not args.quiet)
    except (DataError, ValueError, TypeError, OSError) as exc:  # the user's input: one sentence, no traceback
        print(f"lightning-afm-predict: error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
