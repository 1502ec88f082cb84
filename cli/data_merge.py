"""``matforge data merge DIR DIR [...] --out OUT [--overwrite]``: one dataset from several."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="write the records of several shard directories as one dataset (e.g. a generated corpus + real DFT)",
        description="Copy every record of the DIRs, in order, into one new shard directory (the writer of "
                    "`matforge data convert`: records re-validated, a record id seen twice skipped and listed in "
                    "skipped.jsonl). Labels, trajectories and equilibrium flags are kept; each DIR's manifest "
                    "sources (where its labels came from) are kept in the new manifest. Splits are not carried "
                    "over: run `matforge data split OUT` afterwards.",
    )
    p.add_argument("corpora", nargs="+", metavar="DIR", help="shard directories (matforge data convert/synth)")
    p.add_argument("--out", required=True, metavar="OUT", help="the new shard directory")
    p.add_argument("--overwrite", action="store_true", help="replace OUT once the new dataset is complete")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matforge.datasets.combine import write_combined
    from matforge.datasets.errors import DatasetError

    if len(args.corpora) < 2:
        raise SystemExit("matforge: error: give at least two DIRs to merge (to copy one, use cp -r)")
    for corpus in args.corpora:
        if not Path(corpus).is_dir():
            raise SystemExit(f"matforge: error: {corpus}: no such directory")
    try:
        result = write_combined(args.corpora, args.out, overwrite=args.overwrite,
                                command="matforge " + shlex.join(sys.argv[1:]))
    except DatasetError as exc:
        raise SystemExit(f"matforge: error: {exc}") from None
    print(f"wrote {result.num_records} records of {len(args.corpora)} datasets to {result.out}"
          + (f" ({result.num_skipped} skipped by the writer, see skipped.jsonl)" if result.num_skipped else ""))
    return 0
