"""bench.md and bench.json from rows: Table 2's layout, the paper's figures labelled as the paper's."""

from __future__ import annotations

import json

import pytest

from lightning_afm.bench.report import format_params, to_markdown, write_report

COMMON = {"dataset": "criteo", "batch": 10000, "threads": 2, "vocab_cap": None, "zipf_exponent": 1.0,
          "rounds": 5, "batches_per_round": 2, "seed": 0, "torch": "2.x", "skipped": None}


def _rows():
    return [
        {**COMMON, "model": "deepfm", "variant": "baseline", "params": 574_457_024, "samples_per_s": 10000.0,
         "gain_pct": 0.0, "iqr_pct": 3.0},
        {**COMMON, "model": "deepfm", "variant": "afm_emb", "params": 101_419_122, "samples_per_s": 17000.0,
         "gain_pct": 70.0, "paper_gain_pct": 59.2, "meets_paper": True, "iqr_pct": 9.0,
         "macs_per_row": 120_000.0, "macs_bound_gain_pct": 83.25},
        {**COMMON, "model": "deepfm", "variant": "deepctr_torch", "params": 574_457_023, "samples_per_s": 12500.0,
         "gain_pct": 25.0, "baseline_over_deepctr": 0.8, "iqr_pct": 4.0},
        {**COMMON, "model": "gdcn", "variant": "baseline", "params": 575_000_000, "samples_per_s": 9000.0,
         "gain_pct": 0.0, "iqr_pct": 2.0},
        {**COMMON, "model": "gdcn", "variant": "afm_emb", "params": 102_156_573, "samples_per_s": 9450.0,
         "gain_pct": 5.0, "paper_gain_pct": 10.83, "meets_paper": False, "iqr_pct": 2.0},
        {**COMMON, "model": "gdcn", "variant": "deepctr_torch", "params": None, "samples_per_s": None,
         "gain_pct": None, "skipped": "DeepCTR-Torch has no gdcn"},
    ]


def test_markdown_has_table_2_layout_and_labels_the_papers_figures():
    meta = {"cpu": "Test CPU", "logical_cpus": 2, "date": "today", "settings": {"warmup": 1},
            "command": "lightning-afm-bench models=[deepfm,gdcn]", "wall_s": 12.0, "peak_rss_gb": 3.2}
    md = to_markdown(_rows(), meta)
    lines = md.splitlines()
    assert "Test CPU" in md and "2 torch threads" in md and "Batch 10,000" in md and "torch 2.x" in md
    assert "`lightning-afm-bench models=[deepfm,gdcn]` (12 s, peak memory 3.2 GB)" in md
    header = next(line for line in lines if line.startswith("| Model | Params"))
    assert "+AFM EMB samples/s" in header and "Paper's +AFM EMB gain (paper's machine)" in header
    deepfm = next(line for line in lines if line.startswith("| DeepFM | 574.46M"))
    # our count rounds to Table 2's; our gain +70 % reaches the paper's +59.2 %
    assert "574.46M ✓" in deepfm and "+70.0 %" in deepfm and "+59.2 %" in deepfm and deepfm.endswith("| yes |")
    # the multiply-add bound sits next to the measured gain, explained in the notes; n/a when absent
    assert "+AFM EMB multiply-add bound" in header and "| +70.0 % | +83.2 % | +59.2 % |" in deepfm
    assert "Multiply-add bound:" in md
    gdcn = next(line for line in lines if line.startswith("| GDCN | 575.00M"))
    assert "575.19M ✗" in gdcn and gdcn.endswith("| **no** |")
    # ours slower than DeepCTR-Torch is shown in bold, a missing model as n/a with the reason in the notes
    assert "**0.80x**" in md
    assert any(line.startswith("| GDCN |") and line.endswith("| n/a |") for line in lines)
    assert "criteo/gdcn/DeepCTR-Torch skipped: DeepCTR-Torch has no gdcn" in md
    assert "not our measurement" in md and "cumulative" in md


def test_capped_runs_say_so_and_do_not_claim_table_2_counts():
    rows = [dict(r, vocab_cap=1000) for r in _rows()]
    md = to_markdown(rows, {})
    assert "capped at 1,000 rows" in md and "✓" not in md and "✗" not in md


def test_write_report_writes_both_files(tmp_path):
    json_path, md_path = write_report(_rows(), {}, tmp_path / "out")
    assert json.loads(json_path.read_text())[0]["params"] == 574_457_024
    assert md_path.read_text().startswith("# CPU inference throughput")


def test_params_format_like_table_2():
    assert format_params(574_457_024) == "574.46M"
    assert format_params(1234) == "1,234"
    assert format_params(None) == "n/a"


def test_autoint_rows_say_which_attention_kernel_ran():
    from lightning_afm.bench.report import native_attention_words

    words = native_attention_words()
    assert words.startswith(("the compiled native kernel", "PyTorch's kernels (the native kernel is unavailable: "))
    autoint = [dict(r, model="autoint") for r in _rows()[:3]]
    assert f"AutoInt's attention ran on {words}" in to_markdown(autoint, {"native_attention": words})
    assert "AutoInt's attention" not in to_markdown(_rows(), {"native_attention": words})  # no AutoInt row


def test_products_speed_splits_a_gain_into_fewer_multiply_adds_and_their_rate():
    rows = _rows()
    rows[0] = dict(rows[0], macs_per_row=220_000.0, macs_bound_gain_pct=0.0)  # the baseline: 10,000 rows/s
    lines = to_markdown(rows, {}).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Products' speed"))
    header, deepfm = lines[start + 2], lines[start + 4]
    assert header == "| Model | Baseline | +AFM EMB | +AFM EMB rate / baseline rate |"
    # 220,000 x 10,000 = 2.2 G/s; 120,000 x 17,000 = 2.04 G/s; 2.04 / 2.2 = 0.93 = 1.70 / (1 + 0.8333)
    assert deepfm == "| DeepFM | 2.2 | 2.0 | 0.93 |"
    assert lines[start + 5] == "| GDCN | n/a | n/a | n/a |"  # no counts: nothing made up
    assert "Products' speed" not in to_markdown(_rows(), {})  # no baseline count, no table


def test_the_cpu_is_described_by_generation_and_vector_width_not_only_its_marketing_name():
    from lightning_afm.bench.report import describe_cpu

    zen5 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu avx avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: another\n")
    assert describe_cpu(zen5) == "AMD EPYC (family 26, model 2, AVX-512)"
    assert describe_cpu("cpu family : 6\nmodel name : Xeon\nflags : sse avx avx2\n") == "Xeon (family 6, AVX2)"
    assert describe_cpu("model name : ARMv8 Processor\nFeatures : neon\n") == "ARMv8 Processor"
    with pytest.raises(ValueError, match="model name"):
        describe_cpu("processor : 0\nflags : avx\n")
