"""Preprocessing speed and peak memory: lightning-afm vs the pandas + scikit-learn way.

The comparison pipeline is the one of DeepCTR-Torch's Criteo example, which the
paper's authors ran::

    data = pd.read_csv(path, sep="\\t", header=None, names=columns)
    data[sparse] = data[sparse].fillna("-1"); data[dense] = data[dense].fillna(0)
    for feat in sparse: data[feat] = LabelEncoder().fit_transform(data[feat])
    data[dense] = MinMaxScaler(feature_range=(0, 1)).fit_transform(data[dense])
    train, test = train_test_split(data, test_size=0.1, random_state=2020)

Ours does more: it validates every row, builds training-only vocabularies with
counts, and writes the memory-mappable cache (arrays, vocab files, schema) to
disk. Each pipeline runs in its own fresh subprocess, which reports its wall time
(imports excluded, file in the page cache for both) and its peak resident memory.

    python benchmarks/bench_preprocess.py                 # a generated 1M-row Criteo-format file
    python benchmarks/bench_preprocess.py --rows 2000000 --repeat 3
    python benchmarks/bench_preprocess.py --file /data/criteo/train.txt --only ours
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child_ours(path: str, workdir: str) -> dict:
    from lightning_afm.data.cache import content_fingerprint
    from lightning_afm.data.pipeline import EncodeOptions, preprocess
    from lightning_afm.data.readers import criteo_source

    # The cache key's content fingerprint, timed alone (part of every run's cache lookup).
    start = time.perf_counter()
    content_fingerprint(path)
    fingerprint_s = time.perf_counter() - start
    cache = Path(tempfile.mkdtemp(dir=workdir, prefix="cache-"))
    start = time.perf_counter()
    result = preprocess(criteo_source(path), EncodeOptions(), cache, progress=False)
    seconds = time.perf_counter() - start
    rows = result.stats["rows_encoded"]
    shutil.rmtree(cache, ignore_errors=True)
    stats = {k: v for k, v in result.stats.items() if k.startswith("seconds_")}
    return {"rows": rows, "seconds": seconds, "phases": stats, "fingerprint_s": fingerprint_s}


def _child_pandas(path: str, workdir: str) -> dict:
    import pandas as pd
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelEncoder, MinMaxScaler

    dense = [f"I{i}" for i in range(1, 14)]
    sparse = [f"C{i}" for i in range(1, 27)]
    start = time.perf_counter()
    data = pd.read_csv(path, sep="\t", header=None, names=["label"] + dense + sparse)
    data[sparse] = data[sparse].fillna("-1")
    data[dense] = data[dense].fillna(0)
    for feat in sparse:
        data[feat] = LabelEncoder().fit_transform(data[feat])
    data[dense] = MinMaxScaler(feature_range=(0, 1)).fit_transform(data[dense])
    train, test = train_test_split(data, test_size=0.1, random_state=2020)
    seconds = time.perf_counter() - start
    return {"rows": len(train) + len(test), "seconds": seconds}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _child(kind: str, path: str, workdir: str) -> None:
    result = {"ours": _child_ours, "pandas": _child_pandas}[kind](path, workdir)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(peak_rss_mb=usage.ru_maxrss / 1024, cpu_seconds=usage.ru_utime + usage.ru_stime)
    print("RESULT " + json.dumps(result))


def _run(kind: str, path: Path, workdir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--file", str(path), "--workdir", str(workdir)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def _warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="a Criteo train.txt-format file (default: generate one)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated file")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lightning_afm_bench")
    parser.add_argument("--repeat", type=int, default=1, help="runs per pipeline (the fastest is reported)")
    parser.add_argument("--only", choices=["ours", "pandas"], help="run one pipeline only")
    parser.add_argument("--child", choices=["ours", "pandas"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        _child(args.child, str(args.file), str(args.workdir))
        return

    path = args.file
    if path is None:
        sys.path.insert(0, str(REPO))
        from lightning_afm.data.synthetic import write_criteo_format

        path = args.workdir / f"criteo_like_{args.rows}.txt"
        if not path.exists():
            print(f"writing {args.rows:,} Criteo-format rows to {path} ...", flush=True)
            write_criteo_format(path.with_suffix(".tmp"), args.rows, seed=0, progress=True).rename(path)
    size_mb = path.stat().st_size / 2**20
    print(f"file: {path} ({size_mb:,.0f} MiB); CPU: {_cpu_model()} x {os.cpu_count()}; "
          f"load average: {os.getloadavg()[0]:.2f}")
    kinds = [args.only] if args.only else ["ours", "pandas"]
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for kind in kinds:  # alternate, so that background load hits both alike
            _warm_page_cache(path)
            result = _run(kind, path, args.workdir)
            if kind not in best or result["seconds"] < best[kind]["seconds"]:
                best[kind] = result
    print(f"\n{'pipeline':<42}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'peak RSS MiB':>14}{'CPU s':>8}")
    names = {"ours": "lightning-afm preprocess (cache on disk)", "pandas": "pandas read_csv + LabelEncoder + MinMax"}
    for kind, r in best.items():
        print(f"{names[kind]:<42}{r['rows']:>11,}{r['seconds']:>10.2f}{r['rows'] / r['seconds']:>12,.0f}{r['peak_rss_mb']:>14,.0f}{r['cpu_seconds']:>8.1f}")
    if len(best) == 2:
        print(f"\nspeed-up: {best['pandas']['seconds'] / best['ours']['seconds']:.1f}x; "
              f"memory: {best['pandas']['peak_rss_mb'] / best['ours']['peak_rss_mb']:.1f}x less")  # fmt: skip
    if "ours" in best:
        print("our phases (s):", json.dumps(best["ours"]["phases"]))
        print(f"content fingerprint (cache key): {best['ours']['fingerprint_s']:.3f} s, "
              f"{best['ours']['fingerprint_s'] / best['ours']['seconds']:.1%} of our preprocessing")


if __name__ == "__main__":
    main()
