"""PaiNN's per-edge direction message (models/edge_direction.py): value, first and second derivatives
equal autograd on the plain expression, eager and compiled; the third derivative too."""

from __future__ import annotations

import torch

from matforge.models import edge_direction as ed
from matforge.models import kernel_mode


def _inputs(edges: int = 13, atoms: int = 5, width: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(edges, width, generator=gen, dtype=torch.float64).requires_grad_(True)
    d = torch.randn(edges, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(atoms, width, generator=gen, dtype=torch.float64).requires_grad_(True)
    out_index = torch.randint(0, atoms, (edges,), generator=gen)
    read_index = torch.randint(0, atoms, (edges,), generator=gen)
    return x, d, b, out_index, read_index


def test_value_and_two_derivatives_match_autograd(kernels):
    x, d, b, o, k = _inputs()
    want = ed.edge_direction_scatter_reference(x, d, b, o, k, 6)
    got = ed.edge_direction_scatter(x, d, b, o, k, 6)
    assert got.shape == (6, 3, 3)
    assert torch.allclose(got, want, atol=1e-12)

    def fn(x, d, b):
        return ed.edge_direction_scatter(x, d, b, o, k, 6)

    assert torch.autograd.gradcheck(fn, (x, d, b))
    assert torch.autograd.gradgradcheck(fn, (x, d, b))


def test_third_derivative_matches_autograd():
    kernel_mode.set_kernel_mode("eager")
    x, d, b, o, k = _inputs(seed=3)
    results = []
    for scatter in (ed.edge_direction_scatter, ed.edge_direction_scatter_reference):
        y = scatter(x, d, b, o, k, 5)
        (gd,) = torch.autograd.grad((y ** 2).sum(), d, create_graph=True)
        (gx,) = torch.autograd.grad((gd ** 2).sum(), x, create_graph=True)
        (gb,) = torch.autograd.grad(gx.pow(3).sum(), b)
        results.append(gb)
    assert torch.allclose(results[0], results[1], atol=1e-9)


def test_no_edges():
    kernel_mode.set_kernel_mode("eager")
    x, d, b, o, k = _inputs(edges=0)
    y = ed.edge_direction_scatter(x, d, b, o, k, 5)
    assert y.shape == (5, 3, 3) and torch.count_nonzero(y) == 0
    y.sum().backward()
    assert torch.count_nonzero(b.grad) == 0
