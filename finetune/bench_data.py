"""A benchmark task's data, prepared once per grid: the records converted (or opened from the
cache) with the fine-tuning data source, their ids in dataset order (the order Matbench's folds are
defined over, checked to be complete and unique), their trajectory groups, and, for tasks with a
separate test file, which positions are the test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from matforge.finetune.bench_grid import BenchError
from matforge.finetune.folds import FoldSplit
from matforge.finetune.tasks import Source, Task


@dataclass
class TaskData:
    """A task's converted data: what cells read, the record ids in dataset order and the folds."""

    task: Task
    data: str
    ids: list[str]
    groups: np.ndarray | None = None
    test_positions: np.ndarray | None = None
    source: Source | None = None
    files: list[str] = field(default_factory=list)
    dataset_id: str = ""
    splits: dict[int, FoldSplit] = field(default_factory=dict)
    file_sha256: list[str] = field(default_factory=list)


Loader = Callable[[Task, "Path | None", "str | None"], TaskData]


def load_task_data(task: Task, data_root: Path | None, cache_dir: str | None = None) -> TaskData:
    """Convert (or open from the cache) a task's data with the fine-tuning data source."""
    from matforge.datasets.shards import file_sha256
    from matforge.finetune.data_source import prepare_data, record_ids

    source, files, tests = task.resolve(data_root)
    paths = [str(p) for p in files + tests]
    ds = prepare_data(paths if len(paths) > 1 else paths[0], format=source.format, cache_dir=cache_dir)
    ids = [str(i) for i in record_ids(ds)]
    if len(set(ids)) != len(ids):
        raise BenchError(f"task {task.name!r}: record ids are not unique in {paths}")
    if task.protocol == "matbench_kfold":
        skipped = int(getattr(ds.manifest, "num_skipped", 0) or 0)
        if skipped or (task.num_records is not None and len(ids) != task.num_records):
            raise BenchError(f"task {task.name!r}: the Matbench folds are defined over all "
                             f"{task.num_records or '?'} rows in order, but {paths[0]} gave {len(ids)} records "
                             f"({skipped} skipped)")
    test_positions = None
    if tests:
        test_paths = [str(p) for p in tests]
        test_data = prepare_data(test_paths if len(test_paths) > 1 else test_paths[0], format=source.format,
                                 cache_dir=cache_dir)
        test_ids = {str(i) for i in record_ids(test_data)}
        test_positions = np.array([k for k, i in enumerate(ids) if i in test_ids], dtype=np.int64)
        if len(test_positions) != len(test_ids):
            raise BenchError(f"task {task.name!r}: test records of {tests} are not all in the combined data")
    return TaskData(task, str(ds.directory), ids, np.asarray(ds.trajectory_codes), test_positions, source,
                    paths, getattr(ds.manifest, "dataset_id", ""), file_sha256=[file_sha256(p) for p in paths])
