"""Smooth radial bases and cutoff envelopes for edge lengths ``r`` (Å).

A backbone whose energy is used for forces and stress must be a smooth function of the positions,
also when a neighbour crosses the cutoff ``r_c``. Every edge feature is therefore multiplied by an
envelope ``u(r)`` whose value *and* first derivative vanish at ``r_c`` (and which is exactly zero
beyond it), so adding or removing a pair at the cutoff changes neither the energy nor the forces.

Bases (``(E,)`` lengths in Å -> ``(E, K)`` features):

* Bessel (Klicpera et al., DimeNet, 2020), the radial eigenfunctions of a spherical well::

      e_n(r) = sqrt(2 / r_c) · sin(n π r / r_c) / r,      n = 1 .. K      (units 1/Å^½)

  ``e_n(r_c) = 0`` but ``e_n'(r_c) ≠ 0``, hence the envelope.

* Gaussian (SchNet, CGCNN), centres ``μ_k`` evenly spaced on ``[start, r_c]``::

      g_k(r) = exp(-(r - μ_k)² / (2 w²))          (dimensionless; w = the centre spacing by default)

Envelopes (``(E,)`` -> ``(E,)``, dimensionless, 1 at r = 0, 0 for r ≥ r_c):

* Polynomial of order p (the smooth cutoff of DimeNet written without its 1/d term, as in NequIP),
  with ``d = r / r_c``::

      u(d) = 1 - (p+1)(p+2)/2 · d^p + p(p+2) · d^(p+1) - p(p+1)/2 · d^(p+2)     (d < 1)

  ``u(1) = u'(1) = u''(1) = 0``: twice continuously differentiable at the cutoff. Default p = 5.

* Cosine (Behler)::

      u(r) = ½ (cos(π r / r_c) + 1)                                          (r < r_c)

  ``u(r_c) = u'(r_c) = 0`` (continuous first derivative; the second jumps by π²/(2 r_c²)).

Both envelopes are evaluated with ``torch.where`` on a clamped argument so that the gradient of the
zero branch is exactly zero (no NaN from the inactive branch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BesselBasis(nn.Module):
    """``e_n(r) = sqrt(2/r_c) sin(n π r / r_c) / r`` for n = 1..num_basis; (E,) Å -> (E, K).

    ``trainable=True`` makes the frequencies learnable (as in DimeNet), as multiples ``n`` of π/r_c.
    Edge lengths must be positive (a periodic graph never has r = 0 edges).
    """

    def __init__(self, num_basis: int, cutoff: float, trainable: bool = False) -> None:
        super().__init__()
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.num_basis = int(num_basis)
        self.cutoff = float(cutoff)
        self.prefactor = math.sqrt(2.0 / cutoff)
        # n = 1..K; the factor π/r_c is applied as a Python float so float64 models keep full precision
        n = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.n = nn.Parameter(n)
        else:
            self.register_buffer("n", n, persistent=False)

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.n * (r * (math.pi / self.cutoff))) / r


class GaussianBasis(nn.Module):
    """``g_k(r) = exp(-(r - μ_k)² / (2 w²))``, μ_k evenly spaced on [start, stop]; (E,) -> (E, K).

    ``width`` defaults to the spacing of the centres.
    """

    def __init__(self, num_basis: int, stop: float, start: float = 0.0, width: float | None = None) -> None:
        super().__init__()
        if num_basis < 2:
            raise ValueError(f"num_basis must be >= 2, got {num_basis}")
        if stop <= start:
            raise ValueError(f"stop ({stop}) must exceed start ({start})")
        self.num_basis = int(num_basis)
        self.start = float(start)
        self.spacing = (stop - start) / (num_basis - 1)
        # μ_k = start + k · spacing, formed in the input's dtype (exact in float64 models)
        self.register_buffer("k", torch.arange(num_basis, dtype=torch.get_default_dtype()), persistent=False)
        self.width = float(width if width is not None else self.spacing)
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")

    def forward(self, r: Tensor) -> Tensor:
        centres = self.start + self.k * self.spacing
        return torch.exp(-((r.unsqueeze(-1) - centres) ** 2) / (2.0 * self.width**2))


class PolynomialEnvelope(nn.Module):
    """``u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2)``, d = r/r_c; 0 beyond."""

    def __init__(self, cutoff: float, exponent: int = 5) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if exponent < 2:
            raise ValueError(f"exponent must be >= 2, got {exponent}")
        self.cutoff = float(cutoff)
        p = float(exponent)
        self.exponent = int(exponent)
        self.a = -(p + 1.0) * (p + 2.0) / 2.0
        self.b = p * (p + 2.0)
        self.c = -p * (p + 1.0) / 2.0

    def forward(self, r: Tensor) -> Tensor:
        d = r / self.cutoff
        inside = d < 1.0
        d = torch.where(inside, d, torch.zeros_like(d))
        dp = d**self.exponent
        u = 1.0 + dp * (self.a + d * (self.b + d * self.c))
        return torch.where(inside, u, torch.zeros_like(u))


class CosineCutoff(nn.Module):
    """``u(r) = ½ (cos(π r / r_c) + 1)`` for r < r_c, 0 beyond."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        inside = r < self.cutoff
        rr = torch.where(inside, r, torch.zeros_like(r))
        u = 0.5 * (torch.cos(math.pi * rr / self.cutoff) + 1.0)
        return torch.where(inside, u, torch.zeros_like(u))


def radial_basis(kind: str, num_basis: int, cutoff: float) -> nn.Module:
    """Build a basis by name: ``"bessel"`` or ``"gaussian"`` (centres on [0, cutoff])."""
    if kind == "bessel":
        return BesselBasis(num_basis, cutoff)
    if kind == "gaussian":
        return GaussianBasis(num_basis, cutoff)
    raise ValueError(f"unknown radial basis {kind!r}; choose 'bessel' or 'gaussian'")


def envelope(kind: str, cutoff: float, exponent: int = 5) -> nn.Module:
    """Build an envelope by name: ``"polynomial"`` (order ``exponent``) or ``"cosine"``."""
    if kind == "polynomial":
        return PolynomialEnvelope(cutoff, exponent)
    if kind == "cosine":
        return CosineCutoff(cutoff)
    raise ValueError(f"unknown envelope {kind!r}; choose 'polynomial' or 'cosine'")
