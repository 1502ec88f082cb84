"""The gated, enveloped edge message of the smooth CGCNN, with hand-written first and second derivatives.

For an edge ``j → i`` the pre-activation is assembled from per-atom projections and a per-edge term,
``z = a_i + b_j + r_ij = [g, c]`` (two halves of width F; ``a = h W_i``, ``b = h W_j`` (N, 2F),
``r = e(|r_ij|) W_e + bias`` (E, 2F)), and with the envelope ``u`` (E, 1)::

    m = s ⊙ p · u,      s = σ(g),  p = softplus(c),  q = σ(c) = p'(c)

Training on forces differentiates the energy once for the forces and the loss once more, so every
per-edge operation runs forward, backward and backward-of-backward. Autograd's own graph of these
few element-wise functions keeps and re-reads many (E, 2F) tensors (the two gathers, the sums, the
halves, their concatenation). Here each of the three stages is one element-wise kernel that reads
the per-atom rows through the edge indices itself (no gathered copies), and the gradients of ``a``
and ``b`` are scatter-adds of the per-edge gradient.

First derivative (vector-Jacobian product with the upstream gradient ``M`` = ∂L/∂m, (E, F))::

    ∂L/∂z = [M u p a_s,  M u s q],   a_s = s (1 − s)
    ∂L/∂u = Σ_F M s p
    ∂L/∂a = Σ_{edges j→i} ∂L/∂z (scatter by i),   ∂L/∂b = the same by j,   ∂L/∂r = ∂L/∂z

Second derivative: the first is a function ``B(M, z, u) → (G_z, G_u)``; given the upstream gradients
of its outputs, ``A_z = [A_g, A_c] = α_i + β_j + ρ_ij`` (from the gradients α, β, ρ of ∂L/∂a, ∂L/∂b,
∂L/∂r) and ``A_u`` (E, 1), with s' = a_s, a_s' = a_s (1 − 2s), p' = q, q' = q (1 − q)::

    ∂/∂M = u (A_g p a_s + A_c s q) + A_u s p
    ∂/∂g = M a_s [u (A_g p (1 − 2s) + A_c q) + A_u p]
    ∂/∂c = M q [u (A_g a_s + A_c s (1 − q)) + A_u s]
    ∂/∂u = Σ_F M (A_g p a_s + A_c s q)

and ∂/∂a, ∂/∂b, ∂/∂r from ∂/∂z = [∂/∂g, ∂/∂c] as above. Third derivatives are not provided (training
on forces needs two); asking for one raises. The tests compare all of this with autograd on the plain
expression (:func:`gated_edge_message_reference`; ``gradcheck`` and ``gradgradcheck`` in float64).

Kernels: eager (one PyTorch operation per term) or compiled with ``torch.compile`` (one fused loop
per stage on a CPU, one Triton kernel on a GPU); see :mod:`matforge.models.kernel_mode`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from matforge.models.kernel_mode import (KERNEL_MODE_ENV, KERNEL_MODES, current_kernel_mode,  # noqa: F401
                                         kernel_table, set_kernel_mode)


def gated_edge_message_reference(a: Tensor, b: Tensor, r: Tensor, u: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """The plain expression, differentiated by autograd: ``(E, F)`` messages (module docstring)."""
    g, c = (a.index_select(0, i) + b.index_select(0, j) + r).chunk(2, dim=-1)
    return torch.sigmoid(g) * F.softplus(c) * u


# --- the three element-wise stages (pure functions: eager, or compiled by set_kernel_mode) ------------

def _forward_values(a: Tensor, b: Tensor, r: Tensor, u: Tensor, i: Tensor, j: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(m, s, p, q)`` of the module docstring, each (E, F)."""
    g, c = (a[i] + b[j] + r).chunk(2, dim=-1)
    s = torch.sigmoid(g)
    p = F.softplus(c)
    q = torch.sigmoid(c)
    return s * p * u, s, p, q


def _first_derivative(grad_m: Tensor, u: Tensor, s: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """``(∂L/∂z (E, 2F), ∂L/∂u (E, 1))`` from ``M`` = ∂L/∂m and the saved ``s, p, q``."""
    mu = grad_m * u
    grad_z = torch.cat([mu * p * s * (1.0 - s), mu * s * q], dim=-1)
    grad_u = (grad_m * s * p).sum(dim=-1, keepdim=True)
    return grad_z, grad_u


def _second_derivative(grad_m: Tensor, u: Tensor, s: Tensor, p: Tensor, q: Tensor, up_a: Tensor, up_b: Tensor,
                       up_r: Tensor, up_u: Tensor, i: Tensor, j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(∂/∂M, ∂/∂z, ∂/∂u)`` of the first derivative, given the upstream gradients of its outputs."""
    width = s.shape[-1]
    up_z = up_a[i] + up_b[j] + up_r
    a_g, a_c = up_z[..., :width], up_z[..., width:]
    a_s = s * (1.0 - s)
    pa_g = p * a_g                       # A_g p
    inner = pa_g * a_s + s * q * a_c     # A_g p a_s + A_c s q
    d_m = u * inner + up_u * (s * p)
    d_g = grad_m * a_s * (u * (pa_g * (1.0 - 2.0 * s) + a_c * q) + up_u * p)
    d_c = grad_m * q * (u * (a_g * a_s + a_c * s * (1.0 - q)) + up_u * s)
    d_u = (grad_m * inner).sum(dim=-1, keepdim=True)
    return d_m, torch.cat([d_g, d_c], dim=-1), d_u


EAGER_KERNELS = {"forward": _forward_values, "first": _first_derivative, "second": _second_derivative}
_KERNELS = kernel_table(EAGER_KERNELS)


def _scatter(grad_z: Tensor, index: Tensor, rows: int) -> Tensor:
    """Σ over edges of ``grad_z`` into ``rows`` atoms by ``index``: (rows, 2F)."""
    return grad_z.new_zeros((rows, grad_z.shape[-1])).index_add_(0, index, grad_z)


class _GatedEdgeMessageGrad(torch.autograd.Function):
    """The first derivative as a node of the graph, ``(M, a, b, r, u) → (∂L/∂a, ∂L/∂b, ∂L/∂r, ∂L/∂u)``,
    with its own derivative (the message's second). ``s, p, q`` and the indices ride along as constants."""

    @staticmethod
    def forward(ctx, grad_m: Tensor, a: Tensor, b: Tensor, r: Tensor, u: Tensor, s: Tensor, p: Tensor, q: Tensor,
                i: Tensor, j: Tensor):
        ctx.save_for_backward(grad_m, u, s, p, q, i, j)
        ctx.rows = a.shape[0]
        grad_z, grad_u = _KERNELS["first"](grad_m, u, s, p, q)
        return _scatter(grad_z, i, ctx.rows), _scatter(grad_z, j, ctx.rows), grad_z, grad_u

    @staticmethod
    @once_differentiable
    def backward(ctx, up_a: Tensor, up_b: Tensor, up_r: Tensor, up_u: Tensor):
        grad_m, u, s, p, q, i, j = ctx.saved_tensors
        d_m, d_z, d_u = _KERNELS["second"](grad_m, u, s, p, q, up_a, up_b, up_r, up_u, i, j)
        return d_m, _scatter(d_z, i, ctx.rows), _scatter(d_z, j, ctx.rows), d_z, d_u, None, None, None, None, None


class _GatedEdgeMessage(torch.autograd.Function):
    """``(a, b (N, 2F), r (E, 2F), u (E, 1), i, j (E,)) → m (E, F)`` (module docstring)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, r: Tensor, u: Tensor, i: Tensor, j: Tensor) -> Tensor:
        m, s, p, q = _KERNELS["forward"](a, b, r, u, i, j)
        ctx.save_for_backward(a, b, r, u, s, p, q, i, j)
        return m

    @staticmethod
    def backward(ctx, grad_m: Tensor):
        a, b, r, u, s, p, q, i, j = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the forces' graph, differentiated once more in training
            return (*_GatedEdgeMessageGrad.apply(grad_m, a, b, r, u, s, p, q, i, j), None, None)
        grad_z, grad_u = _KERNELS["first"](grad_m, u, s, p, q)
        rows = a.shape[0]
        return _scatter(grad_z, i, rows), _scatter(grad_z, j, rows), grad_z, grad_u, None, None


def gated_edge_message(a: Tensor, b: Tensor, r: Tensor, u: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """``σ(g) ⊙ softplus(c) · u`` with ``[g, c] = a[i] + b[j] + r``: (E, F) messages.

    a, b: (N, 2F) per-atom projections of the receiving (i) and sending (j) atom; r: (E, 2F) per-edge
    term; u: (E, 1) envelope; i, j: (E,) int64 edge indices."""
    return _GatedEdgeMessage.apply(a, b, r, u, i, j)
