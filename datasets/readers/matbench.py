"""Matbench task files (``matbench_<task>.json.gz``): a pandas table in "split" orient.

Layout::

    {"index": [i0, i1, ...],
     "columns": ["structure", "<target>"],
     "data": [[<pymatgen Structure dict>, value], ...]}

(the three keys may come in any order; the file may be gzipped or plain JSON).

Reading: the file is streamed with ijson (C backend, floats instead of Decimals). ``columns`` and
``index`` are read first (each by a pass that stops as soon as it has the key, so this costs nothing
when they precede ``data``), then the rows of ``data`` are streamed one at a time: memory holds one
row and the index, never the table.

Conversion of one row:

* ``id``: the index value when it is a string (Matbench's own ids look like ``mb-jdft2d-001``),
  else ``mb-<task>-<index>`` with ``<task>`` the file name without ``matbench_`` and extensions
  (``matbench_jdft2d.json.gz``, index 7 -> ``mb-jdft2d-7``). ``trajectory`` = ``id``.
* structure: the ``structure`` column (option ``structure_column``), parsed by pymatgen.
* ``properties``: every other column whose value is a number or a boolean (1.0/0.0), under the
  column's name and **in the task's own units** (``exfoliation_en`` meV/atom, ``e_form`` eV/atom,
  ``gap pbe`` eV, ``log10(K_VRH)`` log10 GPa, ...): no conversion. Null values are left out; text
  and nested values are ignored. A row with no numeric target is skipped.
* no energy, forces or stress. ``equilibrium`` = True: Matbench's structure tasks hold the
  DFT-relaxed structures of the Materials Project and JARVIS-DFT entries (Dunn et al., npj Comput.
  Mater. 6, 138 (2020)).

Composition-only tasks (``matbench_expt_gap``, ``matbench_steels``, ...) have no structure column
and are refused as a whole.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterator

from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers.base import RawItem, Reader
from matforge.datasets.readers.json_stream import NonFiniteAsStrings, head_events, open_json_bytes, stream_error
from matforge.datasets.readers.structures import from_structure_dict
from matforge.datasets.record import Record

TABLE_KEYS = frozenset({"index", "columns", "data"})
_MISSING = object()


def task_name(path: Path) -> str:
    """``matbench_jdft2d.json.gz`` -> ``jdft2d`` (the short name used in ids)."""
    name = path.name
    for suffix in (".gz", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name[len("matbench_"):] if name.startswith("matbench_") else name


class MatbenchReader(Reader):
    format_name = "matbench"
    description = "Matbench *.json.gz (pandas split orient, pymatgen structures; streamed with ijson)"
    option_names = ("structure_column",)

    def __init__(self, path: Path | str, options: dict[str, str] | None = None) -> None:
        super().__init__(path, options)
        self.structure_column = self.options.get("structure_column", "structure")
        self._header: tuple[list[str], list[Any]] | None = None

    @property
    def conversions(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("properties: target columns kept in the task's own units (no conversion)",)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """A JSON object whose first key is ``index``, ``columns`` or ``data`` holding an array."""
        name = path.name.lower()
        if not path.is_file() or not (name.endswith(".json") or name.endswith(".json.gz")):
            return False
        events = head_events(path, max_events=4)
        return (len(events) >= 3 and events[0][0] == "start_map" and events[1][0] == "map_key"
                and events[1][1] in TABLE_KEYS and events[2][0] == "start_array")

    # -- streaming ---------------------------------------------------------------------------
    def _stream(self, prefix: str) -> Iterator[Any]:
        """Objects at ``prefix`` of the file, streamed; parser failures become SourceError."""
        import ijson

        stream = NonFiniteAsStrings(open_json_bytes(self.path))
        try:
            yield from ijson.items(stream, prefix, use_float=True)
        except (ijson.JSONError, EOFError, OSError, zlib.error) as exc:
            raise stream_error(self.path, exc, stream.consumed) from None
        finally:
            stream.close()

    def _first(self, key: str) -> Any:
        stream = self._stream(key)
        try:
            return next(stream, _MISSING)
        finally:
            stream.close()

    def header(self) -> tuple[list[str], list[Any]]:
        """``(columns, index)`` of the table, read once and cached."""
        if self._header is None:
            if self.path.stat().st_size == 0:
                raise SourceError(self.path, "file is empty")
            columns = self._first("columns")
            if columns is _MISSING:
                raise SourceError(self.path, "not a pandas 'split' table: no 'columns' key")
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise SourceError(self.path, f"'columns' must be a list of names, got {str(columns)[:80]}")
            if self.structure_column not in columns:
                raise SourceError(self.path, f"no {self.structure_column!r} column (columns: {columns}); "
                                             "composition-only tasks have no structures")
            index = self._first("index")
            if index is _MISSING or not isinstance(index, list):
                raise SourceError(self.path, "not a pandas 'split' table: no 'index' list")
            self._header = (columns, index)
        return self._header

    def size_hint(self) -> int | None:
        try:
            return len(self.header()[1])
        except SourceError:
            return None

    def items(self) -> Iterator[RawItem]:
        columns, index = self.header()
        task = task_name(self.path)
        n = 0
        for n, row in enumerate(self._stream("data.item"), start=1):
            if n > len(index):
                raise SourceError(self.path, f"'data' has more rows than 'index' has entries ({len(index)})")
            label = index[n - 1]
            record_id = label if isinstance(label, str) else f"mb-{task}-{label}"
            yield RawItem(f"row {n - 1} (index {label!r})", (record_id, columns, row))
        if n != len(index):
            raise SourceError(self.path, f"'index' has {len(index)} entries but 'data' has {n} rows")

    def to_record(self, item: RawItem) -> Record:
        record_id, columns, row = item.payload
        if not isinstance(row, list) or len(row) != len(columns):
            raise RecordError(f"row is not a list of {len(columns)} values (columns {columns})")
        values = dict(zip(columns, row))
        numbers, positions, cell, pbc = from_structure_dict(values.pop(self.structure_column))
        properties: dict[str, float] = {}
        for name, value in values.items():
            number = _target(value)
            if number is not None:
                properties[name] = number
        if not properties:
            raise RecordError(f"no numeric target value (columns {[c for c in columns if c != self.structure_column]})")
        return Record(id=str(record_id), numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                      properties=properties, trajectory=str(record_id), equilibrium=True)


def _target(value: Any) -> float | None:
    """A table cell as a float: numbers and booleans count, null and text do not.

    Strings that spell a float (``"NaN"`` after the NaN-token rewrite) are parsed, so a NaN
    target reaches validation and the record is skipped.
    """
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
