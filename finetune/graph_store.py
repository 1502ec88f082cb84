"""The graphs of one split, built once and kept in memory, with their labels.

Fine-tuning sets are small (hundreds to a few thousand structures), so each record is read,
checked and turned into a graph (:class:`~matforge.datasets.graphs.GraphParts`: neighbour list at
the backbone's cutoff and neighbour limit) once; every epoch only shuffles and collates them
(:func:`matforge.datasets.collate.collate`), never rebuilding a neighbour list.

Labels, by task:

* regression / classification: the record's property ``target`` (``batch.y[:, 0]``); a record
  without it is skipped and counted; classification labels must be exactly 0 or 1;
* potential: energy (eV), forces (eV/Å) and stress (eV/Å³) as stored; a record with neither
  energy nor forces is skipped and counted.

Batches: ``ceil(n / batch_size)`` batches of near-equal size (``numpy.array_split``), so no batch
is a lone leftover structure (training-mode BatchNorm cannot normalise one value per channel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np

from matforge.finetune.errors import FinetuneError

if TYPE_CHECKING:  # pragma: no cover
    from torch_geometric.data import Batch

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.shard_dataset import ShardDataset


class GraphStore:
    """Graphs and labels of one split (see the module docstring).

    ids: record ids; values: (n,) the property (regression/classification) or the energy per atom
    (potential; NaN where absent), in the data's units; numbers: atomic numbers per structure;
    energies: total energies (eV, NaN where absent); skipped: records left out for lack of a label.
    """

    def __init__(self, view: "ShardDataset", config: "GraphConfig", task: str, target: str, side: str) -> None:
        from matforge.datasets.graphs import GraphBuilder

        self.side = side
        self.task = task
        self.target = target
        self.config = config
        builder = GraphBuilder(config)
        self.parts = []
        self.ids: list[str] = []
        values: list[float] = []
        energies: list[float] = []
        self.numbers: list[np.ndarray] = []
        self.skipped = 0
        self.has_forces = False
        self.has_stress = False
        for i in range(len(view)):
            record = view[i]
            if task == "potential":
                if record.energy is None and record.forces is None:
                    self.skipped += 1
                    continue
                energy = float("nan") if record.energy is None else float(record.energy)
                values.append(energy / record.natoms)
                energies.append(energy)
                self.has_forces |= record.forces is not None
                self.has_stress |= record.stress is not None
            else:
                if target not in record.properties:
                    self.skipped += 1
                    continue
                value = float(record.properties[target])
                if task == "classification" and value not in (0.0, 1.0):
                    raise FinetuneError(f"{view.directory}: record {record.id!r}: classification target {target!r} is "
                                        f"{value:g}; labels must be 0 or 1")
                values.append(value)
            self.parts.append(builder.parts(record, len(self.parts)))
            self.ids.append(record.id)
            self.numbers.append(np.asarray(record.numbers))
        self.values = np.asarray(values, dtype=np.float64)
        self.energies = np.asarray(energies, dtype=np.float64)
        if not self.parts:
            what = "an energy or forces" if task == "potential" else f"the target {target!r}"
            raise FinetuneError(f"{view.directory}: none of the {len(view)} records of the {side} split has {what}"
                                + _available(view, task))

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def natoms(self) -> np.ndarray:
        return np.asarray([p.z.shape[0] for p in self.parts], dtype=np.int64)

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, "Batch"]]:
        """``(positions in this store, Batch)`` pairs covering every graph once; shuffled with ``rng``."""
        from matforge.datasets.collate import collate

        n = len(self.parts)
        order = rng.permutation(n) if rng is not None else np.arange(n)
        for chunk in np.array_split(order, max(1, -(-n // max(1, batch_size)))):
            if chunk.size:
                yield chunk, collate([self.parts[int(k)] for k in chunk], self.config.torch_dtype)


def _available(view: "ShardDataset", task: str) -> str:
    labels = view.manifest.labels or {}
    props = sorted((labels.get("properties") or {}).keys())
    if task == "potential":
        return f" (labels in the data: energy {labels.get('energy', 0)}, forces {labels.get('forces', 0)} records)"
    return f" (properties in the data: {', '.join(props) if props else 'none'})"
