"""The TensorBoard event writer, opened the same way by pre-training and fine-tuning.

:func:`open_writer` returns torch's ``SummaryWriter`` on ``log_dir`` (created), or None when the
``tensorboard`` package is not installed and ``required`` is False: fine-tuning runs on a base
install and writes events only when it can, pre-training (whose extra installs TensorBoard)
requires them. ``purge_step`` makes a resumed run's curves continue without doubling back.
:func:`flatten` turns a nested config into the flat scalar/string dict TensorBoard's hparams take.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by torch's SummaryWriter) is importable."""
    return importlib.util.find_spec("tensorboard") is not None


def open_writer(log_dir: str | Path, purge_step: int | None = None, required: bool = True) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``log_dir``, or None (see module)."""
    if not tensorboard_available():
        if required:
            raise ModuleNotFoundError("TensorBoard is not installed: pip install 'matforge[pretrain]' "
                                      "(or pip install tensorboard)")
        return None
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested dict → ``{"a.b": v}`` with TensorBoard-friendly leaves (numbers, strings, bools)."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, bool, str)) or value is None:
        out[prefix] = "None" if value is None else value
    else:
        out[prefix] = str(value)
    return out
