"""The interface every backbone and head implements, and the edge geometry they share.

A *backbone* maps a crystal graph to per-atom embeddings; *heads* map embeddings to outputs
(per-atom energies, noise vectors, pooled properties). Backbones never see positions directly:
they get edge vectors ``r_ij`` formed in torch by :func:`edge_vectors`, so autograd reaches
positions and cell (forces = -∂E/∂r, stress = (1/V) ∂E/∂ε).

Edge geometry (edge e from neighbour ``j = edge_index[0, e]`` to centre ``i = edge_index[1, e]``,
graph ``b = batch[i]``, integer image shift ``S_e``)::

    F_b  = I + ε_b                               (deformation, ε_b symmetric 3×3 strain)
    pos' = pos F_{batch}                         (row vectors)
    L'_b = L_b F_b                               (lattice vectors as rows)
    r_ij = pos'[j] - pos'[i] + S_e L'_b          (Å)

At ε = 0 this is the plain edge vector; differentiating the energy with respect to ε at ε = 0
gives the virial, and stress = (1/|det L|) ∂E/∂ε (ASE convention, tensile positive).

Freezing for fine-tuning: ``Backbone.freeze_groups()`` returns ordered named groups
``[("embedding", [...]), ("block.0", [...]), ("block.1", [...]), ...]`` so "embedding + first k
blocks" is ``groups[: k + 1]``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class GraphInputs:
    """What a backbone sees. N atoms, E edges, B graphs."""

    z: Tensor            # (N,) long, atomic numbers
    edge_index: Tensor   # (2, E) long, [neighbour j, centre i]
    edge_vec: Tensor     # (E, 3) float, r_ij in Å (differentiable w.r.t. positions and strain)
    batch: Tensor        # (N,) long, graph of each atom
    num_graphs: int      # B

    @property
    def edge_length(self) -> Tensor:
        """(E,) |r_ij| in Å."""
        return torch.linalg.vector_norm(self.edge_vec, dim=-1)


@dataclass
class BackboneOutput:
    """Per-atom features: ``node`` (N, F) invariant; ``vector`` (N, 3, F) equivariant or None."""

    node: Tensor
    vector: Tensor | None = None


class Backbone(nn.Module, abc.ABC):
    """Base class of the architectures. Subclasses set ``arch`` and store constructor args."""

    arch: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {}

    @property
    @abc.abstractmethod
    def cutoff(self) -> float:
        """Neighbour cutoff in Å the backbone was built for."""

    @property
    def max_neighbors(self) -> int | None:
        """Nearest-k neighbour limit of its featurisation (None: all within the cutoff)."""
        return None

    @property
    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """F, the width of ``BackboneOutput.node``."""

    @property
    def smooth(self) -> bool:
        """True if the energy is a smooth function of positions (safe for forces/stress)."""
        return False

    @abc.abstractmethod
    def forward(self, inputs: GraphInputs) -> BackboneOutput:
        ...

    @abc.abstractmethod
    def freeze_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """Ordered ``(name, modules)``: "embedding" first, then each interaction block."""


def edge_vectors(pos: Tensor, cell: Tensor, shifts: Tensor, edge_index: Tensor, batch: Tensor,
                 strain: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Edge vectors r_ij (E, 3) under an optional strain (B, 3, 3); see the module docstring.

    Returns ``(edge_vec, pos', cell')`` so callers can reuse the deformed geometry.
    """
    if strain is not None:
        deform = torch.eye(3, dtype=pos.dtype, device=pos.device) + strain
        pos = torch.bmm(pos.unsqueeze(1), deform[batch]).squeeze(1)
        cell = torch.bmm(cell, deform)
    j, i = edge_index[0], edge_index[1]
    offsets = torch.bmm(shifts.to(pos.dtype).unsqueeze(1), cell[batch[i]]).squeeze(1)
    return pos[j] - pos[i] + offsets, pos, cell
