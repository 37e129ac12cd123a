"""The random train / validation / test split.

The test rows are exactly those of scikit-learn's
``train_test_split(data, test_size=test_fraction, random_state=seed)``, the call
in DeepCTR's examples that the paper's authors ran (Criteo 0.1, Avazu 0.2, seed
2020): ``RandomState(seed).permutation(n)``, first ``ceil(test_fraction * n)``
rows to test. The validation rows, when asked for, are the next
``ceil(val_fraction * n)`` rows of the same permutation, so asking for a
validation split never changes the test split.
"""

from __future__ import annotations

import math

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if float(test_fraction) + float(val_fraction) >= 1.0:
        raise ValueError(
            f"test_fraction + val_fraction must leave rows for training, got {test_fraction} + {val_fraction}"
        )


def split_assignment(num_rows: int, test_fraction: float, val_fraction: float = 0.0, seed: int = 2020) -> np.ndarray:
    """Which split each row belongs to: ``int8 [num_rows]`` of ``TRAIN``/``VAL``/``TEST``.

    Example:
        >>> a = split_assignment(10, 0.2, 0.1, seed=0)
        >>> [int((a == s).sum()) for s in (TRAIN, VAL, TEST)]
        [7, 1, 2]
    """
    check_fractions(test_fraction, val_fraction)
    n_test = math.ceil(float(test_fraction) * num_rows)
    n_val = math.ceil(float(val_fraction) * num_rows)
    out = np.full(num_rows, TRAIN, dtype=np.int8)
    if n_test == 0 and n_val == 0:
        return out
    permutation = np.random.RandomState(int(seed)).permutation(num_rows)
    out[permutation[:n_test]] = TEST
    out[permutation[n_test : n_test + n_val]] = VAL
    return out
