"""Verified export: every zoo model to ONNX, TorchScript and torch.export, checked against eager PyTorch."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_afm.data.schema import Schema
from lightning_afm.export import ExportCheckFailed, MissingExtra, export_model, load_runner, read_manifest
from lightning_afm.export import formats
from lightning_afm.models import MODELS

SCHEMA = Schema.from_vocab_sizes([50, 200, 1000, 7, 3000], numeric=3)


def _rows(n: int, schema: Schema = SCHEMA, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    categorical = np.stack([rng.integers(0, v, n) for v in schema.vocab_sizes], 1).astype(np.int64)
    return categorical, rng.random((n, schema.num_numeric), dtype=np.float32)


def _model(name: str, schema: Schema = SCHEMA) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name](schema=schema, embedding_dim=8, mlp_hidden=[32, 32, 32])
    with torch.no_grad():  # trained-looking weights: the default 1e-4 tables make every output ~0.5
        for table in model.embeddings.modules():
            if isinstance(table, torch.nn.Embedding):
                table.weight.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("fmt", formats.FORMATS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_exports_and_matches_eager(name, fmt, tmp_path):
    model = _model(name)
    categorical, numeric = _rows(1500)
    manifest = export_model(model, tmp_path / "out", fmt, categorical, numeric, source="random ids")
    assert model.training  # the model's mode is given back
    check = manifest["verification"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-5 and check["rows"] == 1500
    assert {1, 500, 1000} <= set(check["batch_sizes"])  # the batch dimension is dynamic
    assert read_manifest(tmp_path / "out") == manifest
    # the artifact read back independently gives the model's probabilities
    runner = load_runner(fmt, tmp_path / "out" / manifest["file"])
    with torch.no_grad():
        eager = torch.sigmoid(model.eval()(torch.from_numpy(categorical[:7]), torch.from_numpy(numeric[:7])))
    np.testing.assert_allclose(runner(categorical[:7], numeric[:7]), eager.double().numpy(), atol=1e-5)
    assert manifest["model"]["class"].endswith(type(model).__name__)
    assert manifest["inputs"][0]["shape"] == ["batch", 5] and manifest["inputs"][1]["fields"] == list(SCHEMA.numeric)


@pytest.mark.parametrize("method, fmt", [("qr", "torchscript"), ("pq", "pt2")])
def test_qr_and_pq_models_export_in_the_inference_form_and_match_eager(method, fmt, tmp_path):
    from lightning_afm.compress import CompressionPlan, compress_embeddings_pq, compress_embeddings_qr, select_qr_tables

    model = _model("deepfm")
    names = [f"embeddings.{field.name}" for field in SCHEMA.categorical]
    if method == "qr":  # 7 rows at 8 collisions would not shrink: that table stays dense
        entries = compress_embeddings_qr(model, select_qr_tables(model, names, 8), 8, "mult", "table")
    else:
        entries = compress_embeddings_pq(model, names, 2, 16, iterations=3)
    plan = CompressionPlan(entries).to_dict()["entries"]
    categorical, numeric = _rows(600)
    manifest = export_model(model, tmp_path / "out", fmt, categorical, numeric, source="random ids", plan=plan)
    check = manifest["verification"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-5
    assert manifest["exporter"]["form"].startswith("inference layer") and "forms_that_failed" not in manifest["exporter"]
    assert {e["kind"] for e in manifest["compression"]["plan"]} == {f"{method}_embedding"}
    assert {m["type"] for m in manifest["compression"]["factored_modules"]} == {f"{method.upper()}Embedding"}
    for module in manifest["compression"]["factored_modules"]:
        if method == "qr":
            assert module["collisions"] == 8
        else:  # PQ caps its centroids at a table's rows
            assert module["num_subspaces"] == 2 and 1 <= module["num_centroids"] <= 16
    runner = load_runner(fmt, tmp_path / "out" / manifest["file"])
    with torch.no_grad():
        eager = torch.sigmoid(model.eval()(torch.from_numpy(categorical[:9]), torch.from_numpy(numeric[:9])))
    np.testing.assert_allclose(runner(categorical[:9], numeric[:9]), eager.double().numpy(), atol=1e-5)


def test_a_schema_without_numeric_fields_exports_one_input(tmp_path):
    schema = Schema.from_vocab_sizes([30, 40], numeric=0)
    categorical, _ = _rows(300, schema)
    manifest = export_model(_model("deepfm", schema), tmp_path / "o", "onnx", categorical)
    assert [i["name"] for i in manifest["inputs"]] == ["categorical"] and manifest["verification"]["passed"]


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    real = formats.load_runner

    def off_by_a_bit(fmt, path, threads=None):
        run = real(fmt, path, threads)
        return lambda c, n: run(c, n) + 1e-3

    monkeypatch.setattr(formats, "load_runner", off_by_a_bit)
    categorical, numeric = _rows(200)
    with pytest.raises(ExportCheckFailed, match=r"max \|Δp\| = 0\.001 on 200 rows .* nothing was written"):
        export_model(_model("dcn"), tmp_path / "out", "pt2", categorical, numeric)
    assert list(tmp_path.iterdir()) == []  # no artifact, no manifest, no staging folder left


def test_an_existing_export_is_not_overwritten_unless_asked(tmp_path):
    categorical, numeric = _rows(100)
    model = _model("nfm")
    export_model(model, tmp_path / "out", "torchscript", categorical, numeric)
    with pytest.raises(FileExistsError, match="already holds an export"):
        export_model(model, tmp_path / "out", "torchscript", categorical, numeric)
    manifest = export_model(model, tmp_path / "out", "pt2", categorical, numeric, overwrite=True)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["format"] == manifest["format"] == "pt2"


def test_bad_requests_are_named(tmp_path, monkeypatch):
    categorical, numeric = _rows(10)
    with pytest.raises(ValueError, match=r"unknown format 'tflite'; choose one of"):
        export_model(_model("dcn"), tmp_path / "a", "tflite", categorical, numeric)
    with pytest.raises(ValueError, match="at least one row"):
        export_model(_model("dcn"), tmp_path / "b", "pt2", categorical[:0], numeric[:0])

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(MissingExtra, match=r"format=onnx needs the 'onnx' package.*lightning-afm\[serve\]"):
        export_model(_model("dcn"), tmp_path / "c", "onnx", categorical, numeric)
    assert not (tmp_path / "c").exists()


def test_the_cli_exports_a_compressed_run_checked_on_its_test_rows(criteo_afm_run, tmp_path, capsys):
    from lightning_afm.data.encoder import Encoder
    from lightning_afm.export.cli import main as export_main
    from lightning_afm.serve import Predictor

    run_dir, _, data = criteo_afm_run
    assert export_main([str(run_dir), "format=onnx", f"out={tmp_path / 'onnx'}"]) == 0
    manifest = read_manifest(tmp_path / "onnx")
    assert manifest["verification"]["passed"] and "test split" in manifest["verification"]["source"]
    assert [e["kind"] for e in manifest["compression"]["plan"]] == ["linear", "linear", *["embedding"] * 26, "fold"]
    assert {m["type"] for m in manifest["compression"]["factored_modules"]} >= {"LowRankLinear", "LowRankEmbedding"}
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] <= 1e-5

    # raw rows -> the exported encoder -> the ONNX artifact == the Predictor on the run
    lines = data.read_text().splitlines()[:50]
    encoded = Encoder.load(tmp_path / "onnx" / "encoder").encode(lines)
    expected = Predictor.load(run_dir).predict(lines)
    for spinning in (True, False):  # the bench's sessions run without spinning workers, to the same outputs
        runner = load_runner("onnx", tmp_path / "onnx" / manifest["file"], threads=2, spinning=spinning)
        np.testing.assert_allclose(runner(encoded.categorical.astype(np.int64), encoded.numeric.astype(np.float32)),
                                   expected, atol=1e-5)

    # a checkpoint away from its run: checked on random ids, and the manifest says so
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes((run_dir / "last.ckpt").read_bytes())
    assert export_main([str(alone), "--format", "pt2", "-o", str(tmp_path / "pt2")]) == 0
    assert "random ids" in read_manifest(tmp_path / "pt2")["verification"]["source"]
    # exporting again into a full folder is refused with one line, exit 1
    assert export_main([str(alone), "--format", "pt2", "-o", str(tmp_path / "pt2")]) == 1
    assert "already holds an export" in capsys.readouterr().err


def test_int8_tables_match_a_numpy_reference_within_half_a_step():
    from lightning_afm.export.int8 import Int8Embedding, block_rows, quantize_blocks

    rng = np.random.default_rng(3)
    for width, rows in ((16, 101), (2, 1001), (1, 77)):
        weight = rng.normal(0, 0.2, (rows, width)).astype(np.float32)
        g = block_rows(width)
        q, scale, offset = quantize_blocks(torch.from_numpy(weight), g)
        # numpy reference: per block of g rows, 256 levels between its min and max
        blocks = np.concatenate([weight, np.repeat(weight[-1:], (-rows) % g, 0)]).reshape(-1, g * width)
        low, high = blocks.min(1), blocks.max(1)
        np.testing.assert_allclose(scale.numpy(), (high - low) / 255, rtol=1e-6)
        expected_q = np.round((blocks - low[:, None]) / ((high - low) / 255)[:, None]) - 128
        np.testing.assert_array_equal(q.numpy(), expected_q.reshape(-1, width)[:rows])
        table = torch.nn.Embedding.from_pretrained(torch.from_numpy(weight))
        module = Int8Embedding(table)
        got = module(torch.arange(rows)).numpy()
        step = np.repeat(scale.numpy(), g)[:rows, None]
        assert np.all(np.abs(got - weight) <= step / 2 + 1e-7)
        assert module.stored_bytes() < weight.nbytes or width == 1  # 1-wide: 1 byte + 8 per 8 rows vs 4 bytes
    constant = torch.full((5, 8), 0.25)
    np.testing.assert_array_equal(Int8Embedding(torch.nn.Embedding.from_pretrained(constant))(torch.arange(5)), constant)


def test_int8_export_is_checked_by_test_auc(criteo_afm_run, tmp_path, capsys):
    from lightning_afm.export.cli import main as export_main

    run_dir, _, _ = criteo_afm_run
    assert export_main([str(run_dir), "format=onnx", "int8=true", f"out={tmp_path / 'q'}"]) == 0
    check = read_manifest(tmp_path / "q")["verification"]
    assert check["passed"] and abs(check["auc_change"]) <= 1e-3 and check["max_abs_diff"] > 0
    # the weights shrink (at this tiny size the graph's nodes and names outweigh them on disk)
    assert check["int8_weight_bytes"] < 0.6 * check["fp32_parameter_bytes"]
    # a tolerance no int8 model meets: refused, nothing written; forced: written and marked
    categorical, numeric = _rows(400)
    labels = np.random.default_rng(1).integers(0, 2, 400)
    with pytest.raises(ExportCheckFailed, match=r"int8 loses .* test AUC"):
        export_model(_model("deepfm"), tmp_path / "r", "onnx", categorical, numeric, labels=labels, int8=True,
                     max_auc_drop=-1.0)
    assert not (tmp_path / "r").exists()
    forced = export_model(_model("deepfm"), tmp_path / "f", "onnx", categorical, numeric, labels=labels, int8=True,
                          max_auc_drop=-1.0, force=True)
    assert forced["verification"]["forced"] and not forced["verification"]["passed"]
    with pytest.raises(ValueError, match="use format=onnx"):
        export_model(_model("deepfm"), tmp_path / "s", "pt2", categorical, numeric, labels=labels, int8=True)
    with pytest.raises(ValueError, match="needs labelled rows"):
        export_model(_model("deepfm"), tmp_path / "s", "onnx", categorical, numeric, int8=True)


#: (model, structure, hyper-parameters) beyond the zoo x {baseline, +AFM MLP, +AFM EMB} at d = 4:
#: FiBiNet's +AFM EMB at d = 16, where its head folds the bilinear layers onto the codes
#: (``(k+1)^2 < d``), once per bilinear type.
FOLDED_FIBINET = [("fibinet", "afm_emb", {"embedding_dim": 16, "bilinear_type": t})
                  for t in ("field_interaction", "field_each", "field_all")]


@pytest.mark.parametrize("name, structure, hparams", [
    *[(name, structure, {}) for name in sorted(MODELS) for structure in ("baseline", "afm_mlp", "afm_emb")],
    *FOLDED_FIBINET])
def test_every_model_and_structure_exports_its_inference_form_to_onnx(name, structure, hparams, tmp_path):
    """The inference form, not the plain forward, for every structure (the baseline's tables fused:
    one Gather), by the fast TorchScript-based exporter, with a free batch size: checked within
    1e-5 of eager PyTorch at batch 1 and at batch 300, and read back at batch 7."""
    import onnx
    from test_inference import VOCAB, _batch, _compressed

    from lightning_afm.inference import optimize_for_inference
    from lightning_afm.inference.fibinet import FoldedFiBiNetHead

    model = _compressed(name, structure, **hparams)
    if hparams:  # the folded head is what these cases are for
        assert isinstance(optimize_for_inference(model).deep, FoldedFiBiNetHead)
    categorical, numeric = (t.numpy() for t in _batch(rows=300))
    manifest = export_model(model, tmp_path / "o", "onnx", categorical, numeric, source="random ids")
    check, exporter = manifest["verification"], manifest["exporter"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-5 and {1, 300} <= set(check["batch_sizes"])
    assert exporter["form"].startswith("inference layer") and "forms_that_failed" not in exporter
    assert exporter["exporter"] == "torch.onnx.export(dynamo=False)"
    runner = load_runner("onnx", tmp_path / "o" / manifest["file"])
    with torch.no_grad():
        eager = torch.sigmoid(model.eval()(torch.from_numpy(categorical[:7]), torch.from_numpy(numeric[:7])))
    np.testing.assert_allclose(runner(categorical[:7], numeric[:7]), eager.double().numpy(), rtol=0, atol=1e-5)
    graph = onnx.load(str(tmp_path / "o" / manifest["file"])).graph
    constants = [(i.name, i.dims) for i in graph.initializer] + [
        (n.output[0], n.attribute[0].t.dims) for n in graph.node if n.op_type == "Constant" and n.attribute[0].t.dims]
    tables = {name for name, dims in constants if len(dims) == 2 and dims[0] == sum(VOCAB)}
    assert sum(n.op_type == "Gather" and n.input[0] in tables for n in graph.node) == 1  # one fused table, one Gather
    if hparams:  # the folded weight reads constants only: ONNX Runtime computes it once, at load
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(tmp_path / "o" / manifest["file"]), options, providers=["CPUExecutionProvider"])
        assert "Einsum" in {n.op_type for n in graph.node}
        assert "Einsum" not in {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


@pytest.mark.parametrize("name", ["deepfm", "nfm"])
def test_compressed_deepfm_and_nfm_export_to_onnx_in_the_fused_code_space_form(name, tmp_path):
    """The fused lookup (one plain index_select) and the code-space FM / bi-interaction export:
    ONNX gets the inference form, not the plain forward."""
    from test_inference import _batch, _compressed

    model = _compressed(name, "afm_emb")
    categorical, numeric = (t.numpy() for t in _batch(rows=400))
    manifest = export_model(model, tmp_path / "o", "onnx", categorical, numeric, source="random ids")
    assert manifest["exporter"]["form"].startswith("inference layer") and "forms_that_failed" not in manifest["exporter"]
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_diff"] <= 1e-5
    import onnx  # the code-space interaction's export form

    graph = onnx.load(str(tmp_path / "o" / manifest["file"])).graph
    # the fused table's rows and their LR column; NFM's pair features: two Gathers of rows of the transposed codes
    # (DeepFM's FM needs none: its product carries the fields' Gram blocks)
    assert [n.op_type for n in graph.node].count("Gather") == (4 if name == "nfm" else 2)


def test_the_cli_exits_1_and_writes_nothing_when_the_check_fails_or_an_extra_is_missing(criteo_afm_run, tmp_path,
                                                                                         monkeypatch, capsys):
    from lightning_afm.export.cli import main as export_main

    run_dir, _, _ = criteo_afm_run
    real = formats.load_runner
    monkeypatch.setattr(formats, "load_runner", lambda fmt, path, threads=None: (
        lambda c, n, run=real(fmt, path, threads): run(c, n) + 1e-3))
    assert export_main([str(run_dir), "format=torchscript", f"out={tmp_path / 'ts'}", "rows=300"]) == 1
    err = capsys.readouterr().err
    assert "differs from eager PyTorch by max |Δp| = 0.001 on 300 rows" in err and "nothing was written" in err
    monkeypatch.setattr(formats, "load_runner", real)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert export_main([str(run_dir), "format=onnx", f"out={tmp_path / 'onnx'}", "rows=300"]) == 1
    assert "needs the 'onnxruntime' package" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no artifact, no manifest, no staging folder


def test_weights_checksum_and_the_search_for_a_reusable_onnx_export(tmp_path):
    import shutil

    from lightning_afm.export.manifest import weights_sha256
    from lightning_afm.export.reuse import find_verified_onnx

    model, categorical, numeric = _model("deepfm"), *_rows(100)
    same = _model("deepfm")  # the same seed: equal weights
    assert weights_sha256(model) == weights_sha256(same)
    with torch.no_grad():
        same.embeddings.tables()[0].weight[3, 1] += 1e-6
    assert weights_sha256(model) != weights_sha256(same)
    run = tmp_path / "run"
    manifest = export_model(model, run / "onnx", "onnx", categorical, numeric)
    assert manifest["model"]["weights_sha256"] == weights_sha256(model)
    export_model(model, run / "pt2", "pt2", categorical, numeric)
    asked = []

    def checksum(m=model):
        asked.append(1)
        return weights_sha256(m)

    assert find_verified_onnx([tmp_path / "nothing"], checksum) is None and not asked  # no manifest: no hashing
    found, read = find_verified_onnx([run], checksum)
    assert found == run / "onnx" / "model.onnx" and read == manifest
    assert find_verified_onnx([run / "onnx"], checksum)[0] == found  # the export folder itself
    assert find_verified_onnx([run], lambda: weights_sha256(same)) is None  # other weights

    def edited(change) -> Path:
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(run / "onnx", copy)
        data = json.loads((copy / "manifest.json").read_text())
        change(data, copy)
        (copy / "manifest.json").write_text(json.dumps(data))
        return copy

    assert find_verified_onnx([edited(lambda m, c: None)], checksum) is not None  # the copy itself qualifies
    for change in (lambda m, c: m["verification"].update(passed=False),
                   lambda m, c: m["verification"].update(max_abs_diff=1e-3),
                   lambda m, c: m["model"].pop("weights_sha256"),  # an export of an older lightning-afm
                   lambda m, c: m["exporter"].update(int8="..."),
                   lambda m, c: (c / "model.onnx").write_bytes((c / "model.onnx").read_bytes() + b"\0")):
        assert find_verified_onnx([edited(change)], checksum) is None
