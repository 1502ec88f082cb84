"""Records → PyG graphs: periodic neighbour lists at C speed (vesin), no geometry precomputed.

The graph stores *what the model needs to form edge vectors itself*, so gradients reach positions
and cell. For an edge e from neighbour ``j = edge_index[0, e]`` to centre ``i = edge_index[1, e]``
(PyG's source → target convention; messages are summed onto the centre)::

    r_ij = pos[j] - pos[i] + shifts[e] @ cell          (Å; shifts are integer image offsets)

Fields of one graph (N atoms, E edges, P requested properties):

=================  ===================  ==========================================================
``z``              long (N,)            atomic numbers
``pos``            float (N, 3)         Cartesian positions, Å
``cell``           float (1, 3, 3)      lattice vectors as rows, Å
``pbc``            bool (1, 3)
``edge_index``     long (2, E)          [neighbour j, centre i]
``shifts``         long (E, 3)          integer image shifts of j
``natoms``         long (1,)
``energy``         float (1,)           eV (0 where absent; see ``has_energy``)
``forces``         float (N, 3)         eV/Å (0 where absent; see ``has_forces``)
``stress``         float (1, 3, 3)      eV/Å³, ASE sign (0 where absent; see ``has_stress``)
``y``              float (1, P)         requested named properties (0 where absent)
``y_mask``         bool (1, P)          which of ``y`` are present
``has_energy`` ... bool (1,)            label presence, so batches of mixed sources collate
``equilibrium``    long (1,)            1 relaxed, 0 off-equilibrium, -1 unknown
``isolated``       bool (1,)            some atom has no neighbour within the cutoff
``idx``            long (1,)            index of the record in its dataset view
=================  ===================  ==========================================================

Neighbours: every atom pair (with periodic images) within ``cutoff``; ``max_neighbors`` keeps the
nearest k of each centre (CGCNN's 12), ties broken by neighbour index then shift for determinism.
An atom with no neighbour is handled by ``on_isolated``: ``"error"`` raises :class:`RecordError`,
``"flag"`` keeps the graph and sets ``isolated`` (message passing over no edges sums to zero, never
NaN). The builder uses one thread: parallelism comes from loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from matforge.datasets.errors import RecordError
from matforge.datasets.record import Record


@dataclass(frozen=True)
class GraphConfig:
    """How to turn a record into a graph.

    cutoff: neighbour radius in Å. max_neighbors: keep the k nearest per centre (None: all).
    properties: names of record properties to put in ``y`` (in this order).
    dtype: float dtype of positions, cell and labels ("float32" or "float64").
    on_isolated: "error" or "flag" (see module docstring).
    """

    cutoff: float = 6.0
    max_neighbors: int | None = None
    properties: tuple[str, ...] = ()
    dtype: str = "float32"
    on_isolated: str = "flag"

    def __post_init__(self) -> None:
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, got {self.max_neighbors}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if self.on_isolated not in ("error", "flag"):
            raise ValueError(f"on_isolated must be 'error' or 'flag', got {self.on_isolated}")


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                  max_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list: ``(centre i, neighbour j, shifts S (E,3) int, distances d (E,))``.

    Sorted by centre; with ``max_neighbors`` each centre keeps its nearest k.
    """
    from vesin import NeighborList

    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64)
    if not pbc.any():
        # vesin needs a box only for periodic directions; give a zero box for molecules
        box = np.zeros((3, 3))
    nl = NeighborList(cutoff=float(cutoff), full_list=True, n_threads=1)
    i, j, s, d = nl.compute(points=np.asarray(positions, dtype=np.float64), box=box,
                            periodic=pbc.tolist() if pbc.any() else False, quantities="ijSd")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    s = s.astype(np.int64)
    if max_neighbors is None:
        order = np.argsort(i, kind="stable")
    else:
        # sort by (centre, distance, j, shift) and keep the first k of each centre
        order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, d, i))
        i_sorted = i[order]
        starts = np.searchsorted(i_sorted, i_sorted, side="left")
        rank = np.arange(i_sorted.shape[0]) - starts
        order = order[rank < max_neighbors]
    return i[order], j[order], s[order], d[order]


class GraphBuilder:
    """Callable ``Record -> torch_geometric.data.Data`` with the fields of the module docstring."""

    def __init__(self, config: GraphConfig | None = None, **overrides) -> None:
        if config is None:
            config = GraphConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a GraphConfig or keyword overrides, not both")
        self.config = config
        self._dtype = torch.float64 if config.dtype == "float64" else torch.float32

    def __call__(self, record: Record, index: int = -1) -> Data:
        cfg = self.config
        n = record.natoms
        i, j, shifts, _ = neighbor_list(record.positions, record.cell, record.pbc, cfg.cutoff, cfg.max_neighbors)
        isolated = bool(np.bincount(i, minlength=n).min() == 0) if n else True
        if isolated and cfg.on_isolated == "error":
            lonely = int(np.flatnonzero(np.bincount(i, minlength=n) == 0)[0])
            raise RecordError(f"record {record.id!r}: atom {lonely} has no neighbour within {cfg.cutoff} Å")
        f = self._dtype
        properties = cfg.properties
        y = torch.zeros((1, len(properties)), dtype=f)
        y_mask = torch.zeros((1, len(properties)), dtype=torch.bool)
        for k, name in enumerate(properties):
            value = record.properties.get(name)
            if value is not None:
                y[0, k] = value
                y_mask[0, k] = True
        has_e, has_f, has_s = record.energy is not None, record.forces is not None, record.stress is not None
        return Data(
            z=torch.from_numpy(np.asarray(record.numbers, dtype=np.int64)),
            pos=torch.from_numpy(np.asarray(record.positions)).to(f),
            cell=torch.from_numpy(np.asarray(record.cell)).to(f).view(1, 3, 3),
            pbc=torch.from_numpy(np.asarray(record.pbc, dtype=bool)).view(1, 3),
            edge_index=torch.from_numpy(np.stack([j, i])),
            shifts=torch.from_numpy(shifts),
            natoms=torch.tensor([n], dtype=torch.long),
            energy=torch.tensor([record.energy if has_e else 0.0], dtype=f),
            forces=torch.from_numpy(record.forces).to(f) if has_f else torch.zeros((n, 3), dtype=f),
            stress=(torch.from_numpy(record.stress).to(f) if has_s else torch.zeros((3, 3), dtype=f)).view(1, 3, 3),
            y=y,
            y_mask=y_mask,
            has_energy=torch.tensor([has_e]),
            has_forces=torch.tensor([has_f]),
            has_stress=torch.tensor([has_s]),
            equilibrium=torch.tensor([-1 if record.equilibrium is None else int(record.equilibrium)], dtype=torch.long),
            isolated=torch.tensor([isolated]),
            idx=torch.tensor([index], dtype=torch.long),
            num_nodes=n,
        )
