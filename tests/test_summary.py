import json

import pytest
import torch

from lightning_afm.callbacks.throughput import batch_size_of
from lightning_afm.summary import summary_markdown, write_summary


def test_write_summary_json_and_markdown(tmp_path):
    summary = {
        "model": "deepfm", "data": "synthetic", "params": 1234567, "test_auc": 0.75,
        "stages": [{"name": "mlp", "method": "afm", "rank": 64, "test_auc": 0.76}],
    }
    json_path, md_path = write_summary(summary, tmp_path / "run")
    assert json.loads(json_path.read_text()) == summary
    md = md_path.read_text()
    assert "| params | 1,234,567 |" in md
    assert "| test_auc | 0.7500 |" in md
    assert "| mlp | afm | 64 | 0.7600 |" in md


def test_markdown_without_stages_has_no_stage_table():
    assert "Compression stages" not in summary_markdown({"model": "dcn", "wall_s": 1.5})


def test_batch_size_of_batch_dicts_tuples_and_tensors():
    assert batch_size_of({"categorical": torch.zeros(7, 3)}) == 7
    assert batch_size_of((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert batch_size_of(torch.zeros(4)) == 4
    with pytest.raises(TypeError, match="batch size"):
        batch_size_of("not a batch")


def test_summary_never_overwrites_and_writes_undefined_figures_as_null(tmp_path):
    first, _ = write_summary({"model": "a", "test_auc": 0.7}, tmp_path)
    second, second_md = write_summary({"model": "b", "test_auc": float("nan")}, tmp_path)
    assert json.loads(first.read_text())["model"] == "a"  # the first run's result is kept
    assert second.name == "summary-2.json" and second_md.name == "summary-2.md"
    assert json.loads(second.read_text())["test_auc"] is None
    assert "| test_auc | — |" in second_md.read_text()


def test_markdown_formats_like_figures_alike():
    md = summary_markdown({"wall_s": 9.48, "train_samples_per_s": 950.123, "test_auc": 0.7, "lr": 0.001,
                           "params": 2413, "resumed_from": None})
    assert "| wall_s | 9.5 |" in md and "| train_samples_per_s | 950 |" in md
    assert "| test_auc | 0.7000 |" in md and "| lr | 0.001 |" in md and "| resumed_from | — |" in md
