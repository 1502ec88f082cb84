"""ThreadPrefetch: the same items in the same order as the source, the next item built only when
released or asked for, errors re-raised where they happened, an early stop that ends the thread,
and the real loader's batches unchanged."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from matforge.datasets.prefetch import ThreadPrefetch


class CorruptRecord(ValueError):
    pass


def _source(n: int, fail_at: int | None = None):
    for k in range(n):
        if k == fail_at:
            raise CorruptRecord(f"shard-0003.lmdb: record {k}: truncated positions")
        yield k


class Reiterable:
    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.passes = n, fail_at, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.passes += 1
        return _source(self.n, self.fail_at)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "matforge-batch-prefetch"]


def test_same_items_in_order_and_each_pass_restarts():
    source = Reiterable(25)
    prefetch = ThreadPrefetch(source)
    assert len(prefetch) == 25
    assert list(prefetch) == list(range(25))
    assert list(prefetch) == list(range(25)) and source.passes == 2
    assert list(ThreadPrefetch(Reiterable(0))) == []


def test_errors_are_raised_in_the_consumer_at_their_item():
    seen = []
    with pytest.raises(CorruptRecord, match="shard-0003.lmdb: record 7: truncated positions"):
        for item in ThreadPrefetch(Reiterable(20, fail_at=7)):
            seen.append(item)
    assert seen == list(range(7))
    time.sleep(0.01)
    assert not _prefetch_threads()


def test_an_early_stop_ends_the_thread():
    iterator = iter(ThreadPrefetch(Reiterable(1000)))
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()                      # what `break` out of a for loop does
    assert not _prefetch_threads()


def test_the_next_item_is_built_when_released():
    built = []

    def source():
        for k in range(8):
            built.append(k)
            yield k

    class Counted:
        def __iter__(self):
            return source()

    prefetch = ThreadPrefetch(Counted())
    for k, item in enumerate(prefetch):
        assert item == k
        time.sleep(0.05)
        if k >= 2:  # past the start, nothing is built while the consumer holds an item...
            assert len(built) == k + 1
        if k >= 2 and k % 2 == 0:  # ...until it releases the thread
            prefetch.release()
            time.sleep(0.05)
            assert len(built) == min(8, k + 2)
    assert built == list(range(8))


def test_the_real_loader_gives_identical_batches(synth_dir):
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import make_loader
    from matforge.datasets.noise import PositionNoise
    from matforge.datasets.shard_dataset import open_dataset

    records = open_dataset(synth_dir)

    def batches(prefetch: bool):
        loader, sampler = make_loader(records, GraphConfig(cutoff=4.0), 48, shuffle=True, seed=3, world_size=2, rank=1,
                                      num_workers=0, epoch=1, start_batch=1,
                                      transform=PositionNoise(0.05, seed=5, equilibrium_only=False))
        return list(ThreadPrefetch(loader) if prefetch else loader)

    plain, threaded = batches(False), batches(True)
    assert len(plain) == len(threaded) > 1
    for a, b in zip(plain, threaded):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.pos, b.pos) and torch.equal(a.edge_index, b.edge_index)


class Epochs:
    """A source whose passes are epochs: pass e yields (e, 0), (e, 1), ...; ``advance`` moves it on
    (what the sampler's ``set_epoch(e + 1, 0)`` does); ``built`` records every item made, and when."""

    def __init__(self, per_epoch: int, fail: tuple[int, int] | None = None) -> None:
        self.epoch, self.per_epoch, self.fail, self.built = 0, per_epoch, fail, []

    def advance(self) -> None:
        self.epoch += 1

    def __iter__(self):
        epoch = self.epoch
        for k in range(self.per_epoch):
            if (epoch, k) == self.fail:
                raise CorruptRecord(f"shard-0001.lmdb: record {k}: no cell")
            self.built.append((epoch, k))
            yield epoch, k


def test_the_next_epochs_first_item_is_ready_when_a_pass_ends():
    source = Epochs(3)
    prefetch = ThreadPrefetch(source, next_pass=source.advance)
    assert list(prefetch) == [(0, 0), (0, 1), (0, 2)]
    # by the time the consumer hears the pass ended, the thread moved the source on and built the
    # next pass's first item (and no more: the rest waits for releases or requests as usual)
    assert source.epoch == 1 and source.built[-1] == (1, 0) and len(source.built) == 4
    assert list(prefetch) == [(1, 0), (1, 1), (1, 2)]
    assert source.built.count((1, 0)) == 1                 # handed over, not built twice
    seen = []
    for item in prefetch:                                  # stopping inside a pass carries nothing over
        seen.append(item)
        if len(seen) == 2:
            break
    assert seen == [(2, 0), (2, 1)] and source.epoch == 2
    assert not _prefetch_threads()


def test_an_error_in_the_next_epochs_first_item_is_raised_in_that_pass():
    source = Epochs(2, fail=(1, 0))
    prefetch = ThreadPrefetch(source, next_pass=source.advance)
    assert list(prefetch) == [(0, 0), (0, 1)]              # this pass ends normally
    with pytest.raises(CorruptRecord, match="shard-0001.lmdb: record 0: no cell"):
        next(iter(prefetch))


def test_the_real_loader_across_epochs_gives_the_plain_loaders_batches(synth_dir):
    """Three epochs through the prefetch thread moving the sampler on, against set_epoch by hand."""
    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import make_loader
    from matforge.datasets.noise import PositionNoise
    from matforge.datasets.shard_dataset import open_dataset

    records = open_dataset(synth_dir)

    def loader():
        return make_loader(records, GraphConfig(cutoff=4.0), 48, shuffle=True, seed=3, world_size=2, rank=0,
                           num_workers=0, epoch=1, start_batch=2,
                           transform=PositionNoise(0.05, seed=5, equilibrium_only=False))

    plain_loader, plain_sampler = loader()
    plain = []
    for epoch in (1, 2, 3):
        plain.append(list(plain_loader))
        plain_sampler.set_epoch(epoch + 1, 0)
    threaded_loader, sampler = loader()
    prefetch = ThreadPrefetch(threaded_loader, next_pass=lambda: sampler.set_epoch(sampler.epoch + 1, 0))
    threaded = [list(prefetch) for _ in range(3)]
    assert [len(p) for p in plain] == [len(t) for t in threaded] and len(plain[1]) > len(plain[0]) > 0
    for a, b in zip(sum(plain, []), sum(threaded, [])):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.pos, b.pos) and torch.equal(a.edge_index, b.edge_index)


def test_the_mode_follows_the_cores_left_free():
    from matforge.datasets.prefetch import resolve_prefetch_mode

    assert resolve_prefetch_mode("auto", 0, busy_cores=2, cores=2, device_type="cpu") == "step"
    assert resolve_prefetch_mode("auto", 0, busy_cores=1, cores=2, device_type="cpu") == "backward"
    assert resolve_prefetch_mode("auto", 0, busy_cores=4, cores=2, device_type="cpu") == "step"
    assert resolve_prefetch_mode("auto", 0, busy_cores=1, cores=16, device_type="cuda") == "none"
    assert resolve_prefetch_mode("auto", 1, busy_cores=1, cores=2, device_type="cpu") == "none"   # loader processes
    assert resolve_prefetch_mode("backward", 0, busy_cores=2, cores=2, device_type="cpu") == "backward"
    assert resolve_prefetch_mode("step", 2, busy_cores=2, cores=2, device_type="cpu") == "none"
    assert resolve_prefetch_mode("none", 0, busy_cores=1, cores=2, device_type="cpu") == "none"
    with pytest.raises(ValueError, match="'eager' is not one of auto, step, backward, none"):
        resolve_prefetch_mode("eager", 0, busy_cores=1, cores=2, device_type="cpu")


def test_the_config_refuses_an_unknown_mode():
    from matforge.pretrain.config import ConfigError, load_config

    assert load_config("quickstart", []).data.prefetch_thread == "auto"
    assert load_config("quickstart", ["data.prefetch_thread=none"]).data.prefetch_thread == "none"
    with pytest.raises(ConfigError, match="data.prefetch_thread: 'eager' is not one of auto, step, backward, none"):
        load_config("quickstart", ["data.prefetch_thread=eager"])


def test_loader_workers_auto_leaves_no_loader_process_on_a_full_cpu_node():
    from matforge.datasets.prefetch import AUTO_LOADER_WORKERS, resolve_loader_workers

    assert resolve_loader_workers(AUTO_LOADER_WORKERS, busy_cores=2, cores=2, device_type="cpu") == 0
    assert resolve_loader_workers(AUTO_LOADER_WORKERS, busy_cores=3, cores=2, device_type="cpu") == 0
    assert resolve_loader_workers(AUTO_LOADER_WORKERS, busy_cores=1, cores=2, device_type="cpu") == 1  # a core free
    assert resolve_loader_workers(AUTO_LOADER_WORKERS, busy_cores=8, cores=4, device_type="cuda") == 1
    assert resolve_loader_workers(0, busy_cores=1, cores=16, device_type="cpu") == 0   # given values stand
    assert resolve_loader_workers(3, busy_cores=2, cores=2, device_type="cpu") == 3


def test_loader_workers_below_auto_is_a_config_error():
    from matforge.pretrain.config import ConfigError, load_config

    assert load_config("quickstart", []).data.loader_workers == -1
    with pytest.raises(ConfigError, match="data.loader_workers"):
        load_config("quickstart", ["data.loader_workers=-2"])
