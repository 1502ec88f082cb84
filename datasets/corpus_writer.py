"""The parallel, resumable writer of the CHGNet corpus (``matforge data synth --calculator chgnet``).

Layout while it runs, beside the output directory ``OUT``::

    OUT.partial/
        settings.json          what determines the corpus (settings, seed-structure digest, model)
        seeds.json             the seed structures, as plain lists (read by the workers)
        chunk-0000000.frames   one file per finished chunk (written to a temporary name, then renamed)
        ...

Work: chunk ``k`` is a pure function of ``(seed, k)`` and the settings
(:func:`matforge.datasets.corpus_frames.make_chunk`). ``workers`` processes (``spawn`` context: no
fork after torch's thread pools exist; one torch thread and one BLAS thread each; Ctrl-C is left to the main process,
which lets the chunks in flight finish) each label whole chunks and write their files themselves,
so whatever finished survives an interrupt or a kill. Run again with the same settings, the writer
skips the chunks present (the number of workers may differ); with different settings it refuses and
says which differ. When every chunk is present the records go, in index order, through
:func:`matforge.datasets.convert.convert` (same validation, shards, index and manifest as
``matforge data convert``); the manifest is then completed with the labels' provenance (CHGNet,
package and weights versions, licence), the seed sources and the outlier counts, the outliers are
appended to ``skipped.jsonl``, the directory is renamed into place
(:func:`matforge.datasets.publish.publish`) and ``OUT.partial`` is removed.

Chunk file (no pickle): ``b"MFCHUNK1"``, an 8-byte little-endian header length, a UTF-8 JSON header
``{"chunk", "sizes", "skipped": [[id, reason], ...]}`` and the records'
:func:`matforge.datasets.codec.encode` blobs back to back.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import shutil
import signal
import struct
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from matforge.datasets.codec import decode, encode
from matforge.datasets.corpus_frames import ChunkResult, CorpusSettings, make_chunk
from matforge.datasets.corpus_seeds import SeedStructure, load_seed_structures, seeds_digest
from matforge.datasets.manifest import SKIPPED_NAME, Manifest
from matforge.datasets.record import validate

FORMAT_VERSION = 1
MAGIC = b"MFCHUNK1"
SETTINGS_NAME = "settings.json"
SEEDS_NAME = "seeds.json"
GENERATOR = "matforge data synth --calculator chgnet"

LabellerFactory = Callable[[], Callable]


@dataclass
class CorpusReport:
    """What a run wrote: records, atoms, shards, dropped frames by reason, chunks generated now and
    found from an earlier run, wall time (s), seed structures per source."""

    out: Path
    num_records: int
    num_atoms: int
    num_shards: int
    num_skipped: int
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    chunks_generated: int = 0
    chunks_reused: int = 0
    seconds: float = 0.0
    seed_sources: dict[str, int] = field(default_factory=dict)


def work_dir(out: Path) -> Path:
    """``OUT.partial`` beside ``out``: the resumable state of an unfinished run."""
    out = Path(out)
    return out.parent / f"{out.name}.partial"


def chunk_path(workdir: Path, k: int) -> Path:
    return Path(workdir) / f"chunk-{k:07d}.frames"


# -- chunk files ----------------------------------------------------------------------------------

def write_chunk(workdir: Path, result: ChunkResult) -> Path:
    """Write ``result`` atomically (temporary name, fsync, rename); returns the final path."""
    blobs = [encode(validate(r)) for r in result.records]
    header = json.dumps({"chunk": result.chunk, "sizes": [len(b) for b in blobs],
                         "skipped": [list(s) for s in result.skipped]}).encode("utf-8")
    final = chunk_path(workdir, result.chunk)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for blob in blobs:
            handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


def read_chunk(path: Path) -> ChunkResult:
    """Read a chunk file back (records decoded, no pickle); ValueError if it is not one."""
    data = Path(path).read_bytes()
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: not a matforge chunk file")
    (n,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16:16 + n].decode("utf-8"))
    offset = 16 + n
    records = []
    for size in header["sizes"]:
        records.append(decode(data[offset:offset + size]))
        offset += size
    if offset != len(data):
        raise ValueError(f"{path}: truncated or padded chunk file")
    return ChunkResult(int(header["chunk"]), records, [tuple(s) for s in header["skipped"]])


# -- worker side ----------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _one_thread() -> int:
    """One torch thread, and one BLAS thread where threadpoolctl is installed (numpy's and scipy's
    OpenBLAS threads spinning beside torch made ASE's 3×3 cell-filter algebra 1000× slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        _STATE["blas_limit"] = threadpool_limits(1)
    except ImportError:
        pass
    return before


def _init_worker(workdir: str, settings: CorpusSettings, factory: LabellerFactory) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    # pymatgen sorts formulas by electronegativity and warns, once per noble-gas element and process,
    # that it has none: noise in the log, not a problem of the data
    warnings.filterwarnings("ignore", message="No Pauling electronegativity")
    _one_thread()
    seeds = [SeedStructure.from_dict(d) for d in json.loads((Path(workdir) / SEEDS_NAME).read_text())]
    _STATE.update(workdir=Path(workdir), settings=settings, seeds=seeds, labeller=factory())


def _run_chunk(k: int) -> tuple[int, int, int]:
    """Make and write chunk ``k`` in this process; returns ``(k, frames written, frames dropped)``."""
    result = make_chunk(k, _STATE["settings"], _STATE["seeds"], _STATE["labeller"])
    write_chunk(_STATE["workdir"], result)
    return k, len(result.records), len(result.skipped)


# -- main side ------------------------------------------------------------------------------------

def _default_factory() -> Callable:
    from matforge.datasets.chgnet_labels import ChgnetLabeller

    return ChgnetLabeller()


def _labeller_identity(factory: LabellerFactory | None) -> dict[str, Any]:
    if factory is None:
        from matforge.datasets.chgnet_labels import model_info

        info = model_info()
        return {"labeller": "chgnet", "package_version": info["package_version"],
                "weights_version": info["weights_version"], "weights_sha256": info["weights_sha256"]}
    return {"labeller": f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"}


def _fingerprint(settings: CorpusSettings, digest: str, factory: LabellerFactory | None) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "settings": asdict(settings), "seed_structures_sha256": digest,
            **_labeller_identity(factory)}


def _check_or_start(workdir: Path, fingerprint: dict[str, Any]) -> None:
    """Create ``workdir`` with ``settings.json``, or check an existing one matches (ValueError if not)."""
    path = workdir / SETTINGS_NAME
    expected = json.loads(json.dumps(fingerprint))  # tuples → lists, as read back
    if path.is_file():
        found = json.loads(path.read_text())
        if found != expected:
            diffs = _differences(found, expected)
            raise ValueError(
                f"{workdir} holds an unfinished run made with different settings ({'; '.join(diffs)}); "
                f"rerun with the earlier settings to resume it, or delete {workdir} to start over")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(SETTINGS_NAME + ".partial")
    tmp.write_text(json.dumps(expected, indent=2))
    os.replace(tmp, path)


def _differences(found: Any, expected: Any, prefix: str = "") -> list[str]:
    if isinstance(found, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(found) | set(expected)):
            out += _differences(found.get(key), expected.get(key), f"{prefix}{key}.")
        return out
    return [] if found == expected else [f"{prefix.rstrip('.')}: was {found!r}, now {expected!r}"]


def generate_chunks(workdir: Path, settings: CorpusSettings, chunks: Sequence[int], workers: int = 1,
                    factory: LabellerFactory | None = None, progress: Callable[[int], None] | None = None) -> int:
    """Make and write ``chunks`` (those not yet present) into an initialised ``workdir``; returns how
    many were made. ``progress(frames)`` is called as each chunk finishes."""
    factory = factory or _default_factory
    todo = [k for k in chunks if not chunk_path(workdir, k).is_file()]
    if not todo:
        return 0
    frames = lambda k: settings.chunk_range(k)[1] - settings.chunk_range(k)[0]  # noqa: E731
    if workers <= 1 or len(todo) == 1:
        before = _one_thread()
        try:
            _init_state_here(workdir, settings, factory)
            for k in todo:
                _run_chunk(k)
                if progress:
                    progress(frames(k))
        finally:
            import torch

            torch.set_num_threads(before)
            limit = _STATE.pop("blas_limit", None)
            if limit is not None:
                limit.restore_original_limits()
        return len(todo)
    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                  initializer=_init_worker, initargs=(str(workdir), settings, factory))
    saved = {v: os.environ.get(v) for v in BLAS_THREAD_VARIABLES}
    os.environ.update({v: "1" for v in BLAS_THREAD_VARIABLES})  # inherited by the spawned workers
    try:
        futures = [pool.submit(_run_chunk, k) for k in todo]
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value
        for fut in cf.as_completed(futures):
            k, _, _ = fut.result()
            if progress:
                progress(frames(k))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # let the chunks in flight finish and persist
        raise
    pool.shutdown(wait=True)
    return len(todo)


_LABELLERS: dict[Any, Callable] = {}  # in-process runs build each labeller (CHGNet: ~3 s) once


def _init_state_here(workdir: Path, settings: CorpusSettings, factory: LabellerFactory) -> None:
    if factory not in _LABELLERS:
        _LABELLERS[factory] = factory()
    seeds = [SeedStructure.from_dict(d) for d in json.loads((Path(workdir) / SEEDS_NAME).read_text())]
    _STATE.update(workdir=Path(workdir), settings=settings, seeds=seeds, labeller=_LABELLERS[factory])


def prepare(out: Path | str, settings: CorpusSettings, seed_files: Sequence[str | os.PathLike] = (),
            sources: Sequence[str] | None = None, factory: LabellerFactory | None = None,
            log: Callable[[str], None] | None = None) -> tuple[Path, list[SeedStructure], dict[str, int]]:
    """Load the seeds, then create or check ``OUT.partial`` (refusing changed settings); returns the
    work directory, the seeds and their count per source."""
    seeds, counts = load_seed_structures(settings.max_atoms, seed_files, settings.elements, sources, log)
    if not seeds:
        raise ValueError("no usable seed structure (check --max-atoms, --elements and --seed-structures)")
    workdir = work_dir(Path(out))
    _check_or_start(workdir, _fingerprint(settings, seeds_digest(seeds), factory))
    seeds_file = workdir / SEEDS_NAME
    if not seeds_file.is_file():
        tmp = seeds_file.with_name(SEEDS_NAME + ".partial")
        tmp.write_text(json.dumps([s.to_dict() for s in seeds]))
        os.replace(tmp, seeds_file)
    for stale in workdir.glob("*.tmp-*"):  # a chunk half-written when a run was killed
        stale.unlink(missing_ok=True)
    return workdir, seeds, counts


def write_corpus(out: Path | str, settings: CorpusSettings, workers: int = 1,
                 seed_files: Sequence[str | os.PathLike] = (), sources: Sequence[str] | None = None,
                 shard_size: int = 50_000, overwrite: bool = False, progress: bool = False, command: str = "",
                 factory: LabellerFactory | None = None, log: Callable[[str], None] | None = None) -> CorpusReport:
    """Generate (or finish) the corpus and publish it at ``out``; see the module docstring.

    ``factory`` builds the labeller once per process (default: CHGNet); with ``workers > 1`` it must
    be picklable (a module-level function or class).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: output directory exists and is not empty (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    workdir, seeds, counts = prepare(out, settings, seed_files, sources, factory, log)
    done = [k for k in range(settings.num_chunks) if chunk_path(workdir, k).is_file()]
    bar = None
    if progress:
        from tqdm import tqdm

        frames_done = sum(settings.chunk_range(k)[1] - settings.chunk_range(k)[0] for k in done)
        bar = tqdm(total=settings.structures, initial=frames_done, unit="frame", desc="chgnet corpus",
                   file=sys.stderr, dynamic_ncols=True)
    try:
        generated = generate_chunks(workdir, settings, range(settings.num_chunks), workers, factory,
                                    bar.update if bar is not None else None)
    except KeyboardInterrupt:
        kept = sum(chunk_path(workdir, k).is_file() for k in range(settings.num_chunks))
        print(f"interrupted: {kept} of {settings.num_chunks} chunks are kept in {workdir}; "
              "run the same command again to resume", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    report = _assemble(out, workdir, settings, seeds, counts, shard_size, overwrite, command, factory)
    report.chunks_generated, report.chunks_reused = generated, len(done)
    report.seconds = time.perf_counter() - t0
    return report


def _records(workdir: Path, settings: CorpusSettings, skipped: list[tuple[str, str]]) -> Iterator:
    for k in range(settings.num_chunks):
        chunk = read_chunk(chunk_path(workdir, k))
        skipped.extend(chunk.skipped)
        yield from chunk.records


def _assemble(out: Path, workdir: Path, settings: CorpusSettings, seeds: list[SeedStructure],
              counts: dict[str, int], shard_size: int, overwrite: bool, command: str,
              factory: LabellerFactory | None) -> CorpusReport:
    from matforge.datasets.convert import convert
    from matforge.datasets.publish import publish

    dataset = workdir / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)
    dropped: list[tuple[str, str]] = []
    result = convert([], dataset, shard_size=shard_size, progress=False, command=command,
                     records=_records(workdir, settings, dropped))
    reasons = dict(result.skipped_reasons)
    for _, reason in dropped:
        key = reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    with open(dataset / SKIPPED_NAME, "a", encoding="utf-8") as handle:
        for rid, reason in dropped:
            handle.write(json.dumps({"file": "generated", "record": rid, "id": rid, "reason": reason}) + "\n")
    manifest = Manifest.read(dataset)
    manifest.num_skipped += len(dropped)
    provenance = _provenance(settings, seeds, counts, factory, reasons, len(dropped))
    manifest.sources = [({**s, **provenance} if s.get("path") == "generated" else s) for s in manifest.sources]
    manifest.write(dataset)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: output directory appeared while generating; the corpus stays in {dataset}")
    publish(dataset, out)
    shutil.rmtree(workdir, ignore_errors=True)
    return CorpusReport(out=out, num_records=result.num_records, num_atoms=result.num_atoms,
                        num_shards=result.num_shards, num_skipped=result.num_skipped + len(dropped),
                        skipped_reasons=reasons, seed_sources=dict(counts))


def _provenance(settings: CorpusSettings, seeds: list[SeedStructure], counts: dict[str, int],
                factory: LabellerFactory | None, reasons: dict[str, int], dropped: int) -> dict[str, Any]:
    """The manifest's account of where the labels and structures come from."""
    if factory is None:
        from matforge.datasets.chgnet_labels import model_info

        labels = {**model_info(), "kind": "machine-learned potential (not DFT)"}
    else:
        labels = {"model": _labeller_identity(factory)["labeller"], "kind": "stand-in labeller"}
    return {
        "generator": GENERATOR,
        "labels_from_model": True,
        "labels": labels,
        "conversions": ["energy: CHGNet eV/atom x natoms -> eV (total)",
                        "forces: -dE/dr, eV/angstrom",
                        "stress: (1/V) dE/d(strain) in eV/angstrom^3, ASE sign (tensile positive), "
                        "not CHGNet's GPa"],
        "seed_sources": dict(counts),
        "seed_structures": len(seeds),
        "seed_structures_sha256": seeds_digest(seeds),
        "settings": asdict(settings),
        "frames_attempted": settings.structures,
        "frames_dropped": dropped,
        "dropped_reasons": dict(reasons),
    }
