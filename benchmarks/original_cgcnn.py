"""A re-implementation of the original CGCNN training step: the baseline of ``benchmarks/cgcnn_vs_original.py``.

Written from Xie & Grossman's released code (github.com/txie-93/cgcnn: ``cgcnn/model.py``,
``cgcnn/data.py`` ``collate_pool``, ``main.py`` ``train``), keeping its data layout and its
operations, so that timing it on this machine stands for timing the original:

* batch layout (``collate_pool``): atom features ``atom_fea`` (N, 92), a dense neighbour table
  ``nbr_fea_idx`` (N, M=12) of global atom indices (each crystal's rows offset by the atoms before
  it), Gaussian bond features ``nbr_fea`` (N, M, K=41) computed once when the data is loaded, and
  ``crystal_atom_idx``: a list of B index tensors, one per crystal;
* featurisation (``CIFData``): the M nearest neighbours within the radius (8 Å), sorted by distance;
  a centre with fewer is padded with index 0 of its crystal at distance ``radius + 1``; Gaussians
  ``exp(-(d - μ_k)² / step²)``, ``μ = arange(dmin, radius + step, step)``, in float64 then float32;
* ``ConvLayer.forward``: ``atom_nbr_fea = atom_in_fea[nbr_fea_idx, :]`` (N, M, F); the
  concatenation ``[v_i expanded over M, v_j, u_ij]`` (N, M, 2F + K); ``fc_full``; ``bn1`` on the
  flattened (N·M, 2F) view; sigmoid filter × softplus core; ``torch.sum`` over M; ``bn2``;
  ``softplus(v_i + ·)``;
* ``CrystalGraphConvNet.pooling``: ``torch.mean(atom_fea[idx_map], dim=0)`` for each crystal's
  index tensor, concatenated (a Python loop over the B crystals);
* the head: softplus, ``conv_to_fc``, softplus, ``n_h - 1`` hidden layers, ``fc_out``;
* ``main.py``'s step: the target normalised by the sample mean/std, ``nn.MSELoss``,
  ``optimizer.zero_grad(); loss.backward(); optimizer.step()`` with SGD (lr 0.01, momentum 0.9,
  the original's defaults; batch size 256).

The neighbour *search* is not part of a training step (the original does it in ``CIFData`` when
loading), so :func:`original_batch` builds the original layout from a matforge batch built with
the same rule (12 nearest within 8 Å, ``matforge.datasets.graphs``); the distances are recomputed
here from positions, cell and image shifts in float64.

Parameter names are the original's (``embedding``, ``convs.k.fc_full``, ``convs.k.bn1``, ...,
``conv_to_fc``, ``fcs.k``, ``fc_out``), so :func:`load_matforge_weights` copies a matforge
``cgcnn`` backbone with a ``cgcnn`` head into it; the tests use that to check both compute the
same function.

It is a re-implementation, not the original code: the original is not a package one can install.
A benchmark script (not part of the installed package); the tests load it from ``benchmarks/``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

# main.py defaults of the released code
ORIGINAL_BATCH_SIZE = 256
ORIGINAL_LR = 0.01
ORIGINAL_MOMENTUM = 0.9


class OriginalConvLayer(nn.Module):
    """``cgcnn.model.ConvLayer``: gated convolution over the dense (N, M) neighbour table."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.nbr_fea_len = nbr_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.sigmoid = nn.Sigmoid()
        self.softplus1 = nn.Softplus()
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)
        self.softplus2 = nn.Softplus()

    def forward(self, atom_in_fea: Tensor, nbr_fea: Tensor, nbr_fea_idx: Tensor) -> Tensor:
        """atom_in_fea (N, F), nbr_fea (N, M, K), nbr_fea_idx (N, M) -> (N, F)."""
        n, m = nbr_fea_idx.shape
        width = self.atom_fea_len
        atom_nbr_fea = atom_in_fea[nbr_fea_idx, :]
        total_nbr_fea = torch.cat([atom_in_fea.unsqueeze(1).expand(n, m, width), atom_nbr_fea, nbr_fea], dim=2)
        total_gated_fea = self.fc_full(total_nbr_fea)
        total_gated_fea = self.bn1(total_gated_fea.view(-1, 2 * width)).view(n, m, 2 * width)
        nbr_filter, nbr_core = total_gated_fea.chunk(2, dim=2)
        nbr_sumed = torch.sum(self.sigmoid(nbr_filter) * self.softplus1(nbr_core), dim=1)
        return self.softplus2(atom_in_fea + self.bn2(nbr_sumed))


class OriginalCGCNN(nn.Module):
    """``cgcnn.model.CrystalGraphConvNet`` for regression: (B, 1) normalised predictions."""

    def __init__(self, orig_atom_fea_len: int = 92, nbr_fea_len: int = 41, atom_fea_len: int = 64, n_conv: int = 3,
                 h_fea_len: int = 128, n_h: int = 1) -> None:
        super().__init__()
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([OriginalConvLayer(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.conv_to_fc_softplus = nn.Softplus()
        if n_h > 1:
            self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
            self.softpluses = nn.ModuleList([nn.Softplus() for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, 1)

    def forward(self, atom_fea: Tensor, nbr_fea: Tensor, nbr_fea_idx: Tensor, crystal_atom_idx: list[Tensor]) -> Tensor:
        atom_fea = self.embedding(atom_fea)
        for conv in self.convs:
            atom_fea = conv(atom_fea, nbr_fea, nbr_fea_idx)
        crys_fea = self.pooling(atom_fea, crystal_atom_idx)
        crys_fea = self.conv_to_fc_softplus(self.conv_to_fc(self.conv_to_fc_softplus(crys_fea)))
        if hasattr(self, "fcs"):
            for fc, softplus in zip(self.fcs, self.softpluses):
                crys_fea = softplus(fc(crys_fea))
        return self.fc_out(crys_fea)

    @staticmethod
    def pooling(atom_fea: Tensor, crystal_atom_idx: list[Tensor]) -> Tensor:
        """Mean of each crystal's atoms, one ``torch.mean`` per crystal (the original's loop)."""
        return torch.cat([torch.mean(atom_fea[idx_map], dim=0, keepdim=True) for idx_map in crystal_atom_idx], dim=0)


class OriginalBatch(NamedTuple):
    """One batch in the layout of the original ``collate_pool`` (plus the raw target)."""

    atom_fea: Tensor               # (N, 92) float32
    nbr_fea: Tensor                # (N, M, K) float32
    nbr_fea_idx: Tensor            # (N, M) long, global atom indices
    crystal_atom_idx: list[Tensor]  # B tensors of atom indices
    target: Tensor                 # (B, 1) float32, in the target's units

    @property
    def inputs(self) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        return self.atom_fea, self.nbr_fea, self.nbr_fea_idx, self.crystal_atom_idx


def original_batch(batch: Any, target: Tensor, radius: float = 8.0, max_num_nbr: int = 12, dmin: float = 0.0,
                   step: float = 0.2) -> OriginalBatch:
    """The original layout of a matforge ``Batch`` built with ``cutoff=radius, max_neighbors=max_num_nbr``.

    target: (B,) or (B, 1) values. Raises ValueError if some centre has more than ``max_num_nbr``
    edges (the batch was built with another neighbour rule).
    """
    from matforge.models.atom_features import cgcnn_atom_features

    z = batch.z.numpy()
    pos = batch.pos.numpy().astype(np.float64)
    cell = batch.cell.reshape(-1, 3, 3).numpy().astype(np.float64)
    graph_of = batch.batch.numpy()
    j, i = batch.edge_index.numpy()
    shifts = batch.shifts.numpy().astype(np.float64)
    n, b = z.shape[0], cell.shape[0]
    dist = np.linalg.norm(pos[j] - pos[i] + np.einsum("ek,ekl->el", shifts, cell[graph_of[i]]), axis=1)

    counts = np.bincount(i, minlength=n)
    if counts.max(initial=0) > max_num_nbr:
        raise ValueError(f"a centre has {counts.max()} neighbours, more than max_num_nbr={max_num_nbr}: "
                         "build the batch with max_neighbors=max_num_nbr")
    order = np.lexsort((dist, i))                   # by centre, then distance (CIFData sorts by distance)
    i_sorted = i[order]
    rank = np.arange(i_sorted.shape[0]) - np.searchsorted(i_sorted, i_sorted, side="left")
    first_atom = batch.ptr.numpy()[:-1][graph_of]   # index 0 of each atom's crystal, globally
    nbr_idx = np.repeat(first_atom[:, None], max_num_nbr, axis=1)
    nbr_dist = np.full((n, max_num_nbr), radius + 1.0)
    nbr_idx[i_sorted, rank] = j[order]
    nbr_dist[i_sorted, rank] = dist[order]

    centres = np.arange(dmin, radius + step, step)
    gaussians = np.exp(-(nbr_dist[..., np.newaxis] - centres) ** 2 / step ** 2)
    ptr = batch.ptr.tolist()
    return OriginalBatch(
        atom_fea=cgcnn_atom_features()[torch.from_numpy(z)].clone(),
        nbr_fea=torch.tensor(gaussians, dtype=torch.float32),
        nbr_fea_idx=torch.from_numpy(nbr_idx.astype(np.int64)),
        crystal_atom_idx=[torch.arange(ptr[k], ptr[k + 1], dtype=torch.long) for k in range(b)],
        target=torch.as_tensor(target, dtype=torch.float32).reshape(b, 1).clone(),
    )


class OriginalTrainer:
    """``main.py``'s ``train`` loop body for one batch: normalise, forward, MSE, SGD step."""

    def __init__(self, model: OriginalCGCNN, mean: float, std: float, lr: float = ORIGINAL_LR,
                 momentum: float = ORIGINAL_MOMENTUM) -> None:
        self.model = model
        self.mean, self.std = float(mean), float(std)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=0)

    def step(self, batch: OriginalBatch) -> float:
        self.model.train()
        target_normed = (batch.target - self.mean) / self.std
        output = self.model(*batch.inputs)
        loss = self.criterion(output, target_normed)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def load_matforge_weights(original: OriginalCGCNN, model: nn.Module, head: str) -> None:
    """Copy a matforge ``AtomisticModel`` (``cgcnn`` backbone, ``cgcnn`` head named ``head``) into ``original``.

    Names map by prefix: ``backbone.X`` -> ``X``, ``heads.<head>.X`` -> ``X`` (the head's normaliser
    buffers ``mean``/``std`` have no counterpart in the original network and are skipped).
    """
    state: dict[str, Tensor] = {}
    for name, value in model.state_dict().items():
        if name.startswith("backbone."):
            state[name[len("backbone."):]] = value
        elif name.startswith(f"heads.{head}."):
            key = name[len(f"heads.{head}."):]
            if key not in ("mean", "std"):
                state[key] = value
    original.load_state_dict(state, strict=True)
