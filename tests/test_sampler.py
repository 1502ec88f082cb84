"""Atom-budget batch sampler: budget, coverage, dealing to ranks, determinism, resuming."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from matforge.datasets.sampler import AtomBudgetBatchSampler, pack_boundaries

RNG = np.random.default_rng(1234)
NATOMS = RNG.integers(1, 60, size=257)  # mixed sizes, like a dataset of 1..59-atom cells
BUDGET = 200


def _flat(batches):
    return [i for b in batches for i in b]


def test_pack_boundaries_is_greedy():
    sizes = np.array([3, 4, 2, 6, 1, 1, 9, 5])
    assert pack_boundaries(sizes, 9).tolist() == [0, 3, 6, 7, 8]  # [3,4,2] [6,1,1] [9] [5]
    assert pack_boundaries(sizes, 100).tolist() == [0, 8]
    assert pack_boundaries(np.array([], dtype=int), 5).tolist() == [0]


@pytest.mark.parametrize("shuffle", [True, False])
def test_budget_respected_and_packing_greedy(shuffle):
    sampler = AtomBudgetBatchSampler(NATOMS, BUDGET, shuffle=shuffle, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 1
    totals = [int(NATOMS[b].sum()) for b in batches]
    assert max(totals) <= BUDGET
    # greedy: the first structure of the next batch would not have fitted
    for batch, nxt in zip(batches, batches[1:]):
        assert NATOMS[batch].sum() + NATOMS[nxt[0]] > BUDGET


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_exactly_once_per_epoch(shuffle):
    sampler = AtomBudgetBatchSampler(NATOMS, BUDGET, shuffle=shuffle, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        flat = _flat(sampler)
        assert sorted(flat) == list(range(len(NATOMS)))
        if not shuffle:
            assert flat == list(range(len(NATOMS)))


def test_oversized_structure_gets_its_own_batch_and_one_warning():
    natoms = np.array([10, 10, 500, 10, 300, 10])
    sampler = AtomBudgetBatchSampler(natoms, 100, shuffle=False)
    with pytest.warns(UserWarning, match=r"2 structure\(s\) have more atoms than max_atoms=100 \(largest 500\)"):
        batches = list(sampler)
    assert batches == [[0, 1], [2], [3], [4], [5]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.set_epoch(1)
        assert list(sampler) == batches


def test_deterministic_for_a_seed_and_different_across_epochs_and_seeds():
    a = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=11)
    b = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=11)
    other_seed = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=12)
    epoch0 = list(a)
    assert list(b) == epoch0
    assert list(other_seed) != epoch0
    a.set_epoch(1)
    assert list(a) != epoch0
    a.set_epoch(0)
    assert list(a) == epoch0
    # the order is the documented one: numpy PCG64 seeded with [seed, epoch]
    assert _flat(epoch0) == np.random.default_rng([11, 0]).permutation(len(NATOMS)).tolist()


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_disjoint_equal_length_and_dealt_round_robin(world_size, drop_last):
    full = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=2)
    global_batches = full.global_batches(0)
    g = len(global_batches)
    assert g % 2 and g % 4 and g % 3 == 0, "sizes chosen so that W = 2, 4 pad or drop and W = 3 divides G"
    ranks = [list(AtomBudgetBatchSampler(NATOMS, BUDGET, seed=2, world_size=world_size, rank=r, drop_last=drop_last))
             for r in range(world_size)]
    lengths = {len(r) for r in ranks}
    assert len(lengths) == 1
    per_rank = lengths.pop()
    assert per_rank == (g // world_size if drop_last else -(-g // world_size))
    assert all(len(AtomBudgetBatchSampler(NATOMS, BUDGET, seed=2, world_size=world_size, rank=r,
                                          drop_last=drop_last)) == per_rank for r in range(world_size))
    padded = global_batches + [global_batches[k % g] for k in range(per_rank * world_size - g)]
    for r in range(world_size):
        assert ranks[r] == padded[: per_rank * world_size][r::world_size]
    counts = Counter(i for rank in ranks for batch in rank for i in batch)
    if drop_last:
        assert max(counts.values()) == 1  # disjoint
        dropped = _flat(global_batches[per_rank * world_size:])
        assert set(counts) == set(range(len(NATOMS))) - set(dropped)
    else:
        assert set(counts) == set(range(len(NATOMS)))  # every structure seen
        repeated = _flat(global_batches[: per_rank * world_size - g])
        assert sorted(i for i, c in counts.items() if c == 2) == sorted(repeated)
        assert max(counts.values()) <= 2


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    uninterrupted = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=9, world_size=2, rank=1)
    expected = []
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        expected.append(list(uninterrupted))

    first = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=9, world_size=2, rank=1)
    first.set_epoch(0)
    list(first)
    first.set_epoch(1)
    seen = []
    for k, batch in enumerate(first):
        seen.append(batch)
        if k == 2:
            break
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batch_index"] == 3 and state["seed"] == 9

    resumed = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=9, world_size=2, rank=1)
    resumed.load_state_dict(state)
    got = {}
    for epoch in range(1, 3):
        resumed.set_epoch(epoch)  # a training loop's usual call keeps the restored position
        got[epoch] = list(resumed)
    assert seen + got[1] == expected[1]
    assert got[2] == expected[2]


def test_resume_with_consumed_count_and_constructor_start():
    ref = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=4, epoch=2)
    all_batches = list(ref)
    sampler = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=4, epoch=2, start_batch=1)
    assert list(sampler) == all_batches[1:]
    # with DataLoader workers the sampler runs ahead: the loop reports what it consumed
    sampler.set_epoch(2, start_batch=2)
    iterator = iter(sampler)
    for _ in range(4):  # prefetched
        next(iterator)
    state = sampler.state_dict(consumed=1)
    assert state["batch_index"] == 3
    again = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=4)
    again.load_state_dict(state)
    assert list(again) == all_batches[3:]
    assert len(again) == len(all_batches)  # len is the whole epoch, not what is left


@pytest.mark.parametrize("field,value", [("seed", 1), ("world_size", 4), ("max_atoms", 50), ("shuffle", False)])
def test_load_state_dict_refuses_other_batches(field, value):
    state = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=0).state_dict()
    state[field] = value
    with pytest.raises(ValueError, match=f"{field}="):
        AtomBudgetBatchSampler(NATOMS, BUDGET, seed=0).load_state_dict(state)
    other_data = AtomBudgetBatchSampler(NATOMS[:-1], BUDGET, seed=0)
    with pytest.raises(ValueError, match="natoms_sha256"):
        other_data.load_state_dict(AtomBudgetBatchSampler(NATOMS, BUDGET, seed=0).state_dict())


class _Sizes(Dataset):
    def __len__(self):
        return len(NATOMS)

    def __getitem__(self, i):
        return torch.tensor([i, NATOMS[i]])


def test_usable_as_a_dataloader_batch_sampler():
    sampler = AtomBudgetBatchSampler(NATOMS, BUDGET, seed=1)
    loader = DataLoader(_Sizes(), batch_sampler=sampler)
    assert len(loader) == len(sampler)
    got = [batch[:, 0].tolist() for batch in loader]
    assert got == list(AtomBudgetBatchSampler(NATOMS, BUDGET, seed=1))
    assert all(int(batch[:, 1].sum()) <= BUDGET for batch in loader)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_atoms=0), "max_atoms"),
    (dict(world_size=2, rank=2), "rank"),
    (dict(natoms=np.array([3, 0, 2])), "positive"),
])
def test_invalid_arguments(kwargs, message):
    args = dict(natoms=NATOMS, max_atoms=BUDGET)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        AtomBudgetBatchSampler(args.pop("natoms"), args.pop("max_atoms"), **args)


def test_empty_dataset_has_no_batches():
    sampler = AtomBudgetBatchSampler(np.array([], dtype=int), 10, world_size=2, rank=1)
    assert len(sampler) == 0 and list(sampler) == []
