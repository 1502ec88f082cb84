"""matforge.datasets: DFT data sources → LMDB shards → graph batches.

Public API (imported lazily so that ``matforge --help`` stays fast)::

    from matforge.datasets import open_dataset, convert, Record
    ds = open_dataset("shards/")            # len(ds), ds[i] -> Record
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Record": "matforge.datasets.record",
    "validate": "matforge.datasets.record",
    "open_dataset": "matforge.datasets.shard_dataset",
    "ShardDataset": "matforge.datasets.shard_dataset",
    "load_split": "matforge.datasets.shard_dataset",
    "convert": "matforge.datasets.convert",
    "Manifest": "matforge.datasets.manifest",
    "RecordError": "matforge.datasets.errors",
    "SourceError": "matforge.datasets.errors",
    "DatasetError": "matforge.datasets.errors",
    "make_reader": "matforge.datasets.readers",
    "GraphConfig": "matforge.datasets.graphs",
    "GraphBuilder": "matforge.datasets.graphs",
    "GraphDataset": "matforge.datasets.loader",
    "make_loader": "matforge.datasets.loader",
    "AtomBudgetBatchSampler": "matforge.datasets.sampler",
    "write_synth": "matforge.datasets.synth",
    "write_splits": "matforge.datasets.splits",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'matforge.datasets' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
