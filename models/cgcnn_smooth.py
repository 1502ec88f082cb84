"""Smooth CGCNN: the gated crystal-graph convolution of Xie & Grossman (PRL 120, 145301, 2018)
rebuilt so that the energy is a smooth, extensive function of the positions and cell, i.e. usable
for forces and stress by autograd.

Differences from the original CGCNN (``matforge.models.cgcnn``):

* graph: *all* neighbours within the cutoff ``r_c`` (no 12-nearest truncation, whose neighbour set
  jumps when distances reorder);
* edges: a smooth radial basis ``e(r_ij)`` (Gaussian or Bessel, :mod:`matforge.models.radial`) and
  every message multiplied by an envelope ``u(r_ij)`` with ``u(r_c) = u'(r_c) = 0``, so a neighbour
  entering or leaving the sphere changes neither energy nor forces;
* no BatchNorm (it couples the structures of a batch and makes the energy of one structure depend on
  the others); an optional LayerNorm acts per atom, before the gates (pre-norm);
* residual updates without the outer softplus, messages summed and divided by a fixed constant.

Layer k (``v_i`` ∈ R^F the features of atom i, ``[·,·,·]`` concatenation, σ the logistic sigmoid,
g the softplus, ⊙ the element-wise product)::

    v_i^0      = Embed(Z_i)              learned (101 × F), or  W_e · x_CGCNN(Z_i) + b_e  (92-dim features)
    h_i        = LayerNorm(v_i^k)        (or h = v with norm="none")
    z_ij       = [h_i, h_j, e(|r_ij|)]
    m_ij       = σ(z_ij W_f + b_f) ⊙ g(z_ij W_s + b_s) · u(|r_ij|)
    v_i^{k+1}  = v_i^k + (1 / n_avg) Σ_{j ∈ N(i)} m_ij

The per-atom output ``v_i^K`` goes to the heads; with the energy head ``E = Σ_i ε(v_i^K)`` the energy
is extensive. Everything is a composition of smooth functions of ``|r_ij|``, so it is invariant to
rotations, translations and permutations of the atoms; an atom without neighbours keeps its
embedding (finite energy, zero force).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from matforge.models.base import Backbone, BackboneOutput, GraphInputs
from matforge.models.gated_message import gated_edge_message
from matforge.models.radial import envelope as make_envelope
from matforge.models.radial import radial_basis

EMBEDDINGS = ("learned", "cgcnn92")
NORMS = ("layer", "none")


class AtomEmbedding(nn.Module):
    """Z (N,) -> (N, F): a learned table, or a linear map of CGCNN's fixed 92-dim element features."""

    def __init__(self, dim: int, kind: str = "learned", max_z: int = 100) -> None:
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")
        self.kind = kind
        if kind == "learned":
            self.table = nn.Embedding(max_z + 1, dim)
        else:
            from matforge.models.atom_features import cgcnn_atom_features

            features = torch.as_tensor(cgcnn_atom_features(), dtype=torch.get_default_dtype())
            if features.ndim != 2 or features.shape[0] < max_z + 1:
                raise ValueError(f"cgcnn_atom_features() returned shape {tuple(features.shape)}, "
                                 f"expected ({max_z + 1}, 92)")
            self.register_buffer("features", features[: max_z + 1].clone())
            self.linear = nn.Linear(features.shape[1], dim)

    def forward(self, z: Tensor) -> Tensor:
        if self.kind == "learned":
            return self.table(z)
        return self.linear(self.features[z])


class GatedConvolution(nn.Module):
    """One smooth CGCNN layer (see the module docstring): residual, gated, enveloped messages.

    ``z_ij W = h_i W_i + h_j W_j + e(r_ij) W_e`` with ``W = [W_i; W_j; W_e]`` (the weight of
    ``gate_and_core``): the two atom terms are computed once per atom (N rows) and read through the
    edge indices, so the only per-edge product is the small ``e(r) W_e``; the gate, the core and their
    derivatives run as fused kernels (:mod:`matforge.models.gated_message`). Same function as the
    linear map of the concatenation, a fraction of the work.
    """

    def __init__(self, dim: int, num_radial: int, norm: str, avg_neighbors: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm == "layer" else nn.Identity()
        self.gate_and_core = nn.Linear(2 * dim + num_radial, 2 * dim)
        self.inv_avg_neighbors = 1.0 / float(avg_neighbors)

    def forward(self, v: Tensor, edge_index: Tensor, radial: Tensor, env: Tensor) -> Tensor:
        j, i = edge_index[0], edge_index[1]
        h = self.norm(v)
        dim = h.shape[-1]
        w_i, w_j, w_e = torch.split(self.gate_and_core.weight, [dim, dim, radial.shape[-1]], dim=1)
        centre = nn.functional.linear(h, w_i)        # (N, 2F), read by the receiving atom i of each edge
        neighbour = nn.functional.linear(h, w_j)     # (N, 2F), read by the sending atom j
        edge = nn.functional.linear(radial, w_e, self.gate_and_core.bias)
        message = gated_edge_message(centre, neighbour, edge, env.unsqueeze(-1), i, j)  # σ(gate) ⊙ softplus(core) · u
        return v + self.inv_avg_neighbors * torch.zeros_like(v).index_add(0, i, message)


class SmoothCGCNN(Backbone):
    """Smooth CGCNN backbone (arch ``"cgcnn_smooth"``), output ``BackboneOutput(node=(N, F))``.

    hidden: F. num_interactions: number of convolutions. cutoff: Å. num_radial: basis size.
    radial: "gaussian" | "bessel". envelope: "polynomial" | "cosine" (order ``envelope_exponent``).
    embedding: "learned" (``nn.Embedding(101, F)``) | "cgcnn92" (CGCNN's 92-dim element features,
    from ``matforge.models.atom_features``). norm: "layer" | "none". avg_neighbors: divisor of
    the neighbour sum (a fixed constant, so energies stay extensive).
    """

    arch = "cgcnn_smooth"

    def __init__(self, hidden: int = 64, num_interactions: int = 3, cutoff: float = 6.0, num_radial: int = 32,
                 radial: str = "gaussian", envelope: str = "polynomial", envelope_exponent: int = 5,
                 embedding: str = "learned", norm: str = "layer", avg_neighbors: float = 16.0,
                 max_z: int = 100) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if num_interactions < 1:
            raise ValueError(f"num_interactions must be >= 1, got {num_interactions}")
        if avg_neighbors <= 0:
            raise ValueError(f"avg_neighbors must be positive, got {avg_neighbors}")
        self.hparams = dict(hidden=hidden, num_interactions=num_interactions, cutoff=float(cutoff),
                            num_radial=num_radial, radial=radial, envelope=envelope,
                            envelope_exponent=envelope_exponent, embedding=embedding, norm=norm,
                            avg_neighbors=float(avg_neighbors), max_z=max_z)
        self._cutoff = float(cutoff)
        self._dim = int(hidden)
        self.embedding = AtomEmbedding(hidden, embedding, max_z)
        self.radial = radial_basis(radial, num_radial, cutoff)
        self.envelope = make_envelope(envelope, cutoff, envelope_exponent)
        self.blocks = nn.ModuleList(
            GatedConvolution(hidden, num_radial, norm, avg_neighbors) for _ in range(num_interactions)
        )

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
        radial = self.radial(length)
        env = self.envelope(length)
        v = self.embedding(inputs.z)
        for block in self.blocks:
            v = block(v, inputs.edge_index, radial, env)
        return BackboneOutput(node=v)

    def freeze_groups(self) -> list[tuple[str, list[nn.Module]]]:
        return [("embedding", [self.embedding])] + [(f"block.{k}", [b]) for k, b in enumerate(self.blocks)]
