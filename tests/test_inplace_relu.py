"""The in-place ReLUs of the MLP's inference blocks and of AutoInt's attention: same values, same
gradients, and nothing but a fresh tensor is overwritten."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_afm.inference.dense import FactoredLinear, InferenceBlock
from lightning_afm.models.layers.attention import InteractingLayer


def _reference_block(linear: nn.Module, norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    h = linear(x)
    return torch.relu(norm(h) if norm is not None else h)


@pytest.mark.parametrize("norm", [None, nn.BatchNorm1d(6)])
@pytest.mark.parametrize("factored", [False, True])
def test_block_relu_in_place_on_fresh_outputs_matches_the_reference(norm, factored):
    torch.manual_seed(0)
    linear = FactoredLinear(nn.Linear(5, 3), nn.Linear(3, 6), relu=True) if factored else nn.Linear(5, 6)
    if norm is not None:
        norm.running_mean.uniform_(-1, 1)
        norm.eval()
    block = InferenceBlock(linear, norm).eval()
    assert block.in_place
    x = torch.randn(8, 5)
    kept = x.clone()
    with torch.inference_mode():
        out = block(x)
        expected = _reference_block(linear, norm, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert (out >= 0).all() and (out == 0).any() and torch.equal(x, kept)  # the ReLU cut; the input untouched


class _Holds(nn.Module):
    """Returns a tensor it holds: an in-place ReLU would corrupt it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.tensor([[-1.0, 2.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


def test_block_keeps_the_relu_out_of_place_where_the_output_may_be_held():
    held = InferenceBlock(_Holds(), None)
    hooked = nn.Linear(2, 2)
    hooked.register_forward_hook(lambda m, i, o: m.weight)  # returns a parameter
    assert not held.in_place and not InferenceBlock(hooked, None).in_place
    with torch.inference_mode():
        torch.testing.assert_close(held(torch.zeros(1, 2)), torch.tensor([[0.0, 2.0]]))
    assert torch.equal(held.linear.value, torch.tensor([[-1.0, 2.0]]))


@pytest.mark.parametrize(("residual", "heads"), [(True, 2), (False, 1)])
def test_attention_relu_values_and_gradients_match_out_of_place(residual, heads):
    torch.manual_seed(1)
    layer = InteractingLayer(4, num_heads=heads, residual=residual)
    e = torch.randn(3, 5, 4, requires_grad=True)
    out = layer(e)
    out.square().sum().backward()
    grads = [e.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    # the reference: the same maths written out of place
    e2 = e.detach().clone().requires_grad_(True)
    b, f, d = e2.shape
    split = lambda t: t.view(b, f, heads, d // heads).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(layer.query(e2)) @ split(layer.key(e2)).transpose(-1, -2), dim=-1) @ split(layer.value(e2))
    ref = att.transpose(1, 2).reshape(b, f, d)
    ref = torch.relu(ref + layer.residual(e2) if residual else ref)
    layer.zero_grad()
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, [e2.grad] + [p.grad for p in layer.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
