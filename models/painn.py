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

    [x^vv, x^s, x^vs]_ij = φ_m(s_j) ⊙ W(r)                         (split into three F-blocks)
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

Output: ``BackboneOutput(node=s (N, F), vector=v (N, 3, F))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from matforge.models.base import Backbone, BackboneOutput, GraphInputs
from matforge.models.radial import BesselBasis
from matforge.models.radial import envelope as make_envelope



def scalar_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class PaiNNMessage(nn.Module):
    """Message block: neighbour scalars and vectors, filtered by the radial basis (module docstring).

    Implementation notes (same function, less work; they matter most in the double backward of
    force training):

    * the filter ``(e(r) W_rbf + b) · u(r)`` is one bias-free linear map of the enveloped features
      ``[e(r) u(r), u(r)]`` (the weight's last column is ``b``), one (E, 3F) product fewer;
    * φ's output and the filter weight are split into their F-blocks per atom / per weight row, not
      per edge, so the backward never concatenates (E, 3F) gradients;
    * ``first=True`` (the first interaction, where every v_j = 0) has no ``x^vv`` block at all.
    """

    def __init__(self, dim: int, num_radial: int, first: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.first = first
        parts = 2 if first else 3   # blocks [x^s, x^vs] (+ x^vv)
        self.phi = scalar_mlp(dim, dim, parts * dim)
        self.filter = nn.Linear(num_radial + 1, parts * dim, bias=False)

    def forward(self, s: Tensor, v: Tensor, edge_index: Tensor, enveloped_radial: Tensor,
                direction: Tensor) -> tuple[Tensor, Tensor]:
        j, i = edge_index[0], edge_index[1]
        phi = torch.split(self.phi(s), self.dim, dim=-1)
        weight = torch.split(self.filter.weight, self.dim, dim=0)
        x_s = phi[0].index_select(0, j) * nn.functional.linear(enveloped_radial, weight[0])
        x_vs = phi[1].index_select(0, j) * nn.functional.linear(enveloped_radial, weight[1])
        ds = torch.zeros_like(s).index_add(0, i, x_s)
        dv_edge = x_vs.unsqueeze(1) * direction.unsqueeze(-1)
        if not self.first:
            x_vv = phi[2].index_select(0, j) * nn.functional.linear(enveloped_radial, weight[2])
            dv_edge = torch.addcmul(dv_edge, x_vv.unsqueeze(1), v.index_select(0, j))
        dv = torch.zeros_like(v).index_add(0, i, dv_edge)
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

    def forward(self, s: Tensor, v: Tensor, edge_index: Tensor, enveloped_radial: Tensor,
                direction: Tensor) -> tuple[Tensor, Tensor]:
        s, v = self.message(s, v, edge_index, enveloped_radial, direction)
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

    def forward(self, inputs: GraphInputs) -> BackboneOutput:
        length = inputs.edge_length
        direction = inputs.edge_vec / length.unsqueeze(-1)
        env = self.envelope(length).unsqueeze(-1)
        enveloped_radial = torch.cat([self.radial(length) * env, env], dim=-1)     # (E, num_radial + 1)
        s = self.embedding(inputs.z)
        v = s.new_zeros((s.shape[0], 3, s.shape[1]))
        for block in self.blocks:
            s, v = block(s, v, inputs.edge_index, enveloped_radial, direction)
        return BackboneOutput(node=s, vector=v)

    def freeze_groups(self) -> list[tuple[str, list[nn.Module]]]:
        return [("embedding", [self.embedding])] + [(f"block.{k}", [b]) for k, b in enumerate(self.blocks)]
