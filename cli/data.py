"""``matforge data ...``: the data sub-commands, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib

DATA_COMMAND_MODULES = [
    "matforge.cli.data_convert",
    "matforge.cli.data_inspect",
    "matforge.cli.data_split",
    "matforge.cli.data_synth",
]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="convert, inspect, split and generate datasets of LMDB shards")
    data_sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help())
    for name in DATA_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # sub-command not built yet
        module.register(data_sub)
