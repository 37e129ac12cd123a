"""``lightning-afm-generate``: write a Criteo-format file of any size from the synthetic ground truth.

For trying the pipeline, the benchmarks and the tests on data of Criteo's shape that no one has
tuned on: 26 categorical fields with Criteo's cardinalities, Zipf-distributed values with a long
tail of rare ones, missing values at Criteo's rates, 13 count fields, labels from a hidden logit
with per-value effects, low-rank field interactions and a nonlinearity. Every seed gives another
ground truth (other value effects and interactions), so files of different seeds are different
datasets, not resamples of one.

    lightning-afm-generate /tmp/criteo_200k.txt --rows 200000 --seed 7
    lightning-afm data=criteo data.path=/tmp/criteo_200k.txt compression=afm
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_afm.data.synthetic import write_criteo_format


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="lightning-afm-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="the file to write (tab-separated, no header, like Criteo's train.txt)")
    parser.add_argument("--rows", type=int, default=200_000, help="number of rows (default 200000)")
    parser.add_argument("--seed", type=int, default=0, help="the ground truth's seed (default 0)")
    parser.add_argument("--ctr", type=float, default=0.25, help="click rate (default 0.25, about Criteo's)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    if not 0.0 < args.ctr < 1.0:
        parser.error(f"--ctr must be in (0, 1), got {args.ctr}")
    if args.path.exists():
        parser.error(f"{args.path} exists; remove it or choose another path (nothing was written)")
    path = write_criteo_format(args.path, args.rows, seed=args.seed, ctr=args.ctr, progress=True)
    print(f"wrote {args.rows:,} rows to {path}")
    return path


if __name__ == "__main__":
    main()
