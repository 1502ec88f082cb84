"""Benchmark splits: test fold, validation carve, nested training sizes. Indices, not records.

Everything here works on positions ``0..n-1`` in the dataset order (= the source's row order) and
is deterministic. Protocols (see :mod:`matforge.finetune.tasks`):

* ``matbench_kfold``: exactly scikit-learn's ``KFold(n_splits=5, shuffle=True,
  random_state=18012019)``: ``np.random.RandomState(seed).shuffle(arange(n))``, then consecutive
  folds of sizes ``n // k + 1`` (the first ``n % k`` folds) and ``n // k``; fold ``i``'s test set is
  its slice and its training pool every other index, both returned in ascending order as sklearn
  does. (Written with numpy so that the base install needs no scikit-learn; the tests compare it
  with sklearn.)
* ``random_split``: fold ``i`` draws ``round(test_fraction · n)`` test records (whole groups, see
  below) with ``RandomState(split_seed + i)``.
* ``given_split``: the test positions are given (the source's own test file).

Validation: ``round(val_fraction · |pool|)`` records (at least one when the pool has two or more)
carved from each fold's training pool with ``RandomState(VAL_SEED)``, never from the test fold, so
the test fold is seen only by the final evaluation. Training sizes: the rest of the pool is put in
one order drawn with ``RandomState(SUBSAMPLE_SEED)`` and a size ``m`` takes its first ``m``
positions, so smaller sizes are subsets of larger ones and every backbone, strategy and seed sees
the same structures.

Groups (trajectory codes) keep the frames of one trajectory on one side of the random test split
and of the validation carve; with one record per group (relaxed-structure datasets) they change
nothing. The Matbench k-fold ignores them, as Matbench does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from matforge.finetune.tasks import MATBENCH_FOLDS, MATBENCH_SEED, Task

VAL_SEED = 0
"""Seed of the validation carve (the same for every fold, task and run seed)."""
SUBSAMPLE_SEED = 1
"""Seed of the order from which nested training sizes are taken."""
DEFAULT_VAL_FRACTION = 0.1


def kfold(n: int, n_splits: int = MATBENCH_FOLDS, seed: int = MATBENCH_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train, test), ...]`` of ``KFold(n_splits, shuffle=True, random_state=seed)`` over ``n`` items."""
    if n_splits < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {n_splits}")
    if n < n_splits:
        raise ValueError(f"cannot make {n_splits} folds of {n} records")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_splits, n // n_splits, dtype=np.int64)
    sizes[: n % n_splits] += 1
    folds = []
    start = 0
    for size in sizes:
        test_mask = np.zeros(n, dtype=bool)
        test_mask[order[start:start + size]] = True
        folds.append((np.flatnonzero(~test_mask), np.flatnonzero(test_mask)))
        start += size
    return folds


def _draw_groups(positions: np.ndarray, groups: np.ndarray | None, count: int,
                 rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Split ``positions`` into (drawn, rest): whole groups in a random order until ``count`` are drawn."""
    if count <= 0:
        return positions[:0], positions
    if groups is None:
        order = rng.permutation(len(positions))
        return np.sort(positions[order[:count]]), np.sort(positions[order[count:]])
    codes = np.asarray(groups)[positions]
    unique = np.unique(codes)
    drawn_codes: list = []
    total = 0
    sizes = {c: int(s) for c, s in zip(*np.unique(codes, return_counts=True))}
    for code in unique[rng.permutation(len(unique))]:
        if total >= count:
            break
        drawn_codes.append(code)
        total += sizes[code]
    mask = np.isin(codes, np.asarray(drawn_codes))
    return np.sort(positions[mask]), np.sort(positions[~mask])


def random_test_split(n: int, fold: int, test_fraction: float, seed: int = 0,
                      groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(pool, test)`` of fold ``fold`` of the repeated random split (whole groups on one side)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    count = max(1, int(round(test_fraction * n)))
    if count >= n:
        raise ValueError(f"a test fraction of {test_fraction} leaves no training data out of {n} records")
    test, pool = _draw_groups(np.arange(n), groups, count, np.random.RandomState(seed + fold))
    return pool, test


def carve_validation(pool: np.ndarray, val_fraction: float = DEFAULT_VAL_FRACTION,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(train_order, val)``: validation carved from a training pool with ``VAL_SEED``; the rest
    in the nested-subsampling order (``SUBSAMPLE_SEED``)."""
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    count = int(round(val_fraction * len(pool)))
    if val_fraction > 0 and len(pool) >= 2:
        count = max(1, count)
    count = min(count, len(pool) - 1)
    val, train = _draw_groups(pool, groups, count, np.random.RandomState(VAL_SEED))
    if len(train) == 0:
        raise ValueError(f"the validation carve left no training records (pool of {len(pool)})")
    order = np.random.RandomState(SUBSAMPLE_SEED).permutation(len(train))
    return train[order], val


@dataclass(frozen=True)
class FoldSplit:
    """One fold: ``test`` and ``val`` positions, and the training part in nested order."""

    fold: int
    train_order: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def train(self, size: int | None) -> np.ndarray:
        """The first ``size`` positions of the training order (all when ``size`` is None or too big)."""
        return self.train_order if size is None else self.train_order[: int(size)]

    def available(self) -> int:
        return int(len(self.train_order))


def fold_numbers(task: Task, folds: int | Sequence[int] | None) -> list[int]:
    """Which folds to run: all of the protocol's (None), the first ``N`` (int), or the listed ones."""
    limit = None if task.protocol == "random_split" else task.folds
    if folds is None:
        chosen = list(range(task.folds))
    elif isinstance(folds, int):
        chosen = list(range(folds))
    else:
        chosen = sorted({int(f) for f in folds})
    if not chosen:
        raise ValueError("no folds to run")
    bad = [f for f in chosen if f < 0 or (limit is not None and f >= limit)]
    if bad:
        raise ValueError(f"task {task.name!r} ({task.protocol}) has folds 0..{(limit or 1) - 1}; asked for {bad}")
    return chosen


def make_folds(task: Task, n: int, folds: Sequence[int], *, val_fraction: float = DEFAULT_VAL_FRACTION,
               groups: np.ndarray | None = None, test_positions: np.ndarray | None = None) -> list[FoldSplit]:
    """The splits of ``folds`` for a task over ``n`` records in dataset order."""
    splits = []
    matbench = kfold(n, task.folds, MATBENCH_SEED) if task.protocol == "matbench_kfold" else None
    for fold in folds:
        if task.protocol == "matbench_kfold":
            pool, test = matbench[fold]
        elif task.protocol == "random_split":
            pool, test = random_test_split(n, fold, task.test_fraction, task.split_seed, groups)
        elif task.protocol == "given_split":
            if test_positions is None or len(test_positions) == 0:
                raise ValueError(f"task {task.name!r}: the given split has no test records")
            test = np.sort(np.asarray(test_positions, dtype=np.int64))
            pool = np.setdiff1d(np.arange(n), test)
        else:
            raise ValueError(f"unknown protocol {task.protocol!r}")
        train_order, val = carve_validation(pool, val_fraction, groups)
        splits.append(FoldSplit(fold, train_order, val, np.asarray(test, dtype=np.int64)))
    return splits
