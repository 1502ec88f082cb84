"""PaiNN's direction message summed per edge, as one fused operation closed under differentiation.

The direction term of PaiNN's message block (:mod:`matforge.models.painn`) sends, along every edge
``e = (k_e → o_e)``, the channel weights ``x_e ⊙ b_{k_e}`` (a radial filter ``x`` (E, F) times a row
``b`` (N, F) of the sending atom) in the direction ``d_e = r̂_e`` (E, 3)::

    Y_n[c, f] = Σ_{e: o_e = n} d_e[c] · x_e[f] · b_{k_e}[f]                         (rows, 3, F)

Y is the gradient with respect to ``G`` of the four-linear form::

    L(x, d, b, G) = Σ_e Σ_{c, f} x_e[f] · d_e[c] · b_{k_e}[f] · G_{o_e}[c, f]

and so are the derivatives of Y: the gradient of ``∂L/∂s`` (slot ``s``) with respect to the input in
slot ``t``, contracted with an upstream gradient ``H`` shaped like slot ``s``, is ``∂L/∂t`` with ``H``
put in slot ``s``. The four slot gradients::

    ∂L/∂G = Y                                                     (rows, 3, F)  scatter by o
    ∂L/∂x_e[f] = b_{k_e}[f] · Σ_c d_e[c] G_{o_e}[c, f]             (E, F)
    ∂L/∂d_e[c] = Σ_f x_e[f] b_{k_e}[f] G_{o_e}[c, f]               (E, 3)
    ∂L/∂b_n[f] = Σ_{e: k_e = n} x_e[f] Σ_c d_e[c] G_{o_e}[c, f]    (N, F)        scatter by k

are four fused kernels (:mod:`matforge.models.kernel_mode`; the two scatters write their per-edge terms,
summed into rows by PyTorch's deterministic ``index_add_``), and derivatives of every order are made
of them. Compared with forming the (E, 3, F) outer product ``d ⊗ (x ⊙ b_k)`` and letting autograd
differentiate it, nothing of size (E, 3, F) is stored for the backward passes: the saved tensors are
``x`` (E, F), ``d`` (E, 3) and ``b``; compared with summing ``r̂ ⊗ R`` per atom pair first, the radial
filter is one (E × K) · (K × F) product instead of a (3P × K) · (K × F) one, fewer FLOPs whenever a pair
has fewer than three edges on average.

Tests: ``gradcheck`` and ``gradgradcheck`` against the plain expression in float64, eager and compiled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from matforge.models.kernel_mode import kernel_table
from matforge.models.pair_products import sum_into_rows

SLOTS = ("x", "d", "b", "g")


def _grad_g(x: Tensor, d: Tensor, b: Tensor, read_index: Tensor) -> Tensor:
    weights = x * b.index_select(0, read_index)                                    # (E, F)
    return d.unsqueeze(-1) * weights.unsqueeze(1)                                  # (E, 3, F) terms, summed by o


def _grad_x(d: Tensor, b: Tensor, g: Tensor, out_index: Tensor, read_index: Tensor) -> Tensor:
    along = (d.unsqueeze(-1) * g.index_select(0, out_index)).sum(dim=1)            # (E, F)
    return along * b.index_select(0, read_index)


def _grad_d(x: Tensor, b: Tensor, g: Tensor, out_index: Tensor, read_index: Tensor) -> Tensor:
    weights = x * b.index_select(0, read_index)                                    # (E, F)
    return (weights.unsqueeze(1) * g.index_select(0, out_index)).sum(dim=-1)       # (E, 3)


def _grad_b(x: Tensor, d: Tensor, g: Tensor, out_index: Tensor) -> Tensor:
    return x * (d.unsqueeze(-1) * g.index_select(0, out_index)).sum(dim=1)        # (E, F) terms, summed by k


EAGER_KERNELS = {"g": _grad_g, "x": _grad_x, "d": _grad_d, "b": _grad_b}
_KERNELS = kernel_table(EAGER_KERNELS)


def _slot_gradient(slot: str, inputs: dict[str, Tensor], out_index: Tensor, read_index: Tensor,
                   atoms: int, rows: int, kernels=None) -> Tensor:
    """∂L/∂``slot`` from the other three slots (module docstring)."""
    table = kernels or _KERNELS
    x, d, b, g = (inputs.get(name) for name in SLOTS)
    if slot == "g":
        return sum_into_rows(table["g"](x, d, b, read_index), out_index, rows)
    if slot == "x":
        return table["x"](d, b, g, out_index, read_index)
    if slot == "d":
        return table["d"](x, b, g, out_index, read_index)
    return sum_into_rows(table["b"](x, d, g, out_index), read_index, atoms)


class _SlotGradient(torch.autograd.Function):
    """``∂L/∂slot`` as a graph node whose derivatives are the other slots' gradients (docstring)."""

    @staticmethod
    def forward(ctx, slot: str, out_index: Tensor, read_index: Tensor, atoms: int, rows: int,
                x: Tensor | None, d: Tensor | None, b: Tensor | None, g: Tensor | None) -> Tensor:
        inputs = {name: t for name, t in zip(SLOTS, (x, d, b, g)) if t is not None}
        ctx.slot, ctx.atoms, ctx.rows = slot, atoms, rows
        ctx.names = tuple(inputs)
        ctx.save_for_backward(out_index, read_index, *inputs.values())
        return _slot_gradient(slot, inputs, out_index, read_index, atoms, rows)

    @staticmethod
    def backward(ctx, upstream: Tensor):
        out_index, read_index, *saved = ctx.saved_tensors
        inputs = dict(zip(ctx.names, saved))
        grads: dict[str, Tensor] = {}
        for position, name in enumerate(SLOTS):
            if name in inputs and ctx.needs_input_grad[5 + position]:
                others = {n: t for n, t in inputs.items() if n != name}
                others[ctx.slot] = upstream
                grads[name] = slot_gradient(name, others, out_index, read_index, ctx.atoms, ctx.rows)
        return (None, None, None, None, None, *(grads.get(name) for name in SLOTS))


def slot_gradient(slot: str, inputs: dict[str, Tensor], out_index: Tensor, read_index: Tensor,
                  atoms: int, rows: int) -> Tensor:
    """``∂L/∂slot`` given the other three slots in ``inputs`` (differentiable to any order)."""
    ordered = [inputs.get(name) if name != slot else None for name in SLOTS]
    return _SlotGradient.apply(slot, out_index, read_index, int(atoms), int(rows), *ordered)


def edge_direction_scatter(x: Tensor, d: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor,
                           rows: int) -> Tensor:
    """``Y_n = Σ_{e: out_index[e] = n} d_e ⊗ (x_e ⊙ b[read_index[e]])``: (rows, 3, F) (module docstring).

    x: (E, F) per-edge filter; d: (E, 3) per-edge direction; b: (N, F) per-atom rows; out_index,
    read_index: (E,) int64 (receiving and sending atom of each edge)."""
    return slot_gradient("g", {"x": x, "d": d, "b": b}, out_index, read_index, b.shape[0], rows)


def edge_direction_scatter_reference(x: Tensor, d: Tensor, b: Tensor, out_index: Tensor, read_index: Tensor,
                                     rows: int) -> Tensor:
    """The plain expression, differentiated by autograd (for the tests)."""
    return sum_into_rows(_grad_g(x, d, b, read_index), out_index, rows)
