"""Experiment 2's pre-training datasets: perov5 properties and the corpus' energies, as shard dirs.

Each dataset holds ``n = exp2.structures`` records, split 90/10 into ``train``/``val`` (seeded, no
group: every record is its own structure):

* ``combined``: the first ⌈n/2⌉ perov5 records of a seeded shuffle, labelled with every perov5
  property in ``exp2.properties`` (heat_ref, heat_all in eV/atom; dir_gap, ind_gap in eV), and
  ⌊n/2⌋ corpus records labelled with ``corpus_energy_per_atom`` = E / N (eV/atom) when that
  property is in the list (else all n come from perov5). Labels a record lacks are masked by the
  ``combined`` objective.
* ``single-<p>``: n records all labelled with ``p`` alone: the first n of the perov5 shuffle for a
  perov5 property, the first n corpus records of a seeded shuffle for ``corpus_energy_per_atom``.

Records keep their structure and id; energies, forces and stress are dropped (these backbones learn
properties, not a potential). perov5 is read from ``<data root>/perov5/val.csv`` through the
fine-tuning package's converted-data cache. Each directory is written complete or not at all
(:func:`matforge.datasets.convert.convert`), so an existing one is reused as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from matforge.experiments.plan import CORPUS_ENERGY, PlanError

COMMAND = "matforge bench science (exp2 property dataset)"


def _shuffled(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(count)


def _perov5_records(perov5, picks: np.ndarray, names: Sequence[str]) -> Iterator:
    for i in picks:
        rec = perov5[int(i)]
        props = {p: float(rec.properties[p]) for p in names if p in rec.properties}
        yield dataclasses.replace(rec, energy=None, forces=None, stress=None, properties=props)


def _corpus_records(corpus, picks: np.ndarray) -> Iterator:
    for i in picks:
        rec = corpus[int(i)]
        if rec.energy is None:
            raise PlanError(f"exp2: corpus record {rec.id} has no energy to learn as {CORPUS_ENERGY}")
        yield dataclasses.replace(rec, energy=None, forces=None, stress=None,
                                  properties={CORPUS_ENERGY: float(rec.energy) / rec.natoms})


def dataset_name(properties: Sequence[str], combined: bool) -> str:
    """``combined`` or ``single-<property>``."""
    return "combined" if combined else f"single-{properties[0]}"


def build_property_dataset(out: Path, *, perov5_path: Path, corpus_path: Path, corpus_split: str | None,
                           properties: Sequence[str], structures: int, combined: bool, seed: int = 0,
                           cache_dir: str | None = None) -> Path:
    """Write one exp2 dataset (see the module docstring) to ``out`` unless it is there; return ``out``."""
    if (out / "manifest.json").is_file() and (out / "splits" / "split.json").is_file():
        return out
    import itertools
    import shutil

    from matforge.datasets.convert import convert
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.datasets.splits import write_splits
    from matforge.finetune.data_source import prepare_data

    perov_props = [p for p in properties if p != CORPUS_ENERGY]
    want_corpus = CORPUS_ENERGY in properties
    if combined:
        n_corpus = structures // 2 if want_corpus and perov_props else (structures if want_corpus else 0)
    else:
        n_corpus = structures if want_corpus else 0
    n_perov = structures - n_corpus
    parts = []
    if n_perov:
        perov5 = prepare_data(str(perov5_path), format="csv-cif", cache_dir=cache_dir, verbose=False)
        if len(perov5) < n_perov:
            raise PlanError(f"exp2.structures: {n_perov} perov5 structures asked, {perov5_path} has {len(perov5)}")
        parts.append(_perov5_records(perov5, _shuffled(len(perov5), seed)[:n_perov], perov_props))
    if n_corpus:
        corpus = open_dataset(corpus_path, split=corpus_split)
        if len(corpus) < n_corpus:
            raise PlanError(f"exp2.structures: {n_corpus} corpus structures asked, the corpus has {len(corpus)}")
        parts.append(_corpus_records(corpus, _shuffled(len(corpus), seed)[:n_corpus]))
    if out.exists():
        shutil.rmtree(out)  # an attempt that stopped before its splits were written
    convert([], out, command=COMMAND, records=itertools.chain(*parts))
    write_splits(out, [0.9, 0.1], names=["train", "val"], group="none", seed=seed)
    return out
