"""Small labelled datasets for the fine-tuning tests, generated (no download, no shared folder).

``write_property_set``: fcc/bcc metals with strained, rattled cells. Properties per record:
``vpa`` (volume per atom, Å³: a smooth, learnable target), ``dense`` (1 if vpa is below the
set's median, else 0), ``const`` (always 1.0) and ``half`` (only on even records).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def property_records(n: int = 60, seed: int = 0, elements: tuple[str, ...] = ("Cu", "Ag", "Al", "Ni")):
    from ase.build import bulk

    from matforge.datasets.record import Record

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        symbol = elements[i % len(elements)]
        atoms = bulk(symbol, "fcc", a=4.0, cubic=bool(i % 3 == 0))
        atoms.set_cell(atoms.cell * (1.0 + rng.uniform(-0.06, 0.06)), scale_atoms=True)
        atoms.rattle(0.02, seed=int(rng.integers(1 << 30)))
        vpa = atoms.get_volume() / len(atoms)
        props = {"vpa": float(vpa), "const": 1.0}
        if i % 2 == 0:
            props["half"] = float(vpa)
        records.append(Record(id=f"r{i:03d}", numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                              cell=np.asarray(atoms.cell), pbc=np.array([True, True, True]), properties=props,
                              trajectory=f"r{i:03d}", equilibrium=True))
    median = float(np.median([r.properties["vpa"] for r in records]))
    for r in records:
        r.properties["dense"] = 1.0 if r.properties["vpa"] < median else 0.0
    return records


def write_property_set(out: Path, n: int = 60, seed: int = 0, elements: tuple[str, ...] = ("Cu", "Ag", "Al", "Ni")) -> Path:
    from matforge.datasets.convert import convert

    convert([], out, records=property_records(n, seed, elements), command="tests: property set")
    return out
