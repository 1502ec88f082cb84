"""The graph loader end to end: shards → GraphDataset → DataLoader (0 or 2 workers, fork and spawn)
→ PyG Batches under an atom budget; pickling into other processes; resuming.

Data: the 36-record EMT dataset of ``conftest.synth_dir`` (3 shards, 3-32 atoms, energy/forces/
stress) and the perov5 + carbon24 fixture rows converted into a temporary directory.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from matforge.datasets import open_dataset
from matforge.datasets.convert import convert
from matforge.datasets.graphs import GraphConfig
from matforge.datasets.loader import GraphDataset, make_loader

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG = GraphConfig(cutoff=4.0, dtype="float64")
BUDGET = 64


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "perov5+carbon24"
    convert([FIXTURES / "perov5" / "val.csv", FIXTURES / "carbon24" / "val.csv"], out)
    return out


def _assert_same_batch(got: Batch, ref: Batch) -> None:
    assert set(got.keys()) == set(ref.keys())
    for key in ref.keys():
        a, b = got[key], ref[key]
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), key
        else:
            assert a == b, key
    assert got.num_graphs == ref.num_graphs


def _epoch(loader) -> list[Batch]:
    return list(loader)


def test_graph_dataset_items_are_data_with_their_index(synth_dir):
    records = open_dataset(synth_dir)
    graphs = GraphDataset(records, CONFIG)
    assert len(graphs) == 36 and np.array_equal(graphs.natoms, records.natoms)
    for i in (0, 17, 35):
        data = graphs[i]
        assert data.idx.tolist() == [i]
        assert torch.equal(data.pos, torch.from_numpy(records[i].positions))
        assert torch.equal(data.forces, torch.from_numpy(records[i].forces))
    view = GraphDataset(records.subset([35, 3]), CONFIG)
    assert view[0].idx.tolist() == [0] and torch.equal(view[0].pos, graphs[35].pos)


def test_epoch_covers_every_record_once_under_the_budget(synth_dir):
    graphs = GraphDataset(open_dataset(synth_dir), CONFIG)
    loader, sampler = make_loader(graphs, None, BUDGET, shuffle=True, seed=7)
    assert len(loader) == len(sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = _epoch(loader)
        seen = [i for b in batches for i in b.idx.tolist()]
        assert sorted(seen) == list(range(36))
        for batch in batches:
            assert isinstance(batch, Batch)
            assert int(batch.natoms.sum()) == batch.num_nodes <= BUDGET
            ref = Batch.from_data_list([graphs[i] for i in batch.idx.tolist()])
            _assert_same_batch(batch, ref)
        if epoch == 0:
            first = seen
    assert seen != first  # reshuffled


def _parent_opened_envs(directory=None) -> int:
    """Environments this process holds open (for ``directory``'s shards only, if given: other tests
    in the session may have opened their own)."""
    import os

    from matforge.datasets import shards

    if directory is None:
        return len(shards._ENVS)
    root = os.path.abspath(directory) + os.sep
    return sum(1 for path in shards._ENVS if path.startswith(root))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_two_workers_give_the_same_batches_as_the_main_process(synth_dir, method):
    records = open_dataset(synth_dir)
    records[0]  # the parent reads (opens every shard's environment) before the workers start
    assert _parent_opened_envs(synth_dir) == 3
    reference_loader, reference_sampler = make_loader(records, CONFIG, BUDGET, seed=3)
    loader, sampler = make_loader(records, CONFIG, BUDGET, seed=3, num_workers=2,
                                  multiprocessing_context=method, persistent_workers=True)
    for epoch in range(2):  # persistent workers still follow set_epoch (the sampler runs in the parent)
        reference_sampler.set_epoch(epoch)
        sampler.set_epoch(epoch)
        expected, got = _epoch(reference_loader), _epoch(loader)
        assert len(got) == len(expected) == len(sampler)
        for a, b in zip(got, expected):
            _assert_same_batch(a, b)
    del loader


def _child_reads(ds, queue) -> None:  # runs in a forked child
    inherited = _parent_opened_envs()
    queue.put((inherited, [r.id for r in ds]))


def test_fork_after_the_parent_read_drops_inherited_environments(synth_dir):
    import multiprocessing as mp

    ds = open_dataset(synth_dir)
    ids = [r.id for r in ds]
    assert _parent_opened_envs(synth_dir) == 3
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(ds, queue))
    child.start()
    inherited, child_ids = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert inherited == 0  # the at-fork hook closed the parent's handles in the child
    assert child_ids == ids
    assert [r.id for r in ds] == ids  # the parent's own handles still work


_SUBPROCESS = """
import json, pickle, sys
graphs = pickle.load(sys.stdin.buffer)
data = graphs[5]
print(json.dumps({"id": graphs.records[5].id, "edges": data.edge_index.shape[1],
                  "pos": data.pos.sum().item(), "forces": data.forces.abs().sum().item()}))
"""


def test_dataset_pickled_into_another_python_process(synth_dir):
    graphs = GraphDataset(open_dataset(synth_dir), CONFIG)
    expected = graphs[5]  # and this process has its environments open already
    blob = pickle.dumps(graphs)
    assert len(blob) < 30_000  # paths, manifest, small arrays: no environment, no records
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS], input=blob, capture_output=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr.decode()
    got = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert got["id"] == graphs.records[5].id
    assert got["edges"] == expected.edge_index.shape[1]
    assert got["pos"] == pytest.approx(expected.pos.sum().item(), abs=1e-12)
    assert got["forces"] == pytest.approx(expected.forces.abs().sum().item(), abs=1e-12)


def test_resume_through_make_loader(synth_dir):
    records = open_dataset(synth_dir)
    full, sampler = make_loader(records, CONFIG, BUDGET, seed=5, world_size=2, rank=1)
    sampler.set_epoch(3)
    expected = [b.idx.tolist() for b in full]
    assert len(expected) > 3
    resumed, rsampler = make_loader(records, CONFIG, BUDGET, seed=5, world_size=2, rank=1, epoch=3, start_batch=2)
    assert [b.idx.tolist() for b in resumed] == expected[2:]
    state = rsampler.state_dict()
    assert state["epoch"] == 3 and state["batch_index"] == len(expected)


def test_real_rows_with_properties(real_dir):
    records = open_dataset(real_dir)
    config = GraphConfig(cutoff=8.0, max_neighbors=12, properties=("heat_ref", "energy_per_atom"))
    loader, _ = make_loader(records, config, max_atoms=20, shuffle=False)
    batches = list(loader)
    assert [b.idx.tolist() for b in batches] == [[0, 1, 2], [3, 4]]  # 5+5+5 atoms (+8 > 20), then 8+6
    batch = batches[0]
    assert batch.y_mask.tolist() == [[True, False]] * 3
    assert batches[1].y_mask.tolist() == [[False, True]] * 2
    assert batch.pos.dtype == torch.float32 and not batch.isolated.any()
    assert torch.equal(torch.bincount(batch.edge_index[1]), torch.full((15,), 12))


def test_make_loader_refuses_a_conflicting_config(synth_dir):
    graphs = GraphDataset(open_dataset(synth_dir), CONFIG)
    with pytest.raises(ValueError, match="differs"):
        make_loader(graphs, GraphConfig(cutoff=5.0), BUDGET)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_record_transform_gets_each_batch_index_and_epoch(synth_dir, num_workers):
    """Denoising's PositionNoise through the loader: the noise of record i in epoch e is
    displacement(n, i, e), also in persistent workers after set_epoch; the graph is built on the
    noised positions; noise and noise_mask batch along atoms."""
    from matforge.datasets.noise import PositionNoise

    records = open_dataset(synth_dir)
    noise = PositionNoise(std=0.05, seed=1, equilibrium_only=False)
    loader, sampler = make_loader(records, CONFIG, BUDGET, seed=2, num_workers=num_workers, transform=noise)
    graphs = GraphDataset(records, CONFIG, noise)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        graphs.set_epoch(epoch)
        for batch in loader:
            assert batch.noise.shape == (batch.num_nodes, 3) and batch.noise.dtype == torch.float64
            assert batch.noise_mask.dtype == torch.bool and batch.noise_mask.all()
            for k, i in enumerate(batch.idx.tolist()):
                atoms = slice(int(batch.ptr[k]), int(batch.ptr[k + 1]))
                eta = noise.displacement(records.natoms[i], i, epoch)
                assert np.array_equal(batch.noise[atoms].numpy(), eta)
                assert np.allclose(batch.pos[atoms].numpy(), records[i].positions + eta, rtol=0, atol=1e-12)
            assert not batch.has_energy.any()  # labels of the un-noised geometry are dropped
            _assert_same_batch(batch, Batch.from_data_list([graphs[i] for i in batch.idx.tolist()]))
    del loader


def test_graph_cache_gives_the_same_batches_and_respects_its_budget(synth_dir):
    """Cached graphs: identical batches epoch after epoch, read-only cached arrays, items that do
    not alias the cache, a byte budget, nothing carried into a pickled copy, nothing with a transform."""
    import pickle

    from matforge.datasets.noise import PositionNoise

    records = open_dataset(synth_dir)
    plain = GraphDataset(records, GraphConfig(cutoff=4.0))
    cached = GraphDataset(records, GraphConfig(cutoff=4.0), cache_mb=64)
    order = [5, 3, 5, 0, 3, 7]
    for k in range(2):  # the second pass comes from the cache
        a, b = plain.collate(order), cached.collate(order)
        for key in ("pos", "edge_index", "shifts", "z", "forces", "energy", "stress", "cell"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert sorted(cached._cache) == [0, 3, 5, 7] and 0 < cached.cached_bytes < 64 * 2**20
    assert cached.parts(3) is cached.parts(3) and not cached.parts(3).edge_index.flags.writeable
    item = cached[3]
    item.edge_index.add_(1)                       # a user's in-place change stays in their copy
    assert torch.equal(cached[3].edge_index, plain[3].edge_index)
    assert pickle.loads(pickle.dumps(cached))._cache == {}
    one = cached._cache[0]
    size = sum(x.nbytes for x in one if isinstance(x, np.ndarray)) + 512
    small = GraphDataset(records, GraphConfig(cutoff=4.0), cache_mb=(size + 10) / 2**20)
    small.collate([0, 3, 5])
    assert list(small._cache) == [0] and small.cached_bytes == size
    noisy = GraphDataset(records, GraphConfig(cutoff=4.0), PositionNoise(0.05, seed=1), cache_mb=64)
    noisy.collate([0, 1])
    assert noisy.cache_bytes == 0 and noisy._cache == {}
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        GraphDataset(records, GraphConfig(cutoff=4.0), cache_mb=-1)
