"""``create(name, **hyperparameters)``: build any backbone by name (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

from matforge.models.base import Backbone

ARCHITECTURES: dict[str, str] = {
    "cgcnn": "matforge.models.cgcnn:CGCNN",
    "cgcnn_smooth": "matforge.models.cgcnn_smooth:SmoothCGCNN",
    "cgcnn_attention": "matforge.models.cgcnn_attention:AttentionCGCNN",
    "painn": "matforge.models.painn:PaiNN",
}


def backbone_class(name: str) -> type[Backbone]:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    module, cls = ARCHITECTURES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, **hyperparameters: Any) -> Backbone:
    """Build backbone ``name`` (``cgcnn``, ``cgcnn_smooth``, ``cgcnn_attention``, ``painn``)."""
    return backbone_class(name)(**hyperparameters)
