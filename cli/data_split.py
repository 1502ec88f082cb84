"""``matforge data split DIR --fractions 0.8,0.1,0.1 [--names ...] [--group ...] [--seed 0]``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "split",
        help="write leak-free train/val/test index files (DIR/splits/<name>.npy)",
        description="Deal whole groups of records (a trajectory, a composition, or single records) to splits "
                    "by seed, so frames of one trajectory never straddle splits. Read a split with "
                    "open_dataset(DIR, split=NAME).",
    )
    p.add_argument("directory", metavar="DIR", help="shard directory written by `matforge data convert` or `synth`")
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="comma-separated fractions summing to 1 (default 0.8,0.1,0.1)")
    p.add_argument("--names", default=None, help="comma-separated split names (default train,val,test)")
    p.add_argument("--group", choices=("trajectory", "composition", "none"), default="trajectory",
                   help="what must stay on one side (default trajectory)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing splits")
    p.set_defaults(func=run)


def _numbers(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"matforge: error: --fractions expects comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from matforge.datasets.splits import write_splits

    names = None if args.names is None else args.names.split(",")
    try:
        info = write_splits(args.directory, _numbers(args.fractions), names=names, group=args.group,
                            seed=args.seed, overwrite=args.overwrite)
    except ValueError as exc:
        raise SystemExit(f"matforge: error: {exc}") from None
    print(f"split {info.num_records} records of {args.directory} by {info.group} (seed {info.seed}):")
    for name, fraction in zip(info.names, info.fractions):
        count = info.counts[name]
        share = count / info.num_records if info.num_records else 0.0
        print(f"  {name:<10s} {count:8d} records ({share:6.1%}, target {fraction:.1%})  {info.groups[name]:8d} groups")
    return 0
