"""Serving: a trained (compressed or not) model and its encoder, raw rows in, click probabilities out.

    Predictor.load(run_or_checkpoint)        load once (model in inference mode + encoder)
    predictor.predict(rows)                  probabilities of raw rows (DataFrame, Arrow, dicts, lines)
    predictor.predict_encoded(cat, num)      probabilities of already-encoded ids
    predictor.predict_file(path, output)     a raw file (Criteo, Avazu, CSV, Parquet, .gz) -> CSV/Parquet
    inference_module(model)                  the one "ready for inference" step
    lightning-afm-predict                    the command line (``serve/cli.py``)
"""

from .predictor import Predictor, ServeError
from .runtime import inference_module, load_model

__all__ = ["Predictor", "ServeError", "inference_module", "load_model"]
