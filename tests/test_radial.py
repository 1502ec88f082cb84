"""Radial bases and envelopes: the formulas, and value and slope vanishing at the cutoff."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matforge.models.radial import (BesselBasis, CosineCutoff, GaussianBasis, PolynomialEnvelope, envelope,
                                    radial_basis)

RC = 5.0


def derivatives(fn, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value, first and second derivative of an element-wise fn by autograd."""
    r = r.clone().requires_grad_(True)
    u = fn(r)
    (d1,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    return u.detach(), d1.detach(), d2.detach()


@pytest.mark.parametrize("p", [5, 6])
def test_polynomial_envelope(p):
    env = PolynomialEnvelope(RC, p)
    r = torch.tensor([0.0, 0.3 * RC, RC - 1e-9, RC, RC + 0.5], dtype=torch.float64)
    u, d1, d2 = derivatives(env, r)
    d = 0.3
    expected = 1 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
    assert u[0] == 1.0 and u[1] == pytest.approx(expected, rel=1e-14)
    # value, slope and curvature vanish at the cutoff from inside, and are exactly zero beyond
    assert abs(u[2]) < 1e-12 and abs(d1[2]) < 1e-8 and abs(d2[2]) < 1e-5
    assert u[3] == 0 and d1[3] == 0 and u[4] == 0 and d1[4] == 0 and d2[4] == 0
    # monotone decreasing from 1 to 0 on [0, r_c]
    grid = torch.linspace(0, RC, 501, dtype=torch.float64)
    values = env(grid)
    assert bool((values[1:] <= values[:-1] + 1e-15).all())


def test_cosine_cutoff():
    cut = CosineCutoff(RC)
    r = torch.tensor([0.0, 1.7, RC - 1e-9, RC + 1.0], dtype=torch.float64)
    u, d1, d2 = derivatives(cut, r)
    assert u[0] == 1.0 and u[1] == pytest.approx(0.5 * (math.cos(math.pi * 1.7 / RC) + 1), rel=1e-14)
    assert abs(u[2]) < 1e-12 and abs(d1[2]) < 1e-8
    # continuous slope, but the curvature jumps at r_c: π²/(2 r_c²) inside, 0 outside
    assert d2[2] == pytest.approx(math.pi**2 / (2 * RC**2), rel=1e-6)
    assert u[3] == 0 and d1[3] == 0 and d2[3] == 0


def test_bessel_basis_formula_and_orthonormality():
    basis = BesselBasis(6, RC).double()
    r = np.array([0.5, 1.3, 2.9, 4.99])
    values = basis(torch.from_numpy(r)).numpy()
    n = np.arange(1, 7)
    expected = math.sqrt(2 / RC) * np.sin(np.outer(r, n) * math.pi / RC) / r[:, None]
    np.testing.assert_allclose(values, expected, rtol=1e-13)
    assert np.abs(basis(torch.tensor([RC], dtype=torch.float64)).numpy()).max() < 1e-14
    # the functions are orthonormal on the ball: ∫_0^rc e_n e_m r² dr = δ_nm
    grid = np.linspace(1e-6, RC, 20001)
    e = basis(torch.from_numpy(grid)).numpy()
    gram = np.trapezoid(e[:, :, None] * e[:, None, :] * grid[:, None, None] ** 2, grid, axis=0)
    np.testing.assert_allclose(gram, np.eye(6), atol=1e-6)


def test_gaussian_basis():
    basis = GaussianBasis(11, RC).double()
    centres = torch.linspace(0, RC, 11, dtype=torch.float64)
    values = basis(centres)
    torch.testing.assert_close(torch.diagonal(values), torch.ones(11, dtype=torch.float64))
    width = RC / 10
    assert float(values[0, 1]) == pytest.approx(math.exp(-0.5), rel=1e-14)   # one spacing = one width
    narrow = GaussianBasis(11, RC, width=width / 2).double()
    assert float(narrow(centres)[0, 1]) == pytest.approx(math.exp(-2.0), rel=1e-14)


def test_factories_and_bad_arguments():
    assert isinstance(radial_basis("bessel", 4, RC), BesselBasis)
    assert isinstance(radial_basis("gaussian", 4, RC), GaussianBasis)
    assert isinstance(envelope("polynomial", RC, 6), PolynomialEnvelope)
    assert isinstance(envelope("cosine", RC), CosineCutoff)
    with pytest.raises(ValueError, match="unknown radial basis 'x'"):
        radial_basis("x", 4, RC)
    with pytest.raises(ValueError, match="unknown envelope 'x'"):
        envelope("x", RC)
    with pytest.raises(ValueError, match="cutoff must be positive"):
        BesselBasis(4, 0.0)
    with pytest.raises(ValueError, match="exponent must be >= 2"):
        PolynomialEnvelope(RC, 1)
    with pytest.raises(ValueError, match="stop"):
        GaussianBasis(4, 0.0, start=1.0)
