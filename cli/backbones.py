"""``matforge backbones [--json]``: the released backbones shipped with matforge.

Prints one row per backbone (name, architecture, trainable parameters, elements, training data,
licence name), or with ``--json`` the list of :func:`matforge.finetune.registry.describe` dicts
(with target, units, the full licence text and the directory).
Use a name wherever a backbone directory is expected once the fine-tuning commands accept names;
the directory itself is ``path`` in the JSON output.
"""

from __future__ import annotations

import argparse
from typing import Any

COLUMNS = ("name", "architecture", "parameters", "elements", "trained on", "licence")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backbones",
        help="list the released backbones shipped with matforge (names usable offline)",
        description="List the released (named) backbones shipped inside the package: architecture, number of "
                    "trainable parameters, elements, training data and licence.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per backbone, with its path)")
    p.set_defaults(func=run)


def _row(info: dict[str, Any]) -> list[str]:
    elements = info["elements"]
    if isinstance(elements, list):
        elements = f"{len(elements)} (Z {min(elements)}-{max(elements)})" if elements else "none"
    target = info["target"] + (f" ({info['units']})" if info["units"] else "")
    licence = info["licence"].split(" (")[0] or "-"  # the licence's name; --json has the full text
    return [info["name"], info["architecture"], f"{info['parameters']:,}", str(elements),
            info["trained_on"] or target or "-", licence]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`~matforge.finetune.registry.describe` dicts, one line each."""
    cells = [list(COLUMNS)] + [_row(r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells)


def run(args: argparse.Namespace) -> int:
    import json

    from matforge.finetune.registry import RELEASED_DIR, list_backbones

    rows = list_backbones()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no released backbones found in {RELEASED_DIR}")
        return 0
    print(format_table(rows))
    return 0
