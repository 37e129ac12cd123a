"""The compression-kind registry, each kind's structure description, the model contract, and old plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_afm.compress import (
    CompressibleModel,
    CompressionKind,
    CompressionPlan,
    OutputStatistics,
    build_methods_for,
    compress_embedding_ttd,
    compress_targets,
    default_targets,
    fold_into_first_linear,
    get_kind,
    kind_names,
    parameter_count,
    register_kind,
    replay_plan,
)
from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY, restore_compressed_structure
from lightning_afm.compress.pq import PQEmbedding
from lightning_afm.compress.qr import QREmbedding
from lightning_afm.compress.tt_modules import TTEmbedding
from lightning_afm.data.schema import Schema
from lightning_afm.models import MODELS, build_model

COMPRESS = Path(__file__).resolve().parents[1] / "lightning_afm" / "compress"


def _stats(width: int, seed: int = 0) -> OutputStatistics:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, width, generator=g, dtype=torch.float64) + 0.5
    return OutputStatistics(x.mean(0), torch.cov(x.T, correction=0), 200)


def _own_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- registry


def test_registry_holds_the_built_in_kinds_and_their_methods():
    assert kind_names() == ("linear", "embedding", "fold", "tt_embedding", "qr_embedding", "pq_embedding")
    assert build_methods_for(nn.Linear) == ("afm", "svd", "random")
    assert build_methods_for(nn.Embedding) == ("afm", "svd", "random", "ttd", "qr", "pq")
    with pytest.raises(ValueError, match=r"unknown compression kind 'pq'.*'linear'"):
        get_kind("pq")


def test_a_second_kind_of_the_same_name_is_refused():
    class Impostor(CompressionKind):
        name = "linear"

    with pytest.raises(ValueError, match="already registered"):
        register_kind(Impostor())

    class Nameless(CompressionKind):
        pass

    with pytest.raises(ValueError, match="has no name"):
        register_kind(Nameless())
    assert type(get_kind("linear")).__name__ == "LowRankLinearKind"


# --------------------------------------------------------------------------- each kind


@pytest.mark.parametrize("method", ["afm", "svd", "random"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_linear_kind_plans_what_it_builds_and_replays_it(method, bias, relu):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5, bias=bias).double())
    kind = get_kind("linear")
    entry, new = kind.build(model, "0", _stats(5), 3, method, {"relu": relu})
    planned = kind.planned_entry("0", model[0], method, 3, relu)
    # the structure flags read off the rule are those of the real factors
    assert {k: entry.flags[k] for k in planned.flags} == planned.flags
    assert (new.first.bias is not None, new.second.bias is not None) == (
        entry.flags["first_bias"], entry.flags["second_bias"])
    structure = kind.structure(entry)
    assert structure.parameters == _own_parameters(new)
    assert structure.multiply_adds == 3 * 7 + 5 * 3
    assert structure.biases == {"first": entry.flags["first_bias"], "second": entry.flags["second_bias"]}
    replayed = kind.replay(model, entry)
    assert {k: v.shape for k, v in replayed.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}


@pytest.mark.parametrize("method", ["afm", "svd", "random"])
def test_embedding_kind_plans_what_it_builds_and_replays_it(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 6, padding_idx=2).double())
    kind = get_kind("embedding")
    entry, new = kind.build(model, "0", _stats(6), 2, method, {})
    planned = kind.planned_entry("0", model[0], method, 2)
    assert {k: entry.flags[k] for k in planned.flags} == planned.flags
    assert (new.projection.bias is not None) == entry.flags["projection_bias"] == (method != "svd")
    structure = kind.structure(entry)
    assert structure.parameters == _own_parameters(new) == 11 * 2 + 6 * 2 + 6 * (method != "svd")
    assert structure.multiply_adds == 6 * 2
    replayed = kind.replay(model, entry)
    assert {k: v.shape for k, v in replayed.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}
    assert replayed.table.padding_idx == 2


def test_tt_kind_counts_its_cores_and_the_multiply_adds_of_a_lookup():
    model = nn.Sequential(nn.Embedding(1000, 16))
    entry = compress_embedding_ttd(model, "0", tt_rank=4, init="random")
    structure = get_kind("tt_embedding").structure(entry)
    assert structure.parameters == _own_parameters(model[0]) == model[0].num_parameters
    # factors [10, 10, 10] x [2, 2, 4], ranks [1, 4, 4, 1]: a [2, 4] x [4, 2*4] then a [4, 4] x [4, 4*1] product
    assert (model[0].dim_factors, model[0].tt_ranks) == ([2, 2, 4], [1, 4, 4, 1])
    assert structure.multiply_adds == 2 * 4 * 2 * 4 + 4 * 4 * 4 * 1


def test_fold_kind_describes_the_widened_linear_and_compress_targets_takes_any_kind():
    model = _deepfm()
    tables = default_targets(model, "embeddings")
    compress_targets(model, tables[:1], None, 3, method="ttd", init="random")  # a TT table through the generic path
    assert type(model.embeddings.C1).__name__ == "TTEmbedding"
    model = _deepfm()
    compress_targets(model, tables, None, 2, method="svd")
    entry = fold_into_first_linear(model)
    structure = get_kind("fold").structure(entry)
    assert structure.parameters == _own_parameters(model.mlp[0].linear) == 8 * (3 * 2 + 2) + 8
    assert structure.multiply_adds == 8 * (3 * 2 + 2)


# --------------------------------------------------------------------------- the contract


def _deepfm(name: str = "deepfm"):
    torch.manual_seed(0)
    schema = Schema.from_vocab_sizes([7, 30, 5], numeric=2)
    return build_model(name, schema, embedding_dim=4, mlp_hidden=[8, 6, 5], dropout=0.0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_implements_the_contract(name):
    model = _deepfm(name)
    assert isinstance(model, CompressibleModel)
    layout = model.compression_layout()
    assert layout.mlp_targets == ("mlp.1.linear", "mlp.2.linear")  # the paper's 2nd and 3rd MLP Linear
    assert layout.field_tables == ("embeddings.C1", "embeddings.C2", "embeddings.C3")
    assert layout.first_mlp_linear == "mlp.0.linear" and isinstance(model.mlp[0].linear, nn.Linear)
    assert layout.mlp_reads_embeddings is (name not in ("nfm", "fibinet"))
    assert dict(layout.lr_tables) == {f"embeddings.C{i}": f"linear.C{i}" for i in (1, 2, 3)}
    assert layout.mlp_reads_codes is False
    model.set_mlp_reads_codes(True)
    assert model.compression_layout().mlp_reads_codes is True and model.mlp_reads_codes is True


def test_a_module_without_the_contract_has_no_defaults_and_says_what_to_do():
    plain = nn.Sequential(nn.Linear(3, 3))
    assert not isinstance(plain, CompressibleModel)
    with pytest.raises(ValueError, match=r"Sequential does not implement the compression contract.*`targets`"):
        default_targets(plain, "mlp")
    with pytest.raises(ValueError, match="group must be one of"):
        default_targets(_deepfm(), "cross")


def _code_strings_and_attributes(path: Path) -> tuple[list[str], list[str]]:
    """The string constants of ``path``'s code (docstrings and ``__all__`` left out: examples and exported
    names may say anything) and the attribute names it reads."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    exported = {id(c) for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "__all__" for t in node.targets) for c in ast.walk(node.value)}
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and id(n) not in docstrings | exported]
    return strings, [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]


def test_compress_names_nothing_of_the_zoo_and_imports_neither_lightning_nor_models():
    for path in sorted(COMPRESS.rglob("*.py")):
        strings, attributes = _code_strings_and_attributes(path)
        named = [s for s in strings if s.startswith(("mlp.", "embeddings.", "linear."))
                 or s in ("MLP_READS_EMBEDDINGS", "mlp_reads_codes")]
        read = [a for a in attributes if a in ("mlp", "embeddings", "MLP_READS_EMBEDDINGS")]
        assert not named and not read, f"{path.relative_to(COMPRESS)} names the zoo's attributes {named + read}"
    code = ("import sys, lightning_afm.compress; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'lightning' or m.startswith('lightning_afm.models')]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- plans written before the registry

#: A plan and its state-dict shapes as the code before the kind registry wrote them (same format,
#: version 1): DeepFM (3 fields, width 4, MLP 8-6-5, 2 numeric) with SVD MLP layers 2 and 3 at rank 3
#: (ReLU), random rank-2 tables, and the fold.
OLD_DEEPFM_PLAN = json.loads(
    '{"version": 1, "entries": [{"name": "mlp.1.linear", "kind": "linear", "method": "svd", "rank": 3, "shape": [6, 8], '
    '"relu": true, "flags": {"first_bias": false, "second_bias": true}}, {"name": "mlp.2.linear", "kind": "linear", '
    '"method": "svd", "rank": 3, "shape": [5, 6], "relu": true, "flags": {"first_bias": false, "second_bias": true}}, '
    '{"name": "embeddings.C1", "kind": "embedding", "method": "afm", "rank": 2, "shape": [7, 4], "relu": false, "flags": '
    '{"init": "random", "table_std": 0.00010754640243249014, "projection_bias": true, "padding_idx": null, '
    '"sparse": false}}, {"name": "embeddings.C2", "kind": "embedding", "method": "afm", "rank": 2, "shape": [30, 4], '
    '"relu": false, "flags": {"init": "random", "table_std": 9.218520426657051e-05, "projection_bias": true, '
    '"padding_idx": null, "sparse": false}}, {"name": "embeddings.C3", "kind": "embedding", "method": "afm", "rank": 2, '
    '"shape": [5, 4], "relu": false, "flags": {"init": "random", "table_std": 9.826891619013622e-05, '
    '"projection_bias": true, "padding_idx": null, "sparse": false}}, {"name": "mlp.0.linear", "kind": "fold", '
    '"method": null, "rank": null, "shape": [8, 14], "relu": false, "flags": {"in_features": 8, "bias": true, '
    '"num_fields": 3, "embedding_dim": 4, "code_dim": 2, "num_numeric": 2}}]}'
)
OLD_DEEPFM_SHAPES = {
    "embeddings.C1.table.weight": [7, 2], "embeddings.C1.projection.weight": [4, 2], "embeddings.C1.projection.bias": [4],
    "embeddings.C2.table.weight": [30, 2], "embeddings.C2.projection.weight": [4, 2],
    "embeddings.C2.projection.bias": [4], "embeddings.C3.table.weight": [5, 2], "embeddings.C3.projection.weight": [4, 2],
    "embeddings.C3.projection.bias": [4], "linear.C1.weight": [7, 1], "linear.C2.weight": [30, 1],
    "linear.C3.weight": [5, 1], "linear.numeric.weight": [1, 2], "linear.numeric.bias": [1],
    "mlp.0.linear.weight": [8, 8], "mlp.0.linear.bias": [8], "mlp.1.linear.first.weight": [3, 8],
    "mlp.1.linear.second.weight": [6, 3], "mlp.1.linear.second.bias": [6], "mlp.2.linear.first.weight": [3, 6],
    "mlp.2.linear.second.weight": [5, 3], "mlp.2.linear.second.bias": [5], "output.weight": [1, 5], "output.bias": [1],
}
#: NFM, same shapes, TT-Rec (random, TT-rank 3) on the tables of >= 20 rows and their LR tables.
OLD_NFM_TT_PLAN = json.loads(
    '{"version": 1, "entries": [{"name": "embeddings.C2", "kind": "tt_embedding", "method": "ttd", "rank": 3, '
    '"shape": [30, 4], "relu": false, "flags": {"row_factors": [4, 3, 3], "dim_factors": [2, 1, 2], "tt_ranks": '
    '[1, 3, 3, 1], "padding_idx": null, "deduplicate": true, "init": "random"}}, {"name": "linear.C2", "kind": '
    '"tt_embedding", "method": "ttd", "rank": 3, "shape": [30, 1], "relu": false, "flags": {"row_factors": [4, 3, 3], '
    '"dim_factors": [1, 1, 1], "tt_ranks": [1, 3, 3, 1], "padding_idx": null, "deduplicate": true, "init": "random"}}]}'
)
OLD_NFM_TT_SHAPES = {
    "embeddings.C1.weight": [7, 4], "embeddings.C2.cores.0": [4, 1, 2, 3], "embeddings.C2.cores.1": [3, 3, 1, 3],
    "embeddings.C2.cores.2": [3, 3, 2, 1], "embeddings.C3.weight": [5, 4], "linear.C1.weight": [7, 1],
    "linear.C2.cores.0": [4, 1, 1, 3], "linear.C2.cores.1": [3, 3, 1, 3], "linear.C2.cores.2": [3, 3, 1, 1],
    "linear.C3.weight": [5, 1], "linear.numeric.weight": [1, 2], "linear.numeric.bias": [1],
    "mlp.0.linear.weight": [8, 6], "mlp.0.linear.bias": [8], "mlp.1.linear.weight": [6, 8], "mlp.1.linear.bias": [6],
    "mlp.2.linear.weight": [5, 6], "mlp.2.linear.bias": [5], "output.weight": [1, 5], "output.bias": [1],
}


@pytest.mark.parametrize("name, plan, shapes", [("deepfm", OLD_DEEPFM_PLAN, OLD_DEEPFM_SHAPES),
                                                ("nfm", OLD_NFM_TT_PLAN, OLD_NFM_TT_SHAPES)])
def test_a_checkpoint_in_the_old_plan_format_still_loads(name, plan, shapes):
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(*shape, generator=g) for k, shape in shapes.items()}
    checkpoint = {PLAN_CHECKPOINT_KEY: plan, "state_dict": state}
    model = _deepfm(name)
    model.on_load_checkpoint(checkpoint)  # what load_from_checkpoint does before the weights load
    model.load_state_dict(state)  # strict: every key and shape matches
    assert CompressionPlan.from_dict(plan).to_dict() == plan  # read and written back unchanged
    assert restore_compressed_structure(model, checkpoint)  # idempotent
    assert parameter_count(model) == sum(t.numel() for t in state.values())
    fresh = replay_plan(_deepfm(name), plan)
    assert {k: list(v.shape) for k, v in fresh.state_dict().items()} == shapes
    ids = torch.tensor([[0, 29, 4], [6, 3, 1]])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(ids, torch.ones(2, 2))).all()


def test_table_kinds_take_their_one_method_from_the_base():
    from lightning_afm.compress.kinds.table_kind import TableKind

    for name, method, produces in (("tt_embedding", "ttd", TTEmbedding), ("qr_embedding", "qr", QREmbedding),
                                   ("pq_embedding", "pq", PQEmbedding)):
        kind = get_kind(name)
        assert isinstance(kind, TableKind) and kind.replaces is nn.Embedding and kind.produces is produces
        assert kind.entry_methods == kind.build_methods == (method,)
    with pytest.raises(TypeError, match="must set the class attribute `method`"):
        type("NoMethodKind", (TableKind,), {"name": "no_method"})
