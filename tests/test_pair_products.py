"""PaiNN's pair operations S (gather–multiply–scatter) and Q (pair product) of models/pair_products.py:
equal to autograd on the plain expressions in value, first and second derivatives, for every shape
combination, eager and compiled; and PaiNN built on them equal to its plain per-pair formula."""

from __future__ import annotations

import pytest
import torch

from matforge.models import kernel_mode
from matforge.models import pair_products as pp

# (x or g rank, b rank, vector result): every case PaiNN's messages and their derivatives use
SCATTER_CASES = [(2, 2, False), (3, 2, True), (2, 3, True), (3, 3, False)]
PRODUCT_CASES = [(2, 2, False), (3, 2, True), (2, 3, True), (3, 3, False)]


def _tensor(gen, rows: int, rank: int, width: int = 3) -> torch.Tensor:
    shape = (rows, width) if rank == 2 else (rows, 3, width)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)


def _indices(gen, atoms: int = 5, pairs: int = 11):
    return torch.randint(0, atoms, (pairs,), generator=gen), torch.randint(0, atoms, (pairs,), generator=gen)


@pytest.mark.parametrize("x_rank,b_rank,vector", SCATTER_CASES)
def test_scatter_value_and_two_derivatives_match_autograd(kernels, x_rank, b_rank, vector):
    gen = torch.Generator().manual_seed(x_rank * 10 + b_rank)
    out_index, read_index = _indices(gen)
    x, b = _tensor(gen, 11, x_rank), _tensor(gen, 5, b_rank)
    want = pp.pair_scatter_reference(x, b, out_index, read_index, 6, vector)
    got = pp.pair_scatter(x, b, out_index, read_index, 6, vector)
    assert got.shape == want.shape == ((6, 3, 3) if vector else (6, 3))
    assert torch.allclose(got, want, atol=1e-12)

    def fn(x, b):
        return pp.pair_scatter(x, b, out_index, read_index, 6, vector)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("g_rank,b_rank,vector", PRODUCT_CASES)
def test_product_value_and_two_derivatives_match_autograd(kernels, g_rank, b_rank, vector):
    gen = torch.Generator().manual_seed(g_rank * 10 + b_rank + 1)
    out_index, read_index = _indices(gen)
    g, b = _tensor(gen, 5, g_rank), _tensor(gen, 5, b_rank)
    want = pp.pair_product_reference(g, b, out_index, read_index, vector)
    got = pp.pair_product(g, b, out_index, read_index, vector)
    assert got.shape == want.shape == ((11, 3, 3) if vector else (11, 3))
    assert torch.allclose(got, want, atol=1e-12)

    def fn(g, b):
        return pp.pair_product(g, b, out_index, read_index, vector)

    assert torch.autograd.gradcheck(fn, (g, b))
    assert torch.autograd.gradgradcheck(fn, (g, b))


def test_third_derivative_exists_and_matches_autograd():
    """S and Q differentiate into each other, so a third derivative is as exact as the first."""
    kernel_mode.set_kernel_mode("eager")
    gen = torch.Generator().manual_seed(7)
    out_index, read_index = _indices(gen)
    x, b = _tensor(gen, 11, 3), _tensor(gen, 5, 2)
    results = []
    for scatter in (pp.pair_scatter, pp.pair_scatter_reference):
        y = scatter(x, b, out_index, read_index, 5, True)
        (gb,) = torch.autograd.grad((y ** 2).sum(), b, create_graph=True)
        (gx,) = torch.autograd.grad((gb ** 2).sum(), x, create_graph=True)
        (gb3,) = torch.autograd.grad(gx.pow(3).sum(), b)
        results.append(gb3)
    assert torch.allclose(results[0], results[1], atol=1e-10)


def test_impossible_shape_combination_is_refused():
    gen = torch.Generator().manual_seed(1)
    out_index, read_index = _indices(gen)
    with pytest.raises(ValueError, match="no pair kernel"):
        pp.pair_scatter(_tensor(gen, 11, 2), _tensor(gen, 5, 2), out_index, read_index, 5, vector=True)


def test_no_pairs():
    kernel_mode.set_kernel_mode("eager")
    gen = torch.Generator().manual_seed(2)
    empty = torch.zeros(0, dtype=torch.long)
    x, b = _tensor(gen, 0, 3), _tensor(gen, 4, 2)
    out = pp.pair_scatter(x, b, empty, empty, 4, vector=True)
    assert out.shape == (4, 3, 3) and torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.count_nonzero(b.grad) == 0
