"""Where fine-tuning data come from: a shard directory, or any source ``matforge data convert``
reads, converted once into a cache.

A directory with a ``manifest.json`` is opened as it is. Anything else (a CGCNN folder, a Matbench
``*.json.gz``, a MatDeepLearn ``data.json``, a CSV of CIFs, extxyz...) is converted with the same
readers and writer as ``matforge data convert`` into ``CACHE/datasets/<key>/``, where ``key`` is the
sha256 of the format, the reader options and the name, size and sha256 of every file the readers
read: the same input is converted once, and a changed file (or option) converts anew. ``CACHE`` is
``$MATFORGE_CACHE``, else ``$XDG_CACHE_HOME/matforge``, else ``~/.cache/matforge``. The conversion
writes beside its final place and renames into it, so an interrupted one leaves nothing half
written; records it skipped are listed in the cached ``skipped.jsonl`` and counted on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from matforge.datasets.manifest import MANIFEST_NAME

if TYPE_CHECKING:  # pragma: no cover
    from matforge.datasets.shard_dataset import ShardDataset


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder (see the module docstring); ``cache_dir`` overrides it."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("MATFORGE_CACHE"):
        return Path(os.environ["MATFORGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "matforge"


def is_shard_directory(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def cache_key(sources: Sequence[str | os.PathLike], fmt: str = "auto", options: Mapping[str, str] | None = None) -> str:
    """sha256 of the format, options and every source file's name, size and content hash."""
    from matforge.datasets.readers import make_reader
    from matforge.datasets.shards import file_sha256

    digest = hashlib.sha256()
    digest.update(json.dumps({"format": fmt, "options": dict(sorted((options or {}).items()))}).encode())
    for source in sources:
        reader = make_reader(source, fmt, options)
        digest.update(f"|{reader.format_name}|".encode())
        for path in sorted(Path(p) for p in reader.source_files()):
            digest.update(f"{path.name}:{path.stat().st_size}:{file_sha256(path)};".encode())
    return digest.hexdigest()


def prepare_data(data: str | os.PathLike | Sequence[str | os.PathLike], format: str = "auto",
                 options: Mapping[str, str] | None = None, cache_dir: str | os.PathLike | None = None,
                 verbose: bool = True) -> "ShardDataset":
    """The records of ``data`` as a :class:`~matforge.datasets.shard_dataset.ShardDataset`.

    ``data``: a shard directory, or one or more sources of any format the readers know
    (``format`` and reader ``options`` as in ``matforge data convert``).
    """
    from matforge.datasets.convert import convert
    from matforge.datasets.shard_dataset import open_dataset

    sources = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not sources:
        from matforge.finetune.errors import FinetuneError

        raise FinetuneError("no data given")
    if len(sources) == 1 and is_shard_directory(sources[0]):
        return open_dataset(sources[0])
    key = cache_key(sources, format, options)
    target = cache_root(cache_dir) / "datasets" / key
    if not is_shard_directory(target):
        names = ", ".join(str(s) for s in sources)
        if verbose:
            print(f"[matforge] converting {names} into the cache {target}", file=sys.stderr, flush=True)
        report = convert(sources, target, fmt=format, options=options, overwrite=target.exists(),
                         command=f"matforge finetune (on-the-fly conversion of {names})")
        if report.num_skipped and verbose:
            print(f"[matforge] skipped {report.num_skipped} record(s) of {names}; see {target}/skipped.jsonl",
                  file=sys.stderr, flush=True)
    return open_dataset(target)


def record_ids(dataset: "ShardDataset") -> list[str]:
    """Record ids of ``dataset`` in its order (for a converted source: the source's order)."""
    return [dataset[i].id for i in range(len(dataset))]
