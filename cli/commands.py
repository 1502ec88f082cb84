"""Registering sub-commands from modules, each imported only to add its parser.

A command module exposes ``register(subparsers)`` and imports numpy/torch/ray only inside the
function its command runs, so building the parser (``matforge --help``) stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence


def register_modules(sub: argparse._SubParsersAction, modules: Sequence[str]) -> None:
    """Call ``register(sub)`` of each module in ``modules`` (in order).

    A module that is not there (a command still being built) is left out of the parser; the
    packaging tests check that every released command is present."""
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)


def command_group(sub: argparse._SubParsersAction, name: str, help: str, dest: str, metavar: str,
                  modules: Sequence[str]) -> None:
    """A command (``matforge data``) whose sub-commands come from ``modules``; alone it prints help."""
    parser = sub.add_parser(name, help=help)
    group = parser.add_subparsers(dest=dest, metavar=metavar)
    parser.set_defaults(func=lambda args: parser.print_help())
    register_modules(group, modules)
