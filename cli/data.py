"""``matforge data ...``: the data sub-commands, each registered by its own module."""

from __future__ import annotations

import argparse

from matforge.cli.commands import command_group

DATA_COMMAND_MODULES = [
    "matforge.cli.data_convert",
    "matforge.cli.data_inspect",
    "matforge.cli.data_leakage",
    "matforge.cli.data_merge",
    "matforge.cli.data_split",
    "matforge.cli.data_synth",
]


def register(sub: argparse._SubParsersAction) -> None:
    command_group(sub, "data", "convert, inspect, merge, split and generate datasets of LMDB shards",
                  "data_command", "DATA_COMMAND", DATA_COMMAND_MODULES)
