"""The dataset manifest: ``DIR/manifest.json`` describes a directory of LMDB shards.

It is written last, after every shard is complete, so a directory with a manifest is complete.
Readers check the schema version, each shard's size and its header against it.

Beside it, ``DIR/index.npz`` (loaded with ``allow_pickle=False``) holds per-record arrays used
for batching and splitting without touching the shards:

* ``natoms`` int32 (R,)
* ``trajectory_code`` int32 (R,) indexing ``trajectories`` (unicode array)
* ``composition_code`` int32 (R,) indexing ``compositions`` (unicode array)
* ``equilibrium`` int8 (R,): 1 relaxed, 0 off-equilibrium, -1 unknown
* ``volume`` float64 (R,): cell volume in Å³, NaN unless periodic in all three directions (for
  balancing ranks' work; datasets written before it was added lack it, and batching falls back to
  atom counts)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matforge.datasets.errors import DatasetError

FORMAT_NAME = "matforge-lmdb"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.npz"
SKIPPED_NAME = "skipped.jsonl"

UNITS = {
    "positions": "angstrom",
    "cell": "angstrom, lattice vectors as rows",
    "energy": "eV, total energy of the cell",
    "forces": "eV/angstrom",
    "stress": "eV/angstrom^3, full 3x3, ASE sign (tensile positive)",
}


@dataclass
class ShardInfo:
    file: str
    num_records: int
    num_atoms: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """Contents of ``manifest.json``; see the module docstring."""

    dataset_id: str
    num_records: int
    num_atoms: int
    elements: list[int]
    labels: dict[str, Any]
    statistics: dict[str, Any]
    shards: list[ShardInfo]
    sources: list[dict[str, Any]] = field(default_factory=list)
    num_skipped: int = 0
    command: str = ""
    created: str = ""
    matforge_version: str = ""
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))
    format: str = FORMAT_NAME
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def write(self, directory: Path) -> None:
        """Write atomically (temp file + rename)."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def read(cls, directory: Path | str) -> "Manifest":
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise DatasetError(f"{directory}: not a directory")
        if not path.is_file():
            raise DatasetError(f"{directory}: no {MANIFEST_NAME}; not a matforge dataset (or its conversion did not finish)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable manifest ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise DatasetError(f"{path}: not a matforge manifest (format={raw.get('format') if isinstance(raw, dict) else None!r})")
        version = raw.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise DatasetError(
                f"{path}: schema version {version!r} is not supported; this matforge reads versions 1..{SCHEMA_VERSION}"
                " (upgrade matforge to read data written by a newer release)"
            )
        try:
            raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
            known = {f for f in cls.__dataclass_fields__}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: malformed manifest ({exc})") from None

    def shard_offsets(self) -> np.ndarray:
        """Cumulative record counts, shape (num_shards + 1,): shard s holds [off[s], off[s+1])."""
        return np.concatenate([[0], np.cumsum([s.num_records for s in self.shards])]).astype(np.int64)


def read_index(directory: Path | str) -> dict[str, np.ndarray]:
    """Load ``index.npz`` (no pickle)."""
    path = Path(directory) / INDEX_NAME
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable index ({exc})") from None
