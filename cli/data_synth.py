"""``matforge data synth --calculator emt --structures N --out DIR --seed S``."""

from __future__ import annotations

import argparse
import shlex
import sys

CALCULATORS = ("emt",)
DEFAULT_ELEMENTS = "Cu,Ag,Au,Ni,Pd,Pt,Al"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate labelled off-equilibrium fcc-metal structures (ASE EMT) as LMDB shards, offline",
        description="Relaxed, rattled, strained, vacancy, binary-alloy and short-MD fcc cells labelled with "
                    "EMT energy (eV), forces (eV/A) and 3x3 stress (eV/A^3, ASE sign), written like "
                    "`matforge data convert` output. Deterministic for a seed.",
    )
    p.add_argument("--calculator", choices=CALCULATORS, default="emt", help="labelling calculator (default emt)")
    p.add_argument("--structures", type=int, required=True, metavar="N", help="number of records to write")
    p.add_argument("--out", required=True, help="output directory (must be new or empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--elements", default=DEFAULT_ELEMENTS,
                   help=f"comma-separated EMT metals (default {DEFAULT_ELEMENTS})")
    p.add_argument("--max-atoms", type=int, default=32, help="largest cell in atoms (default 32, at least 4)")
    p.add_argument("--shard-size", type=int, default=50_000, help="records per shard (default 50000)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR once the new dataset is complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matforge.datasets.synth import write_synth

    try:
        report = write_synth(
            args.out, args.structures, seed=args.seed, elements=args.elements.split(","),
            max_atoms=args.max_atoms, shard_size=args.shard_size, overwrite=args.overwrite,
            progress=not args.no_progress and sys.stderr.isatty(), command="matforge " + shlex.join(sys.argv[1:]),
        )
    except ValueError as exc:
        raise SystemExit(f"matforge: error: {exc}") from None
    print(f"wrote {report.num_records} {args.calculator.upper()}-labelled records ({report.num_atoms} atoms) "
          f"in {report.num_shards} shard(s) to {report.out}")
    if report.num_skipped:
        print(f"skipped {report.num_skipped} record(s); see {report.out}/skipped.jsonl")
    return 0
