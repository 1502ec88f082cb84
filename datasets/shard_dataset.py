"""Random access to the records of a shard directory.

``open_dataset(DIR)`` reads the manifest and index, checks every shard (present, same size as the
manifest says, a matforge header with this dataset's id and record count) and returns a
:class:`ShardDataset`. LMDB environments are opened lazily, once per process (see
:mod:`matforge.datasets.shards`); the dataset itself holds only paths and small arrays, so it
pickles cheaply into DataLoader workers and Ray workers, which open their own environments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from matforge.datasets.codec import decode
from matforge.datasets.errors import DatasetError
from matforge.datasets.manifest import Manifest, read_index
from matforge.datasets.record import Record
from matforge.datasets.shards import file_sha256, open_env, read_header, record_key

SPLITS_DIR = "splits"


class ShardDataset:
    """Records of a shard directory (optionally restricted to a subset of indices).

    ``len(ds)`` is the number of records in the view; ``ds[i]`` returns a :class:`Record`.
    ``ds.natoms`` is an int array of shape ``(len(ds),)`` for atom-budget batching.
    """

    def __init__(self, directory: Path, manifest: Manifest, index: dict[str, np.ndarray],
                 indices: np.ndarray | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self._index = index
        self._offsets = manifest.shard_offsets()
        self._paths = [str(self.directory / s.file) for s in manifest.shards]
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    # -- views --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.manifest.num_records if self.indices is None else int(self.indices.shape[0])

    def global_index(self, i: int) -> int:
        """Index of the ``i``-th record of this view in the whole directory."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for a dataset of {n} records")
        i = i % n
        return int(i if self.indices is None else self.indices[i])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ShardDataset":
        """A view on ``indices`` (positions within this view)."""
        idx = np.asarray(indices, dtype=np.int64)
        base = idx if self.indices is None else self.indices[idx]
        return ShardDataset(self.directory, self.manifest, self._index, base)

    def _column(self, name: str) -> np.ndarray:
        col = self._index[name]
        return col if self.indices is None else col[self.indices]

    @property
    def natoms(self) -> np.ndarray:
        return self._column("natoms")

    @property
    def volume(self) -> np.ndarray | None:
        """Cell volume per record (Å³, NaN where not fully periodic), or None for a dataset
        written before ``index.npz`` had it."""
        return self._column("volume") if "volume" in self._index else None

    @property
    def trajectory_codes(self) -> np.ndarray:
        return self._column("trajectory_code")

    @property
    def composition_codes(self) -> np.ndarray:
        return self._column("composition_code")

    @property
    def equilibrium(self) -> np.ndarray:
        """int8 per record: 1 relaxed, 0 off-equilibrium, -1 unknown."""
        return self._column("equilibrium")

    # -- access -------------------------------------------------------------------------------
    def raw(self, i: int) -> bytes:
        g = self.global_index(i)
        s = int(np.searchsorted(self._offsets, g, side="right") - 1)
        env = open_env(self._paths[s])
        with env.begin(buffers=False) as txn:
            blob = txn.get(record_key(g - int(self._offsets[s])))
        if blob is None:
            raise DatasetError(f"{self._paths[s]}: record {g - int(self._offsets[s])} missing (truncated shard?)")
        return blob

    def __getitem__(self, i: int) -> Record:
        try:
            return decode(self.raw(i))
        except ValueError as exc:
            raise DatasetError(f"{self.directory}: record {self.global_index(i)} is corrupt ({exc})") from None

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.directory)!r}, records={len(self)}, shards={len(self._paths)})"


def _check_shards(directory: Path, manifest: Manifest, verify_checksums: bool) -> None:
    for k, info in enumerate(manifest.shards):
        path = directory / info.file
        if not path.is_file():
            raise DatasetError(f"{path}: shard listed in the manifest is missing")
        size = path.stat().st_size
        if size != info.bytes:
            raise DatasetError(
                f"{path}: {size} bytes on disk but the manifest says {info.bytes}; the shard is truncated or was modified"
            )
        header = read_header(path)
        if header.get("dataset_id") != manifest.dataset_id or header.get("shard_index") != k:
            raise DatasetError(f"{path}: shard belongs to another dataset or position (header {header})")
        if header.get("num_records") != info.num_records:
            raise DatasetError(f"{path}: header counts {header.get('num_records')} records, manifest {info.num_records}")
        if verify_checksums and file_sha256(path) != info.sha256:
            raise DatasetError(f"{path}: checksum differs from the manifest; the shard is corrupt")


def load_split(directory: Path | str, name: str) -> np.ndarray:
    """Indices of split ``name`` written by :func:`matforge.datasets.splits.write_splits`."""
    path = Path(directory) / SPLITS_DIR / f"{name}.npy"
    if not path.is_file():
        raise DatasetError(f"{path}: no split named {name!r}; run `matforge data split {directory}` first")
    return np.load(path, allow_pickle=False)


def open_dataset(directory: Path | str, split: str | None = None, verify_checksums: bool = False) -> ShardDataset:
    """Open a shard directory written by ``matforge data convert`` (or ``synth``).

    ``split`` restricts the view to a split written by ``matforge data split``.
    ``verify_checksums`` also hashes every shard against the manifest (slow on large data).
    """
    directory = Path(directory)
    manifest = Manifest.read(directory)
    _check_shards(directory, manifest, verify_checksums)
    index = read_index(directory)
    if index["natoms"].shape[0] != manifest.num_records:
        raise DatasetError(f"{directory}: index.npz has {index['natoms'].shape[0]} records, manifest {manifest.num_records}")
    if "volume" in index and index["volume"].shape != index["natoms"].shape:
        raise DatasetError(f"{directory}: index.npz has {index['volume'].shape[0]} volumes for "
                           f"{index['natoms'].shape[0]} records")
    dataset = ShardDataset(directory, manifest, index)
    if split is not None:
        indices = load_split(directory, split)
        info_path = directory / SPLITS_DIR / "split.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            if info.get("dataset_id") not in (None, manifest.dataset_id):
                raise DatasetError(f"{info_path}: splits were made for another dataset (id {info.get('dataset_id')}); "
                                   f"re-run `matforge data split {directory}`")
        if indices.size and (indices.min() < 0 or indices.max() >= manifest.num_records):
            raise DatasetError(f"{directory}: split {split!r} indexes records outside 0..{manifest.num_records - 1}")
        dataset = dataset.subset(indices)
    return dataset
