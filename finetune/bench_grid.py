"""The grid of a fine-tuning benchmark: backbones, cells, their keys, and the grid's expansion.

A grid is backbone × task × fold × training size × strategy × seed. ``none`` in the backbones is
the scratch baseline (random weights): plain ``none`` copies the architecture and hyper-parameters
of the first pre-trained backbone listed, ``none:ARCH`` names an architecture (``cgcnn``,
``painn``, ...) or a backbone to copy. A scratch baseline runs only the ``full`` strategy, since
freezing random layers measures nothing. Every cell has a key, its directory name under
``OUT/cells/``: ``<task>__<backbone>__fold<k>__n<size|all>__<strategy>__seed<s>`` (a backbone given
as a path becomes its base name + a short hash of the path).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SCRATCH = "none"
SCRATCH_STRATEGY = "full"
STRATEGY_ORDER = ("freeze:1", "freeze:2", "freeze:3", "full")
DEFAULT_STRATEGIES = ("full", "freeze:1", "freeze:2", "freeze:3")


class BenchError(RuntimeError):
    """A grid that cannot run as asked (bad names, changed settings of finished cells)."""


# -- backbones and cells -------------------------------------------------------------------------

@dataclass(frozen=True)
class BackboneSpec:
    """A ``--backbones`` entry: its label in tables, what ``finetune`` gets, and (scratch) the arch."""

    label: str
    backbone: str
    arch: str | None = None

    @property
    def scratch(self) -> bool:
        return self.backbone == SCRATCH


def parse_backbones(names: Sequence[str]) -> list[BackboneSpec]:
    """``["cgcnn-formation-energy", "none", "none:painn"]`` -> specs; plain ``none`` copies the
    architecture of the first pre-trained backbone."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise BenchError("no backbones given")
    if len(set(names)) != len(names):
        raise BenchError(f"a backbone is listed twice: {names}")
    pretrained = [n for n in names if n != SCRATCH and not n.startswith(SCRATCH + ":")]
    specs = []
    for name in names:
        if name == SCRATCH:
            if not pretrained:
                raise BenchError("`none` copies the architecture of a pre-trained backbone in --backbones; "
                                 "with none given, name one: none:cgcnn")
            specs.append(BackboneSpec(name, SCRATCH, pretrained[0]))
        elif name.startswith(SCRATCH + ":"):
            arch = name.split(":", 1)[1]
            if not arch:
                raise BenchError("`none:` needs an architecture or backbone after the colon")
            specs.append(BackboneSpec(name, SCRATCH, arch))
        else:
            specs.append(BackboneSpec(name, name, None))
    return specs


def scratch_for(backbone: BackboneSpec, specs: Sequence[BackboneSpec]) -> BackboneSpec | None:
    """The scratch baseline a pre-trained backbone is compared with: the one that copies it, else
    the first scratch entry."""
    scratches = [s for s in specs if s.scratch]
    for s in scratches:
        if s.arch == backbone.backbone:
            return s
    return scratches[0] if scratches else None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def backbone_slug(label: str) -> str:
    """A file-name-safe name for a backbone label; paths get their base name + a short hash."""
    if "/" in label or os.sep in label:
        base = Path(label.rstrip("/")).name
        for suffix in (".pth.tar", ".tar", ".pth"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return f"{slug(base)}-{hashlib.sha1(label.encode()).hexdigest()[:6]}"
    safe = slug(label)
    return safe if safe == label else f"{safe}-{hashlib.sha1(label.encode()).hexdigest()[:6]}"


def size_label(size: int | None) -> str:
    return "all" if size is None else str(int(size))


@dataclass(frozen=True, order=True)
class Cell:
    """One fine-tuning run of the grid. ``size`` None = the fold's whole training part."""

    task: str
    backbone: str
    fold: int
    size: int | None
    strategy: str
    seed: int

    @property
    def key(self) -> str:
        return "__".join([slug(self.task), backbone_slug(self.backbone), f"fold{self.fold}",
                          f"n{size_label(self.size)}", slug(self.strategy.replace(":", "")), f"seed{self.seed}"])


def expand_grid(tasks: Sequence[str], backbones: Sequence[BackboneSpec], folds: dict[str, list[int]],
                sizes: dict[str, list[int | None]], strategies: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """Every cell, task-major then size, fold, backbone, strategy, seed; scratch only ``full``."""
    if len(set(strategies)) != len(strategies):
        raise BenchError(f"a strategy is listed twice: {list(strategies)}")
    cells = []
    for task in tasks:
        for size in sizes[task]:
            for fold in folds[task]:
                for bb in backbones:
                    for strategy in ([SCRATCH_STRATEGY] if bb.scratch else strategies):
                        for seed in seeds:
                            cells.append(Cell(task, bb.label, fold, size, strategy, int(seed)))
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise BenchError("two cells map to one directory name; rename a backbone")
    return cells

