"""Build the next batch in a background thread of the training process (``data.prefetch_thread``).

With graphs built in-process (``data.loader_workers = 0``) a data-parallel rank does two things in
turn: build its next batch, then train on it, and at the end of each backward pass it waits for the
slowest rank's gradients. :class:`ThreadPrefetch` moves the building into a thread, so that it
goes on while the training thread waits (the gradient all-reduce) or runs on a free core.

When it builds matters. Graph building is mostly Python and holds the GIL; so does the forward
pass's dispatch of many small torch ops, while the backward pass runs in torch's autograd engine
without it. So after the first item the thread builds the next one only when released: the
training loop calls :meth:`ThreadPrefetch.release` at the point its mode names (below). Asking for
an item that is not ready releases the thread too, so a loop that never calls it still gets every
item (without the overlap).

When to release (``data.prefetch_thread``), as measured on a 2-core VM (quick-start PaiNN EFS,
1 torch thread per worker, 150–200-step runs, interleaved, 3–10 pairs each):

* ``backward``: with a core to spare (1 worker on 2 cores) the thread builds on that core while the
  GIL is free: +4 to +15 % atoms/s over building in the loop, every pair; building from the start of
  the step instead gave −4 to +8 %;
* ``step``: when the node's training threads fill every core (2 workers on 2 cores), build as soon as
  the step starts: the thread then runs whenever its rank waits (the gradient all-reduce, the
  GIL), +14 % on average (6,023 vs 5,266 atoms/s, 8 of 10 pairs); gated on the backward it gained
  nothing (−2 %);
* ``auto`` (default): ``step`` when local workers × threads per worker ≥ the cores this process may
  run on, else ``backward``; ``none`` on a GPU, where the step does not hold the CPU and DataLoader
  processes (``data.loader_workers`` ≥ 1) are the way to feed it;
* ``none``: build in the training loop, as without this module.

Across epochs (``next_pass``): when a pass ends, the thread calls ``next_pass()`` (the training
loop's move to the next epoch: ``sampler.set_epoch(epoch + 1, 0)``), starts the next pass and
builds its first item before it reports the end, so the next ``iter()`` begins with that item
ready. Without it the first batch of every epoch was built while the rank waited: on the quick
start's 400 structures (13 steps per epoch with 2 workers) that was ~6 ms per epoch (re-packing
and balancing the epoch, starting the thread, collating), 90 % of the 2-worker data wait. The
data wait fell from 0.7–1.2 % to 0.06–0.1 %; the throughput change was within the VM's noise
(5 interleaved pairs of 700-step runs: −2.7 to +1.9 %, mean −0.3 %).

The batches, their order and the sampler's position are exactly those of the plain loader: the
thread consumes the same iterator, one item at a time, and the training loop counts only the
batches it took. An exception raised while building a batch (a corrupt record, with its file and
index) is re-raised in the training thread at the batch where it happened, type and message intact.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

PREFETCH_MODES = ("auto", "step", "backward", "none")

_ITEM, _END, _ERROR = 0, 1, 2
_POLL_S = 0.05


class ThreadPrefetch(Generic[T]):
    """Iterate ``source`` in a daemon thread, one item ahead of the consumer (module docstring).

    Each ``iter()`` starts one pass over ``source`` (``iter(source)`` in the thread). Closing the
    iterator early (``break`` out of a ``for`` loop) stops the thread after the item it is building.
    ``next_pass``: called in the thread when a pass ends, to move ``source`` on to its next pass
    (the next epoch), whose first item is then built at once and handed out first by the next
    ``iter()`` (module docstring); the consumer must not move ``source`` on itself.
    """

    def __init__(self, source: Iterable[T], next_pass: Callable[[], None] | None = None) -> None:
        self.source = source
        self.next_pass = next_pass
        self._go = threading.Event()
        self._carried: tuple[Iterator[T], tuple[int, Any]] | None = None  # next pass, its first entry

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def release(self) -> None:
        """Let the thread build the next item now (the consumer is about to leave the GIL free)."""
        self._go.set()

    def __iter__(self) -> Iterator[T]:
        ready: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=1)
        stop = threading.Event()
        go = self._go
        go.clear()

        def wait_for(event: threading.Event) -> bool:
            while not stop.is_set():
                if event.wait(_POLL_S):
                    return True
            return False

        def offer(entry: tuple[int, Any]) -> bool:
            while not stop.is_set():
                try:
                    ready.put(entry, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def next_entry(items: Iterator[T]) -> tuple[int, Any]:
            try:
                return _ITEM, next(items)
            except StopIteration:
                return _END, None
            except BaseException as exc:  # handed to the consumer, raised there
                return _ERROR, exc

        def produce() -> None:
            try:
                if self._carried is not None:   # the previous pass built this one's first item
                    (items, entry), self._carried = self._carried, None
                else:
                    items = iter(self.source)
                    entry = next_entry(items)
                while True:
                    if entry[0] == _END and self.next_pass is not None:
                        self.next_pass()   # the pass is over: start the next one and build its first item
                        following = iter(self.source)
                        self._carried = (following, next_entry(following))
                    if not offer(entry) or entry[0] != _ITEM:
                        return
                    if not wait_for(go):
                        return
                    go.clear()
                    entry = next_entry(items)
            except BaseException as exc:  # handed to the consumer, raised there
                offer((_ERROR, exc))

        thread = threading.Thread(target=produce, name="matforge-batch-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                if ready.empty():
                    go.set()      # not built yet: build it now, released or not
                kind, value = ready.get()
                if kind == _ITEM:
                    yield value
                elif kind == _END:
                    return
                else:
                    raise value
        finally:
            stop.set()
            thread.join()


def resolve_prefetch_mode(setting: str, loader_workers: int, busy_cores: int, cores: int, device_type: str) -> str:
    """``"step"``, ``"backward"`` or ``"none"`` for ``data.prefetch_thread = setting`` (module docstring).

    busy_cores: training threads of this node (local workers × torch threads per worker); cores: the
    CPUs this process may run on. With DataLoader processes (``loader_workers`` ≥ 1) there is nothing
    to prefetch here: ``"none"``.
    """
    if setting not in PREFETCH_MODES:
        raise ValueError(f"prefetch mode {setting!r} is not one of {', '.join(PREFETCH_MODES)}")
    if loader_workers > 0 or setting == "none":
        return "none"
    if setting != "auto":
        return setting
    if device_type != "cpu":
        return "none"
    return "step" if busy_cores >= cores else "backward"


AUTO_LOADER_WORKERS = -1


def resolve_loader_workers(setting: int, busy_cores: int, cores: int, device_type: str) -> int:
    """DataLoader processes per training worker for ``data.loader_workers = setting``.

    ``-1`` (auto, the default): on a CPU node whose cores the training threads already fill
    (``busy_cores >= cores``) a loader process has no core of its own and takes its time from a rank
    (quick start, 2 workers on 2 cores: ~7,000 atoms/s and 5–7 % of the time waiting for data
    with 1, ~7,800 and 1 % with 0 and the prefetch thread), so 0; otherwise 1. Any other value is
    taken as given.
    """
    if setting != AUTO_LOADER_WORKERS:
        return setting
    return 0 if device_type == "cpu" and busy_cores >= cores else 1
