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
