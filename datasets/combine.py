"""One dataset from the records of one or more shard directories, minus chosen records.

``write_combined(corpora, out, drop)`` streams every record of ``corpora`` (in order) except the
global indices in ``drop[corpus]`` through :func:`matforge.datasets.convert.convert`, the writer of
``matforge data convert`` (same validation, shards, index and manifest; a record id seen twice
across corpora is skipped and listed in ``skipped.jsonl``, as in a conversion). Labels, source,
trajectory, frame and equilibrium flag are kept; splits of the corpora are not carried over (split
the result anew). It is ``matforge data merge`` (nothing dropped) and the writer of ``matforge data
leakage --drop-to`` (:mod:`matforge.datasets.leakage_drop`).

Provenance: the new manifest has one ``sources`` entry per corpus (path, dataset id, records read /
written / dropped, the filter) holding that corpus' own ``sources`` under ``"sources"``, so where the
labels came from (e.g. a machine-learned potential, its version and licence) survives any number of
merges and filtered copies; :func:`model_labels` finds those records at any depth.

Atomicity: the result is converted into ``.OUT.partial-<random>/dataset``, its manifest and the
caller's extra files are written there, and only then is it renamed to ``OUT``
(:mod:`matforge.datasets.publish`), so ``OUT`` is either absent, the old complete dataset, or the new
complete one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from matforge.datasets.errors import DatasetError
from matforge.datasets.manifest import Manifest
from matforge.datasets.publish import publish, staging_beside
from matforge.datasets.record import Record


@dataclass
class CombineResult:
    """What :func:`write_combined` wrote: ``out``, records written and dropped, records the writer
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


def _open_corpora(corpora: Sequence[str | Path], out: Path, overwrite: bool) -> list:
    """The datasets of ``corpora``; refuses a corpus given twice, ``out`` being one of them, or a
    non-empty ``out`` without ``overwrite`` (:class:`DatasetError`)."""
    from matforge.datasets.shard_dataset import open_dataset

    datasets = [open_dataset(c) for c in corpora]
    seen: set[Path] = set()
    for ds in datasets:
        where = ds.directory.resolve()
        if where in seen:
            raise DatasetError(f"{ds.directory}: given twice")
        seen.add(where)
        if out.resolve() == where:
            raise DatasetError(f"{out}: the new dataset cannot replace a dataset it is read from")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DatasetError(f"{out}: output exists and is not empty (pass --overwrite to replace it)")
    return datasets


def write_combined(corpora: Sequence[str | Path], out: str | Path, drop: Mapping[str, Sequence[int]] | None = None,
                   filter_note: str = "", overwrite: bool = False, command: str = "",
                   extra_files: Callable[[Path, list, list[set[int]]], None] | None = None) -> CombineResult:
    """Write ``out``: the records of ``corpora`` minus ``drop[str(corpus directory)]`` (global indices).

    ``filter_note`` says in each source entry why records were dropped; ``extra_files(folder,
    datasets, dropped)`` may write more files into the new dataset before it is published. Raises
    :class:`DatasetError` for a drop list naming another corpus or an index out of range, and as
    :func:`_open_corpora` does."""
    from matforge.datasets.convert import convert

    out = Path(out)
    datasets = _open_corpora(corpora, out, overwrite)
    drop = dict(drop or {})
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
             "filter": filter_note or "none", "command": ds.manifest.command,
             "sources": list(ds.manifest.sources or [])}
            for k, ds, d in zip(keys, datasets, dropped)
        ]
        manifest.write(inner)
        if extra_files is not None:
            extra_files(inner, datasets, dropped)
        publish(inner, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return CombineResult(out, report.num_records, sum(len(d) for d in dropped), report.num_skipped)


def _inner_sources(source: dict[str, Any], follow_paths: bool) -> tuple[list[Any], str]:
    """The sources and command of the dataset a matforge-lmdb ``source`` entry was copied from: nested in
    the entry, or (entries written before nesting) read from the manifest at its ``path`` when
    ``follow_paths`` and that manifest exists."""
    if "sources" in source:
        return list(source.get("sources") or []), str(source.get("command") or "")
    if follow_paths and source.get("format") == "matforge-lmdb" and source.get("path"):
        try:
            manifest = Manifest.read(source["path"])
        except (DatasetError, OSError, ValueError):
            return [], ""
        return list(manifest.sources or []), str(manifest.command or "")
    return [], ""


def model_labels(sources: Sequence[Any], follow_paths: bool = True) -> list[dict[str, Any]]:
    """The ``labels`` records of every source, at any depth of ``sources``, whose labels come from a
    model (``labels_from_model``): e.g. CHGNet's name, version, weights' hash and licence."""
    found: list[dict[str, Any]] = []
    for source in sources or []:
        if not isinstance(source, dict):
            continue
        if source.get("labels_from_model") and isinstance(source.get("labels"), dict):
            found.append(source["labels"])
        found.extend(model_labels(_inner_sources(source, follow_paths)[0], follow_paths))
    return found


def history(manifest: Manifest, follow_paths: bool = True) -> list[dict[str, Any]]:
    """How a dataset was made, first step first: ``{"command", "records_dropped", "filter"}`` for each
    dataset it was copied from (at any depth) and finally for itself."""
    steps: list[dict[str, Any]] = []

    def walk(sources: Sequence[Any]) -> None:
        for source in sources or []:
            if isinstance(source, dict) and source.get("format") == "matforge-lmdb":
                inner, command = _inner_sources(source, follow_paths)
                walk(inner)
                if command:
                    steps.append({"command": command, "records_dropped": 0, "filter": "none"})

    walk(manifest.sources)
    dropped = [s for s in manifest.sources or [] if isinstance(s, dict) and s.get("records_dropped")]
    steps.append({"command": manifest.command, "records_dropped": sum(int(s["records_dropped"]) for s in dropped),
                  "filter": "; ".join(sorted({str(s.get("filter", "")) for s in dropped})) or "none"})
    return steps
