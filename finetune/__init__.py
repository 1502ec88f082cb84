"""matforge.finetune: fine-tune a released or exported backbone on a small dataset, and benchmark
what a backbone is worth downstream. Depends on ``matforge.datasets``, ``matforge.models`` and
``matforge.training`` only; never imports Ray or ``matforge.pretrain``.

Public API (imported lazily)::

    from matforge.finetune import finetune, list_backbones
    metrics = finetune("cgcnn-formation-energy", "jdft2d/data.json", "y", "runs/ft", strategy="freeze:1")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "finetune": "matforge.finetune.api",
    "FinetuneError": "matforge.finetune.errors",
    "list_backbones": "matforge.finetune.registry",
    "released_names": "matforge.finetune.registry",
    "released_path": "matforge.finetune.registry",
    "prepare_data": "matforge.finetune.data_source",
    "Strategy": "matforge.finetune.strategies",
    "run_bench": "matforge.finetune.harness",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'matforge.finetune' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
