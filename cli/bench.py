"""``matforge bench ...``: throughput benchmarks that print a table (or JSON)."""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = ["matforge.cli.bench_data", "matforge.cli.bench_train", "matforge.cli.bench_pretrain"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="measure throughput (data, train, pretrain)")
    bench_sub = parser.add_subparsers(dest="bench_command", metavar="BENCH")
    parser.set_defaults(func=lambda args: parser.print_help())
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(bench_sub)
