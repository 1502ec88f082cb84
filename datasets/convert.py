"""``matforge data convert``: sources → validated records → LMDB shards + manifest.

Pipeline::

    readers.items()  (main process, streaming)
        │ chunks of raw items, at most `4 × workers` chunks in flight (bounded memory)
        ▼
    worker: to_record → validate → encode      (process pool; in-process when workers <= 1)
        │ ordered results: (blob, summary) or a skip reason
        ▼
    main: drop duplicate ids, append to the current shard (large transactions), fold statistics,
          write skipped records to skipped.jsonl

Everything is written into a staging directory beside ``out`` and renamed into place at the end,
so an interrupted or failed conversion leaves no half-written dataset and never touches an
existing one (unless ``overwrite``, in which case the old one is replaced only after the new one
is complete).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import json
import multiprocessing as mp
import shutil
import sys
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from matforge.datasets.codec import encode
from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.manifest import INDEX_NAME, SKIPPED_NAME, Manifest, ShardInfo
from matforge.datasets.publish import publish, staging_beside
from matforge.datasets.readers import Reader, make_reader
from matforge.datasets.record import Record, validate
from matforge.datasets.shards import ShardWriter, file_sha256, shard_name
from matforge.datasets.statistics import RunningStats

CHUNK = 64


@dataclass
class Summary:
    """What the main process needs of a converted record, besides its bytes."""

    id: str
    natoms: int
    numbers: np.ndarray
    energy: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    properties: dict[str, float]
    trajectory: str
    composition: str
    equilibrium: int
    volume: float      # Å³; NaN unless periodic in all three directions


def summarise(record: Record) -> Summary:
    return Summary(
        id=record.id, natoms=record.natoms, numbers=record.numbers, energy=record.energy,
        forces=record.forces, stress=record.stress, properties=record.properties,
        trajectory=record.trajectory, composition=record.composition(),
        equilibrium=-1 if record.equilibrium is None else int(record.equilibrium),
        volume=record.volume if bool(np.all(record.pbc)) else float("nan"),
    )


# -- worker side ----------------------------------------------------------------------------------

_WORKER_READERS: list[Reader] = []


def _init_worker(readers: list[Reader]) -> None:
    global _WORKER_READERS
    _WORKER_READERS = readers


def _validated(make: Callable[[], Record], source_name: str) -> tuple[str, Any]:
    """Build, validate and encode one record: ``("ok", (blob, summary))`` or ``("skip", reason)``."""
    try:
        record = make()
        record.source = source_name
        record = validate(record)
        return "ok", (encode(record), summarise(record))
    except RecordError as exc:
        return "skip", exc.reason
    except Exception as exc:  # a reader bug or an unforeseen malformation: skip, but say what
        return "skip", f"{type(exc).__name__}: {exc}"


def convert_item(reader: Reader, locator: str, payload: Any, source_name: str) -> tuple[str, Any]:
    """Convert one raw item of ``reader`` (see :func:`_validated`)."""
    from matforge.datasets.readers.base import RawItem

    return _validated(lambda: reader.to_record(RawItem(locator, payload)), source_name)


def _convert_chunk(reader_index: int, source_name: str, chunk: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    reader = _WORKER_READERS[reader_index]
    return [convert_item(reader, loc, payload, source_name) for loc, payload in chunk]


# -- main side ------------------------------------------------------------------------------------

@dataclass
class _Accumulator:
    natoms: list[int] = field(default_factory=list)
    trajectory: list[str] = field(default_factory=list)
    composition: list[str] = field(default_factory=list)
    equilibrium: list[int] = field(default_factory=list)
    volume: list[float] = field(default_factory=list)
    element_atoms: dict[int, int] = field(default_factory=dict)
    element_structures: dict[int, int] = field(default_factory=dict)
    stats: dict[str, RunningStats] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=lambda: {"energy": 0, "forces": 0, "stress": 0})
    property_counts: dict[str, int] = field(default_factory=dict)

    def stat(self, name: str) -> RunningStats:
        return self.stats.setdefault(name, RunningStats())

    def add(self, s: Summary) -> None:
        self.natoms.append(s.natoms)
        self.trajectory.append(s.trajectory)
        self.composition.append(s.composition)
        self.equilibrium.append(s.equilibrium)
        self.volume.append(s.volume)
        zs, counts = np.unique(s.numbers, return_counts=True)
        for z, c in zip(zs.tolist(), counts.tolist()):
            self.element_atoms[z] = self.element_atoms.get(z, 0) + c
            self.element_structures[z] = self.element_structures.get(z, 0) + 1
        self.stat("natoms").update(s.natoms)
        if s.energy is not None:
            self.label_counts["energy"] += 1
            self.stat("energy_per_atom").update(s.energy / s.natoms)
        if s.forces is not None:
            self.label_counts["forces"] += 1
            self.stat("forces").update(s.forces)
        if s.stress is not None:
            self.label_counts["stress"] += 1
            self.stat("stress").update(s.stress)
        for name, value in s.properties.items():
            self.property_counts[name] = self.property_counts.get(name, 0) + 1
            self.stat(f"property:{name}").update(value)

    def index_arrays(self) -> dict[str, np.ndarray]:
        traj_names, traj_codes = np.unique(np.array(self.trajectory, dtype=str), return_inverse=True) if self.trajectory else (np.array([], dtype=str), np.array([], dtype=np.int64))
        comp_names, comp_codes = np.unique(np.array(self.composition, dtype=str), return_inverse=True) if self.composition else (np.array([], dtype=str), np.array([], dtype=np.int64))
        return {
            "natoms": np.asarray(self.natoms, dtype=np.int32),
            "trajectory_code": traj_codes.astype(np.int32),
            "trajectories": traj_names,
            "composition_code": comp_codes.astype(np.int32),
            "compositions": comp_names,
            "equilibrium": np.asarray(self.equilibrium, dtype=np.int8),
            "volume": np.asarray(self.volume, dtype=np.float64),
        }


@dataclass
class ConvertReport:
    out: Path
    num_records: int
    num_atoms: int
    num_skipped: int
    num_shards: int
    skipped_reasons: dict[str, int]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append((item.locator, item.payload))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_results(readers: Sequence[Reader], names: Sequence[str], workers: int
                     ) -> Iterator[tuple[int, list[tuple[str, Any]], list[tuple[str, Any]]]]:
    """Yield ``(reader_index, chunk, results)`` in source order, converting in a pool if asked."""
    if workers <= 1:
        _init_worker(list(readers))
        for k, reader in enumerate(readers):
            for chunk in _chunks(reader.items(), CHUNK):
                yield k, chunk, _convert_chunk(k, names[k], chunk)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(list(readers),)) as pool:
        pending: deque = deque()
        try:
            for k, reader in enumerate(readers):
                for chunk in _chunks(reader.items(), CHUNK):
                    pending.append((k, chunk, pool.submit(_convert_chunk, k, names[k], chunk)))
                    while len(pending) >= 4 * workers:
                        k0, c0, fut = pending.popleft()
                        yield k0, c0, fut.result()
            while pending:
                k0, c0, fut = pending.popleft()
                yield k0, c0, fut.result()
        finally:
            for _, _, fut in pending:
                fut.cancel()


def convert(
    sources: Sequence[Path | str],
    out: Path | str,
    fmt: str = "auto",
    workers: int = 1,
    shard_size: int = 50_000,
    options: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    command: str = "",
    records: Iterable[Record] | None = None,
) -> ConvertReport:
    """Convert ``sources`` into a shard directory ``out``; see the module docstring.

    ``records`` lets a generator (``matforge data synth``) write already-built records through the
    same writer; then ``sources`` may be empty.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SourceError(out, "output directory exists and is not empty (pass --overwrite to replace it)")
    readers = [make_reader(s, fmt, options) for s in sources]
    names = [str(s) for s in sources]

    staging = staging_beside(out)
    try:
        report = _write(readers, names, staging, workers, shard_size, progress, command, records)
        publish(staging, out)
        report.out = out
        return report
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write(readers: Sequence[Reader], names: Sequence[str], staging: Path, workers: int, shard_size: int,
           progress: bool, command: str, records: Iterable[Record] | None) -> ConvertReport:
    dataset_id = uuid.uuid4().hex
    acc = _Accumulator()
    shards: list[ShardInfo] = []
    seen: dict[str, str] = {}
    skipped_reasons: dict[str, int] = {}
    per_source = [{"read": 0, "written": 0, "skipped": 0} for _ in readers]
    writer: ShardWriter | None = None
    skipped_file = open(staging / SKIPPED_NAME, "w", encoding="utf-8")

    bar = _progress_bar(readers, progress)

    def finish_shard() -> None:
        nonlocal writer
        if writer is None:
            return
        writer.close()
        shards.append(ShardInfo(file=writer.path.name, num_records=writer.num_records, num_atoms=writer.num_atoms,
                                bytes=writer.path.stat().st_size, sha256=file_sha256(writer.path)))
        writer = None

    def skip(file: str, locator: str, record_id: str | None, reason: str) -> None:
        skipped_file.write(json.dumps({"file": file, "record": locator, "id": record_id, "reason": reason}) + "\n")
        key = reason.split("(")[0].strip()[:80]
        skipped_reasons[key] = skipped_reasons.get(key, 0) + 1

    def write_one(blob: bytes, s: Summary, file: str, locator: str) -> bool:
        nonlocal writer
        first = seen.get(s.id)
        if first is not None:
            skip(file, locator, s.id, f"duplicate id {s.id!r} (first seen at {first})")
            return False
        seen[s.id] = f"{file}:{locator}"
        if writer is None:
            writer = ShardWriter(staging / shard_name(len(shards)), dataset_id, len(shards))
        writer.append(blob, s.natoms)
        acc.add(s)
        if writer.num_records >= shard_size:
            finish_shard()
        return True

    try:
        for k, chunk, results in _ordered_results(readers, names, workers):
            for (locator, _), (status, value) in zip(chunk, results):
                per_source[k]["read"] += 1
                if status == "ok":
                    blob, summary = value
                    if write_one(blob, summary, names[k], locator):
                        per_source[k]["written"] += 1
                    else:
                        per_source[k]["skipped"] += 1
                else:
                    per_source[k]["skipped"] += 1
                    skip(names[k], locator, None, value)
            if bar is not None:
                bar.update(len(chunk))
        generated = 0
        for n, record in enumerate(records or ()):
            status, value = _validated(lambda: record, record.source or "generated")
            if status == "ok":
                generated += write_one(value[0], value[1], record.source or "generated", f"record {n}")
            else:
                skip(record.source or "generated", f"record {n}", record.id, value)
            if bar is not None:
                bar.update(1)
        finish_shard()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        skipped_file.close()
        if bar is not None:
            bar.close()

    index = acc.index_arrays()
    np.savez(staging / INDEX_NAME, **index)
    sources_meta = []
    for k, reader in enumerate(readers):
        files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in reader.source_files()]
        sources_meta.append({"path": names[k], "format": reader.format_name, "files": files,
                             "conversions": list(reader.conversions), **{f"records_{key}": v for key, v in per_source[k].items()},
                             "options": dict(reader.options)})
    if records is not None:
        sources_meta.append({"path": "generated", "format": "generated", "records_written": generated})
    num_skipped = sum(skipped_reasons.values())
    labels = dict(acc.label_counts)
    labels["properties"] = dict(acc.property_counts)
    manifest = Manifest(
        dataset_id=dataset_id,
        num_records=len(acc.natoms),
        num_atoms=int(sum(acc.natoms)),
        elements=sorted(acc.element_atoms),
        labels=labels,
        statistics={
            **{name: st.as_dict() for name, st in acc.stats.items()},
            "element_atoms": {str(z): c for z, c in sorted(acc.element_atoms.items())},
            "element_structures": {str(z): c for z, c in sorted(acc.element_structures.items())},
            "num_trajectories": int(index["trajectories"].shape[0]),
            "equilibrium": {"relaxed": int((index["equilibrium"] == 1).sum()),
                            "off_equilibrium": int((index["equilibrium"] == 0).sum()),
                            "unknown": int((index["equilibrium"] == -1).sum())},
        },
        shards=shards,
        sources=sources_meta,
        num_skipped=num_skipped,
        command=command,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        matforge_version=_version(),
    )
    manifest.write(staging)
    return ConvertReport(out=staging, num_records=manifest.num_records, num_atoms=manifest.num_atoms,
                         num_skipped=num_skipped, num_shards=len(shards), skipped_reasons=skipped_reasons)


def _progress_bar(readers: Sequence[Reader], enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    hints = [r.size_hint() for r in readers]
    total = sum(hints) if hints and all(h is not None for h in hints) else None
    return tqdm(total=total, unit="rec", desc="convert", file=sys.stderr, dynamic_ncols=True)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("matforge")
    except Exception:
        return "unknown"
