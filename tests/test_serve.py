"""Serving: the encoder reproduces the training cache's arrays bit for bit, and a trained run scores raw rows.

The references are the cache's own arrays (``preprocess``), so one code path is checked against
the other; the end-to-end test trains a tiny compressed model with the app and compares
``Predictor.predict`` on raw lines with the model's output on the cached rows.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401 - pa.csv
import pyarrow.parquet as pq
import pytest
import torch

from lightning_afm.data import DataConfigError, MalformedRowError
from lightning_afm.data.cache import load_split
from lightning_afm.data.encoder import CHECKPOINT_KEY, Encoder, concat_encoded
from lightning_afm.data.pipeline import EncodeOptions, preprocess
from lightning_afm.data.readers import BadRows, avazu_source, criteo_source, table_source
from lightning_afm.data.split import SPLIT_NAMES, split_assignment
from lightning_afm.models.base import MODEL_CLASS_KEY
from lightning_afm.serve import Predictor, ServeError, inference_module
from lightning_afm.serve.cli import main as predict_main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CRITEO = SHARED / "criteo_sample_10k.txt"
AVAZU = SHARED / "avazu_sample_3k.csv"
needs_samples = pytest.mark.skipif(not CRITEO.exists(), reason="the shared data samples are not here")


def encode_file(encoder: Encoder, path) -> "object":
    source = encoder.file_source(path, chunk_rows=777)  # several chunks: ids must not depend on chunking
    bad = BadRows()
    return concat_encoded([encoder.encode_chunk(c, source, "error", bad) for c in source.chunks("error", bad)], encoder.schema, 0)


def assert_matches_cache(encoded, cache: Path, options: EncodeOptions) -> None:
    """Every split of the cache equals the encoder's rows of that split, bit for bit."""
    assignment = split_assignment(len(encoded), options.test_fraction, options.val_fraction, options.seed)
    for s, name in enumerate(SPLIT_NAMES):
        arrays = load_split(cache / name, mmap=False)
        rows = assignment == s
        np.testing.assert_array_equal(encoded.categorical[rows], arrays["categorical"])
        np.testing.assert_array_equal(encoded.numeric[rows].view(np.uint32), arrays["numeric"].view(np.uint32))
        np.testing.assert_array_equal(encoded.label[rows], arrays["label"])


def write_table(path: Path, rows: int = 600, seed: int = 0) -> None:
    """A CSV with short and long (> 8 byte) strings, an integer-like categorical, missing values and floats."""
    rng = np.random.default_rng(seed)
    lines = ["click,site,device,hour,price,score"]
    for i in range(rows):
        site = f"site-{rng.integers(0, 40)}-long-name" if rng.random() < 0.7 else ""
        device = ["a", "b", "cc", "", "d9"][rng.integers(0, 5)]
        price = "" if rng.random() < 0.2 else f"{rng.gamma(2.0, 3.0):.3f}"
        lines.append(f"{int(rng.random() < 0.3)},{site},{device},{rng.integers(0, 24)},{price},{rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")


@needs_samples
@pytest.mark.parametrize("options", [EncodeOptions(val_fraction=0.1), EncodeOptions(min_count=3, log_buckets=True)])
def test_encoder_reproduces_the_criteo_cache(tmp_path, options):
    result = preprocess(criteo_source(CRITEO), options, tmp_path, progress=False)
    encoder = Encoder.from_state(Encoder.from_cache(result.path).to_state())  # through the checkpoint form
    encoded = encode_file(encoder, CRITEO)
    assert_matches_cache(encoded, result.path, options)
    assert (encoded.categorical == 0).any()  # values unseen in training (or rarer than min_count) are OOV there too


@needs_samples
def test_encoder_reproduces_the_avazu_cache_from_a_gzipped_copy(tmp_path):
    options = EncodeOptions(test_fraction=0.2, min_count=2)
    result = preprocess(avazu_source(AVAZU), options, tmp_path / "cache", progress=False)
    encoder = Encoder.from_cache(result.path).save(tmp_path / "encoder")
    gz = tmp_path / "avazu.csv.gz"
    gz.write_bytes(gzip.compress(AVAZU.read_bytes()))
    assert_matches_cache(encode_file(Encoder.load(encoder), gz), result.path, options)


def test_encoder_reproduces_a_csv_cache_from_every_input_kind(tmp_path):
    path = tmp_path / "table.csv"
    write_table(path)
    options = EncodeOptions(log_buckets=True)
    result = preprocess(table_source(path, "click", ["site", "device", "hour"], ["price", "score"]), options, tmp_path, progress=False)
    encoder = Encoder.from_cache(result.path)
    from_file = encode_file(encoder, path)
    assert_matches_cache(from_file, result.path, options)
    # The same rows as raw lines, an Arrow table, a Parquet file and dicts give the same arrays.
    lines = path.read_text().splitlines()
    table = pa.csv.read_csv(path, convert_options=pa.csv.ConvertOptions(column_types={c: pa.string() for c in ("site", "device", "hour")}))
    pq.write_table(table, tmp_path / "table.parquet")
    for other in (encoder.encode(lines), encoder.encode(table), encode_file(encoder, tmp_path / "table.parquet"),
                  encoder.encode(table.to_pylist())):
        np.testing.assert_array_equal(other.categorical, from_file.categorical)
        np.testing.assert_array_equal(other.numeric, from_file.numeric)
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(path, dtype={"site": str, "device": str, "hour": str}, keep_default_na=False)
    frame = frame.replace({"site": {"": None}, "device": {"": None}}).drop(columns="click")  # rows to score: no label
    from_frame = encoder.encode(frame)
    assert from_frame.label is None
    np.testing.assert_array_equal(from_frame.categorical, from_file.categorical)


def test_unseen_values_map_to_oov_and_missing_keeps_its_token(tmp_path):
    path = tmp_path / "table.csv"
    write_table(path)
    result = preprocess(table_source(path, "click", ["site", "device"], ["price"]), EncodeOptions(), tmp_path, progress=False)
    encoder = Encoder.from_cache(result.path)
    vocab = {f: encoder.vocabs[f].to_pylist() for f in ("site", "device")}
    out = encoder.encode([{"site": "never-seen-before-site", "device": "a", "price": 1.0},
                          {"site": None, "device": "zz", "price": None}])
    assert out.categorical[0].tolist() == [0, vocab["device"].index("a")]
    assert out.categorical[1].tolist() == [vocab["site"].index(""), 0]  # missing: its own trained token


def test_bad_rows_name_line_and_column_or_are_skipped(tmp_path):
    path = tmp_path / "table.csv"
    write_table(path)
    result = preprocess(table_source(path, "click", ["site"], ["price"]), EncodeOptions(), tmp_path, progress=False)
    encoder = Encoder.from_cache(result.path)
    lines = ["click,site,price", "1,x,2.5", "0,y,oops", "1,z,1"]
    with pytest.raises(MalformedRowError, match=r"line 3, column 'price'"):
        encoder.encode(lines)
    out = encoder.encode(lines, on_bad_rows="skip")
    assert out.rows.tolist() == [0, 2] and out.skipped == 1
    with pytest.raises(DataConfigError, match=r"\['price'\]"):
        encoder.encode([{"site": "x"}])
    with pytest.raises(TypeError, match="DataFrame"):
        encoder.encode(42)


# -- end to end: the app trains, the run folder scores ------------------------------------------


@pytest.fixture(scope="module")
def trained_run(criteo_afm_run):
    return criteo_afm_run


def test_a_trained_run_scores_raw_rows_like_the_model_scores_the_cache(trained_run, tmp_path, capsys):
    run_dir, cache, data = trained_run
    assert (run_dir / "encoder" / "encoder.json").is_file()
    checkpoint = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert CHECKPOINT_KEY in checkpoint["CriteoDataModule"] and checkpoint[MODEL_CLASS_KEY].endswith("DeepFM")
    predictor = Predictor.load(run_dir)
    assert predictor.model.mlp_reads_codes and not predictor.model.training  # the compressed structure, in eval mode

    # The test split's raw lines, scored from the run folder, against the model on the cached arrays.
    lines = data.read_text().splitlines()
    options = EncodeOptions(test_fraction=0.1, val_fraction=0.1, seed=2020)
    test_rows = np.flatnonzero(split_assignment(len(lines), options.test_fraction, options.val_fraction, options.seed) == 2)
    cached = load_split(cache / "test", mmap=False)
    with torch.inference_mode():
        expected = torch.sigmoid(predictor.model(torch.from_numpy(cached["categorical"]).long(), torch.from_numpy(cached["numeric"])))
    got = predictor.predict([lines[i] for i in test_rows])
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-6)
    unlabelled = [line.split("\t", 1)[1] for line in (lines[i] for i in test_rows)]
    np.testing.assert_array_equal(predictor.predict(unlabelled), got)

    # The command line, on a gzipped file without labels, from the checkpoint alone, writes the same.
    raw = tmp_path / "rows.txt.gz"
    raw.write_bytes(gzip.compress(("\n".join(unlabelled) + "\n").encode()))
    alone = tmp_path / "model.ckpt"
    alone.write_bytes((run_dir / "last.ckpt").read_bytes())
    assert predict_main([str(alone), str(raw), "-o", str(tmp_path / "p.csv")]) == 0
    written = pa.csv.read_csv(tmp_path / "p.csv")
    assert written.column_names == ["row", "probability"]
    np.testing.assert_allclose(written.column("probability").to_numpy(), got, rtol=0, atol=1e-6)
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["rows"] == len(test_rows)


def test_predict_cli_reports_bad_rows_and_skips_them(trained_run, tmp_path, capsys):
    run_dir, _, data = trained_run
    lines = data.read_text().splitlines()[:20]
    fields = lines[4].split("\t")
    fields[3] = "x1"  # I3 is an integer field
    lines[4] = "\t".join(fields)
    raw = tmp_path / "bad.txt"
    raw.write_text("\n".join(lines) + "\n")
    assert predict_main([str(run_dir), str(raw), "-o", str(tmp_path / "p.parquet"), "-q"]) == 1
    assert "bad.txt, line 5, column 'I3': not an integer, got 'x1'" in capsys.readouterr().err
    lines[9] = "1\t2"  # the wrong number of columns
    raw.write_text("\n".join(lines) + "\n")
    assert predict_main([str(run_dir), str(raw), "-o", str(tmp_path / "p.parquet"), "-q"]) == 1
    assert "line 10: expected 40 columns" in capsys.readouterr().err
    assert predict_main([str(run_dir), str(raw), "-o", str(tmp_path / "p.parquet"), "--on-bad-rows", "skip"]) == 0
    report = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert report["rows"] == 18 and report["skipped"] == 2
    table = pq.read_table(tmp_path / "p.parquet")
    assert 5 not in table.column("row").to_pylist() and 10 not in table.column("row").to_pylist()
    probabilities = Predictor.load(run_dir).predict(lines, on_bad_rows="skip")
    assert np.isnan(probabilities[[4, 9]]).all() and np.isfinite(np.delete(probabilities, [4, 9])).all()


def test_a_checkpoint_without_encoder_or_model_class_says_what_to_do(trained_run, tmp_path):
    run_dir, cache, _ = trained_run
    checkpoint = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    del checkpoint["CriteoDataModule"]
    torch.save(checkpoint, tmp_path / "no_encoder.ckpt")
    predictor = Predictor.load(tmp_path / "no_encoder.ckpt")  # scores encoded ids still
    cached = load_split(cache / "test", mmap=False)
    assert predictor.predict_encoded(cached["categorical"], cached["numeric"]).shape == (len(cached["label"]),)
    with pytest.raises(ServeError, match="predict_encoded"):
        predictor.predict(["0\t1"])
    del checkpoint[MODEL_CLASS_KEY]
    torch.save(checkpoint, tmp_path / "anonymous.ckpt")
    with pytest.raises(ServeError, match="model_class"):
        Predictor.load(tmp_path / "anonymous.ckpt")
    assert Predictor.load(tmp_path / "anonymous.ckpt", model_class="lightning_afm.models.DeepFM").model.mlp_reads_codes
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataConfigError, match="no last.ckpt"):
        Predictor.load(tmp_path / "empty")


def test_inference_module_is_eval_without_gradients():
    model = inference_module(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_a_zoo_model_is_served_in_its_inference_layer_form(trained_run):
    from lightning_afm.inference import InferenceModel

    categorical, numeric = None, None
    for runtime, kind in (("torchscript", torch.jit.ScriptModule), ("eager", InferenceModel)):
        predictor = Predictor.load(trained_run[0], runtime=runtime)
        assert isinstance(predictor.runner, kind)
        if categorical is None:
            categorical = torch.randint(0, 3, (40, predictor.model.num_fields))
            numeric = torch.rand(40, predictor.model.num_numeric)
        with torch.inference_mode():
            expected = torch.sigmoid(predictor.model(categorical, numeric)).numpy()
        np.testing.assert_allclose(predictor.predict_encoded(categorical.numpy(), numeric.numpy()), expected, atol=1e-6)
    with pytest.raises(ServeError, match="runtime must be one of"):
        Predictor.load(trained_run[0], runtime="tensorrt")


def test_the_readme_serving_handler_scores_a_request(trained_run, monkeypatch):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Serving", 1)[1].split("\n## ", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert commands.count("lightning-afm-predict") == 2  # the console script pyproject.toml declares
    handler = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    run_dir, _, data = trained_run
    monkeypatch.setenv("LIGHTNING_AFM_RUN", str(run_dir))
    namespace: dict = {}
    exec(compile(handler, "README.md", "exec"), namespace)
    lines = data.read_text().splitlines()[:5]
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    rows = [{n: v or None for n, v in zip(names[1:], line.split("\t")[1:])} for line in lines]
    rows[2]["I1"] = "not a number"
    body = json.dumps({"rows": rows}).encode()
    replies = []
    reply = namespace["app"]({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))},
                             lambda status, headers: replies.append(status))
    got = json.loads(b"".join(reply))["probability"]
    expected = Predictor.load(run_dir).predict(lines)
    assert replies == ["200 OK"] and got[2] is None
    np.testing.assert_allclose([got[i] for i in (0, 1, 3, 4)], expected[[0, 1, 3, 4]], atol=2e-6)


def test_predict_encoded_names_wrong_shapes_and_splits_big_requests(trained_run):
    predictor = Predictor.load(trained_run[0])
    fields, numbers = predictor.model.num_fields, predictor.model.num_numeric
    rng = np.random.default_rng(0)
    categorical = rng.integers(0, 3, (25, fields))
    numeric = rng.random((25, numbers), dtype=np.float32)
    with torch.inference_mode():
        expected = torch.sigmoid(predictor.model(torch.from_numpy(categorical), torch.from_numpy(numeric))).numpy()
    # one forward pass, and the same rows in forward passes of 4 (the last one ragged)
    np.testing.assert_allclose(predictor.predict_encoded(categorical, numeric), expected, atol=1e-6)
    predictor.batch_size = 4
    np.testing.assert_allclose(predictor.predict_encoded(categorical, numeric), expected, atol=1e-6)
    with pytest.raises(ServeError, match=rf"categorical ids must be \[rows, {fields}\], got shape \({fields},\)"):
        predictor.predict_encoded(categorical[0], numeric[0])
    with pytest.raises(ServeError, match=rf"numeric values must be \[25, {numbers}\].*got shape \(24, {numbers}\)"):
        predictor.predict_encoded(categorical, numeric[:24])
    with pytest.raises(ServeError, match=rf"numeric values must be \[25, {numbers}\]"):
        predictor.predict_encoded(categorical)  # this model has numeric fields


def test_the_onnx_runtime_serves_the_same_probabilities(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from lightning_afm.export import formats
    from lightning_afm.serve.onnx_runtime import CHECK_ROWS, OnnxRunner

    run_dir, _, data = trained_run
    onnx, compiled = Predictor.load(run_dir, runtime="onnx"), Predictor.load(run_dir, runtime="torchscript")
    assert isinstance(onnx.runner, OnnxRunner) and onnx.runner.check.passed and onnx.runner.check.rows == CHECK_ROWS
    assert onnx.runner.form == "inference layer (optimize_for_inference)"  # not the plain forward
    assert 1 in onnx.runner.check.batch_sizes  # checked at batch 1 too
    lines = data.read_text().splitlines()[:300]
    got = onnx.predict(lines)
    assert got.dtype == np.float32 and got.shape == (300,)
    np.testing.assert_allclose(got, compiled.predict(lines), rtol=0, atol=1e-5)
    np.testing.assert_allclose(onnx.predict(lines[:1]), got[:1], rtol=0, atol=1e-6)  # a request of one row
    # the command line takes it, and writes what the Python API gives
    raw = tmp_path / "rows.txt"
    raw.write_text("\n".join(lines) + "\n")
    assert predict_main([str(run_dir), str(raw), "-o", str(tmp_path / "p.csv"), "--runtime", "onnx", "-q"]) == 0
    np.testing.assert_allclose(pa.csv.read_csv(tmp_path / "p.csv").column("probability").to_numpy(), got, atol=1e-7)
    # what it cannot serve is said, not a traceback
    with pytest.raises(ServeError, match="has no schema"):
        Predictor(torch.nn.Linear(3, 1), runtime="onnx")
    with pytest.raises(ServeError, match="runs on the CPU"):
        Predictor(onnx.model, runtime="onnx", device="meta")
    monkeypatch.setattr(formats, "require", lambda module, fmt: (_ for _ in ()).throw(
        formats.MissingExtra(f"format={fmt} needs the {module!r} package ... pip install 'lightning-afm[serve]'")))
    with pytest.raises(ServeError, match=r"runtime='onnx'.*lightning-afm\[serve\]"):
        Predictor(onnx.model, runtime="onnx")


def test_the_default_runtime_sends_small_requests_to_onnx_and_large_ones_to_torchscript(trained_run, monkeypatch):
    pytest.importorskip("onnxruntime")
    from lightning_afm.serve import onnx_runtime
    from lightning_afm.serve.runtime import AUTO_ONNX_MAX_ROWS

    run_dir, _, data = trained_run
    auto, compiled = Predictor.load(run_dir), Predictor.load(run_dir, runtime="torchscript")
    assert auto.runtime == "auto" and isinstance(auto.onnx_runner, onnx_runtime.OnnxRunner)
    assert isinstance(auto.runner, torch.jit.ScriptModule) and compiled.onnx_runner is None
    calls = []
    onnx_runner, script = auto.onnx_runner, auto.runner
    auto.onnx_runner = lambda c, n: calls.append(("onnx", len(c))) or onnx_runner(c, n)
    auto.runner = lambda c, n: calls.append(("torchscript", len(c))) or script(c, n)
    lines = data.read_text().splitlines()
    assert len(lines) > AUTO_ONNX_MAX_ROWS
    for rows in (1, AUTO_ONNX_MAX_ROWS, AUTO_ONNX_MAX_ROWS + 1):  # the same probabilities on either side
        np.testing.assert_allclose(auto.predict(lines[:rows]), compiled.predict(lines[:rows]), rtol=0, atol=1e-5)
    assert calls == [("onnx", 1), ("onnx", AUTO_ONNX_MAX_ROWS), ("torchscript", AUTO_ONNX_MAX_ROWS + 1)]
    # a big request split into forward passes: each pass goes by its own size
    auto.batch_size, calls[:] = AUTO_ONNX_MAX_ROWS + 1, []
    auto.predict(lines[: AUTO_ONNX_MAX_ROWS + 2])
    assert calls == [("torchscript", AUTO_ONNX_MAX_ROWS + 1), ("onnx", 1)]
    assert Predictor(auto.model, runtime="auto").onnx_runner.session.get_session_options().intra_op_num_threads == 1

    # without the serve extra, a user's own module, or an export that fails its check: TorchScript alone
    assert Predictor(torch.nn.Linear(3, 1)).onnx_runner is None
    def refuse(model, threads=None, artifact=None):
        raise ServeError("runtime='onnx': no form of this model exports (test)")

    monkeypatch.setattr(onnx_runtime, "OnnxRunner", refuse)
    with pytest.warns(UserWarning, match=r"runtime='auto' serves every request with TorchScript: .*\(test\)"):
        assert Predictor(auto.model).onnx_runner is None
    monkeypatch.setattr(onnx_runtime.importlib.util, "find_spec", lambda name: None)
    alone = Predictor(auto.model, compiled.encoder)
    assert alone.onnx_runner is None and alone._onnx_max_rows == 0
    np.testing.assert_allclose(alone.predict(lines[:1]), compiled.predict(lines[:1]), rtol=0, atol=1e-7)


def test_a_model_already_on_the_device_is_not_moved(trained_run):
    # .to() walks metric states too, which the benchmarks' meta-built models keep on the meta device
    model = Predictor.load(trained_run[0]).model

    def refuse(*args, **kwargs):
        raise AssertionError("moved a model that is already on the CPU")

    model.to = refuse
    assert Predictor(model).model is model
    with pytest.raises(AssertionError, match="already on the CPU"):
        Predictor(model, device="meta")  # elsewhere: moved


# -- reusing a verified ONNX export at load ------------------------------------------------------


def test_a_verified_onnx_export_of_the_same_weights_is_opened_instead_of_exporting_again(trained_run, tmp_path,
                                                                                         monkeypatch):
    pytest.importorskip("onnxruntime")
    import shutil

    from lightning_afm.export import formats
    from lightning_afm.export.cli import main as export_main

    run_dir, _, data = trained_run
    run = tmp_path / "run"  # a copy of the run, to export into
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("lightning_logs", "csv"))
    assert export_main([str(run), "format=onnx", f"out={run / 'onnx'}"]) == 0
    lines = data.read_text().splitlines()[:40]
    exported = Predictor.load(run_dir, runtime="onnx")  # the original run holds no export: exported at load
    assert exported.onnx_runner.reused is None

    real_write = formats.write
    monkeypatch.setattr(formats, "write", lambda *a, **k: pytest.fail("the model was exported again"))
    artifact = run / "onnx" / "model.onnx"
    for predictor in (Predictor.load(run, runtime="onnx"), Predictor.load(run),  # found in the run's subfolder
                      Predictor.load(run / "last.ckpt", runtime="onnx", export=run / "onnx")):
        assert predictor.onnx_runner.reused == artifact and predictor.onnx_runner.check.passed  # checked at load
        assert "reused" in predictor.onnx_runner.form
        np.testing.assert_allclose(predictor.predict(lines), exported.predict(lines), rtol=0, atol=1e-6)
    raw = tmp_path / "rows.txt"
    raw.write_text("\n".join(lines) + "\n")
    alone = tmp_path / "alone.ckpt"  # a checkpoint away from its run: the export is named on the command line
    shutil.copy(run / "last.ckpt", alone)
    assert predict_main([str(alone), str(raw), "-o", str(tmp_path / "p.csv"), "--runtime", "onnx", "-q",
                         "--export", str(run / "onnx")]) == 0
    np.testing.assert_allclose(pa.csv.read_csv(tmp_path / "p.csv").column("probability").to_numpy(),
                               exported.predict(lines), atol=1e-6)

    # other weights next to that export, or an edited artifact: exported at load, as before
    monkeypatch.setattr(formats, "write", real_write)
    checkpoint = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] * 1.01
    torch.save(checkpoint, run / "last.ckpt")
    assert Predictor.load(run, runtime="onnx").onnx_runner.reused is None
    with artifact.open("ab") as f:
        f.write(b"\0")
    assert Predictor.load(alone, runtime="onnx", export=run / "onnx").onnx_runner.reused is None


# -- bad input: a user's own module without an encoder ------------------------------------------


class UserModule(torch.nn.Module):
    """A user's own CTR module: not from the zoo, so no schema and no encoder in its checkpoint.
    ``[B, 3]`` ids, ``[B, 2]`` numbers -> ``[B]`` logits."""

    def __init__(self, vocab: int = 10, fields: int = 3, numeric: int = 2) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 4)
        self.out = torch.nn.Linear(fields * 4 + numeric, 1)

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.embedding(categorical).flatten(1), numeric], 1)).squeeze(-1)


def test_a_user_module_without_an_encoder_is_told_how_to_attach_one_or_score_ids(tmp_path, capsys):
    from lightning_afm.export.cli import main as export_main

    torch.manual_seed(0)
    checkpoint = tmp_path / "user.ckpt"
    torch.save({"state_dict": UserModule().state_dict(), "hyper_parameters": {"vocab": 10}}, checkpoint)
    predictor = Predictor.load(checkpoint, model_class=UserModule)
    categorical, numeric = np.array([[1, 2, 3], [0, 9, 4]]), np.random.default_rng(0).random((2, 2), dtype=np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(predictor.model(torch.from_numpy(categorical), torch.from_numpy(numeric))).numpy()
    np.testing.assert_allclose(predictor.predict_encoded(categorical, numeric), expected, atol=1e-7)  # ids still score
    with pytest.raises(ServeError, match=r"carries no encoder.*Encoder\.from_cache.*predict_encoded"):
        predictor.predict(["0\t1\t2"])
    raw = tmp_path / "rows.txt"
    raw.write_text("1\t2\t3\n")
    model_class = f"{UserModule.__module__}.UserModule"
    assert predict_main([str(checkpoint), str(raw), "-o", str(tmp_path / "p.csv"), "--model-class", model_class]) == 1
    err = capsys.readouterr().err
    assert "carries no encoder" in err and "predict_encoded" in err and "Traceback" not in err
    # export: no encoder and no schema to draw verification rows from; said, exit 1, nothing written
    assert export_main([str(checkpoint), "format=onnx", f"out={tmp_path / 'e'}", "--model-class", model_class]) == 1
    err = capsys.readouterr().err
    assert "carries no encoder" in err and "export_model(model, out" in err and not (tmp_path / "e").exists()


def test_a_raw_file_whose_columns_do_not_match_the_schema_is_named(tmp_path):
    path = tmp_path / "table.csv"
    write_table(path)
    result = preprocess(table_source(path, "click", ["site", "device"], ["price"]), EncodeOptions(), tmp_path,
                        progress=False)
    encoder = Encoder.from_cache(result.path)
    renamed = tmp_path / "renamed.csv"  # the header (line 1) names 'cost' where the schema has 'price'
    renamed.write_text(path.read_text().replace("price", "cost", 1))
    with pytest.raises(DataConfigError, match=r"renamed\.csv: configured columns not found: \['price'\] \(line 1, the header row\)"):
        encoder.file_source(renamed)
    table = pa.csv.read_csv(path).drop_columns(["device"])
    pq.write_table(table, tmp_path / "rows.parquet")
    with pytest.raises(DataConfigError, match=r"rows\.parquet: configured columns not found: \['device'\] \(the Parquet file's schema\)"):
        encoder.file_source(tmp_path / "rows.parquet")


def test_auto_serves_large_requests_eagerly_where_the_inference_form_runs_a_native_kernel(monkeypatch):
    from lightning_afm.data.schema import Schema
    from lightning_afm.inference import native
    from lightning_afm.models import AutoInt
    from lightning_afm.serve.runtime import runs_native_kernels

    torch.manual_seed(0)
    model = AutoInt(Schema.from_vocab_sizes([9, 7, 5, 11], numeric=2), embedding_dim=8, mlp_hidden=[8]).eval()
    g = torch.Generator().manual_seed(1)
    categorical = np.stack([torch.randint(0, v, (300,), generator=g).numpy() for v in (9, 7, 5, 11)], axis=1)
    numeric = torch.rand(300, 2, generator=g).numpy()
    scripted = Predictor(model, runtime="torchscript")
    expected = scripted.predict_encoded(categorical, numeric)
    auto = Predictor(model, runtime="auto")
    if native.available():
        assert not isinstance(auto.runner, torch.jit.ScriptModule) and runs_native_kernels(auto.runner)
    else:
        assert isinstance(auto.runner, torch.jit.ScriptModule)
    if native.available() and auto.onnx_runner is not None:
        # on one thread the native kernel takes over from ONNX Runtime above 48 rows, on two above 256
        from lightning_afm.serve.runtime import AUTO_NATIVE_ONNX_MAX_ROWS, AUTO_ONNX_MAX_ROWS

        calls = []
        onnx_runner, runner = auto.onnx_runner, auto.runner
        auto.onnx_runner = lambda c, n: calls.append(("onnx", len(c))) or onnx_runner(c, n)
        auto.runner = lambda c, n: calls.append(("native", len(c))) or runner(c, n)
        threads = torch.get_num_threads()
        try:
            for count in (1, 2):
                torch.set_num_threads(count)
                for rows in (AUTO_NATIVE_ONNX_MAX_ROWS, AUTO_NATIVE_ONNX_MAX_ROWS + 1, AUTO_ONNX_MAX_ROWS + 1):
                    got = auto.predict_encoded(categorical[:rows], numeric[:rows])
                    np.testing.assert_allclose(got, expected[:rows], rtol=0, atol=1e-5)
        finally:
            torch.set_num_threads(threads)
        assert calls == [("onnx", 48), ("native", 49), ("native", 257), ("onnx", 48), ("onnx", 49), ("native", 257)]
        auto.onnx_runner, auto.runner = onnx_runner, runner
    auto._onnx_max_rows = 0  # every pass through the large-request runner
    np.testing.assert_allclose(auto.predict_encoded(categorical, numeric), expected, rtol=0, atol=1e-5)
    # without the native kernel: TorchScript, as for every other model
    monkeypatch.setenv("LIGHTNING_AFM_NATIVE", "0")
    monkeypatch.setattr(native, "_state", None)
    assert isinstance(Predictor(model, runtime="auto").runner, torch.jit.ScriptModule)
    assert not runs_native_kernels(scripted.model)  # a training model has no inference layers
