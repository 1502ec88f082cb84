"""Equal work per rank in each data-parallel step: a cost per structure and a re-partition of a step.

In synchronous data-parallel training every rank waits, at the gradient all-reduce, for the slowest
rank of the step. Atom-budget batches hold about as many atoms each, but a message-passing step
costs in proportion to the number of *edges* (neighbour pairs within the cutoff), and the number of
neighbours per atom follows the density, which differs between materials by a factor of 2 or more.

Cost of a structure of n atoms in a periodic cell of volume V (Å³), cutoff r_c (Å)::

    neighbours per atom  k ≈ (n / V) · (4/3) π r_c³      (number density × cutoff sphere)
    directed edges       e ≈ n · k                        (one per image of a neighbour)
    atom pairs           p ≈ n · min(n, k)                (distinct ordered (j, i) within r_c: an atom
                                                           has at most n partners, its own images
                                                           included; further images add edges only)
    cost                 c = w_n · n + w_e · e + w_p · p

For a structure that is not periodic in all three directions (volume unknown, NaN) k is bounded
by n − 1 (every other atom), which is what is used (then p = e).

The weights (per atom, per edge, per pair; only their ratios matter) depend on the backbone, its
width, the objective and the device. PaiNN aggregates its directional products per atom pair, so
small cells, where each pair has many images, cost far less than their edge count says: for the
quick start (PaiNN, 32 channels, forces and stress, CPU) a pair costs about 7 edges and an atom
almost nothing. :mod:`matforge.pretrain.cost_calibration` measures the weights at the start of a
run; ``(1, 1, 0)`` (atoms + edges) is the estimate without a measurement.

Re-partition of a step (``world_size`` = W consecutive batches of the packed epoch): its structures
are pooled and dealt again, largest cost first, each to the batch with the least cost so far among
those it fits in under the atom budget (longest-processing-time-first list scheduling: its maximum
is within 4/3 of the optimum, and far closer when, as here, structures are small against a batch).
A step is left as packed when a structure does not fit anywhere, when a batch would be empty, or
when the new partition is not cheaper at its most expensive batch. The pool of structures of each
step, the order of steps and thus what an epoch sees are unchanged; only which rank trains which
structure of a step changes, deterministically (every rank computes the same).
"""

from __future__ import annotations

import math

import numpy as np


def neighbours_per_atom(natoms: np.ndarray, volume: np.ndarray | None, cutoff: float) -> np.ndarray | None:
    """Estimated neighbours within ``cutoff`` per atom, k, float64 (R,); None when ``volume`` is None.

    natoms: (R,) atoms; volume: (R,) Å³ of each cell, NaN (or <= 0) where not fully periodic (then
    k = n − 1); cutoff: Å. See the module docstring.
    """
    n = np.asarray(natoms, dtype=np.float64)
    if volume is None:
        return None
    v = np.asarray(volume, dtype=np.float64)
    if v.shape != n.shape:
        raise ValueError(f"volume has shape {v.shape}, natoms {n.shape}")
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff}")
    periodic = np.isfinite(v) & (v > 0)
    sphere = 4.0 / 3.0 * math.pi * cutoff ** 3
    return np.where(periodic, n / np.where(periodic, v, 1.0) * sphere, np.maximum(n - 1.0, 0.0))


COST_TERMS = ("atom", "edge", "pair")
DEFAULT_COST_WEIGHTS = (1.0, 1.0, 0.0)
"""Weights per atom, edge and pair without a measurement: atoms + edges."""


def cost_features(natoms: np.ndarray, volume: np.ndarray | None, cutoff: float) -> np.ndarray | None:
    """Estimated (atoms, edges, pairs) of each structure, float64 (R, 3); None when ``volume`` is None."""
    n = np.asarray(natoms, dtype=np.float64)
    k = neighbours_per_atom(n, volume, cutoff)
    if k is None:
        return None
    return np.stack([n, n * k, n * np.minimum(n, k)], axis=1)


def check_cost_weights(weights: "tuple[float, ...] | list[float]") -> tuple[float, float, float]:
    """``weights`` as three finite numbers >= 0, not all zero (per atom, edge, pair); else ValueError."""
    values = tuple(float(w) for w in weights)
    if len(values) != 3 or not all(math.isfinite(w) and w >= 0 for w in values) or not any(values):
        raise ValueError(f"cost weights must be 3 finite numbers >= 0 (per {', '.join(COST_TERMS)}), "
                         f"not all zero; got {list(weights)}")
    return values  # type: ignore[return-value]


def structure_costs(natoms: np.ndarray, volume: np.ndarray | None, cutoff: float,
                    weights: "tuple[float, ...] | list[float]" = DEFAULT_COST_WEIGHTS) -> np.ndarray:
    """Estimated cost ``w_n·n + w_e·e + w_p·p`` of each structure, float64 (R,); module docstring.

    natoms: (R,) atoms; volume: (R,) Å³ of each cell, NaN (or <= 0) where not fully periodic, or
    None when unknown for all (then the cost is the atom count); cutoff: Å; weights: per atom,
    edge and pair (:func:`check_cost_weights`).
    """
    w = np.asarray(check_cost_weights(weights))
    features = cost_features(natoms, volume, cutoff)
    if features is None:
        return np.asarray(natoms, dtype=np.float64).copy()
    return features @ w


def balance_steps(sizes: np.ndarray, costs: np.ndarray, starts: np.ndarray, max_atoms: int,
                  world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-partition each full step of ``world_size`` consecutive batches (module docstring).

    sizes, costs: (P,) atoms and cost of the structures in packed order; starts: (G+1,) batch
    boundaries in that order (batch k is positions ``starts[k]:starts[k+1]``). Returns ``(perm,
    new_starts)``: the structure at position i of the balanced order is the one at ``perm[i]`` of
    the packed order; batch k is ``new_starts[k]:new_starts[k+1]`` of it. A trailing partial step
    (fewer than ``world_size`` batches; the sampler pads or drops it) is left alone.

    Every step is dealt at once: the LPT rule runs over the steps in lockstep (numpy arrays of
    steps × ranks), one pass per structure position, so an epoch of millions of structures costs
    as many numpy passes as a step has structures, not a Python iteration per structure.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    costs = np.asarray(costs, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.int64)
    perm = np.arange(sizes.shape[0], dtype=np.int64)
    new_starts = starts.copy()
    w = int(world_size)
    num_batches = starts.shape[0] - 1
    full = num_batches - num_batches % w if w >= 2 else 0
    if full == 0:
        return perm, new_starts
    lo = starts[0:full:w]                                   # (S,) first position of each step
    count = starts[w:full + 1:w] - lo                       # (S,) structures per step
    steps, width = lo.shape[0], int(count.max())
    local = np.arange(width)[None, :]
    valid = local < count[:, None]                          # (S, L)
    pos = np.where(valid, lo[:, None] + local, 0)
    order = np.argsort(np.where(valid, -costs[pos], np.inf), axis=1, kind="stable")  # largest cost first
    pos, valid = np.take_along_axis(pos, order, 1), np.take_along_axis(valid, order, 1)
    load = np.zeros((steps, w))
    atoms = np.zeros((steps, w), dtype=np.int64)
    batch_of = np.full((steps, width), w, dtype=np.int64)  # w: padding
    dealt = np.ones(steps, dtype=bool)
    rows = np.arange(steps)
    for i in range(width):
        p, v = pos[:, i], valid[:, i]
        open_load = np.where(atoms + sizes[p][:, None] <= max_atoms, load, np.inf)
        j = np.argmin(open_load, axis=1)
        fits = np.isfinite(open_load[rows, j])
        dealt &= fits | ~v
        take = v & fits
        load[rows[take], j[take]] += costs[p[take]]
        atoms[rows[take], j[take]] += sizes[p[take]]
        batch_of[:, i] = np.where(v, j, w)
    per_batch = np.stack([(batch_of == k).sum(axis=1) for k in range(w)], axis=1)   # (S, w)
    dealt &= (per_batch > 0).all(axis=1)
    before = np.add.reduceat(costs[:starts[full]], starts[:full]).reshape(steps, w).max(axis=1)  # as packed
    # new order of each step: batch by batch, each batch's structures in packed order
    key = batch_of * (width + 1) + np.where(valid, pos - lo[:, None], width)
    new_pos = np.take_along_axis(pos, np.argsort(key, axis=1, kind="stable"), 1)
    after = load.max(axis=1)      # the dealt batches' costs (summed in dealing order)
    for s in np.flatnonzero(dealt & (after < before)):
        n, first = int(count[s]), int(s) * w
        perm[lo[s]:lo[s] + n] = new_pos[s, :n]
        new_starts[first + 1:first + w] = lo[s] + np.cumsum(per_batch[s])[:-1]
    return perm, new_starts
