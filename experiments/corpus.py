"""The pre-training corpus of ``matforge bench science``: where it is, its splits, its description.

A corpus is a matforge shard directory (``matforge data convert``, ``matforge data synth``). With
``corpus.path`` it is used as it is and never written to: its ``train``/``val`` splits when
``splits/split.json`` names both, else all records train and no validation runs. Without a path
(the miniature), ``corpus.synth_structures`` EMT structures are generated into ``OUT/data/corpus``
and split by trajectory 80/20 into ``train``/``val`` (20 %: so that a miniature's validation
holds relaxed structures for the denoising objectives to score). The description in the report comes from the
manifest (records, atoms, elements, labels and their statistics, the command that made it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matforge.experiments.plan import PlanError, SciencePlan

SYNTH_COMMAND = "matforge bench science (corpus.synth_structures)"


@dataclass
class Corpus:
    """A resolved corpus: directory, split names (None: no split), manifest sha256, description."""

    path: Path
    train_split: str | None
    val_split: str | None
    manifest_sha256: str
    description: dict[str, Any] = field(default_factory=dict)


def _split_names(path: Path) -> list[str]:
    info = path / "splits" / "split.json"
    if not info.is_file():
        return []
    try:
        return list(json.loads(info.read_text()).get("names") or [])
    except (OSError, ValueError):
        return []


def corpus_dir(plan: SciencePlan, out: Path) -> Path:
    """The corpus directory the plan means (``corpus.path``, else ``OUT/data/corpus``)."""
    return Path(plan.corpus.path) if plan.corpus.path else out / "data" / "corpus"


def ensure_corpus(plan: SciencePlan, out: Path) -> Corpus:
    """Generate the synthetic corpus when the plan asks for one and it is not there; describe it."""
    path = corpus_dir(plan, out)
    if plan.corpus.path:
        if not (path / "manifest.json").is_file():
            raise PlanError(f"corpus: {path} is not a matforge shard directory (no manifest.json)")
    elif not (path / "manifest.json").is_file():
        from matforge.datasets.splits import write_splits
        from matforge.datasets.synth import write_synth

        print(f"[science] generating {plan.corpus.synth_structures} EMT structures into {path}", flush=True)
        write_synth(path, plan.corpus.synth_structures, seed=plan.corpus.synth_seed,
                    max_atoms=plan.corpus.synth_max_atoms, command=SYNTH_COMMAND, overwrite=True)
        write_splits(path, [0.8, 0.2], names=["train", "val"], group="trajectory", seed=plan.corpus.synth_seed)
    return describe(path)


def describe(path: Path) -> Corpus:
    """A :class:`Corpus` for an existing shard directory (nothing is written)."""
    from matforge.datasets.manifest import Manifest

    manifest = Manifest.read(path)
    names = _split_names(path)
    train, val = ("train", "val") if {"train", "val"} <= set(names) else (None, None)
    sha = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    description = {"path": str(path), "records": manifest.num_records, "atoms": manifest.num_atoms,
                   "elements": _symbols(manifest.elements), "labels": manifest.labels,
                   "command": manifest.command, "created": manifest.created,
                   "sources": [s.get("path") or s.get("file") or s for s in manifest.sources][:5],
                   "splits": names, "manifest_sha256": sha}
    return Corpus(path, train, val, sha, description)


def _symbols(numbers: list[int]) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[int(z)] for z in numbers]
