"""CGCNN exactly as Xie & Grossman (Phys. Rev. Lett. 120, 145301, 2018) and their released code.

Featurisation (the reference's ``CIFData``): every centre i keeps its ``max_neighbors`` = 12 nearest
neighbours (periodic images included) within ``cutoff`` = 8 Å. A centre with fewer than 12 is
*padded* up to 12 with fake neighbours: the first atom of its crystal at distance ``cutoff + 1``
(the reference pads the neighbour index with 0 and the distance with ``radius + 1``). Padding is
part of the released models' behaviour (a padded slot still sends a message), so it is reproduced.

Distances d (Å) become K Gaussian features with centres μ_k = d_min + k·step for
k = 0..K-1 (``numpy.arange(d_min, cutoff + step, step)``: 41 centres for 0..8 Å, step 0.2)::

    u_ij[k] = exp(-(d_ij - μ_k)² / σ²),        σ = step = 0.2 Å

Atoms start from the 92-dim one-hot element features x_Z (``atom_features.py``)::

    v_i⁰ = W_e x_Z(i) + b_e                                           (embedding, 92 -> F)

Each of the ``n_conv`` convolutions (``CGCNNConv``), for edges (j -> i) with features u_ij::

    z_ij  = v_i ⊕ v_j ⊕ u_ij                                          (2F + K)
    [f_ij, c_ij] = BN₁(W z_ij + b)                                    (fc_full, 2F; split in halves)
    m_i   = Σ_j σ(f_ij) ⊙ softplus(c_ij)                              (sigmoid gate x softplus core)
    v_i'  = softplus(v_i + BN₂(m_i))                                  (residual, then softplus)

The linear map is computed without forming z_ij: splitting W by columns into the blocks acting
on v_i, v_j and u_ij, ``W z_ij = W_i v_i + W_j v_j + W_u u_ij``, and W_i v, W_j v are computed once
per *atom* (N rows) and gathered onto the edges (E ≈ 12 N rows), instead of a (2F + K)-wide product
per edge: the same function (to float rounding) for about a third of the arithmetic, and the same
parameters (``fc_full``) as the reference.

BN₁ normalises over all edges of the batch (padded slots included), BN₂ over all atoms. In training
mode BatchNorm couples the structures of a batch, so the energy of one structure depends on the
others: this backbone is not for forces or stress (``smooth`` is False; use ``cgcnn_smooth``).

The backbone returns v_i after the last convolution (N, F). :class:`CGCNNHead` is the reference's
output network on top::

    h   = mean_i∈crystal v_i                                           (mean pooling)
    h   = softplus(W_c softplus(h) + b_c)                               (conv_to_fc; softplus on both sides)
    h   = softplus(W_l h + b_l)         for each of the n_h - 1 hidden layers (fcs)
    o   = W_o h + b_o                                                   (fc_out: 1 or 2 outputs)
    regression:     y = mean + std · o                                  (the released normaliser)
    classification: log p = log_softmax(o), dropout(p=0.5) before the hidden layers in training

Parameter names match the reference's ``state_dict`` (``embedding``, ``convs.k.fc_full``,
``convs.k.bn1``, ``convs.k.bn2`` in the backbone; ``conv_to_fc``, ``fcs.k``, ``fc_out`` in the
head), so a released checkpoint maps onto ``backbone.*`` and ``heads.<name>.*`` by prefix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matforge.models.atom_features import FEATURE_DIM, cgcnn_atom_features
from matforge.models.base import Backbone, BackboneOutput, GraphInputs
from matforge.models.heads import Head


class GaussianDistance(nn.Module):
    """Distances (E,) in Å -> Gaussian features (E, K), ``exp(-(d - μ_k)² / σ²)``.

    Centres as the reference: ``numpy.arange(d_min, d_max + step, step)``; σ = ``width`` (default
    ``step``).
    """

    def __init__(self, d_min: float, d_max: float, step: float, width: float | None = None) -> None:
        super().__init__()
        if not d_min < d_max or not d_max - d_min > step:
            raise ValueError(f"Gaussian expansion needs d_min < d_max and d_max - d_min > step "
                             f"(got {d_min}, {d_max}, {step})")
        centres = torch.from_numpy(np.arange(d_min, d_max + step, step))
        self.register_buffer("centres", centres.to(torch.get_default_dtype()), persistent=False)
        self.width = float(step if width is None else width)

    @property
    def num_features(self) -> int:
        return int(self.centres.shape[0])

    def forward(self, distances: Tensor) -> Tensor:
        diff = distances.unsqueeze(-1) - self.centres.to(distances.dtype)
        return torch.exp(-diff.square() / self.width ** 2)


def pad_neighbours(edge_index: Tensor, lengths: Tensor, batch: Tensor, num_graphs: int,
                   max_neighbors: int, pad_length: float) -> tuple[Tensor, Tensor]:
    """Pad every centre with fewer than ``max_neighbors`` edges up to exactly that many.

    The extra edges come from the first atom of the centre's graph and have length ``pad_length``
    (the reference CGCNN's padding rule). Returns ``(edge_index (2, E'), lengths (E',))``.
    """
    n = batch.shape[0]
    centres = edge_index[1]
    missing = (max_neighbors - torch.bincount(centres, minlength=n)).clamp(min=0)
    total = int(missing.sum())
    if total == 0:
        return edge_index, lengths
    atom = torch.arange(n, device=batch.device)
    first_atom = torch.full((num_graphs,), n, dtype=torch.long, device=batch.device)
    first_atom = first_atom.scatter_reduce(0, batch, atom, reduce="amin")
    pad_centres = torch.repeat_interleave(atom, missing)
    pad_sources = first_atom[batch[pad_centres]]
    pad_index = torch.stack([pad_sources, pad_centres])
    pad_lengths = torch.full((total,), pad_length, dtype=lengths.dtype, device=lengths.device)
    return torch.cat([edge_index, pad_index], dim=1), torch.cat([lengths, pad_lengths])


def edge_linear(linear: nn.Linear, h: Tensor, edge_attr: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """``linear(v_i ⊕ v_j ⊕ u_ij)`` for every edge (E, out), without forming the concatenation.

    ``linear`` maps 2F + K -> out; its weight's column blocks act on v_i, v_j and u_ij, and the first
    two are applied per atom, then gathered (see the module docstring). h (N, F), edge_attr (E, K).
    """
    f = h.shape[1]
    weight = linear.weight
    return (F.linear(edge_attr, weight[:, 2 * f:], linear.bias)
            + F.linear(h, weight[:, :f]).index_select(0, i)
            + F.linear(h, weight[:, f:2 * f]).index_select(0, j))


class CGCNNConv(nn.Module):
    """One gated CGCNN convolution (the reference's ``ConvLayer``); maths in the module docstring."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """h (N, F), edge_index (2, E) [j, i], edge_attr (E, K) -> (N, F)."""
        j, i = edge_index[0], edge_index[1]
        gated = self.bn1(edge_linear(self.fc_full, h, edge_attr, i, j))
        gate, core = gated.chunk(2, dim=1)
        messages = torch.sigmoid(gate) * F.softplus(core)
        summed = torch.zeros_like(h).index_add_(0, i, messages)
        return F.softplus(h + self.bn2(summed))


class CGCNN(Backbone):
    """The exact CGCNN backbone (arch ``"cgcnn"``): per-atom embeddings (N, atom_fea_len).

    Hyper-parameters (all stored in ``hparams`` and the backbone card):
    atom_fea_len F (reference default 64), n_conv (3), cutoff in Å (8.0), max_neighbors (12),
    gaussian_step in Å (0.2, also the Gaussian width σ), gaussian_dmin in Å (0.0),
    pad_neighbors (True: the reference's padding of centres with fewer than max_neighbors).
    """

    arch = "cgcnn"
    conv_class: type[nn.Module] = CGCNNConv  # (F, K) -> one convolution; variants swap it

    def __init__(self, atom_fea_len: int = 64, n_conv: int = 3, cutoff: float = 8.0,
                 max_neighbors: int | None = 12, gaussian_step: float = 0.2, gaussian_dmin: float = 0.0,
                 pad_neighbors: bool = True) -> None:
        super().__init__()
        if atom_fea_len < 1 or n_conv < 0:
            raise ValueError(f"need atom_fea_len >= 1 and n_conv >= 0 (got {atom_fea_len}, {n_conv})")
        if pad_neighbors and max_neighbors is None:
            raise ValueError("pad_neighbors needs max_neighbors (the count to pad up to)")
        self.hparams: dict[str, Any] = {
            "atom_fea_len": int(atom_fea_len), "n_conv": int(n_conv), "cutoff": float(cutoff),
            "max_neighbors": None if max_neighbors is None else int(max_neighbors),
            "gaussian_step": float(gaussian_step), "gaussian_dmin": float(gaussian_dmin),
            "pad_neighbors": bool(pad_neighbors),
        }
        self._cutoff = float(cutoff)
        self._max_neighbors = self.hparams["max_neighbors"]
        self.pad = bool(pad_neighbors)
        self.register_buffer("atom_features", cgcnn_atom_features(), persistent=False)
        self.expansion = GaussianDistance(gaussian_dmin, cutoff, gaussian_step)
        self.embedding = nn.Linear(FEATURE_DIM, atom_fea_len)
        self.convs = nn.ModuleList(
            [self.conv_class(atom_fea_len, self.expansion.num_features) for _ in range(n_conv)])

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
        edge_index, lengths = inputs.edge_index, inputs.edge_length
        if self.pad:
            edge_index, lengths = pad_neighbours(edge_index, lengths, inputs.batch, inputs.num_graphs,
                                                 self._max_neighbors, self._cutoff + 1.0)
        weight = self.embedding.weight
        h = self.embedding(self.atom_features[inputs.z].to(weight.dtype))
        edge_attr = self.expansion(lengths.to(weight.dtype))
        for conv in self.convs:
            h = conv(h, edge_index, edge_attr)
        return BackboneOutput(node=h)

    def freeze_groups(self) -> list[tuple[str, list[nn.Module]]]:
        return [("embedding", [self.embedding])] + [(f"block.{k}", [conv]) for k, conv in enumerate(self.convs)]


class CGCNNHead(Head):
    """The reference CGCNN output network (head kind ``"cgcnn"``); maths in the module docstring.

    in_dim: F of the backbone. h_fea_len: width of the hidden layers (reference default 128).
    n_h: number of hidden layers after pooling (1 = conv_to_fc only). task: "regression" or
    "classification". mean, std: the target normaliser (regression), in the target's units.
    target, units: name and units of the predicted property (for cards and CSV headers).

    Outputs: regression {"properties": (B, 1) mean + std·o, "properties_normalized": (B, 1) o};
    classification {"properties": (B, 1) probability of class 1, "logits": (B, 2) log-probabilities}.
    """

    kind = "cgcnn"

    def __init__(self, in_dim: int = 64, h_fea_len: int = 128, n_h: int = 1, task: str = "regression",
                 mean: float = 0.0, std: float = 1.0, target: str = "target", units: str = "") -> None:
        super().__init__()
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        if n_h < 1:
            raise ValueError(f"n_h must be >= 1, got {n_h}")
        if not std > 0:
            raise ValueError(f"normaliser std must be positive, got {std}")
        self._spec = {"in_dim": int(in_dim), "h_fea_len": int(h_fea_len), "n_h": int(n_h), "task": task,
                       "mean": float(mean), "std": float(std), "target": str(target), "units": str(units)}
        self.classification = task == "classification"
        self.conv_to_fc = nn.Linear(in_dim, h_fea_len)
        self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, 2 if self.classification else 1)
        self.dropout = nn.Dropout() if self.classification else nn.Identity()
        self.register_buffer("mean", torch.tensor([float(mean)], dtype=torch.float64))
        self.register_buffer("std", torch.tensor([float(std)], dtype=torch.float64))

    def spec(self) -> dict:
        """JSON-able ``{"kind": "cgcnn", **constructor kwargs}`` (normaliser as in the buffers)."""
        spec = super().spec()
        spec["mean"], spec["std"] = float(self.mean[0]), float(self.std[0])
        return spec

    def set_normalization(self, mean: Any, std: Any) -> None:
        """Set the regression normaliser (the target's units); one value, or a one-element list."""
        mean_v = float(mean[0] if isinstance(mean, (list, tuple)) else mean)
        std_v = float(std[0] if isinstance(std, (list, tuple)) else std)
        if not std_v > 0:
            raise ValueError(f"normaliser std must be positive, got {std_v}")
        self.mean.fill_(mean_v)
        self.std.fill_(std_v)
        self._spec.update(mean=mean_v, std=std_v)

    def forward(self, out: BackboneOutput, inputs: GraphInputs) -> dict[str, Tensor]:
        from torch_geometric.utils import scatter

        pooled = scatter(out.node, inputs.batch, dim=0, dim_size=inputs.num_graphs, reduce="mean")
        h = F.softplus(self.conv_to_fc(F.softplus(pooled)))
        h = self.dropout(h)
        for fc in self.fcs:
            h = F.softplus(fc(h))
        o = self.fc_out(h)
        if self.classification:
            log_p = F.log_softmax(o, dim=1)
            return {"properties": log_p.exp()[:, 1:2], "logits": log_p}
        return {"properties": o * self.std.to(o.dtype) + self.mean.to(o.dtype), "properties_normalized": o}
