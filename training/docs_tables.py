"""Benchmark tables written into a markdown file (``docs/benchmarks.md``) by the scripts that
measure them, never typed by hand.

Each table owns a section between two markers::

    <!-- NAME -->
    ... command, machine, date, the table ...
    <!-- end NAME -->

:func:`update_section` replaces what lies between a name's markers and leaves the rest of the file
as it was; a name without markers yet is appended (a missing file is created with a title). The
file is written through a temporary file and a rename. :func:`machine_description` names the CPU
(and the GPU when torch sees one) for the section's header.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

DOCS_TITLE = ("# Benchmarks\n\nTables in this file are written by the commands named in each section; "
              "do not edit them by hand.\n")


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """``"<CPU model>, N cores"`` (+ the GPU when torch sees one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu_model()}, {cores} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - torch absent or broken: the CPU line is enough
        pass
    return text


def today() -> str:
    return datetime.date.today().isoformat()


def update_section(path: str | os.PathLike, name: str, body: str) -> Path:
    """Put ``body`` between ``<!-- name -->`` and ``<!-- end name -->`` in ``path``, keeping the rest."""
    path = Path(path)
    text = path.read_text() if path.exists() else DOCS_TITLE
    begin, end = f"<!-- {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    start = text.find(begin)
    if start >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: {begin!r} has no closing {end!r}; fix the file by hand")
        text = text[:start] + block + text[stop + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def command_line() -> str:
    """The command that is running, as a user would type it (``matforge ...`` or ``python script ...``)."""
    import shlex
    import sys

    argv = list(sys.argv)
    head = os.path.basename(argv[0]) if argv else "python"
    if head in ("matforge", "__main__.py", "main.py"):
        head = "matforge"
    elif head.endswith(".py"):
        head = f"python {os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]}"
    return " ".join([head, *(shlex.quote(a) for a in argv[1:])])


def printed_table_section(title: str, table: str, command: str | None = None, markdown: bool = False) -> str:
    """A section body for a benchmark whose table is the text it prints: title, command, machine, date
    and the printed table verbatim (a fenced block, or as it is when it is ``markdown`` already), so the
    figures are exactly what the command said."""
    shown = table.rstrip() if markdown else f"```text\n{table.rstrip()}\n```"
    return (f"### {title}\n\n- command: `{command or command_line()}`\n"
            f"- machine: {machine_description()}; date: {today()}\n\n{shown}")
