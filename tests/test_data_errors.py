"""Bad input: clear errors before any work, malformed rows named by file/line/column, or skipped and reported."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_afm.data.errors import DataConfigError, MalformedRowError
from lightning_afm.data.pipeline import EncodeOptions, preprocess
from lightning_afm.data.readers import TableSpec, avazu_source, criteo_source, table_source
from lightning_afm.data.synthetic import write_criteo_format


def _run(source, cache: Path, **options):
    return preprocess(source, EncodeOptions(**options), cache, progress=False)


def _criteo_lines(tmp_path: Path, n: int = 200) -> list[str]:
    path = write_criteo_format(tmp_path / "good.txt", n, seed=1)
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataConfigError, match="not found"):
        _run(criteo_source(tmp_path / "nope.txt"), tmp_path / "c")


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataConfigError, match="empty"):
        _run(criteo_source(tmp_path / "empty.txt"), tmp_path / "c")
    _write(tmp_path / "h.csv", ["click,site"])
    with pytest.raises(DataConfigError, match="no data rows"):
        _run(table_source(tmp_path / "h.csv", "click", ["site"]), tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing was written: the checks come first


def test_missing_label_column_names_the_columns_there(tmp_path):
    path = _write(tmp_path / "t.csv", ["clicked,site,price", "1,a,3"])
    with pytest.raises(DataConfigError, match=r"label column 'click' not found.*clicked, site, price"):
        _run(table_source(path, "click", ["site"]), tmp_path / "c")


def test_configured_column_not_in_file(tmp_path):
    path = _write(tmp_path / "t.csv", ["click,site,price", "1,a,3"])
    with pytest.raises(DataConfigError, match=r"not found: \['device', 'cost'\].*click, site, price"):
        _run(table_source(path, "click", ["site", "device"], ["cost"]), tmp_path / "c")
    with pytest.raises(DataConfigError, match="not found"):
        _run(avazu_source(path), tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_parquet_missing_column_and_not_parquet(tmp_path):
    pq.write_table(pa.table({"y": [0, 1], "a": ["x", "y"]}), tmp_path / "t.parquet")
    with pytest.raises(DataConfigError, match=r"not found: \['b'\].*y, a"):
        _run(table_source(tmp_path / "t.parquet", "y", ["a", "b"]), tmp_path / "c")
    (tmp_path / "fake.parquet").write_text("y,a\n1,x\n")
    with pytest.raises(DataConfigError, match="not a readable Parquet file"):
        _run(table_source(tmp_path / "fake.parquet", "y", ["a"]), tmp_path / "c")


def test_criteo_with_the_wrong_number_of_columns(tmp_path):
    lines = [line.split("\t", 1)[1] for line in _criteo_lines(tmp_path, 20)]  # test.txt has no label column
    path = _write(tmp_path / "test.txt", lines)
    with pytest.raises(DataConfigError, match="expected 40 columns.*has 39"):
        _run(criteo_source(path), tmp_path / "c")


def test_bad_spec_and_options():
    with pytest.raises(DataConfigError, match="also listed as a feature"):
        TableSpec("click", ("click", "a"))
    with pytest.raises(DataConfigError, match="more than once"):
        TableSpec("click", ("a",), ("a",))
    with pytest.raises(DataConfigError, match="at least one"):
        TableSpec("click", ())
    with pytest.raises(DataConfigError, match="min_count"):
        EncodeOptions(min_count=0)
    with pytest.raises(DataConfigError, match="on_bad_rows"):
        EncodeOptions(on_bad_rows="ignore")
    with pytest.raises(ValueError, match="test_fraction"):
        EncodeOptions(test_fraction=1.5)
    with pytest.raises(DataConfigError, match="single character"):
        table_source("x.csv", "y", ["a"], sep=";;")


@pytest.mark.parametrize(
    "line_no, make_bad, column, reason",
    [
        (57, lambda f: f[:10], None, "expected 40 columns"),
        (120, lambda f: f + ["extra"], None, "expected 40 columns"),
        (3, lambda f: f[:3] + ["abc"] + f[4:], "I3", "not an integer, got 'abc'"),
        (150, lambda f: f[:5] + ["1.5"] + f[6:], "I5", "not an integer, got '1.5'"),
        (199, lambda f: ["2"] + f[1:], "label", "label must be 0 or 1, got '2'"),
        (10, lambda f: [""] + f[1:], "label", "label must be 0 or 1"),
    ],
)
def test_malformed_row_names_file_line_and_column(tmp_path, line_no, make_bad, column, reason):
    lines = _criteo_lines(tmp_path)
    lines[line_no - 1] = "\t".join(make_bad(lines[line_no - 1].split("\t")))
    path = _write(tmp_path / "bad.txt", lines)
    for source in (criteo_source(path), criteo_source(path, block_size=1 << 12, chunk_rows=16)):  # one chunk, many chunks
        with pytest.raises(MalformedRowError) as info:
            _run(source, tmp_path / "c")
        err = info.value
        assert (err.line, err.column) == (line_no, column)
        assert str(path) in str(err) and f"line {line_no}" in str(err) and reason in str(err)
        assert "on_bad_rows='skip'" in str(err)
    assert not any((tmp_path / "c").glob("*")) if (tmp_path / "c").exists() else True


def test_bad_numeric_value_in_generic_csv(tmp_path):
    path = _write(tmp_path / "t.csv", ["click,site,price", "1,a,3.5", "0,b,cheap", "1,c,1e3"])
    with pytest.raises(MalformedRowError, match=r"line 3, column 'price': not a finite number, got 'cheap'"):
        _run(table_source(path, "click", ["site"], ["price"]), tmp_path / "c")


def test_skip_mode_counts_and_reports(tmp_path, caplog):
    lines = _criteo_lines(tmp_path, 300)
    bad = {5: lambda f: f[:20], 40: lambda f: f[:2] + ["x"] + f[3:], 41: lambda f: ["7"] + f[1:], 250: lambda f: f + ["", ""]}
    for line_no, make_bad in bad.items():
        lines[line_no - 1] = "\t".join(make_bad(lines[line_no - 1].split("\t")))
    path = _write(tmp_path / "bad.txt", lines)
    with caplog.at_level(logging.WARNING, logger="lightning_afm.data.pipeline"):
        result = _run(criteo_source(path, block_size=1 << 13, chunk_rows=20), tmp_path / "c", on_bad_rows="skip")
    report = result.schema.extra["bad_rows"]
    assert report["total"] == 4 == result.stats["rows_skipped"]
    assert report["by_reason"] == {"wrong number of columns": 2, "I2: not an integer": 1, "label: label must be 0 or 1": 1}
    assert sum(result.schema.extra["rows"].values()) == 296
    examples = " | ".join(report["examples"])
    for line_no in bad:
        assert f"line {line_no}" in examples  # line numbers stay right after skipped rows
    assert any("skipped 4 malformed rows" in r.getMessage() for r in caplog.records)


def test_skip_mode_with_nothing_left(tmp_path):
    path = _write(tmp_path / "t.csv", ["click,site", "5,a", "x,b"])
    with pytest.raises(DataConfigError, match="no valid training rows"):
        _run(table_source(path, "click", ["site"]), tmp_path / "c", on_bad_rows="skip", test_fraction=0.0)


@pytest.mark.parametrize("value", ["1e39", "-4e38"])
def test_value_beyond_float32_is_rejected_with_file_line_column_and_fix(tmp_path, value):
    """1e39 fits float64 but not the float32 cache: as the training maximum it would squash the field to 0."""
    path = _write(tmp_path / "t.csv", ["click,site,price", "1,a,3.5", f"0,b,{value}", "1,c,2"])
    with pytest.raises(MalformedRowError) as info:
        _run(table_source(path, "click", ["site"], ["price"]), tmp_path / "c", test_fraction=0.0)
    err = info.value
    assert (err.line, err.column) == (3, "price")
    message = str(err)
    assert str(path) in message and "line 3, column 'price'" in message and value in message
    assert "float32" in message and "rescale the column" in message
    result = _run(table_source(path, "click", ["site"], ["price"]), tmp_path / "c", test_fraction=0.0, on_bad_rows="skip")
    assert result.stats["rows_skipped"] == 1
    assert list(result.schema.extra["bad_rows"]["by_reason"]) == ["price: beyond the float32 range (|x| > 3.403e+38)"]
    scaled = np.load(result.path / "train" / "numeric.npy")[:, 0]
    assert scaled.tolist() == [1.0, 0.0]  # the field keeps its information: 3.5 -> 1, 2 -> 0


def test_float64_parquet_value_beyond_float32_is_rejected(tmp_path):
    pq.write_table(pa.table({"y": [0, 1, 1], "a": ["x", "y", "z"], "v": [1.0, -1e300, 2.0]}), tmp_path / "t.parquet")
    with pytest.raises(MalformedRowError, match=r"row 2, column 'v': beyond the float32 range"):
        _run(table_source(tmp_path / "t.parquet", "y", ["a"], ["v"]), tmp_path / "c", test_fraction=0.0)


def _blank_and_multiline(tmp_path: Path, bad_line: str) -> Path:
    """A CSV whose 6th physical line is its 4th record: a blank line and a quoted line break come first."""
    path = tmp_path / "t.csv"
    path.write_text("click,site,price\n1,a,1\n\n1,\"b\nc\",2\n" + bad_line + "\n1,e,4\n")
    return path


@pytest.mark.parametrize(
    "bad_line, column, reason",
    [("0,d,oops", "price", "not a finite number, got 'oops'"), ("0,d", None, "expected 3 columns"), ("7,d,1", "click", "label must be 0 or 1")],
)
def test_line_numbers_stay_right_after_a_blank_line_and_a_quoted_newline(tmp_path, bad_line, column, reason):
    path = _blank_and_multiline(tmp_path, bad_line)
    source = lambda: table_source(path, "click", ["site"], ["price"])  # noqa: E731
    with pytest.raises(MalformedRowError) as info:
        _run(source(), tmp_path / "c", test_fraction=0.0)
    assert (info.value.line, info.value.column) == (6, column)
    assert "line 6" in str(info.value) and reason in str(info.value)
    result = _run(source(), tmp_path / "c", test_fraction=0.0, on_bad_rows="skip")
    first = result.schema.extra["bad_rows"]["first"]
    assert [(row["line"], row["column"]) for row in first] == [(6, column)] and reason in first[0]["reason"]
    assert result.stats["blank_lines"] == 1 and result.stats["rows_encoded"] == 3


def test_criteo_line_numbers_after_blank_lines(tmp_path):
    lines = _criteo_lines(tmp_path, 50)
    lines[29] = "\t".join(lines[29].split("\t")[:5])  # line 30: too few columns ...
    path = _write(tmp_path / "bad.txt", lines[:10] + ["", ""] + lines[10:])  # ... now line 32
    with pytest.raises(MalformedRowError, match=r"line 32: expected 40 columns"):
        _run(criteo_source(path, block_size=1 << 12, chunk_rows=8), tmp_path / "c")


def test_cr_only_line_ends_get_a_clear_error(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"click,site\r1,a\r0,b\r")
    with pytest.raises(DataConfigError, match=r"carriage return only.*tr '\\r' '\\n'"):
        _run(table_source(path, "click", ["site"]), tmp_path / "c")
    crlf = tmp_path / "dos.csv"  # CRLF stays fine
    crlf.write_bytes(b"click,site\r\n1,a\r\n0,b\r\n")
    assert _run(table_source(crlf, "click", ["site"]), tmp_path / "c", test_fraction=0.0).stats["rows_encoded"] == 2


def _split_of_rows(result) -> dict[int, str]:
    """Row id (the numeric column 'x', min-max scaled in the cache) -> the split it was encoded into."""
    low, high = result.schema.extra["numeric_min"][0], result.schema.extra["numeric_max"][0]
    out = {}
    for split in ("train", "val", "test"):
        for v in np.load(result.path / split / "numeric.npy")[:, 0].tolist():
            out[int(round(v * (high - low) + low))] = split
    return out


def test_skipping_rows_keeps_the_split_of_every_other_row(tmp_path):
    """The split is drawn from each row's record number: a skipped row (of either kind) or a blank line moves no other row."""
    rows = [f"{i % 2},s{i % 7},{i}" for i in range(600)]
    clean = _write(tmp_path / "clean.csv", ["click,site,x"] + rows)
    options = dict(test_fraction=0.2, val_fraction=0.1, seed=5, min_count=1)
    reference = _split_of_rows(_run(table_source(clean, "click", ["site"], ["x"]), tmp_path / "c", **options))
    assert sorted(reference) == list(range(600))
    assert sorted(reference.values()).count("test") == 120  # the fractions of the permutation split
    broken = list(rows)
    broken[3] = "1,s3"  # too few columns: dropped by the parser
    broken[250] = "1,s3,250,5"  # too many
    broken[400] = "2,s3,400"  # bad label: dropped after parsing
    damaged = _write(tmp_path / "damaged.csv", ["click,site,x"] + broken[:100] + [""] + broken[100:])
    source = table_source(damaged, "click", ["site"], ["x"], block_size=1 << 10, chunk_rows=50)
    result = _run(source, tmp_path / "c", on_bad_rows="skip", **options)
    got = _split_of_rows(result)
    assert set(reference) - set(got) == {3, 250, 400}
    assert all(got[rid] == reference[rid] for rid in got)
    report = result.data_report()
    assert report["rows_skipped"] == 3 and report["blank_lines"] == 1
    # physical lines: header 1, rows 2.., a blank line after row 99 (line 101)
    assert [(r["line"], r["column"]) for r in report["skipped"]["first"]] == [(5, None), (253, None), (403, "click")]


@pytest.mark.parametrize(
    "data, blank",
    [(b"a\n\nb\n", 1), (b"\nb\n", 1), (b"a\n\n\n\nb", 3), (b"a\r\n\r\nb\r\n", 1), (b"a\nb\n", 0), (b"\r\nx", 1), (b"\n\r\n", 2)],
)
def test_blank_lines_are_counted_exactly_across_block_seams(data, blank):
    from lightning_afm.data.readers import _LineScan

    for cut in range(len(data) + 1):
        for cut2 in range(cut, len(data) + 1):
            scan = _LineScan(b'"')
            for part in (data[:cut], data[cut:cut2], data[cut2:]):
                scan.feed(memoryview(bytearray(part)))
            assert (scan.blank_lines, scan.newlines) == (blank, data.count(b"\n"))
