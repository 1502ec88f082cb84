"""Many graphs → one ``torch_geometric.data.Batch``, built once per batch.

A batch of B graphs is a PyG ``Batch`` with the fields of :mod:`matforge.datasets.graphs`
concatenated: node fields along atoms, ``edge_index`` along edges with each graph's indices offset
by the atoms before it, per-graph fields along graphs, plus ``batch`` (N,) and ``ptr`` (B+1,). It
is the same object, field by field (including the slice and increment bookkeeping that
``get_example`` uses), as ``Batch.from_data_list`` of the per-graph ``Data``, but costs one numpy
concatenation per field for the whole batch instead of per-structure tensors.

The batch's tensors are views of one buffer per dtype (in shared memory inside a DataLoader
worker), because handing a batch to the main process costs one file descriptor per distinct
storage.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from matforge.datasets.graphs import FIELDS, GraphParts, torch_dtype_of

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
    layout = {name: (kinds[kind], shapes.get(name, (b,))) for name, (_, kind) in FIELDS.items()}
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
        layout[name] = (torch_dtype_of(value, dtype), (n, *value.shape[1:]))
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
    for name, kind in [(name, kind) for name, (kind, _) in FIELDS.items()] + [(name, "node") for name in extra_names]:
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
