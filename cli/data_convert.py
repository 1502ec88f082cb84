"""``matforge data convert SOURCE... --out DIR``."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert DFT data (CIF folders, extxyz, ASE db, MPtrj, Matbench, MatDeepLearn, mlearn, CSV+CIF) to LMDB shards",
        description="Convert sources to DIR/data.NNNN.lmdb + manifest.json + index.npz; skipped records go to DIR/skipped.jsonl.",
    )
    p.add_argument("sources", nargs="+", help="files or folders to convert")
    p.add_argument("--out", required=True, help="output directory (must be new or empty unless --overwrite)")
    p.add_argument("--format", default="auto",
                   help="auto | cgcnn | ase | mptrj | matbench | matdeeplearn | mlearn | csv-cif (default: auto)")
    p.add_argument("--workers", type=int, default=1, help="parallel conversion processes (default 1)")
    p.add_argument("--shard-size", type=int, default=50_000, help="records per shard (default 50000)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option, e.g. --option energy_per_atom_column=energy_per_atom (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR once the new conversion is complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_options(pairs: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"matforge: error: --option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value
    return options


def run(args: argparse.Namespace) -> int:
    from matforge.datasets.convert import convert

    report = convert(
        args.sources, args.out, fmt=args.format, workers=args.workers, shard_size=args.shard_size,
        options=parse_options(args.option), overwrite=args.overwrite,
        progress=not args.no_progress and sys.stderr.isatty(),
        command="matforge " + shlex.join(sys.argv[1:]),
    )
    print(f"wrote {report.num_records} records ({report.num_atoms} atoms) in {report.num_shards} shard(s) to {report.out}")
    if report.num_skipped:
        print(f"skipped {report.num_skipped} record(s); see {report.out}/skipped.jsonl")
        for reason, count in sorted(report.skipped_reasons.items(), key=lambda kv: -kv[1])[:10]:
            print(f"  {count:8d}  {reason}")
    return 0
