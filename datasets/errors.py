"""Exceptions raised while reading sources and shards.

Two levels, so that a conversion can keep going past one bad structure but stops cleanly on a
file it cannot read at all:

* :class:`RecordError`: one record is unusable (corrupt CIF, NaN label, wrong shape...). The
  conversion skips it and writes file, record and reason to ``skipped.jsonl``.
* :class:`SourceError`: a whole file is unusable (missing, empty, unknown format, truncated JSON).
  The conversion stops with a one-line message naming the file; nothing already written is lost.
* :class:`DatasetError`: a shard directory cannot be opened (truncated or foreign shard, unknown
  schema version, missing manifest).
"""

from __future__ import annotations


class MatforgeDataError(Exception):
    """Base class of the data errors; the CLI prints these as one line, without a traceback."""


class RecordError(MatforgeDataError):
    """One record cannot be converted; ``reason`` says why in a short sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceError(MatforgeDataError):
    """A whole source file cannot be read."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class DatasetError(MatforgeDataError):
    """A shard directory cannot be opened or is inconsistent with its manifest."""
