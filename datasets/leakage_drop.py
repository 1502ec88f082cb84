"""A copy of one or more corpora without the records a leakage check matched.

``write_without(corpora, drop, out)`` streams every record of ``corpora`` (in order) except the
global indices in ``drop[corpus]`` through :func:`matforge.datasets.convert.convert`, the writer of
``matforge data convert`` (same validation, shards, index and manifest; a record id seen twice
across corpora is skipped and listed in ``skipped.jsonl``, as in a conversion). Labels, source,
trajectory, frame and equilibrium flag are kept; splits of the corpora are not carried over (split
the copy anew).

Atomicity: the copy is converted into ``.OUT.partial-<random>/dataset``; its manifest then gets one
``sources`` entry per corpus (path, dataset id, records read / written / dropped) and the folder
gets ``leakage_dropped.json`` (the check's settings, the tasks, and every dropped record with the
downstream structures it matched); only then is it renamed to ``OUT``
(:mod:`matforge.datasets.publish`), so ``OUT`` is either absent, the old complete dataset, or the
new complete one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from matforge.datasets.errors import DatasetError
from matforge.datasets.manifest import Manifest
from matforge.datasets.publish import publish, staging_beside
from matforge.datasets.record import Record

DROPPED_NAME = "leakage_dropped.json"


@dataclass
class DropResult:
    """What :func:`write_without` wrote: ``out``, records kept and dropped, records the writer
    skipped (duplicate ids across corpora)."""

    out: Path
    num_records: int
    num_dropped: int
    num_skipped: int


def _kept(datasets: Sequence, drop: Sequence[set[int]]) -> Iterator[Record]:
    for ds, dropped in zip(datasets, drop):
        for g in range(len(ds)):
            if g not in dropped:
                yield ds[g]


def write_without(corpora: Sequence[str | Path], drop: Mapping[str, Sequence[int]], out: str | Path,
                  details: Mapping | None = None, overwrite: bool = False, command: str = "") -> DropResult:
    """Write ``out``: the records of ``corpora`` minus ``drop[str(corpus)]`` (global indices).

    ``details`` (e.g. :meth:`LeakageReport.to_dict`) goes into ``leakage_dropped.json`` beside the
    dropped ids. ``out`` must not be one of the corpora, and must be new or empty unless
    ``overwrite``. Raises :class:`DatasetError` otherwise."""
    from matforge.datasets.convert import convert
    from matforge.datasets.shard_dataset import open_dataset

    out = Path(out)
    datasets = [open_dataset(c) for c in corpora]
    for ds in datasets:
        if out.resolve() == ds.directory.resolve():
            raise DatasetError(f"{out}: the filtered copy cannot replace the corpus it is read from")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DatasetError(f"{out}: output exists and is not empty (pass --overwrite to replace it)")
    keys = [str(ds.directory) for ds in datasets]
    unknown = sorted(set(drop) - set(keys))
    if unknown:
        raise DatasetError(f"drop list names corpora that were not given: {', '.join(unknown)}")
    dropped = [set(int(g) for g in drop.get(k, ())) for k in keys]
    for ds, d in zip(datasets, dropped):
        bad = [g for g in d if not 0 <= g < len(ds)]
        if bad:
            raise DatasetError(f"{ds.directory}: drop list holds record index {bad[0]} outside 0..{len(ds) - 1}")

    staging = staging_beside(out)
    try:
        inner = staging / "dataset"
        report = convert([], inner, command=command, records=_kept(datasets, dropped))
        manifest = Manifest.read(inner)
        manifest.sources = [
            {"path": k, "format": "matforge-lmdb", "dataset_id": ds.manifest.dataset_id,
             "records_read": len(ds), "records_dropped": len(d), "records_kept": len(ds) - len(d),
             "filter": f"leakage check; dropped ids in {DROPPED_NAME}"}
            for k, ds, d in zip(keys, datasets, dropped)
        ]
        manifest.write(inner)
        listing = {
            "corpora": [{"path": k, "dataset_id": ds.manifest.dataset_id,
                         "dropped": [{"index": g, "id": ds[g].id} for g in sorted(d)]}
                        for k, ds, d in zip(keys, datasets, dropped)],
            "details": dict(details or {}),
        }
        (inner / DROPPED_NAME).write_text(json.dumps(listing, indent=2) + "\n")
        publish(inner, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DropResult(out, report.num_records, sum(len(d) for d in dropped), report.num_skipped)
