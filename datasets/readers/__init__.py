"""Source readers, one module per format, looked up by name or detected from the file.

Modules are imported only when a format is used, so ``matforge --help`` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Mapping

from matforge.datasets.errors import SourceError
from matforge.datasets.readers.base import RawItem, Reader

# name -> "module:Class", in the order auto-detection tries them (most specific first).
READERS: dict[str, str] = {
    "shards": "matforge.datasets.readers.shards:ShardDirectoryReader",
    "cgcnn": "matforge.datasets.readers.cgcnn_folder:CgcnnFolderReader",
    "mptrj": "matforge.datasets.readers.mptrj:MptrjReader",
    "matbench": "matforge.datasets.readers.matbench:MatbenchReader",
    "matdeeplearn": "matforge.datasets.readers.matdeeplearn:MatDeepLearnReader",
    "mlearn": "matforge.datasets.readers.mlearn:MlearnReader",
    "csv-cif": "matforge.datasets.readers.csv_cif:CsvCifReader",
    "ase": "matforge.datasets.readers.ase_formats:AseReader",
}


def reader_class(name: str) -> type[Reader]:
    if name not in READERS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(READERS)}")
    module, cls = READERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def detect_format(path: Path) -> str:
    """Name of the first reader whose ``sniff`` accepts ``path``."""
    path = Path(path)
    if not path.exists():
        raise SourceError(path, "no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise SourceError(path, "file is empty")
    for name in READERS:
        try:
            cls = reader_class(name)
        except ImportError:
            continue
        if cls.sniff(path):
            return name
    raise SourceError(path, f"cannot tell the format; pass --format (one of {', '.join(READERS)})")


def make_reader(path: Path | str, fmt: str = "auto", options: Mapping[str, str] | None = None) -> Reader:
    """A reader for ``path``; ``fmt='auto'`` detects the format."""
    path = Path(path)
    name = detect_format(path) if fmt == "auto" else fmt
    if not path.exists():
        raise SourceError(path, "no such file or directory")
    if name not in READERS:
        raise SourceError(path, f"unknown format {name!r}; known: {', '.join(READERS)}")
    cls = reader_class(name)
    unknown = set(options or {}) - set(cls.option_names)
    if unknown:
        raise SourceError(path, f"format {name!r} has no option(s) {sorted(unknown)}; it takes {list(cls.option_names) or 'none'}")
    return cls(path, options)


__all__ = ["READERS", "RawItem", "Reader", "detect_format", "make_reader", "reader_class"]
