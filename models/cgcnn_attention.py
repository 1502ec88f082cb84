"""Attention-CGCNN (seed paper 000, section 4.2): CGCNN with the sigmoid gate replaced by attention.

Same featurisation and embedding as :mod:`matforge.models.cgcnn` (92-dim element features x_Z,
``v_i⁰ = W_e x_Z(i) + b_e``; the ``max_neighbors`` nearest neighbours within ``cutoff``; Gaussian
distance features ``u_ij[k] = exp(-(d_ij - μ_k)² / σ²)``), but no padding of centres with fewer
neighbours (the softmax runs over the real neighbours only; an atom without neighbours gets m_i = 0).

Each convolution, for the edges (j, k) -> i (k numbers the periodic images of j)::

    z_ijk  = v_i ⊕ v_j ⊕ u_ijk                                  (2F + K)
    a_ijk  = <v_i, v_j> · <u_ijk, u_ijk>                        (scalar attention logit)
    c_ijk  = exp(a_ijk) / Σ_(j',k')→i exp(a_ij'k')              (softmax over the neighbours of i)
    s_ijk  = softplus(BN₁(W_s z_ijk + b_s))                     (the softplus core, F)
    m_i    = Σ_(j,k)→i c_ijk · s_ijk
    v_i'   = softplus(v_i + BN₂(m_i))

CGCNN's ``fc_full`` maps 2F + K -> 2F (gate and core); here only the core's W_s, b_s remain
(2F + K -> F), so a convolution has about half the weights: per layer
``(2F+K)·F + F + 2F + 2F`` parameters (W_s, b_s, BN₁ and BN₂ affine) against CGCNN's
``(2F+K)·2F + 2F + 4F + 2F``. The attention itself has no parameters. BatchNorm is kept where CGCNN
has it, so, like CGCNN, this backbone couples the structures of a training batch and is not for
forces (``smooth`` is False). The per-centre softmax is ``torch_geometric.utils.softmax`` (max-
subtracted, so large logits do not overflow).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matforge.models.atom_features import FEATURE_DIM, cgcnn_atom_features
from matforge.models.base import Backbone, BackboneOutput, GraphInputs
from matforge.models.cgcnn import GaussianDistance, edge_linear


class AttentionConv(nn.Module):
    """One attention convolution; maths in the module docstring."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.fc_core = nn.Linear(2 * atom_fea_len + nbr_fea_len, atom_fea_len)
        self.bn1 = nn.BatchNorm1d(atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def attention(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """(E,) weights c_ijk, summing to 1 over the edges of each centre."""
        from torch_geometric.utils import softmax

        j, i = edge_index[0], edge_index[1]
        logits = (h[i] * h[j]).sum(dim=1) * edge_attr.square().sum(dim=1)
        return softmax(logits, i, num_nodes=h.shape[0])

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """h (N, F), edge_index (2, E) [j, i], edge_attr (E, K) -> (N, F)."""
        j, i = edge_index[0], edge_index[1]
        core = F.softplus(self.bn1(edge_linear(self.fc_core, h, edge_attr, i, j)))
        weights = self.attention(h, edge_index, edge_attr)
        summed = torch.zeros_like(h).index_add_(0, i, weights.unsqueeze(1) * core)
        return F.softplus(h + self.bn2(summed))


class AttentionCGCNN(Backbone):
    """Attention-CGCNN backbone (arch ``"cgcnn_attention"``): per-atom embeddings (N, atom_fea_len).

    Hyper-parameters as :class:`~matforge.models.cgcnn.CGCNN` (atom_fea_len, n_conv, cutoff Å,
    max_neighbors, gaussian_step Å, gaussian_dmin Å), without padding.
    """

    arch = "cgcnn_attention"

    def __init__(self, atom_fea_len: int = 64, n_conv: int = 3, cutoff: float = 8.0,
                 max_neighbors: int | None = 12, gaussian_step: float = 0.2, gaussian_dmin: float = 0.0) -> None:
        super().__init__()
        if atom_fea_len < 1 or n_conv < 0:
            raise ValueError(f"need atom_fea_len >= 1 and n_conv >= 0 (got {atom_fea_len}, {n_conv})")
        self.hparams: dict[str, Any] = {
            "atom_fea_len": int(atom_fea_len), "n_conv": int(n_conv), "cutoff": float(cutoff),
            "max_neighbors": None if max_neighbors is None else int(max_neighbors),
            "gaussian_step": float(gaussian_step), "gaussian_dmin": float(gaussian_dmin),
        }
        self._cutoff = float(cutoff)
        self._max_neighbors = self.hparams["max_neighbors"]
        self.register_buffer("atom_features", cgcnn_atom_features(), persistent=False)
        self.expansion = GaussianDistance(gaussian_dmin, cutoff, gaussian_step)
        self.embedding = nn.Linear(FEATURE_DIM, atom_fea_len)
        self.convs = nn.ModuleList(
            [AttentionConv(atom_fea_len, self.expansion.num_features) for _ in range(n_conv)])

    @property
    def cutoff(self) -> float:
        return self._cutoff

    @property
    def max_neighbors(self) -> int | None:
        return self._max_neighbors

    @property
    def embedding_dim(self) -> int:
        return self.hparams["atom_fea_len"]

    def forward(self, inputs: GraphInputs) -> BackboneOutput:
        weight = self.embedding.weight
        h = self.embedding(self.atom_features[inputs.z].to(weight.dtype))
        edge_attr = self.expansion(inputs.edge_length.to(weight.dtype))
        for conv in self.convs:
            h = conv(h, inputs.edge_index, edge_attr)
        return BackboneOutput(node=h)

    def freeze_groups(self) -> list[tuple[str, list[nn.Module]]]:
        return [("embedding", [self.embedding])] + [(f"block.{k}", [conv]) for k, conv in enumerate(self.convs)]
