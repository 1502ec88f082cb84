"""The reader interface every source format implements.

A reader is split in two so conversion can run in parallel without loading a whole file:

* :meth:`Reader.items` runs in the main process and streams cheap raw items (a CIF string and its
  labels, one MPtrj frame's dict, an ASE ``Atoms``...) with a *locator* that names the record in
  the file ("row 17", "mp-1234/frame 3"). It raises :class:`SourceError` when the file as a whole
  cannot be read (missing, empty, not this format, truncated).
* :meth:`Reader.to_record` runs in a worker process and turns one item into a :class:`Record` in
  matforge's units and sign conventions; it raises :class:`RecordError` for a bad record, which the
  conversion skips and reports.

Readers declare in ``conversions`` the unit and sign conversions they apply; they are copied into
the manifest.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

from matforge.datasets.record import Record


@dataclass(frozen=True)
class RawItem:
    """One unparsed record: ``locator`` names it in its file, ``payload`` is format-specific."""

    locator: str
    payload: Any


class Reader(abc.ABC):
    """Base class of the source readers (see module docstring)."""

    format_name: ClassVar[str]
    description: ClassVar[str] = ""
    conversions: ClassVar[tuple[str, ...]] = ()
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path | str, options: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.options = dict(options or {})

    @classmethod
    @abc.abstractmethod
    def sniff(cls, path: Path) -> bool:
        """Cheap check (name, first bytes) whether ``path`` looks like this format."""

    @abc.abstractmethod
    def items(self) -> Iterator[RawItem]:
        """Stream the raw items of the source, in file order."""

    @abc.abstractmethod
    def to_record(self, item: RawItem) -> Record:
        """Convert one raw item; raise :class:`RecordError` if it is unusable."""

    def source_files(self) -> list[Path]:
        """The files this source reads (for checksums); a folder reader lists its files."""
        return [self.path]

    def size_hint(self) -> int | None:
        """Number of items if cheaply known (for the progress bar)."""
        return None


def read_head(path: Path, nbytes: int = 4096) -> bytes:
    """First bytes of a file, transparently gunzipped for ``.gz``; empty on error."""
    import gzip

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read(nbytes)
        with open(path, "rb") as f:
            return f.read(nbytes)
    except OSError:
        return b""
