"""PaiNN: the polarizable atom interaction neural network (Schütt, Unke & Gastegger, ICML 2021).

Every atom carries invariant scalars ``s_i`` ∈ R^F and equivariant vectors ``v_i`` ∈ R^{3×F}
(one 3-vector per channel). Edges carry ``r_ij = r_j - r_i`` (Å), its length ``r = |r_ij|`` and
direction ``r̂_ij = r_ij / r``. ``φ`` are two-layer SiLU MLPs of the scalars, ``W`` are linear maps
*across channels only* (no bias, so they commute with rotations), ⊙ multiplies channel-wise.

Initial state: ``s_i = Embed(Z_i)``, ``v_i = 0``.

Radial filter (per interaction): ``W(r) = (e(r) W_rbf + b) · u(r)`` ∈ R^{3F}, with the Bessel basis
``e_n(r) = sqrt(2/r_c) sin(nπr/r_c)/r`` and a smooth envelope ``u`` (u(r_c) = u'(r_c) = 0), see
:mod:`matforge.models.radial`.

Message block (neighbours j of i within r_c)::

    [x^s, x^vs, x^vv]_ij = φ_m(s_j) ⊙ W(r)          (three F-blocks, in this order in φ_m and W)
    s_i ← s_i + Σ_j x^s_ij
    v_i ← v_i + Σ_j ( x^vv_ij ⊙ v_j  +  x^vs_ij ⊙ r̂_ij )

Update block (atom-wise)::

    U_i = v_i W_U,   V_i = v_i W_V                                   (R^{3×F})
    ‖V_i‖ = sqrt(Σ_xyz V_i² + δ)                                     (soft norm, δ = norm_epsilon)
    [a^vv, a^sv, a^ss]_i = φ_u([s_i, ‖V_i‖])
    v_i ← v_i + a^vv_i ⊙ U_i
    s_i ← s_i + a^ss_i + a^sv_i ⊙ ⟨U_i, V_i⟩                         (⟨·,·⟩ over x, y, z)

Equivariance: under a rotation (or reflection) Q, ``r̂ → Q r̂``; every vector update is a sum of
vectors times invariant channel weights, so ``v → Q v``; the scalars only see ``‖V‖`` and
``⟨U, V⟩``, which are invariant. Hence ``s`` (and an energy built on it) is invariant and ``v``
rotates with the structure, exactly up to rounding. The energy is smooth in the positions because
every edge term carries ``u(r)`` and ``δ`` keeps the norm differentiable.

The soft norm: the plain norm ‖V‖ is not differentiable at V = 0, which is where the vectors sit
in any configuration with inversion symmetry (every atom of a perfect bcc/fcc/rock-salt crystal).
Implementations usually add a tiny δ (1e-8), which makes the energy smooth on paper but puts a
length scale of sqrt(δ) = 1e-4 into feature space: near a symmetric configuration the energy
grows like ``sqrt(c² x² + δ)`` in the displacement ``x``: on bcc Mo with a random model the
apparent spring constant F/x fell from 7.6 to 1.3 eV/Å² as x went from 1e-5 to 1e-3 Å. Such a
landscape has meaningless phonons and breaks finite-difference checks. matforge uses δ = 1 by
default (features are O(1)), so the soft norm is ≈ 1 + ‖V‖²/2 near zero and ≈ ‖V‖ far from it, and
the energy is harmonic around symmetric configurations; ``norm_epsilon`` sets δ.

Pair aggregation (same function, far less work): the filter is linear in the enveloped radial
features ``R_e = [e(r_e) u(r_e), u(r_e)]`` ∈ R^{K+1}, ``W(r_e) = R_e Wᵀ`` (the bias ``b`` is the last
column of ``W``), and ``φ_m(s_j)`` and ``v_j`` belong to the neighbour atom, whichever of its periodic
images the edge reaches. So the edges ``e ∈ p`` of one ordered atom pair ``p = (j, i)`` (one edge
per image of ``j`` within ``r_c`` of ``i``) are summed *before* the per-channel products::

    R_p = Σ_{e∈p} R_e                    (P, K+1)        T_p = Σ_{e∈p} r̂_e ⊗ R_e      (P, 3, K+1)
    Σ_{e∈p} x^s_e              = φ^s_m(s_j)  ⊙ (R_p W_sᵀ)
    Σ_{e∈p} x^vv_e ⊙ v_j       = φ^vv_m(s_j) ⊙ (R_p W_vvᵀ) ⊙ v_j
    Σ_{e∈p} x^vs_e ⊙ r̂_e       = φ^vs_m(s_j) ⊙ (T_p W_vsᵀ)                       (3 × F per pair)

and the message block sums pair terms over the pairs of centre ``i``. This is the same function (a
reordered sum). Only (E, K+1)-sized work remains per edge; the (·, 3, F) products, which dominate
the double backward of force and stress training, are done once per pair. Small periodic cells
have many images per pair (perov5 with r_c = 5 Å: ~39 edges but ~5 pairs per atom). ``R_p`` and
``T_p`` are formed once and shared by all interactions.

The direction term per pair costs a (3P × (K+1)) · ((K+1) × F) product for the filter ``T_p W_vsᵀ``
and work over P × 3 × F; summed per edge it costs an (E × (K+1)) · ((K+1) × F) product and work over
E × 3 × F with ``r̂_e`` as one more factor of the form below, so the per-pair form does less work only when
pairs have more than about three edges. It is used when pairs have at least :data:`PAIR_DIRECTION_MIN_EDGES`
edges on average, the crossover of the force-training step measured by
``benchmarks/painn_direction_crossover.py`` (per edge faster at 1.7 edges per pair, per pair at 3.3 and
above); otherwise the direction term is summed per edge while ``x^s`` and ``x^vv`` still use ``R_p``. Graphs where no two edges share a pair (P = E) run the
per-edge form.

Pair messages without per-pair tensors: each sum above is ``Σ_{p: i_p = i} (R_p Wᵀ) ⊙ [r̂_p ⊗] b_{j_p}``
with ``R`` per pair (``R_p``, ``T_p`` or ``R_e``), ``W`` one block of the filter and ``b`` per atom
(``φ^s_m``, ``φ^vs_m``, and ``φ^vv_m ⊙ v``, a product of two rows of the same atom ``j``, formed per atom).
It runs as :func:`matforge.models.pair_forms.pair_message`: the gradient of a multilinear form in
(R, W, r̂, b, upstream), whose derivatives of every order are gradients of the same form, computed in
blocks of pairs by fused kernels. The filter ``R_p Wᵀ`` is formed block by block and never stored, so
force and stress training holds and writes nothing of size (P, F) or (P, 3, F); the backward passes of
training skip the gradients nobody reads (:mod:`matforge.models.gradient_scope`).

Output: ``BackboneOutput(node=s (N, F), vector=v (N, 3, F))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from matforge.models.base import Backbone, BackboneOutput, GraphInputs
from matforge.models.pair_forms import pair_message
from matforge.models.radial import BesselBasis
from matforge.models.radial import envelope as make_envelope

PAIR_DIRECTION_MIN_EDGES = 3.0  # edges per pair from which the direction term is summed per pair


def scalar_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


def atom_pairs(edge_index: Tensor, num_atoms: int) -> tuple[Tensor, Tensor | None]:
    """The distinct ordered atom pairs of the edges (module docstring, "Pair aggregation").

    edge_index: (2, E) long, rows [neighbour j, centre i]. Returns ``(pair_index, edge_pair)``:
    ``pair_index`` (2, P) long, rows [j, i], sorted by centre then neighbour, and ``edge_pair`` (E,)
    the pair of each edge, or ``(edge_index, None)`` when no two edges share a pair (nothing to sum).
    """
    j, i = edge_index[0], edge_index[1]
    key = i * num_atoms + j
    pairs, edge_pair = torch.unique(key, sorted=True, return_inverse=True)
    if pairs.numel() == key.numel():
        return edge_index, None
    return torch.stack([pairs % num_atoms, torch.div(pairs, num_atoms, rounding_mode="floor")]), edge_pair


@dataclass
class MessageGeometry:
    """What the message blocks need of the graph (module docstring, "Pair aggregation").

    pair_index (2, P) [j, i]; pair_radial R_p (P, K+1); pair_directional T_p (P, 3, K+1), or None
    when the direction term is summed per edge from edge_index (2, E), edge_radial R_e (E, K+1) and
    direction r̂_e (E, 3). pairs_are_edges: no two edges share a pair (pair_index is edge_index).
    """

    pair_index: Tensor
    pair_radial: Tensor
    pair_directional: Tensor | None
    edge_index: Tensor
    edge_radial: Tensor
    direction: Tensor
    pairs_are_edges: bool


class PaiNNMessage(nn.Module):
    """Message block (module docstring: message block, pair aggregation).

    Parameters: ``phi`` = φ_m with output blocks [x^s, x^vs] (+ x^vv when not ``first``); ``filter``
    weight (blocks × F, K+1) = W of each block, its last column the bias ``b`` of the radial filter.
    ``first=True`` (the first interaction, where every v_j = 0) has no ``x^vv`` block at all. φ's
    output and W are split into blocks per atom / per weight row, before any gather, so no backward
    ever concatenates per-pair gradients.
    """

    def __init__(self, dim: int, num_radial: int, first: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.first = first
        parts = 2 if first else 3   # blocks [x^s, x^vs] (+ x^vv)
        self.phi = scalar_mlp(dim, dim, parts * dim)
        self.filter = nn.Linear(num_radial + 1, parts * dim, bias=False)

    def forward(self, s: Tensor, v: Tensor, geometry: MessageGeometry) -> tuple[Tensor, Tensor]:
        """s (N, F), v (N, 3, F) -> the updated (s, v)."""
        g = geometry
        j, i = g.pair_index[0], g.pair_index[1]
        atoms = s.shape[0]
        phi = torch.split(self.phi(s), self.dim, dim=-1)
        weight = torch.split(self.filter.weight, self.dim, dim=0)
        ds = pair_message(g.pair_radial, weight[0], phi[0], i, j, atoms, geometric=True)
        if g.pair_directional is not None:   # Σ_p (T_p W_vsᵀ) ⊙ φ^vs_j
            dv = pair_message(g.pair_directional, weight[1], phi[1], i, j, atoms, geometric=True)
        else:   # Σ_e r̂_e ⊗ ((R_e W_vsᵀ) ⊙ φ^vs_j)
            dv = pair_message(g.edge_radial, weight[1], phi[1], g.edge_index[1], g.edge_index[0], atoms,
                              direction=g.direction, geometric=True)
        if not self.first:   # x^vv ⊙ v_j = (R_p W_vvᵀ) ⊙ (φ^vv ⊙ v)_j: the product of two atom rows made per atom
            dv = dv + pair_message(g.pair_radial, weight[2], phi[2].unsqueeze(1) * v, i, j, atoms,
                                   geometric=True)
        return s + ds, v + dv


class PaiNNUpdate(nn.Module):
    """Update block: atom-wise mixing of scalars and vectors (module docstring)."""

    def __init__(self, dim: int, norm_epsilon: float) -> None:
        super().__init__()
        self.dim = dim
        self.norm_epsilon = float(norm_epsilon)
        self.vector_mix = nn.Linear(dim, 2 * dim, bias=False)   # [W_U | W_V]
        self.phi = scalar_mlp(2 * dim, dim, 3 * dim)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        u_vec, v_vec = torch.split(self.vector_mix(v), self.dim, dim=-1)     # (N, 3, F) each
        v_norm = torch.sqrt((v_vec**2).sum(dim=1) + self.norm_epsilon)            # (N, F)
        a = self.phi(torch.cat([s, v_norm], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, self.dim, dim=-1)
        inner = (u_vec * v_vec).sum(dim=1)                                    # (N, F)
        return s + a_ss + a_sv * inner, v + a_vv.unsqueeze(1) * u_vec


class PaiNNInteraction(nn.Module):
    """One interaction = message block then update block (a freeze group ``block.k``)."""

    def __init__(self, dim: int, num_radial: int, norm_epsilon: float, first: bool = False) -> None:
        super().__init__()
        self.message = PaiNNMessage(dim, num_radial, first)
        self.update = PaiNNUpdate(dim, norm_epsilon)

    def forward(self, s: Tensor, v: Tensor, geometry: MessageGeometry) -> tuple[Tensor, Tensor]:
        s, v = self.message(s, v, geometry)
        return self.update(s, v)


class PaiNN(Backbone):
    """PaiNN backbone (arch ``"painn"``).

    hidden: F (scalar and vector channels). num_interactions: message+update blocks. cutoff: Å.
    num_radial: Bessel functions. envelope: "polynomial" | "cosine" (order ``envelope_exponent``).
    max_z: largest atomic number of the embedding table. norm_epsilon: δ of the soft vector norm
    (see the module docstring; must be positive).
    """

    arch = "painn"

    def __init__(self, hidden: int = 128, num_interactions: int = 3, cutoff: float = 5.0, num_radial: int = 20,
                 envelope: str = "polynomial", envelope_exponent: int = 5, max_z: int = 100,
                 norm_epsilon: float = 1.0) -> None:
        super().__init__()
        if num_interactions < 1:
            raise ValueError(f"num_interactions must be >= 1, got {num_interactions}")
        if not norm_epsilon > 0:
            raise ValueError(f"norm_epsilon must be positive, got {norm_epsilon}")
        self.hparams = dict(hidden=hidden, num_interactions=num_interactions, cutoff=float(cutoff),
                            num_radial=num_radial, envelope=envelope, envelope_exponent=envelope_exponent,
                            max_z=max_z, norm_epsilon=float(norm_epsilon))
        self._cutoff = float(cutoff)
        self._dim = int(hidden)
        self.embedding = nn.Embedding(max_z + 1, hidden)
        self.radial = BesselBasis(num_radial, cutoff)
        self.envelope = make_envelope(envelope, cutoff, envelope_exponent)
        self.blocks = nn.ModuleList(PaiNNInteraction(hidden, num_radial, norm_epsilon, first=(k == 0))
                                    for k in range(num_interactions))

    @property
    def cutoff(self) -> float:
        return self._cutoff

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def smooth(self) -> bool:
        return True

    def message_geometry(self, inputs: GraphInputs) -> MessageGeometry:
        """Radial features and directions of the edges, summed per atom pair (module docstring)."""
        length = inputs.edge_length
        direction = inputs.edge_vec / length.unsqueeze(-1)
        env = self.envelope(length).unsqueeze(-1)
        radial = torch.cat([self.radial(length) * env, env], dim=-1)                # (E, K+1)
        pair_index, edge_pair = atom_pairs(inputs.edge_index, inputs.z.shape[0])
        if edge_pair is None:
            return MessageGeometry(pair_index, radial, None, inputs.edge_index, radial, direction, True)
        num_pairs = pair_index.shape[1]
        pair_radial = radial.new_zeros((num_pairs, radial.shape[1])).index_add(0, edge_pair, radial)
        pair_directional = None
        if edge_pair.shape[0] >= PAIR_DIRECTION_MIN_EDGES * num_pairs:
            directional = direction.unsqueeze(-1) * radial.unsqueeze(1)                 # (E, 3, K+1)
            pair_directional = directional.new_zeros((num_pairs,) + directional.shape[1:]).index_add(
                0, edge_pair, directional)
        return MessageGeometry(pair_index, pair_radial, pair_directional, inputs.edge_index, radial, direction,
                               False)

    def forward(self, inputs: GraphInputs) -> BackboneOutput:
        geometry = self.message_geometry(inputs)
        s = self.embedding(inputs.z)
        v = s.new_zeros((s.shape[0], 3, s.shape[1]))
        for block in self.blocks:
            s, v = block(s, v, geometry)
        return BackboneOutput(node=s, vector=v)

    def freeze_groups(self) -> list[tuple[str, list[nn.Module]]]:
        return [("embedding", [self.embedding])] + [(f"block.{k}", [b]) for k, b in enumerate(self.blocks)]
