"""CTRModel: the log-loss metric, the L2 term, the attribute contract, bad inputs, Hydra configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import log_loss
from torch import nn

import lightning_afm
from lightning_afm.data.schema import Schema
from lightning_afm.models import MODELS, BinaryLogLoss, DeepFM, build_model, count_parameters
from lightning_afm.runtime import reuse_freed_memory

SCHEMA = Schema.from_vocab_sizes([9, 7, 5], numeric=2)
SMALL = dict(embedding_dim=4, mlp_hidden=[8, 6], dropout=0.0)
CONF = Path(lightning_afm.__file__).parent / "conf" / "model"


def batch(rows: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (rows,), generator=g) for v in SCHEMA.vocab_sizes], dim=1)
    return cat, torch.rand(rows, 2, generator=g)


# -- the log-loss metric -----------------------------------------------------------------
def test_logloss_metric_equals_sklearn():
    rng = np.random.default_rng(0)
    probs, labels = rng.uniform(0.01, 0.99, 1000), (rng.random(1000) < 0.3).astype(np.float64)
    metric = BinaryLogLoss()
    for chunk in np.array_split(np.arange(1000), 7):  # several updates
        metric.update(torch.from_numpy(probs[chunk]), torch.from_numpy(labels[chunk]))
    assert metric.compute().dtype == torch.float64
    assert metric.compute().item() == pytest.approx(log_loss(labels, probs), rel=1e-12)

    logits = np.log(probs / (1 - probs))
    from_logits = BinaryLogLoss(from_logits=True)
    from_logits.update(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert from_logits.compute().item() == pytest.approx(log_loss(labels, probs), rel=1e-6)


def test_logloss_metric_states_sum_like_ranks():
    a, b, whole = BinaryLogLoss(), BinaryLogLoss(), BinaryLogLoss()
    p, y = torch.tensor([0.9, 0.2, 0.6, 0.3]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    a.update(p[:1], y[:1])
    b.update(p[1:], y[1:])
    whole.update(p, y)
    assert a._reductions["loss_sum"] is not None and a.loss_sum.dtype == torch.float64
    merged = (a.loss_sum + b.loss_sum) / (a.count + b.count)  # what dist_reduce_fx="sum" does
    assert merged.item() == pytest.approx(whole.compute().item(), rel=1e-15)
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert torch.isnan(BinaryLogLoss().compute())


def test_logloss_metric_clips_like_sklearn():
    m = BinaryLogLoss()
    m.update(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 1.0]))
    assert m.compute().item() == pytest.approx(log_loss([1, 1], [0.0, 1.0], labels=[0, 1]), rel=1e-9)


# -- the L2 term ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_l2_penalty_is_looked_up_rows_plus_dense_weights():
    model = DeepFM(SCHEMA, l2_reg=0.1, **SMALL)
    cat, num = batch()
    logits, codes, lr_weights = model.forward_parts(cat, num)
    rows = sum(
        model.embeddings.tables()[f].weight[cat[:, f]].pow(2).sum() + model.linear.tables()[f].weight[cat[:, f]].pow(2).sum()
        for f in range(3)
    )
    dense = sum(m.weight.pow(2).sum() for m in (*[b.linear for b in model.mlp], model.output, model.linear.numeric))
    expected = 0.1 * (rows / 6 + dense)
    torch.testing.assert_close(model.l2_penalty(codes, lr_weights), expected)
    names = {id(p) for p in model.regularized_weights()}
    assert id(model.mlp[0].linear.bias) not in names and id(model.embeddings.C1.weight) not in names
    # the loss of a training step includes it
    step_loss = model.training_step({"categorical": cat, "numeric": num, "label": torch.ones(6)}, 0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(6))
    torch.testing.assert_close(step_loss, bce + expected)


def test_l2_penalty_cost_does_not_touch_unused_rows():
    model = DeepFM(SCHEMA, l2_reg=1.0, **SMALL)
    cat = torch.zeros(4, 3, dtype=torch.long)
    _, codes, lr_weights = model.forward_parts(cat, torch.zeros(4, 2))
    model.l2_penalty(codes, lr_weights).backward()
    grad = model.embeddings.C1.weight.grad
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0


# -- attribute contract for compression ---------------------------------------------------
def capture_input(module: nn.Module) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, output) -> None:
        seen["x"] = inputs[0]

    module.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("name", sorted(MODELS))
def test_attribute_contract(name):
    model = build_model(name, SCHEMA, **SMALL)
    assert isinstance(model.mlp, nn.Sequential) and all(isinstance(b.linear, nn.Linear) for b in model.mlp)
    assert isinstance(model.output, nn.Linear) and model.output not in list(model.mlp.modules())
    assert model.mlp_reads_codes is False and model.linear is not None and model.embeddings.num_fields == 3
    seen = capture_input(model.mlp[0].linear)
    cat, num = batch()
    model.eval()(cat, num)
    if model.MLP_READS_EMBEDDINGS:
        expected = torch.cat([model.embeddings(cat).flatten(1), num], dim=1)
        torch.testing.assert_close(seen["x"], expected)
    else:
        assert name in ("nfm", "fibinet")


class FakeFactoredTable(nn.Module):
    """A k-dim table with a k -> t projection: the factored-table protocol."""

    def __init__(self, rows: int, k: int, t: int) -> None:
        super().__init__()
        self.table = nn.Embedding(rows, k)
        self.proj = nn.Linear(k, t)
        self.embedding_dim, self.code_dim = t, k

    def codes(self, idx):
        return self.table(idx)

    def project(self, c):
        return self.proj(c)

    def forward(self, idx):
        return self.project(self.codes(idx))


@pytest.mark.parametrize("name", [n for n, cls in MODELS.items() if cls.MLP_READS_EMBEDDINGS])
def test_mlp_reads_codes_after_a_fold(name):
    """What the compression fold does: factored tables, a narrower first MLP Linear, the flag."""
    model = build_model(name, SCHEMA, **SMALL).eval()
    k = 2
    for key, size in zip(model.embeddings.module_names, SCHEMA.vocab_sizes):
        setattr(model.embeddings, key, FakeFactoredTable(size, k, 4))
    model.mlp[0].linear = nn.Linear(3 * k + 2, 8)
    model.mlp_reads_codes = True
    seen = capture_input(model.mlp[0].linear)
    cat, num = batch()
    out = model(cat, num)
    assert out.shape == (6,)
    torch.testing.assert_close(seen["x"], torch.cat([model.embeddings.codes(cat).flatten(1), num], dim=1))


# -- bad input ------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    model = DeepFM(SCHEMA, **SMALL)
    cat, num = batch()
    with pytest.raises(ValueError, match=r"categorical must be \[batch, 3\]"):
        model(cat[:, :2], num)
    with pytest.raises(ValueError, match=r"numeric must be \[batch, 2\]"):
        model(cat, num[:, :1])
    with pytest.raises(TypeError, match="int64"):
        model(cat.float(), num)
    with pytest.raises(TypeError, match="dict with keys"):
        model.training_step((cat, num), 0)
    with pytest.raises(KeyError, match="label"):
        model.training_step({"categorical": cat, "numeric": num}, 0)
    with pytest.raises(KeyError, match="unknown model 'dnn'"):
        build_model("dnn", SCHEMA)
    with pytest.raises(ValueError, match="at least one categorical"):
        DeepFM(Schema(categorical=(), numeric=("x",)))
    with pytest.raises(ValueError, match="FiBiNet needs at least 2"):
        build_model("fibinet", Schema.from_vocab_sizes([5]), **SMALL)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        DeepFM(SCHEMA, lr=-1.0)
    # a schema without numeric fields takes numeric=None or a [B, 0] tensor
    no_num = DeepFM(Schema.from_vocab_sizes([4, 4]), **SMALL).eval()
    ids = torch.zeros(3, 2, dtype=torch.long)
    torch.testing.assert_close(no_num(ids), no_num(ids, torch.zeros(3, 0)))


def test_hparams_are_plain_and_schema_round_trips():
    model = DeepFM(SCHEMA.to_dict(), mlp_hidden=(8,), embedding_dim=4)
    assert model.hparams.mlp_hidden == [8]
    assert Schema.from_dict(model.hparams.schema) == SCHEMA
    assert count_parameters(model) == count_parameters(model, trainable_only=True)


def test_configure_optimizers_reads_hparams_at_call_time():
    model = DeepFM(SCHEMA, lr=1e-3, weight_decay=0.0, **SMALL)
    model.hparams.lr, model.hparams.weight_decay = 5e-3, 1e-3  # what a finetune callback may do
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 5e-3 and opt.param_groups[0]["weight_decay"] == 1e-3
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_reuse_freed_memory_is_idempotent():
    first = reuse_freed_memory()
    assert reuse_freed_memory() == first


# -- Hydra configs ---------------------------------------------------------------------------
def test_every_model_has_a_config():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_config_instantiates_with_the_paper_defaults(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.lr == 1e-4 and cfg.dropout == 0.5 and cfg.l2_reg == 1e-5 and list(cfg.mlp_hidden) == [400] * 3
    cfg.embedding_dim, cfg.mlp_hidden = 4, [8]  # overrides as on the command line
    model = instantiate(cfg, schema=SCHEMA)
    assert type(model) is MODELS[name]
    assert model.hparams.mlp_hidden == [8] and model.embedding_dim == 4
    for key, value in OmegaConf.to_container(cfg).items():
        if key != "_target_":
            assert model.hparams[key] == value, key


@pytest.mark.parametrize("numeric", [3, 0])
def test_fibinet_inference_path_equals_the_autograd_path(numeric):
    # FiBiNet writes its bilinear outputs straight into the MLP input when autograd is off
    torch.manual_seed(0)
    model = build_model("fibinet", Schema.from_vocab_sizes([5, 7, 4, 6], numeric=numeric), **SMALL).eval()
    cat = torch.stack([torch.randint(0, v, (9,)) for v in (5, 7, 4, 6)], 1)
    num = torch.rand(9, numeric)
    with torch.no_grad():
        fast = model(cat, num)
    torch.testing.assert_close(fast, model(cat, num).detach(), rtol=1e-6, atol=1e-6)


def test_l2_full_penalises_every_table_entry_as_equation_13():
    model = DeepFM(SCHEMA, l2_reg=0.1, l2="full", **SMALL)
    cat, num = batch()
    _, codes, lr_weights = model.forward_parts(cat, num)
    tables = sum(t.weight.pow(2).sum() for t in (*model.embeddings.tables(), *model.linear.tables()))
    dense = sum(m.weight.pow(2).sum() for m in (*[b.linear for b in model.mlp], model.output, model.linear.numeric))
    torch.testing.assert_close(model.l2_penalty(codes, lr_weights), 0.1 * (tables + dense))
    model.l2_penalty(codes, lr_weights).backward()
    assert model.embeddings.C1.weight.grad.abs().min() > 0, "every row gets the decay, looked up or not"
    with pytest.raises(ValueError, match="l2 must be one of"):
        DeepFM(SCHEMA, l2="all", **SMALL)


def _numpy_equation_13(model: nn.Module, r: float) -> float:
    """``r * sum_i ||W_i||^2`` in float64 numpy over every weight of the model: each parameter
    but the biases and the batch-norm scales (the paper's "model weights", line 1087-1099)."""
    return r * sum(
        float(np.square(p.detach().double().numpy()).sum())
        for name, p in model.named_parameters()
        if not name.endswith("bias") and ".norm." not in name
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_l2_full_equals_numpy_over_all_model_weights_and_reaches_unseen_rows(name):
    torch.manual_seed(0)
    model = build_model(name, SCHEMA, l2_reg=1e-3, l2="full", batch_norm=True, **SMALL)
    cat = torch.zeros(5, 3, dtype=torch.long)  # every field looks up row 0 only
    _, codes, lr_weights = model.forward_parts(cat, torch.rand(5, 2))
    penalty = model.l2_penalty(codes, lr_weights)
    assert penalty.item() == pytest.approx(_numpy_equation_13(model, 1e-3), rel=1e-5)
    penalty.backward()
    for f in range(3):  # the gradient of 2 r W reaches the rows no example looked up
        for table in (model.embeddings.tables()[f], model.linear.tables()[f]):
            torch.testing.assert_close(table.weight.grad[1:], 2e-3 * table.weight.detach()[1:])
    # "rows" (the default) is unchanged: unseen rows get no gradient from the term
    rows = build_model(name, SCHEMA, l2_reg=1e-3, batch_norm=True, **SMALL)
    assert rows.hparams.l2 == "rows"
    _, codes, lr_weights = rows.forward_parts(cat, torch.rand(5, 2))
    rows.l2_penalty(codes, lr_weights).backward()
    assert rows.embeddings.tables()[0].weight.grad[1:].abs().sum() == 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mlp_init_normal_draws_hidden_weights_with_std_1e_4(name):
    wide = dict(SMALL, embedding_dim=8, mlp_hidden=[64, 64])
    torch.manual_seed(3)
    normal = build_model(name, SCHEMA, mlp_init="normal", **wide)
    torch.manual_seed(3)
    default = build_model(name, SCHEMA, **wide)
    assert default.hparams.mlp_init == "torch"
    for a, b in zip(normal.mlp, default.mlp):
        w = a.linear.weight.detach().numpy()
        assert abs(w.mean()) < 1e-5 and w.std() == pytest.approx(1e-4, rel=0.1)
        assert b.linear.weight.std() > 50 * w.std()  # PyTorch's Kaiming-uniform: about 1/sqrt(3 fan_in)
        torch.testing.assert_close(a.linear.bias, b.linear.bias)  # biases keep PyTorch's init, as DeepCTR-Torch
    with pytest.raises(ValueError, match="mlp_init must be one of"):
        build_model(name, SCHEMA, mlp_init="xavier", **SMALL)
