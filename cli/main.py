"""Entry point of the ``matforge`` command.

Each sub-command lives in a small module of this package exposing ``register(subparsers)``; the
modules import numpy/torch/ray only when their command runs, so ``matforge --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from matforge.cli.commands import register_modules

# Modules that register sub-commands, in the order they appear in --help.
COMMAND_MODULES = [
    "matforge.cli.data",
    "matforge.cli.pretrain",
    "matforge.cli.export",
    "matforge.cli.import_cgcnn",
    "matforge.cli.predict",
    "matforge.cli.finetune",
    "matforge.cli.backbones",
    "matforge.cli.cluster",
    "matforge.cli.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matforge",
        description="Pre-train GNN backbones for crystals at scale; fine-tune them on small property datasets.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_modules(sub, COMMAND_MODULES)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(version("matforge"))
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from matforge.datasets.errors import MatforgeDataError

    try:
        return int(args.func(args) or 0)
    except MatforgeDataError as exc:
        print(f"matforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("matforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
