"""Train / validation / test views of a fine-tuning dataset.

Three ways to say which record goes where (``split`` of :func:`select_splits`):

* fractions, ``"0.8,0.1,0.1"`` or ``[0.8, 0.1, 0.1]``: whole groups of records (by trajectory, by
  reduced composition, or none) dealt to the three sides with the seeded rule of ``matforge data
  split`` (:func:`matforge.datasets.splits.assign_groups`), so frames of one trajectory or cells of
  one material never sit on two sides;
* ``"shards"`` (or ``"shards:TRAIN,VAL,TEST"``): the splits written into the shard directory by
  ``matforge data split``;
* a mapping ``{"train": ids, "val": ids, "test": ids}`` of record ids (the harness's k-fold
  protocol); an id that is not in the data, or in two sides, is an error naming it.

``train_size`` then keeps a seeded random subset of that many training records (the learning-curve
protocol; the validation and test sides are unchanged). An empty side is an error naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from matforge.finetune.errors import FinetuneError

if TYPE_CHECKING:  # pragma: no cover
    from matforge.datasets.shard_dataset import ShardDataset

SIDES = ("train", "val", "test")


def _fractions(split: str | Sequence[float]) -> list[float]:
    from matforge.datasets.splits import check_fractions

    try:
        values = [float(v) for v in split.split(",")] if isinstance(split, str) else [float(v) for v in split]
        values, _ = check_fractions(values, list(SIDES) if len(values) == 3 else None)
    except ValueError as exc:
        raise FinetuneError(f"split {split!r}: {exc} (expected train,val,test fractions such as 0.8,0.1,0.1)") from None
    if len(values) != 3:
        raise FinetuneError(f"split {split!r}: expected three fractions train,val,test")
    return values


def _by_fractions(dataset: "ShardDataset", fractions: list[float], group: str, seed: int) -> dict[str, np.ndarray]:
    from matforge.datasets.splits import GROUPINGS, assign_groups

    if group not in GROUPINGS:
        raise FinetuneError(f"split group {group!r} is not one of {', '.join(GROUPINGS)}")
    if group == "trajectory":
        codes = np.asarray(dataset.trajectory_codes)
    elif group == "composition":
        codes = np.asarray(dataset.composition_codes)
    else:
        codes = np.arange(len(dataset))
    parts = assign_groups(codes, fractions, seed)
    return dict(zip(SIDES, parts))


def _by_shard_splits(dataset: "ShardDataset", spec: str) -> dict[str, np.ndarray]:
    from matforge.datasets.shard_dataset import load_split

    names = spec.split(":", 1)[1].split(",") if ":" in spec else list(SIDES)
    if len(names) != 3:
        raise FinetuneError(f"split {spec!r}: name three shard splits, e.g. shards:train,val,test")
    if dataset.indices is not None:
        raise FinetuneError(f"{dataset.directory}: split 'shards' needs the whole shard directory, not a view")
    parts = {side: np.asarray(load_split(dataset.directory, name), dtype=np.int64) for side, name in zip(SIDES, names)}
    for a in range(3):
        for b in range(a + 1, 3):
            shared = np.intersect1d(parts[SIDES[a]], parts[SIDES[b]])
            if shared.size:
                raise FinetuneError(f"{dataset.directory}: the {SIDES[a]} and {SIDES[b]} sides ({names[a]}, {names[b]}) "
                                    f"share {shared.size} record(s); the test side must be held out")
    return parts


def _by_ids(dataset: "ShardDataset", split: Mapping[str, Sequence[str]], ids: list[str]) -> dict[str, np.ndarray]:
    missing_sides = [s for s in SIDES if s not in split]
    if missing_sides:
        raise FinetuneError(f"explicit split lacks the side(s) {missing_sides}; give train, val and test id lists")
    position = {record_id: k for k, record_id in enumerate(ids)}
    out: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for side in SIDES:
        rows = []
        for record_id in split[side]:
            record_id = str(record_id)
            if record_id not in position:
                raise FinetuneError(f"{dataset.directory}: {side} id {record_id!r} is not a record of the data")
            if record_id in owner:
                raise FinetuneError(f"record {record_id!r} is in both the {owner[record_id]} and the {side} split")
            owner[record_id] = side
            rows.append(position[record_id])
        out[side] = np.asarray(rows, dtype=np.int64)
    return out


def select_splits(dataset: "ShardDataset", split: Any = "0.8,0.1,0.1", group: str = "trajectory", seed: int = 0,
                  train_size: int | None = None, ids: list[str] | None = None) -> dict[str, "ShardDataset"]:
    """``{"train", "val", "test"}`` views of ``dataset`` (see the module docstring).

    ``ids``: the dataset's record ids in order (read when an id mapping is given and ``ids`` is None).
    """
    if isinstance(split, Mapping):
        if ids is None:
            from matforge.finetune.data_source import record_ids

            ids = record_ids(dataset)
        parts = _by_ids(dataset, split, ids)
    elif isinstance(split, str) and split.startswith("shards"):
        parts = _by_shard_splits(dataset, split)
    else:
        parts = _by_fractions(dataset, _fractions(split), group, seed)
    if train_size is not None:
        if train_size < 1:
            raise FinetuneError(f"train_size must be >= 1, got {train_size}")
        train = parts["train"]
        if train_size > train.shape[0]:
            raise FinetuneError(f"train_size {train_size} is larger than the training split ({train.shape[0]} records)")
        keep = np.random.default_rng(seed).choice(train.shape[0], size=train_size, replace=False)
        parts["train"] = np.sort(train[keep])
    for side in SIDES:
        if parts[side].shape[0] == 0:
            raise FinetuneError(f"{dataset.directory}: the {side} split is empty ({len(dataset)} records, split {split!r}); "
                                "use more data or other fractions")
    return {side: dataset.subset(parts[side]) for side in SIDES}
