"""Atom-budget batches, shuffled per epoch, dealt to ranks without communication, resumable.

For epoch ``e`` every rank computes the same *global* batch list:

1. order: ``rng(seed, e).permutation(R)`` (numpy PCG64 seeded with ``[seed, e]``), or ``0..R-1``
   without shuffling;
2. greedy packing in that order: a structure joins the current batch if the batch's atom total
   stays ``<= max_atoms``, else it starts a new batch. A structure with more atoms than the budget
   gets a batch of its own (and one warning per sampler);
3. dealing: with G global batches and W ranks, rank r takes batches ``r, r + W, r + 2W, ...``.
   Every rank must take the same number of steps, so when W does not divide G:

   * ``drop_last=False`` (default): the list is padded to ``ceil(G / W) * W`` batches by repeating
     its first batches (``global[0], global[1], ...``, as packed), so a few structures are seen
     twice in that epoch; the padding is part of the global list, so the last step is a full step
     (and balanced like any other: its partial batch and the copies are dealt anew);
   * ``drop_last=True``: the last ``G mod W`` batches are dropped, so a few structures are not seen
     in that epoch (a different few each epoch when shuffling).

   With ``world_size=1`` nothing is padded or dropped: every index appears exactly once per epoch.

4. balancing (optional, ``cost`` given and W > 1): each full step of W consecutive global batches
   is re-partitioned so that the ranks' estimated costs are about equal
   (:mod:`matforge.datasets.step_balance`); the structures of a step stay in that step.

Resuming: ``state_dict()`` records ``epoch`` and ``batch_index`` (this rank's position within the
epoch); after ``load_state_dict`` the next iteration yields exactly the batches from
``batch_index`` on, then following epochs start at 0. With DataLoader workers the sampler runs
ahead of the training loop (prefetching), so pass the number of batches the loop has *consumed*
in the current pass: ``state_dict(consumed=k)``; without it the count of batches handed out is
used, which is exact only for ``num_workers=0``.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Iterator

import numpy as np

from matforge.datasets.step_balance import balance_steps


def pack_boundaries(sizes: np.ndarray, max_atoms: int) -> np.ndarray:
    """Greedy packing of structures of ``sizes`` atoms, in the given order, into consecutive
    batches of at most ``max_atoms`` atoms (a structure larger than the budget forms a batch
    alone). Returns ``starts`` (G+1,): batch k is positions ``starts[k]:starts[k+1]``."""
    starts = [0]
    total = 0
    for position, size in enumerate(np.asarray(sizes).tolist()):
        if total and total + size > max_atoms:
            starts.append(position)
            total = 0
        total += size
    if total:
        starts.append(len(sizes))
    return np.asarray(starts, dtype=np.int64)


def strided_share(num_records: int, world_size: int, rank: int) -> np.ndarray:
    """Record indices ``rank, rank + W, rank + 2W, ...`` of ``0..num_records-1``: the ranks' shares
    are disjoint and together hold every record exactly once (validation and test, where a padded
    duplicate would count a structure twice). Shares differ by at most one record; a rank may get
    none."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    return np.arange(rank, num_records, world_size, dtype=np.int64)


class AtomBudgetBatchSampler:
    """Yields lists of dataset indices (one batch each) for this rank; see the module docstring.

    Usable as ``DataLoader(dataset, batch_sampler=sampler, ...)``. ``len(sampler)`` is the number
    of batches per rank in the current epoch (it can change between epochs when structure sizes
    vary, since packing follows the permutation).
    """

    def __init__(self, natoms: np.ndarray, max_atoms: int, *, shuffle: bool = True, seed: int = 0,
                 world_size: int = 1, rank: int = 0, drop_last: bool = False,
                 epoch: int = 0, start_batch: int = 0, cost: np.ndarray | None = None) -> None:
        natoms = np.asarray(natoms)
        if natoms.ndim != 1:
            raise ValueError(f"natoms must be a 1-d array, got shape {natoms.shape}")
        if natoms.size and int(natoms.min()) < 1:
            raise ValueError("natoms must be positive for every structure")
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.natoms = natoms.astype(np.int64)
        self.max_atoms = int(max_atoms)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.cost = None
        if cost is not None:
            self.cost = np.asarray(cost, dtype=np.float64)
            if self.cost.shape != self.natoms.shape or not np.isfinite(self.cost).all():
                raise ValueError(f"cost must be finite with the shape of natoms {self.natoms.shape}, "
                                 f"got shape {self.cost.shape}")
        digest = hashlib.sha256(self.natoms.tobytes())
        if self.cost is not None:
            digest.update(self.cost.tobytes())
        self._fingerprint = digest.hexdigest()[:16]
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._warned = False
        self.epoch = 0
        self.start_batch = 0
        self.batch_index = 0
        self.set_epoch(epoch, start_batch)

    # -- the batch lists ----------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which structures are packed in ``epoch``."""
        n = self.natoms.shape[0]
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _packed(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order, starts)`` of ``epoch``: global batch k is ``order[starts[k]:starts[k+1]]``."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        order = self.epoch_order(epoch)
        starts = pack_boundaries(self.natoms[order], self.max_atoms)
        order, starts = self._pad_last_step(order, starts)
        if self.cost is not None and self.world_size > 1:
            perm, starts = balance_steps(self.natoms[order], self.cost[order], starts, self.max_atoms,
                                         self.world_size)
            order = order[perm]
        oversized = self.natoms > self.max_atoms
        if oversized.any() and not self._warned:
            self._warned = True
            warnings.warn(
                f"{int(oversized.sum())} structure(s) have more atoms than max_atoms={self.max_atoms} "
                f"(largest {int(self.natoms.max())}); each gets a batch of its own", stacklevel=3)
        self._cache = (epoch, order, starts)
        return order, starts

    def _pad_last_step(self, order: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(order, starts)`` with copies of the first batches appended until W divides the batch
        count (``drop_last=False`` and W > 1 only; see the module docstring)."""
        g, w = starts.shape[0] - 1, self.world_size
        if w < 2 or self.drop_last or g == 0 or g % w == 0:
            return order, starts
        copies = [order[starts[k % g]:starts[k % g + 1]] for k in range(w - g % w)]
        sizes = np.array([c.shape[0] for c in copies], dtype=np.int64)
        return (np.concatenate([order, *copies]),
                np.concatenate([starts, starts[-1] + np.cumsum(sizes)]))

    def global_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of ``epoch`` before dealing (identical on all ranks; with
        ``drop_last=False`` and W > 1 the padding copies included)."""
        order, starts = self._packed(epoch)
        return [order[starts[k]:starts[k + 1]].tolist() for k in range(starts.shape[0] - 1)]

    def _rank_batch_ids(self, epoch: int) -> np.ndarray:
        """Positions in the global list of this rank's batches of ``epoch``."""
        g = self._packed(epoch)[1].shape[0] - 1
        w = self.world_size
        ids = np.arange(g, dtype=np.int64)
        if w > 1 and g % w:  # drop_last (without it the list is already padded to full steps)
            ids = ids[: (g // w) * w]
        return ids[self.rank::w]

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (all of them, ignoring ``start_batch``)."""
        order, starts = self._packed(epoch)
        return [order[starts[k]:starts[k + 1]].tolist() for k in self._rank_batch_ids(epoch).tolist()]

    # -- epochs and resuming --------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int | None = None) -> None:
        """Select ``epoch``. ``start_batch`` skips this rank's first batches of it; when omitted it
        is 0, except that re-selecting the epoch just restored by :meth:`load_state_dict` keeps
        the restored position (so a training loop that calls ``set_epoch`` at the top of every
        epoch resumes correctly)."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if start_batch is None:
            start_batch = self.start_batch if epoch == self.epoch else 0
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = epoch
        self.start_batch = int(start_batch)
        self.batch_index = self.start_batch
        self._pass_start = self.start_batch

    def __len__(self) -> int:
        return int(self._rank_batch_ids(self.epoch).shape[0])

    def __iter__(self) -> Iterator[list[int]]:
        order, starts = self._packed(self.epoch)
        ids = self._rank_batch_ids(self.epoch).tolist()
        start = self.start_batch
        self._pass_start = start
        self.batch_index = start
        for k in range(start, len(ids)):
            self.batch_index = k + 1
            g = ids[k]
            yield order[starts[g]:starts[g + 1]].tolist()
        # a finished pass: the next pass over this epoch (or a later one) starts from the top
        self.start_batch = 0

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """``{epoch, batch_index, seed, ...}``; ``consumed``: batches the loop has taken in the
        current pass (see the module docstring)."""
        if consumed is None:
            batch_index = self.batch_index
        else:
            batch_index = self._pass_start + int(consumed)
        return {
            "epoch": self.epoch,
            "batch_index": int(batch_index),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "max_atoms": self.max_atoms,
            "world_size": self.world_size,
            "rank": self.rank,
            "drop_last": self.drop_last,
            "num_structures": int(self.natoms.shape[0]),
            "natoms_sha256": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``(state['epoch'], state['batch_index'])``. Refuses a state whose batches
        would differ (other seed, budget, world size, shuffling or dataset)."""
        for key, mine in (("seed", self.seed), ("shuffle", self.shuffle), ("max_atoms", self.max_atoms),
                          ("world_size", self.world_size), ("drop_last", self.drop_last),
                          ("natoms_sha256", self._fingerprint)):
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has {mine!r}; "
                                 "resuming would not give the same batches")
        self.set_epoch(int(state["epoch"]), int(state["batch_index"]))

    def __repr__(self) -> str:
        return (f"AtomBudgetBatchSampler(structures={self.natoms.shape[0]}, max_atoms={self.max_atoms}, "
                f"epoch={self.epoch}, rank={self.rank}/{self.world_size}, batches={len(self)})")
