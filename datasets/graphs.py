"""Records → PyG graphs and batches: periodic neighbour lists at C speed (vesin), no geometry precomputed.

The graph stores *what the model needs to form edge vectors itself*, so gradients reach positions
and cell. For an edge e from neighbour ``j = edge_index[0, e]`` to centre ``i = edge_index[1, e]``
(PyG's source → target convention; messages are summed onto the centre)::

    r_ij = pos[j] - pos[i] + shifts[e] @ cell          (Å; shifts are integer image offsets)

Fields of one graph (N atoms, E edges, P requested properties):

=================  ===================  ==========================================================
``z``              long (N,)            atomic numbers
``pos``            float (N, 3)         Cartesian positions, Å
``cell``           float (1, 3, 3)      lattice vectors as rows, Å
``pbc``            bool (1, 3)
``edge_index``     long (2, E)          [neighbour j, centre i]
``shifts``         long (E, 3)          integer image shifts of j
``natoms``         long (1,)
``energy``         float (1,)           eV (0 where absent; see ``has_energy``)
``forces``         float (N, 3)         eV/Å (0 where absent; see ``has_forces``)
``stress``         float (1, 3, 3)      eV/Å³, ASE sign (0 where absent; see ``has_stress``)
``y``              float (1, P)         requested named properties (0 where absent)
``y_mask``         bool (1, P)          which of ``y`` are present
``has_energy`` ... bool (1,)            label presence, so batches of mixed sources collate
``equilibrium``    long (1,)            1 relaxed, 0 off-equilibrium, -1 unknown
``isolated``       bool (1,)            some atom has no neighbour within the cutoff
``idx``            long (1,)            index of the record in its dataset view
=================  ===================  ==========================================================

Optional per-atom fields come from a record transform (e.g. denoising's ``noise`` (N, 3) float Å
and ``noise_mask`` (N,) bool, :mod:`matforge.datasets.noise`): ``extras`` passed to
:meth:`GraphBuilder.parts` are arrays whose first dimension is N; floating arrays take the graph's
float dtype, integer ones become long, booleans stay bool. They batch along atoms.

Batches of these graphs are made by :mod:`matforge.datasets.collate`; neighbour lists by
:mod:`matforge.datasets.neighbors` (every pair within ``cutoff``, or the nearest ``max_neighbors``).
An atom with no neighbour is handled by ``on_isolated``: ``"error"`` raises :class:`RecordError`,
``"flag"`` keeps the graph and sets ``isolated`` (message passing over no edges sums to zero, never
NaN). The builder uses one thread: parallelism comes from loader workers.

Speed (the loader's path): per structure, one vesin call and a few numpy operations into a
:class:`GraphParts`; the batch's tensors are then made once per *batch*, with no per-structure
``Data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from matforge.datasets.errors import RecordError
from matforge.datasets.neighbors import nearest_order, raw_pairs
from matforge.datasets.record import Record


@dataclass(frozen=True)
class GraphConfig:
    """How to turn a record into a graph.

    cutoff: neighbour radius in Å. max_neighbors: keep the k nearest per centre (None: all).
    properties: names of record properties to put in ``y`` (in this order).
    dtype: float dtype of positions, cell and labels ("float32" or "float64").
    on_isolated: "error" or "flag" (see module docstring).
    """

    cutoff: float = 6.0
    max_neighbors: int | None = None
    properties: tuple[str, ...] = ()
    dtype: str = "float32"
    on_isolated: str = "flag"

    def __post_init__(self) -> None:
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, got {self.max_neighbors}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if self.on_isolated not in ("error", "flag"):
            raise ValueError(f"on_isolated must be 'error' or 'flag', got {self.on_isolated}")
        object.__setattr__(self, "properties", tuple(self.properties))

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32


# --- one structure -------------------------------------------------------------------------------

class GraphParts(NamedTuple):
    """One structure's graph as numpy arrays and scalars: what :func:`collate` concatenates.

    Shapes as in the module table without the leading per-graph 1; absent labels are ``None``
    (``y`` holds 0.0 where ``y_mask`` is False).
    """

    z: np.ndarray             # (N,) int64
    pos: np.ndarray           # (N, 3) float64, Å
    cell: np.ndarray          # (3, 3) float64, Å
    pbc: np.ndarray           # (3,) bool
    edge_index: np.ndarray    # (2, E) int64, [neighbour j, centre i]
    shifts: np.ndarray        # (E, 3) int64
    energy: float | None      # eV
    forces: np.ndarray | None  # (N, 3) eV/Å
    stress: np.ndarray | None  # (3, 3) eV/Å³
    y: tuple[float, ...]      # (P,)
    y_mask: tuple[bool, ...]  # (P,)
    equilibrium: int          # 1, 0 or -1
    isolated: bool
    idx: int
    extras: tuple[tuple[str, np.ndarray], ...] = ()  # per-atom fields, first dimension N


def _check_extras(record: Record, extras: Mapping[str, np.ndarray] | None, n: int) -> tuple[tuple[str, np.ndarray], ...]:
    if not extras:
        return ()
    items = []
    for name, value in extras.items():
        array = np.asarray(value)
        if name in FIELDS or name in ("batch", "ptr", "num_nodes"):
            raise ValueError(f"record {record.id!r}: extra field {name!r} would replace a graph field")
        if array.ndim == 0 or array.shape[0] != n:
            raise ValueError(f"record {record.id!r}: extra field {name!r} has shape {array.shape}, "
                             f"expected a first dimension of {n} (one row per atom)")
        items.append((str(name), array))
    return tuple(items)


def torch_dtype_of(array: np.ndarray, float_dtype: torch.dtype) -> torch.dtype:
    """Batch dtype of an extra field: floats in the graph's dtype, integers long, bools bool."""
    if array.dtype == np.bool_:
        return torch.bool
    if np.issubdtype(array.dtype, np.integer):
        return torch.long
    if np.issubdtype(array.dtype, np.floating):
        return float_dtype
    raise ValueError(f"extra field of dtype {array.dtype} is not numeric")


class GraphBuilder:
    """``Record -> Data`` (``builder(record, index)``) and ``Record -> GraphParts``
    (``builder.parts(record, index)``) with the fields of the module docstring.

    Holds only its configuration, so it pickles into loader workers.
    """

    def __init__(self, config: GraphConfig | None = None, **overrides) -> None:
        if config is None:
            config = GraphConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a GraphConfig or keyword overrides, not both")
        self.config = config

    def parts(self, record: Record, index: int = -1, extras: Mapping[str, np.ndarray] | None = None) -> GraphParts:
        """The graph of ``record`` as numpy arrays (no tensors); ``index`` becomes ``idx``;
        ``extras``: per-atom arrays (first dimension N) added as fields (see the module docstring)."""
        cfg = self.config
        n = int(record.numbers.shape[0])
        extra_items = _check_extras(record, extras, n)
        k = cfg.max_neighbors
        try:
            pairs, raw_shifts, dist = raw_pairs(record.positions, record.cell, record.pbc, cfg.cutoff,
                                                 with_distances=k is not None)
        except RuntimeError as exc:  # vesin reports bad geometry as RuntimeError
            raise RecordError(f"record {record.id!r}: neighbour search failed ({exc})") from None
        i = pairs[:, 0].astype(np.int64)
        counts = np.bincount(i, minlength=n)
        if k is None:
            order = np.argsort(i, kind="stable")
        else:
            order = nearest_order(i, pairs[:, 1], raw_shifts, dist, k)
        edge_index = np.empty((2, order.shape[0]), dtype=np.int64)
        edge_index[0] = pairs[order, 1]
        edge_index[1] = i[order]
        shifts = raw_shifts[order].astype(np.int64)
        isolated = n == 0 or bool(counts.min() == 0)
        if isolated and cfg.on_isolated == "error":
            lonely = int(np.flatnonzero(counts == 0)[0]) if n else 0
            raise RecordError(f"record {record.id!r}: atom {lonely} has no neighbour within {cfg.cutoff} Å "
                              "(use on_isolated='flag' to keep such graphs, or a larger cutoff)")
        props = record.properties
        y = tuple(float(props.get(name, 0.0)) for name in cfg.properties)
        y_mask = tuple(name in props for name in cfg.properties)
        return GraphParts(
            z=record.numbers, pos=record.positions, cell=record.cell, pbc=record.pbc,
            edge_index=edge_index, shifts=shifts,
            energy=record.energy, forces=record.forces, stress=record.stress,
            y=y, y_mask=y_mask,
            equilibrium=-1 if record.equilibrium is None else int(record.equilibrium),
            isolated=isolated, idx=int(index), extras=extra_items,
        )

    def __call__(self, record: Record, index: int = -1, extras: Mapping[str, np.ndarray] | None = None) -> Data:
        return to_data(self.parts(record, index, extras), self.config.torch_dtype)

    def collate(self, parts: Sequence[GraphParts]) -> Batch:
        """A ``Batch`` of ``parts`` in this builder's float dtype
        (see :func:`matforge.datasets.collate.collate`)."""
        from matforge.datasets.collate import collate

        return collate(parts, self.config.torch_dtype)


def _float(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np_dtype))


def _one(value, np_dtype: type) -> torch.Tensor:
    """A 1-element tensor (cheaper than ``torch.tensor([value])``)."""
    return torch.from_numpy(np.array([value], dtype=np_dtype))


def data_fields(p: GraphParts, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tensors of one graph, keyed and shaped as in the module table."""
    n = int(p.z.shape[0])
    np_float = np.float32 if dtype == torch.float32 else np.float64
    num_props = len(p.y)
    return {
        "edge_index": torch.from_numpy(p.edge_index),
        "y": torch.from_numpy(np.array(p.y, dtype=np_float).reshape(1, num_props)),
        "pos": _float(p.pos, dtype),
        "z": torch.from_numpy(np.asarray(p.z, dtype=np.int64)),
        "cell": _float(p.cell, dtype).view(1, 3, 3),
        "pbc": torch.from_numpy(np.asarray(p.pbc, dtype=bool)).view(1, 3),
        "shifts": torch.from_numpy(p.shifts),
        "natoms": _one(n, np.int64),
        "energy": _one(0.0 if p.energy is None else p.energy, np_float),
        "forces": _float(p.forces, dtype) if p.forces is not None else torch.zeros((n, 3), dtype=dtype),
        "stress": (_float(p.stress, dtype) if p.stress is not None else torch.zeros((3, 3), dtype=dtype)).view(1, 3, 3),
        "y_mask": torch.from_numpy(np.array(p.y_mask, dtype=bool).reshape(1, num_props)),
        "has_energy": _one(p.energy is not None, np.bool_),
        "has_forces": _one(p.forces is not None, np.bool_),
        "has_stress": _one(p.stress is not None, np.bool_),
        "equilibrium": _one(p.equilibrium, np.int64),
        "isolated": _one(p.isolated, np.bool_),
        "idx": _one(p.idx, np.int64),
        **{name: _extra_tensor(value, dtype) for name, value in p.extras},
    }


def _extra_tensor(value: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    target = torch_dtype_of(value, dtype)
    np_dtype = {torch.bool: np.bool_, torch.long: np.int64, torch.float32: np.float32, torch.float64: np.float64}[target]
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np_dtype))


def to_data(p: GraphParts, dtype: torch.dtype = torch.float32) -> Data:
    """One ``Data`` with the fields of the module table (floats in ``dtype``).

    The fields go into the ``Data``'s store in one dictionary update rather than one
    ``__setattr__`` each (PyG's per-attribute path costs ~3 µs a field); the result equals
    ``Data(**data_fields(p, dtype), num_nodes=N)`` (a test checks this).
    """
    fields = data_fields(p, dtype)
    fields["num_nodes"] = int(p.z.shape[0])
    data = Data()
    data._store._mapping.update(fields)
    return data


# Fields of a batch in Batch.from_data_list's key order: (kind, dtype class); kind says along
# what the field is concatenated: "node" (atoms), "edge", or "graph" (one row per graph).
FIELDS = {
    "edge_index": ("edge", "long"), "y": ("graph", "float"), "pos": ("node", "float"), "z": ("node", "long"),
    "cell": ("graph", "float"), "pbc": ("graph", "bool"), "shifts": ("edge", "long"),
    "natoms": ("graph", "long"), "energy": ("graph", "float"), "forces": ("node", "float"),
    "stress": ("graph", "float"), "y_mask": ("graph", "bool"), "has_energy": ("graph", "bool"),
    "has_forces": ("graph", "bool"), "has_stress": ("graph", "bool"), "equilibrium": ("graph", "long"),
    "isolated": ("graph", "bool"), "idx": ("graph", "long"),
}
