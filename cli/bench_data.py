"""``matforge bench data DIR``: records/s and atoms/s of convert, raw reads and the graph loader.

Stages (each over the first ``--records`` records of DIR, one process unless stated):

* ``convert``: the dataset's first source file (from its manifest) is read again by its reader
  (parse), and the records go through validation, encoding and the LMDB shard writer into a
  temporary directory (``matforge data convert`` with one worker). If that source is not on
  this machine (or the dataset was generated), the records are decoded from DIR beforehand and only
  validation + encoding + writing is timed; ``convert_mode`` says which ("source" or "rewrite").
* ``read``: LMDB get + decode of each record (no graph).
* ``loader``: read + neighbour list + collate into PyG ``Batch`` es under the atom budget, in this
  process: the throughput of ONE loader worker (``loader_structures_per_s_per_worker``).
* ``dataloader`` (with ``--workers K``): the same through a torch DataLoader with K worker
  processes, measured in the main process (includes inter-process transfer), in aggregate.

Timings are wall-clock on a possibly shared machine: the JSON records the CPU count and load
average at the start so a figure can be read in context.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="records/s and atoms/s of convert, raw reads and read+graph+collate",
                       description="Benchmark the data path of a shard directory (prints a table, or one JSON object).")
    p.add_argument("directory", help="shard directory written by `matforge data convert`")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--cutoff", type=float, default=8.0, help="neighbour cutoff in Å (default 8)")
    p.add_argument("--max-neighbors", type=int, default=None, help="keep the k nearest neighbours (default: all)")
    p.add_argument("--max-atoms", type=int, default=2048, help="atom budget per batch (default 2048)")
    p.add_argument("--records", type=int, default=None,
                   help="records per stage (default: all, at most 20000)")
    p.add_argument("--workers", type=int, default=0,
                   help="also time a DataLoader with this many worker processes (default 0: skip)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of the read and loader stages; the best is kept (default 3)")
    p.add_argument("--skip-convert", action="store_true", help="do not time the convert stage")
    p.add_argument("--docs", default=None, metavar="FILE",
                   help="also write the table into this markdown file (e.g. docs/benchmarks.md), between its markers")
    p.set_defaults(func=run)


def _rate(count: int, atoms: int, seconds: float) -> dict:
    seconds = max(seconds, 1e-12)
    return {"records": count, "atoms": atoms, "seconds": seconds,
            "records_per_s": count / seconds, "atoms_per_s": atoms / seconds}


def bench_convert(ds, count: int) -> tuple[dict, str]:
    """Time converting ``count`` records; see the module docstring for the two modes."""
    import itertools
    import shutil
    import tempfile
    from pathlib import Path

    from matforge.datasets.convert import convert
    from matforge.datasets.readers import make_reader

    source = next((s for s in ds.manifest.sources if s.get("format") not in (None, "generated")), None)
    reader = None
    if source is not None and Path(source["path"]).exists():
        try:
            reader = make_reader(source["path"], source["format"], source.get("options") or None)
        except Exception:
            reader = None
    tmp = Path(tempfile.mkdtemp(prefix="matforge-bench-convert-"))
    try:
        if reader is not None:
            mode = "source"
            name = str(source["path"])

            def records():
                for item in itertools.islice(reader.items(), count):
                    try:
                        record = reader.to_record(item)
                    except Exception:
                        continue  # a record the real conversion would skip
                    record.source = name
                    yield record

            t0 = time.perf_counter()
            report = convert([], tmp / "out", records=records())
            seconds = time.perf_counter() - t0
        else:
            mode = "rewrite"
            decoded = [ds[i] for i in range(count)]
            t0 = time.perf_counter()
            report = convert([], tmp / "out", records=decoded)
            seconds = time.perf_counter() - t0
        return _rate(report.num_records, report.num_atoms, seconds), mode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_read(ds, count: int, repeats: int) -> dict:
    natoms = ds.natoms[:count]
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        for i in range(count):
            ds[i]
        best = min(best, time.perf_counter() - t0)
    return _rate(count, int(natoms.sum()), best)


def bench_loader(ds, config, max_atoms: int, count: int, repeats: int) -> dict:
    """One worker's work in this process: batches of the first ``count`` records, read + graph +
    collate into ``Batch`` es, best of ``repeats`` passes (after one warm-up batch)."""
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler

    graphs = GraphDataset(ds.subset(range(count)), config)
    batches = list(AtomBudgetBatchSampler(graphs.natoms, max_atoms, shuffle=True, seed=0))
    graphs.collate(batches[0][:8])  # warm-up: first vesin call, lazy imports
    best = float("inf")
    edges = 0
    for _ in range(max(repeats, 1)):
        edges = 0
        t0 = time.perf_counter()
        for indices in batches:
            edges += int(graphs.collate(indices).edge_index.shape[1])
        best = min(best, time.perf_counter() - t0)
    out = _rate(count, int(graphs.natoms.sum()), best)
    out["edges_per_structure"] = edges / max(count, 1)
    out["batches"] = len(batches)
    return out


def bench_dataloader(ds, config, max_atoms: int, count: int, workers: int) -> dict:
    """K DataLoader workers in aggregate: one warm-up epoch (starts the workers), then one timed."""
    from matforge.datasets.loader import make_loader

    loader, sampler = make_loader(ds.subset(range(count)), config, max_atoms, num_workers=workers,
                                  persistent_workers=True, shuffle=True, seed=0)
    for _ in loader:
        pass
    sampler.set_epoch(1)
    graphs = atoms = 0
    t0 = time.perf_counter()
    for batch in loader:
        graphs += batch.num_graphs
        atoms += int(batch.num_nodes)
    seconds = time.perf_counter() - t0
    del loader
    return _rate(graphs, atoms, seconds)


def measure(directory: str, cutoff: float = 8.0, max_neighbors: int | None = None, max_atoms: int = 2048,
            records: int | None = None, workers: int = 0, repeats: int = 3, skip_convert: bool = False) -> dict:
    """Run the stages and return the JSON report (see the module docstring)."""
    import torch

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.shard_dataset import open_dataset

    torch.set_num_threads(1)  # a loader worker runs single-threaded
    ds = open_dataset(directory)
    count = min(len(ds), records if records is not None else 20_000)
    if count < 1:
        raise SystemExit(f"matforge: error: {directory} has no records to benchmark")
    config = GraphConfig(cutoff=cutoff, max_neighbors=max_neighbors)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    report: dict = {
        "directory": str(ds.directory),
        "records": count,
        "atoms": int(ds.natoms[:count].sum()),
        "cutoff": cutoff,
        "max_neighbors": max_neighbors,
        "max_atoms": max_atoms,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": load[0],
    }
    stages: dict[str, dict] = {}
    if not skip_convert:
        stages["convert"], report["convert_mode"] = bench_convert(ds, count)
    stages["read"] = bench_read(ds, count, repeats)
    stages["loader"] = bench_loader(ds, config, max_atoms, count, repeats)
    if workers > 0:
        stages["dataloader"] = bench_dataloader(ds, config, max_atoms, count, workers)
        report["dataloader_workers"] = workers
    for name, st in stages.items():
        report[f"{name}_records_per_s"] = st["records_per_s"]
        report[f"{name}_atoms_per_s"] = st["atoms_per_s"]
    report["loader_structures_per_s_per_worker"] = stages["loader"]["records_per_s"]
    report["loader_atoms_per_s_per_worker"] = stages["loader"]["atoms_per_s"]
    report["loader_edges_per_structure"] = stages["loader"]["edges_per_structure"]
    if "dataloader" in stages:
        report["dataloader_structures_per_s"] = stages["dataloader"]["records_per_s"]
    report["stages"] = stages
    return report


_LABELS = {
    "convert": "convert (parse+validate+encode+write)",
    "read": "read (LMDB get + decode)",
    "loader": "read+graph+collate, 1 worker",
    "dataloader": "DataLoader, {k} workers (aggregate)",
}


def format_table(report: dict) -> str:
    lines = [
        f"{report['directory']}: {report['records']} records, {report['atoms']} atoms; cutoff {report['cutoff']} Å, "
        f"max_neighbors {report['max_neighbors'] or 'all'}, max_atoms {report['max_atoms']}",
        f"{report['cpu_count']} CPUs, load average {report['load_average_1min_at_start']:.2f} at start",
        "",
        f"{'stage':40s} {'records/s':>12s} {'atoms/s':>12s} {'records':>8s} {'seconds':>8s}",
    ]
    for name, st in report["stages"].items():
        label = _LABELS[name].format(k=report.get("dataloader_workers", 0))
        if name == "convert":
            label += f" [{report['convert_mode']}]"
        lines.append(f"{label:40s} {st['records_per_s']:12.1f} {st['atoms_per_s']:12.1f} {st['records']:8d} {st['seconds']:8.3f}")
    lines.append("")
    lines.append(f"edges per structure: {report['loader_edges_per_structure']:.1f}; "
                 f"loader_structures_per_s_per_worker = {report['loader_structures_per_s_per_worker']:.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = measure(args.directory, cutoff=args.cutoff, max_neighbors=args.max_neighbors, max_atoms=args.max_atoms,
                     records=args.records, workers=args.workers, repeats=args.repeats, skip_convert=args.skip_convert)
    table = format_table(report)
    print(json.dumps(report) if args.json else table)
    if args.docs:
        from matforge.training.docs_tables import printed_table_section, update_section

        update_section(args.docs, "matforge bench data",
                       printed_table_section("Data path: convert, read, graph + collate (`matforge bench data`)", table))
    return 0
