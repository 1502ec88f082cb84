"""The registry of released backbones: named, ready-made backbones shipped inside the package.

A released backbone is an ordinary backbone directory (``card.json`` + ``model.safetensors``, see
:mod:`matforge.models.backbone_file`) under :data:`RELEASED_DIR`, the ``backbones/`` folder of this
package, so it is installed with the wheel and used offline; its name is the directory name. The
registry is discovered by scanning that folder for sub-directories holding a ``card.json``: adding a
backbone is adding a directory (``finetune/backbones/make_released.py`` writes the CGCNN ones).

:func:`describe` summarises a card for people and tables::

    name          the card's provenance "name", else the directory name
    architecture  registry name of the backbone ("cgcnn", "painn", ...)
    parameters    number of trainable parameters (backbone + heads; buffers not counted)
    elements      atomic numbers the backbone was trained on, or "all (CGCNN element features)"
                  ("all" for other architectures) when the card does not restrict them
    target        what the head predicts (e.g. "formation_energy_per_atom"), units its units
                  ("eV/atom", "eV", "log10(GPa)"...), from the head spec, else the provenance
    trained_on    one sentence on the training data; licence: the weights' licence
    path          the backbone directory

Nothing here imports Ray; only :func:`describe` (to count parameters) imports torch.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

from matforge.models.backbone_file import CARD_FILE, BackboneFileError, read_card

RELEASED_DIR = Path(str(importlib.resources.files("matforge.finetune") / "backbones"))

ALL_CGCNN_ELEMENTS = "all (CGCNN element features)"


def released_names() -> list[str]:
    """Names of the released backbones (sub-directories of :data:`RELEASED_DIR` with a card), sorted."""
    if not RELEASED_DIR.is_dir():
        return []
    return sorted(p.name for p in RELEASED_DIR.iterdir() if p.is_dir() and (p / CARD_FILE).is_file())


def is_released(name: str) -> bool:
    """Whether ``name`` is the name of a released backbone."""
    return name in released_names()


def released_path(name: str) -> Path:
    """The directory of the released backbone ``name``.

    Raises :class:`BackboneFileError` (one line, listing the known names) for an unknown name.
    """
    names = released_names()
    if name not in names:
        raise BackboneFileError(f"unknown released backbone {name!r}; known: {', '.join(names) or 'none'}")
    return RELEASED_DIR / name


def resolve_backbone(name_or_path: str | os.PathLike) -> Path:
    """A released name's directory, or the given path; a bare word that is neither is an unknown name."""
    if isinstance(name_or_path, str) and is_released(name_or_path):
        return released_path(name_or_path)
    path = Path(name_or_path)
    if isinstance(name_or_path, str) and not path.exists() and os.sep not in name_or_path and "/" not in name_or_path:
        released_path(name_or_path)  # raises, naming the known backbones
    return path


def _target(card: dict[str, Any]) -> tuple[str, str]:
    """(target, units) from the first head that names one, else from the provenance."""
    for spec in card["heads"].values():
        if spec.get("target"):
            return str(spec["target"]), str(spec.get("units", ""))
        if spec.get("names"):
            return ", ".join(map(str, spec["names"])), str(spec.get("units", ""))
    provenance = card.get("provenance") or {}
    if provenance.get("target"):
        return str(provenance["target"]), str(provenance.get("units", ""))
    if "energy" in card["heads"]:
        return "energy", "eV"
    return "", ""


def count_parameters(path: str | os.PathLike) -> int:
    """Trainable parameters of the backbone at ``path`` (loads it; checks the weights on the way)."""
    from matforge.models.backbone_file import load

    return sum(p.numel() for p in load(path).parameters())


def describe(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a released backbone (by name) or any backbone directory (by path).

    Keys: name, architecture, parameters, elements, target, units, trained_on, licence, path
    (see the module docstring). Raises :class:`BackboneFileError` for an unknown name or a
    backbone that cannot be read.
    """
    path = resolve_backbone(name_or_path)
    card = read_card(path)
    provenance = card.get("provenance") or {}
    architecture = card["architecture"]
    target, units = _target(card)
    elements: list[int] | str = list(card["elements"])
    if not elements:
        elements = ALL_CGCNN_ELEMENTS if architecture.startswith("cgcnn") else "all"
    return {
        "name": str(provenance.get("name") or Path(path).resolve().name),
        "architecture": architecture,
        "parameters": count_parameters(path),
        "elements": elements,
        "target": target,
        "units": units,
        "trained_on": str(provenance.get("trained_on", "")),
        "licence": str(provenance.get("licence", "")),
        "path": str(path),
    }


def list_backbones() -> list[dict[str, Any]]:
    """:func:`describe` of every released backbone, sorted by name."""
    return sorted((describe(released_path(name)) for name in released_names()), key=lambda d: d["name"])
