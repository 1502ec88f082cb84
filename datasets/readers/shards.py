"""A matforge shard directory as a source (format ``shards``): its records, as stored.

Lets every command that reads sources (``matforge predict``, ``data convert`` to re-shard or merge
directories) take a directory written by ``matforge data convert``. ``items()`` yields each record's
index (locator ``record <i>``); ``to_record`` decodes it (no conversion: the data are already in
matforge's units). The directory is opened, and its shards checked, when the reader is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

from matforge.datasets.manifest import MANIFEST_NAME
from matforge.datasets.readers.base import RawItem, Reader
from matforge.datasets.record import Record


class ShardDirectoryReader(Reader):
    format_name = "shards"
    description = "a shard directory written by matforge data convert"

    def __init__(self, path: Path | str, options: Mapping[str, str] | None = None) -> None:
        from matforge.datasets.shard_dataset import open_dataset

        super().__init__(path, options)
        self.dataset = open_dataset(self.path)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        return Path(path).is_dir() and (Path(path) / MANIFEST_NAME).is_file()

    def items(self) -> Iterator[RawItem]:
        for i in range(len(self.dataset)):
            yield RawItem(f"record {i}", i)

    def to_record(self, item: RawItem) -> Record:
        return self.dataset[int(item.payload)]

    def source_files(self) -> list[Path]:
        return [self.path / MANIFEST_NAME] + [self.path / s.file for s in self.dataset.manifest.shards]

    def size_hint(self) -> int | None:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        return dict(self.__dict__)
