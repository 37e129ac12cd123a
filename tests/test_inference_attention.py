"""AutoInt's attention at inference (``lightning_afm.inference.attention``) against numpy and the training layer.

Every kernel, with and without the residual and the logit scale, at several head counts; the first
layer folded onto the codes against numpy's attention over ``P_i c_i + b_i``; the kernel rule, the
fold rule, and the whole AutoInt inference form (folded and not, eager and TorchScript) against
the training model's eval forward to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_afm.compress import LowRankEmbedding, fold_into_first_linear, get_submodule, resolve_targets, set_submodule
from lightning_afm.data.schema import Schema
from lightning_afm.inference import Tensors, native, optimize_for_inference
from lightning_afm.inference.attention import (
    FOLD_MIN_SAVED_MACS,
    CodeInteracting,
    InferenceAttention,
    InferenceInteracting,
    build_attention,
    choose_kernel,
    fold_saving,
)
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, AutoInt
from lightning_afm.models.layers.attention import InteractingLayer

TOL = dict(rtol=0.0, atol=1e-5)


def numpy_interacting(x: np.ndarray, layer: InteractingLayer) -> np.ndarray:
    """The interacting layer in float64 numpy, head by head: ``relu(softmax(q k^T s) v + x W_res)``."""
    w = {n: getattr(layer, n).weight.detach().double().numpy().T for n in ("query", "key", "value")}
    q, k, v = (x @ w[n] for n in ("query", "key", "value"))
    dh = layer.head_dim
    scale = 1.0 / np.sqrt(dh) if layer.scaled else 1.0
    heads = []
    for h in range(layer.num_heads):
        cols = slice(h * dh, (h + 1) * dh)
        logits = np.einsum("bic,bjc->bij", q[..., cols], k[..., cols]) * scale
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(-1, keepdims=True)
        heads.append(np.einsum("bij,bjc->bic", p, v[..., cols]))
    out = np.concatenate(heads, axis=-1)
    if layer.residual is not None:
        out += x @ layer.residual.weight.detach().double().numpy().T
    return np.maximum(out, 0.0)


def _layer(d: int, heads: int, residual: bool, scaled: bool, seed: int = 0) -> InteractingLayer:
    torch.manual_seed(seed)
    layer = InteractingLayer(d, heads, residual, scaled).eval()
    with torch.no_grad():  # logits of order 1, so a wrong scale or a missed head shows
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    return layer


#: every kernel this machine has (the native one wherever it built: tests/test_native_attention.py
#: fails if a compiler is present and it did not)
KERNELS_HERE = ["bmm", "sdpa", "auto"] + (["native"] if native.available() else [])


@pytest.mark.parametrize("kernel", KERNELS_HERE)
@pytest.mark.parametrize("heads,residual,scaled", [(1, True, False), (2, True, True), (4, False, False), (2, False, True)])
def test_each_kernel_equals_numpy_and_the_training_layer(kernel, heads, residual, scaled):
    layer = _layer(8, heads, residual, scaled)
    x = torch.randn(7, 5, 8)
    fast = InferenceInteracting(layer, Tensors(), kernel)
    out = fast(x)
    np.testing.assert_allclose(out.numpy(), numpy_interacting(x.double().numpy(), layer), rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(out, layer(x), **TOL)
    torch.testing.assert_close(torch.jit.script(fast)(x), out, **TOL)


def test_the_kernel_rule_and_auto_follows_the_thread_count():
    assert choose_kernel(8, 1) == "sdpa"
    assert choose_kernel(8, 2) == "bmm"
    assert choose_kernel(25, 1) == "bmm"
    assert choose_kernel(25, 4) == "bmm"
    assert choose_kernel(8, 1, native_ok=True) == choose_kernel(25, 4, native_ok=True) == "native"
    fast = InferenceInteracting(_layer(16, 2, True, False), Tensors())  # head size 8
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert fast.current_kernel() == ("native" if native.available() else "sdpa")
        assert fast.portable_kernel() == "sdpa"
        torch.set_num_threads(2)
        assert fast.current_kernel() == ("native" if native.available() else "bmm")
        assert fast.portable_kernel() == "bmm"
    finally:
        torch.set_num_threads(before)
    assert InferenceInteracting(_layer(16, 2, True, False), Tensors(), "bmm").current_kernel() == "bmm"
    with pytest.raises(ValueError, match="unknown attention kernel 'flash'"):
        InferenceInteracting(_layer(8, 2, True, False), Tensors(), "flash")


@pytest.mark.parametrize("kernel", KERNELS_HERE)
@pytest.mark.parametrize("residual", [True, False])
def test_first_layer_on_the_codes_equals_numpy_on_the_projected_embeddings(kernel, residual):
    d, k, fields = 8, 3, 6
    layer = _layer(d, 2, residual, scaled=False)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(d, k, generator=g) * 0.5 for _ in range(fields)]
    biases = [torch.randn(d, generator=g) * 0.5 for _ in range(fields)]
    codes = torch.randn(9, fields, k, generator=g)
    emb = np.stack([codes[:, i].double().numpy() @ weights[i].double().numpy().T + biases[i].double().numpy()
                    for i in range(fields)], axis=1)
    folded = CodeInteracting(InferenceInteracting(layer, Tensors(), kernel), weights, biases)
    np.testing.assert_allclose(folded(codes).numpy(), numpy_interacting(emb, layer), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.jit.script(folded)(codes), folded(codes), **TOL)
    with pytest.raises(ValueError, match="one \\[d, k\\] weight and one \\[d\\] bias per field"):
        CodeInteracting(folded.layer, weights, biases[:-1])


def test_fold_saving_counts_the_multiply_adds_and_decides_the_fold():
    assert fold_saving(InferenceInteracting(_layer(16, 2, True, False), Tensors()), 2) == 2 * 16 + 16 * 64 - 2 * 64
    assert fold_saving(InferenceInteracting(_layer(50, 2, False, False), Tensors()), 8) == 8 * 50 + 50 * 150 - 8 * 150
    assert fold_saving(InferenceInteracting(_layer(16, 2, True, False), Tensors()), 2) < FOLD_MIN_SAVED_MACS
    assert fold_saving(InferenceInteracting(_layer(50, 2, True, False), Tensors()), 8) >= FOLD_MIN_SAVED_MACS


def _autoint_emb(d: int, k: int, per_field_ranks: bool = False) -> AutoInt:
    """A small AutoInt with AFM-factored tables (rank ``k``, or ``k`` and ``k + 1`` alternating) and
    the MLP folded onto the codes, biases away from zero."""
    torch.manual_seed(0)
    model = AutoInt(Schema.from_vocab_sizes([9, 7, 5, 11], numeric=2), embedding_dim=d, mlp_hidden=[8, 8])
    for i, target in enumerate(resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")):
        old = get_submodule(model, target)
        rank = k + (i % 2 if per_field_ranks else 0)
        set_submodule(model, target, LowRankEmbedding(old.num_embeddings, old.embedding_dim, rank))
    fold_into_first_linear(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("d,k,folds", [(50, 8, True), (16, 2, False)])
def test_autoint_inference_form_folds_when_it_pays_and_equals_the_model(d, k, folds):
    model = _autoint_emb(d, k)
    for fuse in (False, True):
        fast = optimize_for_inference(model, fuse=fuse)
        attention = fast.deep.attention
        assert isinstance(attention, InferenceAttention) and attention.reads_codes is folds
        assert isinstance(attention.first, CodeInteracting if folds else InferenceInteracting)
        assert fast.build_embeddings is not folds  # folded: the MLP and the first layer read the codes
        g = torch.Generator().manual_seed(3)
        cat = torch.stack([torch.randint(0, v, (21,), generator=g) for v in (9, 7, 5, 11)], dim=1)
        num = torch.rand(21, 2, generator=g)
        with torch.no_grad():
            expected = model(cat, num)
        torch.testing.assert_close(fast(cat, num), expected, **TOL)
        torch.testing.assert_close(torch.jit.script(fast)(cat, num), expected, **TOL)


def test_per_field_ranks_and_subclassed_layers_are_not_folded():
    model = _autoint_emb(50, 8, per_field_ranks=True)
    assert build_attention(model.attention, model.embeddings.tables(), Tensors()).reads_codes is False

    class Traced(InteractingLayer):
        pass

    model = _autoint_emb(50, 8)
    model.attention[1].value = torch.nn.Linear(50, 50)  # with a bias: not the plain layer any more
    model.attention[0] = Traced(50, 2).eval()
    built = build_attention(model.attention, model.embeddings.tables(), Tensors())
    assert built.reads_codes is False and type(built.first) is Traced  # a frozen copy, called as it is
    assert type(built.rest[0]) is InteractingLayer and isinstance(built.rest[1], InferenceInteracting)
    cat, num = torch.zeros(3, 4, dtype=torch.long), torch.rand(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(optimize_for_inference(model)(cat, num), model(cat, num), **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_two_part_output_equals_the_linear_over_the_concatenation(bias):
    from lightning_afm.inference.heads import CatOutput, TwoPartOutput, two_part_output

    torch.manual_seed(0)
    linear = torch.nn.Linear(7 + 5, 1, bias=bias)
    a, b = torch.randn(9, 7), torch.randn(9, 5)
    with torch.no_grad():
        expected = linear(torch.cat([a, b], dim=1)).squeeze(-1)
    out = two_part_output(linear, 7, Tensors())
    assert isinstance(out, TwoPartOutput)
    torch.testing.assert_close(out(a, b), expected, **TOL)
    torch.testing.assert_close(torch.jit.script(out)(a, b), expected, **TOL)
    with torch.no_grad():
        linear.weight.mul_(2)  # shared, not copied: the inference form follows the weights
    torch.testing.assert_close(out(a, b) - (linear.bias if bias else 0), 2 * (expected - (linear.bias if bias else 0)))
    factored = torch.nn.Sequential(torch.nn.Linear(12, 3), torch.nn.Linear(3, 1))  # not a plain Linear
    fallback = two_part_output(factored, 7, Tensors())
    assert isinstance(fallback, CatOutput)
    with torch.no_grad():
        torch.testing.assert_close(fallback(a, b), factored(torch.cat([a, b], 1)).squeeze(-1), **TOL)
