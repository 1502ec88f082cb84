"""Shards → PyG batches through a torch ``DataLoader``: graph building and collation in workers.

::

    AtomBudgetBatchSampler (main process)  ──  list of record indices per batch (+ its epoch)
        │
        ▼  loader worker (or the main process when num_workers=0)
    ShardDataset[i] ─ decode ─► [transform(record, i, epoch)] ─► GraphBuilder.parts ─ vesin ─► GraphParts
        │  collate (one numpy concatenation per field)
        ▼
    torch_geometric.data.Batch  ──►  training loop

:class:`GraphDataset` is an ordinary map-style dataset (``ds[i]`` is a PyG ``Data``), so it also
works with PyG's own loaders. :func:`make_loader` wires the fast path: the DataLoader hands each
worker a whole batch of indices, the worker builds :class:`~matforge.datasets.graphs.GraphParts`
and collates them straight into a ``Batch`` (no per-structure ``Data``). Each index travels with
the epoch of its batch, so a record transform that depends on the epoch (denoising's
:class:`~matforge.datasets.noise.PositionNoise`) gives the same result in persistent workers, in
the main process, and after resuming.

Processes: the datasets hold paths, the manifest and small arrays, never an open LMDB handle, so
they pickle into DataLoader workers (fork or spawn) and Ray workers; each process opens its own
read-only environments on first use (:mod:`matforge.datasets.shards`, whose at-fork hook drops
handles inherited from a parent that had already read records).

Graph cache (``cache_mb``): without a record transform a structure's graph is the same every epoch,
so each process may keep the :class:`~matforge.datasets.graphs.GraphParts` it built (read-only
numpy arrays) and skip reading, decoding and the neighbour search the next time; only collation is
left (on quick-start data 7.1 ms of 7.9 ms per 256-atom batch is reading and building). Entries
are kept until ``cache_mb`` is used, never evicted (random access gives any eviction policy a poor
hit rate), and the cache is not carried into DataLoader worker processes (each fills its own).
With a transform (denoising moves the atoms every epoch) nothing is cached.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Batch, Data

from matforge.datasets.collate import collate
from matforge.datasets.graphs import GraphBuilder, GraphConfig, GraphParts, to_data
from matforge.datasets.record import Record
from matforge.datasets.sampler import AtomBudgetBatchSampler
from matforge.datasets.shard_dataset import ShardDataset


RecordTransform = Callable[[Record, int, int], "tuple[Record, Mapping[str, np.ndarray]] | Record"]


class GraphDataset(Dataset):
    """Records of ``records`` as graphs: ``ds[i]`` is a ``Data`` whose ``idx`` is ``i``.

    ``records``: a :class:`ShardDataset` (or any indexable of records with a ``natoms`` array).
    ``transform``: optional ``(record, index, epoch) -> (record, extras)`` applied to each record
    before its graph is built, e.g. :class:`~matforge.datasets.noise.PositionNoise`; ``extras``
    (per-atom arrays) become fields of the graph. It must be picklable (it travels to workers).
    ``epoch`` is the epoch ``ds[i]`` passes to the transform (:meth:`set_epoch`); the loader of
    :func:`make_loader` passes each batch's own epoch instead.
    """

    def __init__(self, records: ShardDataset, config: GraphConfig | None = None,
                 transform: RecordTransform | None = None, cache_mb: float = 0.0) -> None:
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.records = records
        self.config = config if config is not None else GraphConfig()
        self.builder = GraphBuilder(self.config)
        self.transform = transform
        self.epoch = 0
        self.cache_bytes = int(cache_mb * 2**20) if transform is None else 0
        self._cache: dict[int, GraphParts] = {}
        self.cached_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"], state["cached_bytes"] = {}, 0   # each process fills its own
        return state

    def __len__(self) -> int:
        return len(self.records)

    @property
    def natoms(self) -> np.ndarray:
        """(len,) atoms per structure, for atom-budget batching."""
        return np.asarray(self.records.natoms)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def parts(self, i: int, epoch: int | None = None) -> GraphParts:
        """The graph of record ``i`` as :class:`GraphParts` (transformed for ``epoch``; from the
        cache when it holds it)."""
        cached = self._cache.get(i)
        if cached is not None:
            return cached
        record = self.records[i]
        extras = None
        if self.transform is not None:
            out = self.transform(record, i, self.epoch if epoch is None else epoch)
            record, extras = out if isinstance(out, tuple) else (out, None)
        parts = self.builder.parts(record, i, extras)
        if self.cache_bytes:
            self._remember(i, parts)
        return parts

    def _remember(self, i: int, parts: GraphParts) -> None:
        arrays = [a for a in parts if isinstance(a, np.ndarray)]
        size = sum(a.nbytes for a in arrays) + 512   # + the tuple and its scalars, roughly
        if self.cached_bytes + size > self.cache_bytes:
            return
        for a in arrays:
            a.flags.writeable = False   # shared by every later batch: nothing may change it
        self._cache[i] = parts
        self.cached_bytes += size

    def __getitem__(self, i: int) -> Data:
        parts = self.parts(int(i))
        if int(i) in self._cache:  # the Data's tensors would share the cached arrays: copy them
            parts = parts._replace(**{k: v.copy() for k, v in parts._asdict().items() if isinstance(v, np.ndarray)})
        return to_data(parts, self.config.torch_dtype)

    def collate(self, indices: Sequence[int], epoch: int | None = None) -> Batch:
        """Read, build and collate the structures at ``indices`` into one ``Batch``."""
        return self.builder.collate([self.parts(int(i), epoch) for i in indices])

    def __repr__(self) -> str:
        return f"GraphDataset({self.records!r}, {self.config}, transform={self.transform!r})"


class _EpochTagged:
    """The batch sampler as the DataLoader sees it: each index paired with the batch's epoch, so
    a (persistent) worker knows which epoch a batch belongs to (record transforms depend on it)."""

    def __init__(self, sampler: AtomBudgetBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.sampler:
            epoch = self.sampler.epoch
            yield [(epoch, i) for i in batch]


class _PartsView(Dataset):
    """What :func:`make_loader`'s DataLoader indexes: ``(epoch, index)`` pairs, a batch at a time
    (``__getitems__``), giving ``GraphParts`` so the worker's collate builds the ``Batch`` directly."""

    def __init__(self, graphs: GraphDataset) -> None:
        self.graphs = graphs

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, item: tuple[int, int]) -> GraphParts:
        epoch, i = item
        return self.graphs.parts(int(i), int(epoch))

    def __getitems__(self, items: Sequence[tuple[int, int]]) -> list[GraphParts]:
        return [self.graphs.parts(int(i), int(epoch)) for epoch, i in items]


class CollateParts:
    """Picklable collate function: ``list[GraphParts] -> Batch`` in the config's float dtype."""

    def __init__(self, config: GraphConfig) -> None:
        self.dtype = config.torch_dtype

    def __call__(self, parts: list[GraphParts]) -> Batch:
        return collate(parts, self.dtype)


def make_loader(
    dataset: ShardDataset | GraphDataset,
    graph_config: GraphConfig | None,
    max_atoms: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    multiprocessing_context: Any = None,
    transform: RecordTransform | None = None,
    cost: np.ndarray | None = None,
    cache_mb: float = 0.0,
) -> tuple[DataLoader, AtomBudgetBatchSampler]:
    """A DataLoader of PyG ``Batch`` es under an atom budget, and its sampler.

    ``dataset``: records (a :class:`ShardDataset`, graphs built with ``graph_config``) or a
    :class:`GraphDataset` (``graph_config`` None or equal to its own). ``max_atoms``: atom budget
    per batch. ``shuffle``/``seed``/``world_size``/``rank``/``drop_last``/``epoch``/``start_batch``:
    see :class:`AtomBudgetBatchSampler`; call ``sampler.set_epoch(e)`` before each epoch.
    ``persistent_workers`` defaults to ``num_workers > 0``. ``multiprocessing_context``: e.g.
    ``"spawn"`` or ``"fork"`` (default: the platform's). ``transform``: a record transform (see
    :class:`GraphDataset`), called with each record's index in ``dataset`` and the batch's epoch.
    ``cost``: estimated cost per record (:func:`~matforge.datasets.step_balance.structure_costs`):
    with ``world_size > 1`` each step's batches are balanced across ranks by it. ``cache_mb``: graph
    cache per process (module docstring; for records, not for a given ``GraphDataset``).
    """
    if isinstance(dataset, GraphDataset):
        if graph_config is not None and graph_config != dataset.config:
            raise ValueError(f"graph_config {graph_config} differs from the dataset's {dataset.config}")
        if transform is not None and transform is not dataset.transform:
            raise ValueError("pass the transform to the GraphDataset or to make_loader, not both")
        graphs = dataset
    else:
        graphs = GraphDataset(dataset, graph_config, transform, cache_mb=cache_mb)
    sampler = AtomBudgetBatchSampler(
        graphs.natoms, max_atoms, shuffle=shuffle, seed=seed, world_size=world_size, rank=rank,
        drop_last=drop_last, epoch=epoch, start_batch=start_batch, cost=cost,
    )
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        extra["multiprocessing_context"] = multiprocessing_context
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    loader = DataLoader(
        _PartsView(graphs), batch_sampler=_EpochTagged(sampler), collate_fn=CollateParts(graphs.config),
        num_workers=num_workers, pin_memory=pin_memory, **extra,
    )
    return loader, sampler
