"""A copy of one or more corpora without the records a leakage check matched.

``write_without(corpora, drop, out)`` is :func:`matforge.datasets.combine.write_combined` (the
streaming copy: same writer as ``matforge data convert``, provenance of every corpus kept in the
manifest, published whole or not at all) with the matched records dropped, plus
``leakage_dropped.json`` in the copy: the check's settings, the tasks, and every dropped record with
the downstream structures it matched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from matforge.datasets.combine import CombineResult, write_combined

DROPPED_NAME = "leakage_dropped.json"


def write_without(corpora: Sequence[str | Path], drop: Mapping[str, Sequence[int]], out: str | Path,
                  details: Mapping | None = None, overwrite: bool = False, command: str = "") -> CombineResult:
    """Write ``out``: the records of ``corpora`` minus ``drop[str(corpus)]`` (global indices).

    ``details`` (e.g. :meth:`LeakageReport.to_dict`) goes into ``leakage_dropped.json`` beside the
    dropped ids. ``out`` must not be one of the corpora, and must be new or empty unless
    ``overwrite``. Raises :class:`DatasetError` otherwise."""

    def listing(folder: Path, datasets: list, dropped: list[set[int]]) -> None:
        payload = {
            "corpora": [{"path": str(ds.directory), "dataset_id": ds.manifest.dataset_id,
                         "dropped": [{"index": g, "id": ds[g].id} for g in sorted(d)]}
                        for ds, d in zip(datasets, dropped)],
            "details": dict(details or {}),
        }
        (folder / DROPPED_NAME).write_text(json.dumps(payload, indent=2) + "\n")

    return write_combined(corpora, out, drop, filter_note=f"leakage check; dropped ids in {DROPPED_NAME}",
                          overwrite=overwrite, command=command, extra_files=listing)
