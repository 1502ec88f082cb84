"""Downstream sets of named fine-tuning tasks, for the leakage check
(:mod:`matforge.datasets.leakage`).

Each task is looked up in the registry (:func:`matforge.finetune.tasks.get_task`), its files are
found under the data root (:meth:`Task.resolve`), and they are converted once into the fine-tuning
cache (:func:`matforge.finetune.data_source.prepare_data`), as ``matforge finetune`` and the bench
harness read them. Tasks that read the same files in the same format (``perov5_heat_all``,
``perov5_dir_gap``, ... all read ``perov5/val.csv``) become one :class:`DownstreamSet` naming all of
them, so each file is checked once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from matforge.datasets.leakage import DownstreamSet


class TaskLookupError(ValueError):
    """A task name is unknown or its data cannot be found; the message says which."""


def task_sets(names: Sequence[str], data_root: str | os.PathLike | None = None,
              cache_dir: str | os.PathLike | None = None, verbose: bool = True) -> list[DownstreamSet]:
    """One :class:`DownstreamSet` per distinct (files, format) among the tasks ``names``, in the
    order first named; ``data_root`` as in :func:`matforge.finetune.tasks.default_data_root`."""
    from matforge.finetune.data_source import prepare_data
    from matforge.finetune.tasks import default_data_root, get_task

    root: Path | None = default_data_root(data_root)
    tasks = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):  # every name is checked before any data
        try:
            tasks.append(get_task(name))
        except KeyError as exc:
            raise TaskLookupError(str(exc.args[0])) from None
        except (FileNotFoundError, ValueError) as exc:
            raise TaskLookupError(f"task {name!r}: {exc}") from None
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for task in tasks:
        try:
            source, files, tests = task.resolve(root)
        except FileNotFoundError as exc:
            raise TaskLookupError(str(exc)) from None
        group = grouped.setdefault((source.format, tuple(str(p) for p in files + tests)), [])
        if task.name not in group:  # a name and its alias
            group.append(task.name)
    if not grouped:
        raise TaskLookupError("no task given")
    sets = []
    for (fmt, paths), names_of_file in grouped.items():
        dataset = prepare_data(list(paths) if len(paths) > 1 else paths[0], format=fmt, cache_dir=cache_dir,
                               verbose=verbose)
        sets.append(DownstreamSet.from_dataset(", ".join(paths), dataset, names_of_file))
    return sets
