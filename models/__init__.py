"""matforge.models: architectures, heads, the energy/forces/stress wrapper, the ASE calculator and
the backbone file format, shared by pre-training and fine-tuning (never imports Ray).

Public API (imported lazily)::

    from matforge.models import create, load, AtomisticModel, MatforgeCalculator
    backbone = create("painn", cutoff=5.0)
    model = load("exported_backbone/")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create": "matforge.models.registry",
    "ARCHITECTURES": "matforge.models.registry",
    "Backbone": "matforge.models.base",
    "GraphInputs": "matforge.models.base",
    "BackboneOutput": "matforge.models.base",
    "AtomisticModel": "matforge.models.model",
    "load": "matforge.models.backbone_file",
    "save": "matforge.models.backbone_file",
    "MatforgeCalculator": "matforge.models.calculator",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'matforge.models' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
