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

A batch of B graphs (:func:`collate`) is a ``torch_geometric.data.Batch`` with the same fields
concatenated (node fields along atoms, ``edge_index`` along edges with each graph's indices offset
by the atoms before it, per-graph fields along graphs), plus ``batch`` (N,) and ``ptr`` (B+1,).
It is the same object, field by field (including the slice and increment bookkeeping that
``get_example`` uses), as ``Batch.from_data_list`` of the per-graph ``Data``.

Neighbours: every atom pair (with periodic images) within ``cutoff``; ``max_neighbors`` keeps the
nearest k of each centre (CGCNN's 12), exact distance ties broken by lower neighbour index, then
lower shift (lexicographic), so the choice is deterministic.
An atom with no neighbour is handled by ``on_isolated``: ``"error"`` raises :class:`RecordError`,
``"flag"`` keeps the graph and sets ``isolated`` (message passing over no edges sums to zero, never
NaN). The builder uses one thread: parallelism comes from loader workers.

Speed (the loader's path): per structure, one vesin call (the calculator is created once per
process and thread, then reused) and a few numpy operations into a :class:`GraphParts`; then
:func:`collate` makes the batch's tensors once per *batch*, with no per-structure ``Data``. The
batch's tensors are views of one buffer per dtype (in shared memory inside a DataLoader worker),
because handing a batch to the main process costs one file descriptor per distinct storage.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from matforge.datasets.errors import RecordError
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


# --- neighbour lists -----------------------------------------------------------------------------

_CALCULATORS = threading.local()


def _calculator(cutoff: float):
    """This thread's vesin ``NeighborList`` for ``cutoff`` (created once, then reused).

    A calculator owns its output buffers, so it is per thread; a forked child inherits a private
    copy of the parent's memory, which is safe to keep using.
    """
    cache: dict[float, object] | None = getattr(_CALCULATORS, "cache", None)
    if cache is None:
        cache = _CALCULATORS.cache = {}
    nl = cache.get(cutoff)
    if nl is None:
        from vesin import NeighborList

        nl = cache[cutoff] = NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
    return nl


def _raw_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
               with_distances: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """vesin's full list, unsorted: ``pairs (E, 2) [i, j]``, ``shifts (E, 3)``, ``d (E,)`` or None.

    The arrays are views into the calculator's buffers: valid until its next call.
    """
    pbc = np.asarray(pbc, dtype=bool)
    points = np.asarray(positions, dtype=np.float64)
    if pbc.any():
        box = np.asarray(cell, dtype=np.float64)
    else:
        box = np.zeros((3, 3))  # vesin needs a box only for periodic directions
    out = _calculator(float(cutoff)).compute(points=points, box=box, periodic=pbc,
                                             quantities="PSd" if with_distances else "PS", copy=False)
    return out[0], out[1], (out[2] if with_distances else None)


def _nearest_order(i: np.ndarray, j: np.ndarray, s: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """Edge order sorted by (centre, distance, j, shift), keeping the first ``k`` of each centre."""
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, d, i))
    i_sorted = i[order]
    starts = np.searchsorted(i_sorted, i_sorted, side="left")
    rank = np.arange(i_sorted.shape[0]) - starts
    return order[rank < k]


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                  max_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list: ``(centre i, neighbour j, shifts S (E,3) int64, distances d (E,) Å)``.

    ``d = |positions[j] - positions[i] + S @ cell|``. Sorted by centre (stable, so deterministic);
    with ``max_neighbors`` each centre keeps its nearest k (ties: lower j, then lower shift).
    """
    pairs, shifts, dist = _raw_pairs(positions, cell, pbc, cutoff, with_distances=True)
    i = pairs[:, 0].astype(np.int64)
    j = pairs[:, 1].astype(np.int64)
    if max_neighbors is None:
        order = np.argsort(i, kind="stable")
    else:
        order = _nearest_order(i, j, shifts, dist, max_neighbors)
    return i[order], j[order], shifts[order].astype(np.int64), dist[order].copy()


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
        if name in _FIELDS or name in ("batch", "ptr", "num_nodes"):
            raise ValueError(f"record {record.id!r}: extra field {name!r} would replace a graph field")
        if array.ndim == 0 or array.shape[0] != n:
            raise ValueError(f"record {record.id!r}: extra field {name!r} has shape {array.shape}, "
                             f"expected a first dimension of {n} (one row per atom)")
        items.append((str(name), array))
    return tuple(items)


def _torch_dtype_of(array: np.ndarray, float_dtype: torch.dtype) -> torch.dtype:
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
            pairs, raw_shifts, dist = _raw_pairs(record.positions, record.cell, record.pbc, cfg.cutoff,
                                                 with_distances=k is not None)
        except RuntimeError as exc:  # vesin reports bad geometry as RuntimeError
            raise RecordError(f"record {record.id!r}: neighbour search failed ({exc})") from None
        i = pairs[:, 0].astype(np.int64)
        counts = np.bincount(i, minlength=n)
        if k is None:
            order = np.argsort(i, kind="stable")
        else:
            order = _nearest_order(i, pairs[:, 1], raw_shifts, dist, k)
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
        """A ``Batch`` of ``parts`` in this builder's float dtype (see :func:`collate`)."""
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
    target = _torch_dtype_of(value, dtype)
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


# --- many structures -----------------------------------------------------------------------------

def _offsets(sizes: np.ndarray) -> np.ndarray:
    """[0, s0, s0+s1, ...] (len B+1), int64."""
    out = np.zeros(sizes.shape[0] + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def _empty(numel: int, dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised 1-d tensor; in shared memory when ``shared`` (in a DataLoader worker the
    batch then reaches the main process without another copy, as with PyG's own collate)."""
    if shared and numel and hasattr(torch.UntypedStorage, "_new_shared"):
        itemsize = torch.empty((), dtype=dtype).element_size()
        storage = torch.UntypedStorage._new_shared(numel * itemsize)
        return torch.empty(0, dtype=dtype).set_(storage, 0, (numel,))
    return torch.empty(numel, dtype=dtype)


def _carve(layout: dict[str, tuple[torch.dtype, tuple[int, ...]]], shared: bool) -> dict[str, torch.Tensor]:
    """Uninitialised tensors of the given dtypes and shapes, as views of ONE buffer per dtype.

    A batch crossing from a worker to the main process costs one file-descriptor hand-over per
    distinct storage (~0.3 ms each); ~55 separate tensors (fields plus PyG's slice/increment
    bookkeeping) would cost ~17 ms a batch, three buffers well under 1 ms.
    """
    totals: dict[torch.dtype, int] = {}
    for dtype, shape in layout.values():
        totals[dtype] = totals.get(dtype, 0) + math.prod(shape)
    buffers = {dtype: _empty(total, dtype, shared) for dtype, total in totals.items()}
    offsets = dict.fromkeys(totals, 0)
    out: dict[str, torch.Tensor] = {}
    for name, (dtype, shape) in layout.items():
        size = math.prod(shape)
        out[name] = buffers[dtype][offsets[dtype]:offsets[dtype] + size].view(shape)
        offsets[dtype] += size
    return out


def _fill_cat(out: torch.Tensor, arrays: list[np.ndarray], axis: int = 0) -> None:
    """Concatenate numpy ``arrays`` along ``axis`` into ``out`` (casting floats as needed)."""
    if out.numel():
        np.concatenate(arrays, axis=axis, out=out.numpy(), casting="same_kind")


def _fill_optional(out: torch.Tensor, values: list, sizes: np.ndarray, shape: tuple[int, ...]) -> None:
    """Concatenate optional per-graph arrays of ``(size_b, *shape)`` into ``out``, zeros where absent."""
    present = [v is not None for v in values]
    if not any(present):
        out.zero_()
        return
    if not all(present):
        values = [v if v is not None else np.zeros((int(n), *shape)) for v, n in zip(values, sizes)]
    _fill_cat(out, [np.reshape(v, (-1, *shape)) for v in values])


# Fields of a batch in Batch.from_data_list's key order: (kind, dtype class); kind says along
# what the field is concatenated: "node" (atoms), "edge", or "graph" (one row per graph).
_FIELDS = {
    "edge_index": ("edge", "long"), "y": ("graph", "float"), "pos": ("node", "float"), "z": ("node", "long"),
    "cell": ("graph", "float"), "pbc": ("graph", "bool"), "shifts": ("edge", "long"),
    "natoms": ("graph", "long"), "energy": ("graph", "float"), "forces": ("node", "float"),
    "stress": ("graph", "float"), "y_mask": ("graph", "bool"), "has_energy": ("graph", "bool"),
    "has_forces": ("graph", "bool"), "has_stress": ("graph", "bool"), "equilibrium": ("graph", "long"),
    "isolated": ("graph", "bool"), "idx": ("graph", "long"),
}


def collate(parts: Sequence[GraphParts], dtype: torch.dtype = torch.float32) -> Batch:
    """One ``torch_geometric.data.Batch`` of ``parts`` (see the module docstring).

    Equal, field by field, to ``Batch.from_data_list([to_data(p, dtype) for p in parts])``, but
    with one numpy concatenation per field for the whole batch. The tensors are views of one
    buffer per dtype (see :func:`_carve`); they are never resized, so this is invisible to users.
    """
    if len(parts) == 0:
        raise ValueError("cannot collate an empty list of graphs")
    shared = torch.utils.data.get_worker_info() is not None
    b = len(parts)
    num_props = len(parts[0].y)
    natoms = np.fromiter((p.z.shape[0] for p in parts), dtype=np.int64, count=b)
    nedges = np.fromiter((p.edge_index.shape[1] for p in parts), dtype=np.int64, count=b)
    node_off = _offsets(natoms)
    edge_off = _offsets(nedges)
    n, e = int(node_off[-1]), int(edge_off[-1])

    kinds = {"long": torch.long, "float": dtype, "bool": torch.bool}
    shapes = {"edge_index": (2, e), "y": (b, num_props), "pos": (n, 3), "z": (n,), "cell": (b, 3, 3), "pbc": (b, 3),
              "shifts": (e, 3), "forces": (n, 3), "stress": (b, 3, 3), "y_mask": (b, num_props)}
    layout = {name: (kinds[kind], shapes.get(name, (b,))) for name, (_, kind) in _FIELDS.items()}
    layout.update({
        "batch": (torch.long, (n,)), "ptr": (torch.long, (b + 1,)),
        # bookkeeping shared by the fields of one kind (from_data_list has equal, separate copies)
        "_node_slices": (torch.long, (b + 1,)), "_edge_slices": (torch.long, (b + 1,)),
        "_graph_slices": (torch.long, (b + 1,)), "_edge_incs": (torch.long, (b,)), "_zero_incs": (torch.long, (b,)),
    })
    extra_names = [name for name, _ in parts[0].extras]
    for p in parts:
        if [name for name, _ in p.extras] != extra_names:
            raise ValueError(f"graphs {parts[0].idx} and {p.idx} have different extra fields "
                             f"({extra_names} vs {[name for name, _ in p.extras]}); they cannot share a batch")
    for name, value in parts[0].extras:
        layout[name] = (_torch_dtype_of(value, dtype), (n, *value.shape[1:]))
    t = _carve(layout, shared)
    for k, name in enumerate(extra_names):
        _fill_cat(t[name], [p.extras[k][1] for p in parts])

    ei = t["edge_index"]
    _fill_cat(ei, [p.edge_index for p in parts], axis=1)
    ei.numpy()[...] += np.repeat(node_off[:-1], nedges)
    _fill_cat(t["pos"], [p.pos for p in parts])
    _fill_cat(t["z"], [p.z for p in parts])
    _fill_cat(t["shifts"], [p.shifts for p in parts])
    _fill_optional(t["forces"], [p.forces for p in parts], natoms, (3,))
    _fill_optional(t["stress"], [p.stress for p in parts], np.ones(b, dtype=np.int64), (3, 3))
    energies = [p.energy for p in parts]
    per_graph = {
        "y": [p.y for p in parts], "cell": [p.cell for p in parts], "pbc": [p.pbc for p in parts],
        "natoms": natoms, "energy": [0.0 if v is None else v for v in energies],
        "y_mask": [p.y_mask for p in parts], "has_energy": [v is not None for v in energies],
        "has_forces": [p.forces is not None for p in parts], "has_stress": [p.stress is not None for p in parts],
        "equilibrium": [p.equilibrium for p in parts], "isolated": [p.isolated for p in parts],
        "idx": [p.idx for p in parts],
    }
    for name, values in per_graph.items():
        target = t[name].numpy()
        target[...] = np.asarray(values, dtype=target.dtype).reshape(target.shape)
    t["batch"].numpy()[...] = np.repeat(np.arange(b, dtype=np.int64), natoms)
    t["ptr"].numpy()[...] = node_off
    t["_node_slices"].numpy()[...] = node_off
    t["_edge_slices"].numpy()[...] = edge_off
    t["_graph_slices"].numpy()[...] = np.arange(b + 1)
    t["_edge_incs"].numpy()[...] = node_off[:-1]
    t["_zero_incs"].zero_()

    batch = Batch(_base_cls=Data)
    slice_dict: dict[str, torch.Tensor] = {}
    inc_dict: dict[str, torch.Tensor] = {}
    for name, kind in [(name, kind) for name, (kind, _) in _FIELDS.items()] + [(name, "node") for name in extra_names]:
        batch[name] = t[name]
        slice_dict[name] = t[f"_{kind}_slices"]
        inc_dict[name] = t["_zero_incs"]
    inc_dict["edge_index"] = t["_edge_incs"]

    # What Batch.from_data_list adds: per-graph node counts, the total, and the batch/ptr vectors.
    batch.stores[0]._num_nodes = natoms.tolist()
    batch.num_nodes = n
    batch.batch = t["batch"]
    batch.ptr = t["ptr"]
    batch._num_graphs = b
    batch._slice_dict = slice_dict
    batch._inc_dict = inc_dict
    return batch
