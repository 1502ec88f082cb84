"""Gather–multiply–scatter over atom pairs as two fused operations that differentiate into each other.

PaiNN's messages (:mod:`matforge.models.painn`) are sums over pairs ``p = (j_p → i_p)`` of a per-pair
tensor times a row of the sending atom, channel by channel. Two operations cover them and all their
derivatives. With ``x`` per pair (P, F) or (P, 3, F), ``b`` and ``g`` per atom (N, F) or (N, 3, F),
index vectors ``o`` (the row each pair adds into) and ``k`` (the row each pair reads), and ``⊙`` the
channel-wise product broadcast over the Cartesian axis when one side has none::

    scatter:  S(x, b; o, k)_n = reduce( Σ_{p: o_p = n} x_p ⊙ b_{k_p} )          (rows, F) or (rows, 3, F)
    product:  Q(g, b; o, k)_p = reduce( g_{o_p} ⊙ b_{k_p} )                     (P, F) or (P, 3, F)

where ``reduce`` sums over the Cartesian axis when the product has one and the result is asked to be
(·, F) (a dot product of two vectors, or of a vector with a broadcast scalar). Both are bilinear, and
the derivative of each is the other (``G`` the upstream gradient of the result, ``H`` that of Q)::

    ∂S/∂x = Q(G, b; o, k)          ∂S/∂b = S(x, G; k, o)
    ∂Q/∂g = S(H, b; o, k)          ∂Q/∂b = S(H, g; k, o)

each reduced to the shape of the input it is the gradient of (a broadcast in the forward pass is a
sum over the Cartesian axis in the backward pass, and vice versa). Since the backward passes are built
from the same two operations, the derivatives of every order exist: force training (a gradient taken
with ``create_graph=True`` and differentiated again) runs S and Q only, never autograd's graph of a
gather, a multiply and an ``index_add``.

Why: autograd's version materialises the gathered rows (P, 3, F), the product, and in the backward
pass the gathered gradient and two more products, each a full pass over memory; the double backward
repeats that for every term. Here each S or Q is one loop (``torch.compile``: one C++ loop on a CPU,
one Triton kernel on a GPU; :mod:`matforge.models.kernel_mode`) that reads the per-atom rows through
the indices and writes the per-pair terms once, which S then sums into rows with PyTorch's
``index_add_`` (deterministic on a CPU, unlike a scatter with atomic adds inside the loop): fewer
memory passes per pair on any device, the same FLOPs. Eager mode computes the same with separate
PyTorch operations.

The tests compare S and Q with autograd on the plain expressions in float64 (``gradcheck`` and
``gradgradcheck``) for every combination of shapes PaiNN uses, eager and compiled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from matforge.models.kernel_mode import kernel_table


# --- the kernels, one per combination of shapes: torch.compile caches per function, so each case ------
# --- compiles once (per dtype) instead of counting against one function's recompile limit ----------------
# Names: s = (., F), v = (., 3, F); scatter_<x><b>_<result> (the per-pair terms of S, summed into rows by
# sum_into_rows), product_<g><b>_<result>.

def _scatter_ss_s(x: Tensor, b: Tensor, read_index: Tensor) -> Tensor:
    return x * b.index_select(0, read_index)


def _scatter_vs_v(x: Tensor, b: Tensor, read_index: Tensor) -> Tensor:
    return x * b.index_select(0, read_index).unsqueeze(1)


def _scatter_sv_v(x: Tensor, b: Tensor, read_index: Tensor) -> Tensor:
    return x.unsqueeze(1) * b.index_select(0, read_index)


def _scatter_vv_s(x: Tensor, b: Tensor, read_index: Tensor) -> Tensor:
    return (x * b.index_select(0, read_index)).sum(dim=1)


def sum_into_rows(terms: Tensor, index: Tensor, rows: int) -> Tensor:
    """``out[n] = Σ_{p: index[p] = n} terms[p]``: (rows, ...). PyTorch's ``index_add_``, outside the
    compiled kernels: deterministic on a CPU (a compiled scatter adds atomically, in a varying order)."""
    return terms.new_zeros((rows,) + terms.shape[1:]).index_add_(0, index, terms)


def _product_ss_s(g: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor) -> Tensor:
    return g.index_select(0, out_index) * b.index_select(0, read_index)


def _product_vs_v(g: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor) -> Tensor:
    return g.index_select(0, out_index) * b.index_select(0, read_index).unsqueeze(1)


def _product_sv_v(g: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor) -> Tensor:
    return g.index_select(0, out_index).unsqueeze(1) * b.index_select(0, read_index)


def _product_vv_s(g: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor) -> Tensor:
    return (g.index_select(0, out_index) * b.index_select(0, read_index)).sum(dim=1)


EAGER_KERNELS = {
    "scatter_ss_s": _scatter_ss_s, "scatter_vs_v": _scatter_vs_v, "scatter_sv_v": _scatter_sv_v,
    "scatter_vv_s": _scatter_vv_s, "product_ss_s": _product_ss_s, "product_vs_v": _product_vs_v,
    "product_sv_v": _product_sv_v, "product_vv_s": _product_vv_s,
}
_KERNELS = kernel_table(EAGER_KERNELS)


def _case(left: Tensor, right: Tensor, vector: bool) -> str:
    """The kernel suffix for operands of these ranks and this result (module docstring, ``reduce``)."""
    name = ("v" if left.dim() == 3 else "s") + ("v" if right.dim() == 3 else "s") + ("_v" if vector else "_s")
    if name not in ("ss_s", "vs_v", "sv_v", "vv_s"):
        raise ValueError(f"no pair kernel for operands of rank {left.dim()} and {right.dim()} with a "
                         f"{'(., 3, F)' if vector else '(., F)'} result")
    return name


class _PairScatter(torch.autograd.Function):
    """S(x, b; o, k) (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor, rows: int, vector: bool) -> Tensor:
        ctx.save_for_backward(x, b, out_index, read_index)
        return sum_into_rows(_KERNELS["scatter_" + _case(x, b, vector)](x, b, read_index), out_index, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, b, out_index, read_index = ctx.saved_tensors
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = pair_product(grad, b, out_index, read_index, vector=x.dim() == 3)
        if ctx.needs_input_grad[1]:
            grad_b = pair_scatter(x, grad, read_index, out_index, rows=b.shape[0], vector=b.dim() == 3)
        return grad_x, grad_b, None, None, None, None


class _PairProduct(torch.autograd.Function):
    """Q(g, b; o, k) (module docstring)."""

    @staticmethod
    def forward(ctx, g: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor, vector: bool) -> Tensor:
        ctx.save_for_backward(g, b, out_index, read_index)
        return _KERNELS["product_" + _case(g, b, vector)](g, b, out_index, read_index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        g, b, out_index, read_index = ctx.saved_tensors
        grad_g = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_g = pair_scatter(grad, b, out_index, read_index, rows=g.shape[0], vector=g.dim() == 3)
        if ctx.needs_input_grad[1]:
            grad_b = pair_scatter(grad, g, read_index, out_index, rows=b.shape[0], vector=b.dim() == 3)
        return grad_g, grad_b, None, None, None


def pair_scatter(x: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor, rows: int, vector: bool) -> Tensor:
    """``Σ_{p: out_index[p] = n} x_p ⊙ b[read_index[p]]`` for each of ``rows`` rows (module docstring, S).

    x: (P, F) or (P, 3, F); b: (N, F) or (N, 3, F); out_index, read_index: (P,) int64. Returns
    (rows, 3, F) when ``vector``, else (rows, F) (summed over the Cartesian axis if the product has one).
    """
    return _PairScatter.apply(x, b, out_index, read_index, int(rows), bool(vector))


def pair_product(g: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor, vector: bool) -> Tensor:
    """``g[out_index[p]] ⊙ b[read_index[p]]`` for each pair (module docstring, Q).

    g, b: (N, F) or (N, 3, F); out_index, read_index: (P,) int64. Returns (P, 3, F) when ``vector``,
    else (P, F) (summed over the Cartesian axis if the product has one).
    """
    return _PairProduct.apply(g, b, out_index, read_index, bool(vector))


def pair_scatter_reference(x: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor, rows: int,
                           vector: bool) -> Tensor:
    """S written with plain PyTorch operations, differentiated by autograd (for the tests)."""
    return sum_into_rows(EAGER_KERNELS["scatter_" + _case(x, b, vector)](x, b, read_index), out_index, rows)


def pair_product_reference(g: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor, vector: bool) -> Tensor:
    """Q written with plain PyTorch operations, differentiated by autograd (for the tests)."""
    return EAGER_KERNELS["product_" + _case(g, b, vector)](g, b, out_index, read_index)
