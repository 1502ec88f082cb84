"""Periodic neighbour lists at C speed (vesin), one thread per call.

For centre ``i`` and neighbour ``j`` with integer image shift ``S`` (lattice vectors as rows of
``cell``)::

    d_ij = | positions[j] - positions[i] + S @ cell |  <=  cutoff          (Å)

Every pair within the cutoff is listed, in both directions (a full list). ``max_neighbors = k``
keeps the k nearest of each centre, exact distance ties broken by lower neighbour index, then
lower shift (lexicographic), so the choice is deterministic. The vesin calculator is created once
per process and thread and reused (it owns its output buffers); parallelism comes from loader
workers, not threads.
"""

from __future__ import annotations

import threading

import numpy as np

_CALCULATORS = threading.local()


def _calculator(cutoff: float):
    """This thread's vesin ``NeighborList`` for ``cutoff`` (created once, then reused).

    A calculator owns its output buffers, so it is per thread; a forked child inherits a private
    copy of the parent's memory, which is safe to keep using.
    """
    cache: dict[float, object] | None = getattr(_CALCULATORS, "cache", None)
    if cache is None:
        cache = _CALCULATORS.cache = {}
    nl = cache.get(cutoff)
    if nl is None:
        from vesin import NeighborList

        nl = cache[cutoff] = NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
    return nl


def raw_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
               with_distances: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """vesin's full list, unsorted: ``pairs (E, 2) [i, j]``, ``shifts (E, 3)``, ``d (E,)`` or None.

    The arrays are views into the calculator's buffers: valid until its next call.
    """
    pbc = np.asarray(pbc, dtype=bool)
    points = np.asarray(positions, dtype=np.float64)
    if pbc.any():
        box = np.asarray(cell, dtype=np.float64)
    else:
        box = np.zeros((3, 3))  # vesin needs a box only for periodic directions
    out = _calculator(float(cutoff)).compute(points=points, box=box, periodic=pbc,
                                             quantities="PSd" if with_distances else "PS", copy=False)
    return out[0], out[1], (out[2] if with_distances else None)


def nearest_order(i: np.ndarray, j: np.ndarray, s: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """Edge order sorted by (centre, distance, j, shift), keeping the first ``k`` of each centre."""
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, d, i))
    i_sorted = i[order]
    starts = np.searchsorted(i_sorted, i_sorted, side="left")
    rank = np.arange(i_sorted.shape[0]) - starts
    return order[rank < k]


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                  max_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list: ``(centre i, neighbour j, shifts S (E,3) int64, distances d (E,) Å)``.

    ``d = |positions[j] - positions[i] + S @ cell|``. Sorted by centre (stable, so deterministic);
    with ``max_neighbors`` each centre keeps its nearest k (ties: lower j, then lower shift).
    """
    pairs, shifts, dist = raw_pairs(positions, cell, pbc, cutoff, with_distances=True)
    i = pairs[:, 0].astype(np.int64)
    j = pairs[:, 1].astype(np.int64)
    if max_neighbors is None:
        order = np.argsort(i, kind="stable")
    else:
        order = nearest_order(i, j, shifts, dist, max_neighbors)
    return i[order], j[order], shifts[order].astype(np.int64), dist[order].copy()
