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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matforge.models.cgcnn import CGCNN, edge_linear


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


class AttentionCGCNN(CGCNN):
    """Attention-CGCNN backbone (arch ``"cgcnn_attention"``): per-atom embeddings (N, atom_fea_len).

    The exact CGCNN's featurisation, embedding and residual layout with :class:`AttentionConv` in
    place of the gated convolution, and no neighbour padding. Hyper-parameters as
    :class:`~matforge.models.cgcnn.CGCNN` (atom_fea_len, n_conv, cutoff Å, max_neighbors,
    gaussian_step Å, gaussian_dmin Å).
    """

    arch = "cgcnn_attention"
    conv_class = AttentionConv

    def __init__(self, atom_fea_len: int = 64, n_conv: int = 3, cutoff: float = 8.0,
                 max_neighbors: int | None = 12, gaussian_step: float = 0.2, gaussian_dmin: float = 0.0) -> None:
        super().__init__(atom_fea_len, n_conv, cutoff, max_neighbors, gaussian_step, gaussian_dmin,
                         pad_neighbors=False)
        del self.hparams["pad_neighbors"]  # hparams are this constructor's arguments (backbone card)
