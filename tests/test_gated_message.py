"""The smooth CGCNN's gated edge message with hand-written derivatives (models/gated_message.py): equal
to autograd on the plain expression in value, first and second derivative, eager and compiled."""

from __future__ import annotations

import pytest
import torch

from matforge.models import gated_message as gm


def _inputs(atoms: int = 5, edges: int = 9, width: int = 3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    a = (2 * torch.randn(atoms, 2 * width, generator=gen, dtype=dtype)).requires_grad_(True)
    b = (2 * torch.randn(atoms, 2 * width, generator=gen, dtype=dtype)).requires_grad_(True)
    r = torch.randn(edges, 2 * width, generator=gen, dtype=dtype).requires_grad_(True)
    u = torch.rand(edges, 1, generator=gen, dtype=dtype).requires_grad_(True)
    i = torch.randint(0, atoms, (edges,), generator=gen)
    j = torch.randint(0, atoms, (edges,), generator=gen)
    return a, b, r, u, i, j


def test_value_first_and_second_derivatives_match_autograd(kernels):
    a, b, r, u, i, j = _inputs()
    expected = gm.gated_edge_message_reference(a, b, r, u, i, j)
    assert torch.allclose(gm.gated_edge_message(a, b, r, u, i, j), expected, atol=1e-12)

    def fn(a, b, r, u):
        return gm.gated_edge_message(a, b, r, u, i, j)

    assert torch.autograd.gradcheck(fn, (a, b, r, u))
    assert torch.autograd.gradgradcheck(fn, (a, b, r, u))


def test_force_style_double_backward_equals_the_reference(kernels):
    """The pattern of force training: dE/dx with create_graph, a loss on it, backward to the weights."""
    a0, b0, r0, u0, i, j = _inputs(atoms=12, edges=40, width=4, dtype=torch.float32)
    results = {}
    for name, fn in (("fused", gm.gated_edge_message), ("reference", gm.gated_edge_message_reference)):
        weight = torch.linspace(-1, 1, 16).reshape(2, 8).requires_grad_(True)
        x = torch.linspace(-2, 2, 24).reshape(12, 2).requires_grad_(True)   # "positions" of 12 atoms
        d = (x[i] - x[j]).pow(2).sum(-1, keepdim=True)                       # (E, 1) edge feature
        energy = fn(x @ weight + a0.detach(), b0.detach(), d * r0.detach(), u0.detach() * (1 + d), i, j).sum()
        (force,) = torch.autograd.grad(energy, x, create_graph=True)
        (force ** 2).sum().backward()
        results[name] = (energy.detach(), force.detach(), weight.grad.clone())
    for got, want in zip(results["fused"], results["reference"]):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_no_edges():
    gm.set_kernel_mode("eager")
    a, b, r, u, i, j = _inputs(edges=0)
    out = gm.gated_edge_message(a, b, r, u, i, j)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert torch.count_nonzero(a.grad) == 0


def test_third_derivative_is_refused():
    gm.set_kernel_mode("eager")
    a, b, r, u, i, j = _inputs(edges=4)
    (g,) = torch.autograd.grad(gm.gated_edge_message(a, b, r, u, i, j).sum(), a, create_graph=True)
    (gg,) = torch.autograd.grad((g ** 2).sum(), a, create_graph=True)
    with pytest.raises(RuntimeError):  # never a silently wrong third derivative
        torch.autograd.grad(gg.sum(), a)


def test_unknown_mode_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        gm.set_kernel_mode("fast")
    monkeypatch.setenv(gm.KERNEL_MODE_ENV, "nope")
    with pytest.raises(ValueError, match="MATFORGE_KERNELS"):
        gm.set_kernel_mode()
    gm.set_kernel_mode("eager")
