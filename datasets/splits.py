"""Leak-free train/validation/test splits of a shard directory.

Records are grouped (by trajectory id, by reduced composition, or not at all), and whole groups are
dealt to the splits so that frames of one trajectory or one material never sit on two sides.

Assignment (deterministic for a seed): the groups are put in a random order drawn from
``numpy.random.default_rng(seed)``; each group in turn goes to the split whose record count is
furthest below its target, i.e. ``argmax_k (f_k · R - c_k)`` with ``f_k`` the fraction, ``R`` the
number of records and ``c_k`` the records already assigned (ties go to the earlier split). Since
``Σ_k (f_k R - c_k) > 0`` until every record is placed, the chosen split is always below its target:
a split with ``f_k = 0`` never receives a group, no split ends more than one group (the largest,
``g``) above its target, and none more than ``(K - 1) g`` below it (``K`` splits), because the
shortfalls sum to the overshoots.

Files: ``DIR/splits/<name>.npy`` (int64 global record indices, sorted) for each split and
``DIR/splits/split.json`` (names, fractions, group, seed, counts, the manifest's dataset id). The
folder is written beside ``DIR/splits`` under a temporary name and renamed into place, so readers
see either the old complete set of splits or the new one. Read a split with
``open_dataset(DIR, split=name)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from matforge.datasets.errors import DatasetError
from matforge.datasets.manifest import Manifest, read_index
from matforge.datasets.shard_dataset import SPLITS_DIR

GROUPINGS = ("trajectory", "composition", "none")
DEFAULT_NAMES = {1: ("train",), 2: ("train", "test"), 3: ("train", "val", "test")}
SPLIT_INFO_NAME = "split.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SUM_TOLERANCE = 1e-6


@dataclass
class SplitInfo:
    """Contents of ``split.json``."""

    names: list[str]
    fractions: list[float]
    group: str
    seed: int
    counts: dict[str, int]
    groups: dict[str, int]
    dataset_id: str
    num_records: int


def check_fractions(fractions: Sequence[float], names: Sequence[str] | None = None) -> tuple[list[float], list[str]]:
    """Validate fractions (finite, >= 0, summing to 1) and names (one per fraction, unique, usable
    as file names); default names are train / val / test. Raises ``ValueError`` saying what is wrong."""
    try:
        values = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be numbers, got {list(fractions)!r}") from None
    if not values:
        raise ValueError("no fractions given")
    if any(not np.isfinite(f) for f in values):
        raise ValueError(f"fractions must be finite, got {values}")
    negative = [f for f in values if f < 0]
    if negative:
        raise ValueError(f"fractions must not be negative, got {values}")
    total = sum(values)
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"fractions must sum to 1, got {values} (sum {total:g})")
    if names is None:
        if len(values) not in DEFAULT_NAMES:
            raise ValueError(f"{len(values)} fractions need explicit names (--names a,b,...)")
        names = DEFAULT_NAMES[len(values)]
    names = [str(n).strip() for n in names]
    if len(names) != len(values):
        raise ValueError(f"{len(names)} names {names} for {len(values)} fractions {values}")
    if len(set(names)) != len(names):
        raise ValueError(f"split names must be distinct, got {names}")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"split names must be letters, digits, '_' or '-' (not starting with '-'/'_'), got {bad}")
    return values, names


def group_codes(index: dict[str, np.ndarray], group: str) -> np.ndarray:
    """Group id per record (int, shape (R,)) from ``index.npz`` arrays for ``group``."""
    if group == "trajectory":
        return np.asarray(index["trajectory_code"], dtype=np.int64)
    if group == "composition":
        return np.asarray(index["composition_code"], dtype=np.int64)
    if group == "none":
        return np.arange(index["natoms"].shape[0], dtype=np.int64)
    raise ValueError(f"unknown grouping {group!r}; one of {', '.join(GROUPINGS)}")


def assign_groups(codes: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Deal whole groups to splits (see the module docstring).

    ``codes``: int array (R,), the group of each record. Returns one sorted int64 array of record
    indices per fraction; together they hold every index in ``0..R-1`` exactly once.
    """
    codes = np.asarray(codes, dtype=np.int64)
    fractions = np.asarray(fractions, dtype=np.float64)
    groups, inverse, sizes = np.unique(codes, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(groups.shape[0])
    targets = fractions * codes.shape[0]
    counts = np.zeros(fractions.shape[0], dtype=np.int64)
    split_of_group = np.empty(groups.shape[0], dtype=np.int64)
    for g in order:
        k = int(np.argmax(targets - counts))
        split_of_group[g] = k
        counts[k] += sizes[g]
    split_of_record = split_of_group[inverse.reshape(-1)]
    return [np.flatnonzero(split_of_record == k).astype(np.int64) for k in range(fractions.shape[0])]


def make_splits(directory: Path | str, fractions: Sequence[float], names: Sequence[str] | None = None,
                group: str = "trajectory", seed: int = 0) -> tuple[dict[str, np.ndarray], SplitInfo]:
    """Compute the splits of a shard directory without writing anything."""
    values, names = check_fractions(fractions, names)
    if group not in GROUPINGS:
        raise ValueError(f"unknown grouping {group!r}; one of {', '.join(GROUPINGS)}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    manifest = Manifest.read(directory)
    index = read_index(directory)
    codes = group_codes(index, group)
    if codes.shape[0] != manifest.num_records:
        raise DatasetError(f"{directory}: index.npz has {codes.shape[0]} records, manifest {manifest.num_records}")
    parts = assign_groups(codes, values, int(seed))
    splits = dict(zip(names, parts))
    info = SplitInfo(
        names=list(names), fractions=values, group=group, seed=int(seed),
        counts={n: int(p.shape[0]) for n, p in splits.items()},
        groups={n: int(np.unique(codes[p]).shape[0]) for n, p in splits.items()},
        dataset_id=manifest.dataset_id, num_records=manifest.num_records,
    )
    return splits, info


def write_splits(directory: Path | str, fractions: Sequence[float], names: Sequence[str] | None = None,
                 group: str = "trajectory", seed: int = 0, overwrite: bool = False) -> SplitInfo:
    """Compute the splits and write ``DIR/splits/`` atomically; an existing ``DIR/splits`` is
    replaced only with ``overwrite`` (a new test split must not silently replace the old one)."""
    directory = Path(directory)
    splits, info = make_splits(directory, fractions, names, group, seed)
    final = directory / SPLITS_DIR
    if final.exists() and not overwrite:
        raise DatasetError(f"{final}: splits already exist (pass --overwrite to replace them)")
    staging = directory / f".{SPLITS_DIR}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name, indices in splits.items():
            np.save(staging / f"{name}.npy", indices, allow_pickle=False)
        (staging / SPLIT_INFO_NAME).write_text(json.dumps(asdict(info), indent=2) + "\n")
        if final.exists():
            trash = directory / f".{SPLITS_DIR}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def read_split_info(directory: Path | str) -> SplitInfo:
    """Read ``DIR/splits/split.json``."""
    path = Path(directory) / SPLITS_DIR / SPLIT_INFO_NAME
    try:
        raw = json.loads(path.read_text())
        return SplitInfo(**raw)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no splits; run `matforge data split {directory}` first") from None
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise DatasetError(f"{path}: unreadable split description ({exc})") from None
