"""``matforge export RUN_DIR_OR_CHECKPOINT --out DIR``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a pre-training run's (latest) checkpoint as a backbone file")
    p.add_argument("path", help="run directory (latest checkpoint is used) or one checkpoint directory")
    p.add_argument("--out", required=True, help="output directory for the backbone (weights + card.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matforge.pretrain.export import export

    try:
        out = export(args.path, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"matforge: error: {exc}")
    print(f"exported backbone to {out}")
    return 0
