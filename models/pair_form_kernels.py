"""The per-block kernels of PaiNN's pair forms (:mod:`matforge.models.pair_forms`, whose docstring has the
maths): pure functions of one block of pairs, registered with :func:`~matforge.models.kernel_mode.kernel_table`
so that they run eagerly or fused by ``torch.compile``. Letters: ``r`` = R, ``w`` = W, ``d``, ``b``, ``g`` = G
of the form; ``o``, ``k`` the block's target and source indices; ``h*`` an upstream gradient in that slot.
"""

from __future__ import annotations

import torch
from torch import Tensor

from matforge.models.kernel_mode import kernel_table


# --- the per-block kernels, one function per (slot, case): torch.compile caches per function ------------
# G_<case>(R, W, [d,] b, k): the block's terms of ∂L/∂G (summed by o); b_<case>(R, W, [d,] G, o): of ∂L/∂b
# (summed by k); X_<case>([d,] b, G, o, k): ⟨d b_k G_o⟩_X, contracted with W or R outside; d_edge_direction.

def _filter(radial: Tensor, weight: Tensor) -> Tensor:
    return torch.matmul(radial, weight.t())


def _G_scalar(r: Tensor, w: Tensor, b: Tensor, k: Tensor) -> Tensor:
    return _filter(r, w) * b.index_select(0, k)


def _b_scalar(r: Tensor, w: Tensor, g: Tensor, o: Tensor) -> Tensor:
    return _filter(r, w) * g.index_select(0, o)


def _X_scalar(b: Tensor, g: Tensor, o: Tensor, k: Tensor) -> Tensor:
    return b.index_select(0, k) * g.index_select(0, o)


def _G_rows(r: Tensor, w: Tensor, b: Tensor, k: Tensor) -> Tensor:
    return _filter(r, w).unsqueeze(1) * b.index_select(0, k)


def _b_rows(r: Tensor, w: Tensor, g: Tensor, o: Tensor) -> Tensor:
    return _filter(r, w).unsqueeze(1) * g.index_select(0, o)


def _X_rows(b: Tensor, g: Tensor, o: Tensor, k: Tensor) -> Tensor:
    return (b.index_select(0, k) * g.index_select(0, o)).sum(dim=1)


def _G_pair_direction(r: Tensor, w: Tensor, b: Tensor, k: Tensor) -> Tensor:
    return _filter(r, w) * b.index_select(0, k).unsqueeze(1)


def _b_pair_direction(r: Tensor, w: Tensor, g: Tensor, o: Tensor) -> Tensor:
    return (_filter(r, w) * g.index_select(0, o)).sum(dim=1)


def _X_pair_direction(b: Tensor, g: Tensor, o: Tensor, k: Tensor) -> Tensor:
    return b.index_select(0, k).unsqueeze(1) * g.index_select(0, o)


def _G_edge_direction(r: Tensor, w: Tensor, d: Tensor, b: Tensor, k: Tensor) -> Tensor:
    return d.unsqueeze(-1) * (_filter(r, w) * b.index_select(0, k)).unsqueeze(1)


def _b_edge_direction(r: Tensor, w: Tensor, d: Tensor, g: Tensor, o: Tensor) -> Tensor:
    return _filter(r, w) * (d.unsqueeze(-1) * g.index_select(0, o)).sum(dim=1)


def _X_edge_direction(d: Tensor, b: Tensor, g: Tensor, o: Tensor, k: Tensor) -> Tensor:
    return b.index_select(0, k) * (d.unsqueeze(-1) * g.index_select(0, o)).sum(dim=1)


def _d_edge_direction(r: Tensor, w: Tensor, b: Tensor, g: Tensor, o: Tensor, k: Tensor) -> Tensor:
    return ((_filter(r, w) * b.index_select(0, k)).unsqueeze(1) * g.index_select(0, o)).sum(dim=-1)


SLOT_KERNELS = {fn.__name__[1:]: fn for fn in (
    _G_scalar, _b_scalar, _X_scalar, _G_rows, _b_rows, _X_rows, _G_pair_direction, _b_pair_direction,
    _X_pair_direction, _G_edge_direction, _b_edge_direction, _X_edge_direction, _d_edge_direction)}
slot_kernels = kernel_table(SLOT_KERNELS)


# --- several slot gradients of one form in one pass (a backward pass without create_graph) ---------------
# _many_<case>(R, W, [d,] b, G, o, k, want_G, want_b, want_X[, want_d]): the block's terms of ∂L/∂G and
# ∂L/∂b, ⟨d b_k G_o⟩_X and ∂L/∂d that are asked for (None for the others), sharing X and the gathered rows.

def _many_scalar(r: Tensor, w: Tensor, b: Tensor, g: Tensor, o: Tensor, k: Tensor, want_g: bool, want_b: bool,
                 want_x: bool):
    x, bk, go = _filter(r, w), b.index_select(0, k), g.index_select(0, o)
    return (x * bk if want_g else None, x * go if want_b else None, bk * go if want_x else None)


def _many_rows(r: Tensor, w: Tensor, b: Tensor, g: Tensor, o: Tensor, k: Tensor, want_g: bool, want_b: bool,
               want_x: bool):
    x, bk, go = _filter(r, w).unsqueeze(1), b.index_select(0, k), g.index_select(0, o)
    return (x * bk if want_g else None, x * go if want_b else None, (bk * go).sum(dim=1) if want_x else None)


def _many_pair_direction(r: Tensor, w: Tensor, b: Tensor, g: Tensor, o: Tensor, k: Tensor, want_g: bool,
                         want_b: bool, want_x: bool):
    x, bk, go = _filter(r, w), b.index_select(0, k).unsqueeze(1), g.index_select(0, o)
    return (x * bk if want_g else None, (x * go).sum(dim=1) if want_b else None, bk * go if want_x else None)


def _many_edge_direction(r: Tensor, w: Tensor, d: Tensor, b: Tensor, g: Tensor, o: Tensor, k: Tensor,
                         want_g: bool, want_b: bool, want_x: bool, want_d: bool):
    x, bk, go = _filter(r, w), b.index_select(0, k), g.index_select(0, o)
    xb = x * bk
    along = (d.unsqueeze(-1) * go).sum(dim=1) if (want_b or want_x) else None      # Σ_c d_c G_o[c]
    return (d.unsqueeze(-1) * xb.unsqueeze(1) if want_g else None, x * along if want_b else None,
            bk * along if want_x else None, (xb.unsqueeze(1) * go).sum(dim=-1) if want_d else None)


MANY_KERNELS = {fn.__name__[1:]: fn for fn in (_many_scalar, _many_rows, _many_pair_direction, _many_edge_direction)}
many_kernels = kernel_table(MANY_KERNELS)


# --- a backward pass without create_graph: Σ over the node's outputs s of ∂L/∂t with H_s in slot s ----------
# _sum_<case>(R, W, d, b, G, H_R, H_d, H_b, H_G, o, k, want): every term has exactly one slot replaced by its
# upstream gradient; one pass forms X = R Wᵀ and H_R Wᵀ once and gathers each atom row once. Returns the
# block's terms of ∂L/∂G and ∂L/∂b, ⟨·⟩_X for R and W (terms with base R), ⟨d b G⟩_X (the W term of H_R)
# and ∂L/∂d, each None unless asked for in ``want`` (target, source, x, hx, direction).

def _lifted(t: Tensor | None, rank: int) -> Tensor | None:
    """(B, F) -> (B, 1, F), so that every factor broadcasts to (B, 3, F)."""
    return None if t is None else (t.unsqueeze(1) if rank == 2 else t)


def _fitted(t: Tensor | None, rank: int) -> Tensor | None:
    """A (B, 3 or 1, F) product reduced to a slot of this rank (summed over c for rank 2)."""
    return None if t is None else (t.sum(dim=1) if rank == 2 else t)


def _substituted_terms(r, w, d, b, g, hr, hd, hb, hg, o, k, want, ranks, has_d):
    x_rank, b_rank, g_rank = ranks
    gather = lambda t, index: None if t is None else t.index_select(0, index)   # noqa: E731
    column = lambda t: None if t is None else t.unsqueeze(-1)                   # noqa: E731 - d (B, 3) -> (B, 3, 1)
    factors = {"radial": (_lifted(None if r is None else _filter(r, w), x_rank),
                          _lifted(None if hr is None else _filter(hr, w), x_rank)),
               "source": (_lifted(gather(b, k), b_rank), _lifted(gather(hb, k), b_rank)),
               "target": (_lifted(gather(g, o), g_rank), _lifted(gather(hg, o), g_rank))}
    if has_d:
        factors["direction"] = (column(d), column(hd))

    def product(skip: str, replaced: str | None) -> Tensor:
        out = None
        for slot, (base, sub) in factors.items():
            if slot != skip:
                factor = sub if slot == replaced else base
                out = factor if out is None else out * factor
        return out

    def summed(skip: str) -> Tensor | None:
        total = None
        for slot, (_, sub) in factors.items():
            if slot != skip and sub is not None:
                term = product(skip, slot)
                total = term if total is None else total + term
        return total

    want_g, want_b, want_x, want_hx, want_d = want
    return (_fitted(summed("target"), g_rank) if want_g else None,
            _fitted(summed("source"), b_rank) if want_b else None,
            _fitted(summed("radial"), x_rank) if want_x else None,
            _fitted(product("radial", None), x_rank) if want_hx else None,
            _reduced_over_channels(summed("direction")) if want_d else None)


def _reduced_over_channels(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.sum(dim=-1)


def _sum_scalar(r, w, d, b, g, hr, hd, hb, hg, o, k, want):
    return _substituted_terms(r, w, d, b, g, hr, hd, hb, hg, o, k, want, (2, 2, 2), False)


def _sum_rows(r, w, d, b, g, hr, hd, hb, hg, o, k, want):
    return _substituted_terms(r, w, d, b, g, hr, hd, hb, hg, o, k, want, (2, 3, 3), False)


def _sum_pair_direction(r, w, d, b, g, hr, hd, hb, hg, o, k, want):
    return _substituted_terms(r, w, d, b, g, hr, hd, hb, hg, o, k, want, (3, 2, 3), False)


def _sum_edge_direction(r, w, d, b, g, hr, hd, hb, hg, o, k, want):
    return _substituted_terms(r, w, d, b, g, hr, hd, hb, hg, o, k, want, (2, 2, 3), True)


SUM_KERNELS = {fn.__name__[1:]: fn for fn in (_sum_scalar, _sum_rows, _sum_pair_direction, _sum_edge_direction)}
sum_kernels = kernel_table(SUM_KERNELS)
