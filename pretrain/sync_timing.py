"""How long a rank waits for the others in synchronous data parallelism (the stragglers' cost).

A training step has two points where every rank must have arrived before any can go on:

* the label-count all-reduce, started before the forward pass and awaited after it
  (:func:`matforge.pretrain.distributed.start_all_reduce_sum`);
* DDP's gradient all-reduce, started bucket by bucket as the backward pass makes them ready and
  awaited at the end of the backward.

At such a point, the rank that arrives at time ``t_r`` goes on at ``t_go ≈ max_q t_q + τ`` (the
slowest rank's arrival plus the transfer τ), so it spends ``t_go − t_r`` there: the transfer, plus
the difference between its own work and the slowest rank's (uneven batches, a core the host gave to
someone else for a few milliseconds, a Ray daemon waking up). Summed over a logging window and divided
by the ranks' busy time, that is ``time/sync_wait_fraction``: the share of the ranks' time that
synchronous training loses to them. A one-worker run has no such point and logs no figure.

:class:`SyncTimer` measures both points on the host clock (``time.perf_counter``, seconds):

* counts: around the wait for the count sum, on the training thread (:meth:`SyncTimer.wait_counts`);
* gradients: a DDP communication hook (:meth:`SyncTimer.hook`, the same average as DDP's default
  all-reduce) stamps ``done`` when a bucket's all-reduce completes, and queues an autograd-engine
  callback that stamps ``finished`` when the backward pass has run all its nodes (callbacks run then,
  in the order queued, so before DDP's own, which waits for the all-reduces). The bucket holding the
  last parameter gradient is not the end of the backward: with forces and stress the double backward
  goes on through the position and strain derivatives, which need no parameter (quick-start PaiNN on
  CPU: 32.5 ms up to the last parameter gradient, 5.3 ms after it), and the all-reduce runs meanwhile.
  The training thread waits only from ``finished`` on, so a step's gradient wait is
  ``max(done) − max(finished)`` over its buckets, zero where the all-reduce was done first.

Only on CPU (gloo): with CUDA, DDP's hook runs when the all-reduce is queued on a stream, not when it
completes, so host stamps would not measure the wait; :func:`attach_sync_timer` leaves a CUDA model's
DDP untouched and returns a timer with ``measures = False``, and the figure is not logged there.

The module keeps its annotations evaluated (no ``from __future__ import annotations``): DDP checks
the hook's annotations against the classes themselves.
"""

import time
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook


class SyncTimer:
    """Seconds one rank spends at the step's synchronisation points (see the module docstring)."""

    def __init__(self, measures: bool = True) -> None:
        self.measures = measures        # False: nothing is timed (one worker, or CUDA); take_step() gives 0
        self._finished = -float("inf")  # the backward pass ran its last node this step (perf_counter s)
        self._done = -float("inf")      # latest bucket all-reduce completed this step
        self._counts = 0.0              # seconds waiting for the count sum this step

    def hook(self, process_group: dist.ProcessGroup | None,
             bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """DDP communication hook: DDP's default averaging all-reduce of ``bucket``, time-stamped."""
        torch.autograd.Variable._execution_engine.queue_callback(self._backward_finished)

        def stamp(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            self._done = max(self._done, time.perf_counter())
            return fut.value()

        return allreduce_hook(process_group, bucket).then(stamp)

    def _backward_finished(self) -> None:
        self._finished = max(self._finished, time.perf_counter())

    def wait_counts(self, pending: Any) -> Any:
        """``pending.result()`` (a :class:`~matforge.pretrain.distributed.PendingSum`), timed."""
        if not self.measures:
            return pending.result()
        start = time.perf_counter()
        result = pending.result()
        self._counts += time.perf_counter() - start
        return result

    def take_step(self) -> float:
        """This step's seconds at both points (counts + gradients); resets for the next step."""
        grads = max(0.0, self._done - self._finished) if self._finished > -float("inf") else 0.0
        total = self._counts + grads
        self._finished = self._done = -float("inf")
        self._counts = 0.0
        return total


def attach_sync_timer(ddp_model: torch.nn.Module, device: torch.device, enabled: bool = True) -> SyncTimer:
    """A :class:`SyncTimer` for this rank, its hook registered on ``ddp_model`` when ``enabled`` and
    that is a ``DistributedDataParallel`` on CPU; otherwise (not asked for, the bare model of a
    one-worker run, or CUDA) DDP keeps its own hook and the timer measures nothing."""
    measures = (enabled and device.type == "cpu"
                and isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel))
    timer = SyncTimer(measures)
    if measures:
        ddp_model.register_comm_hook(state=ddp_model.process_group, hook=timer.hook)
    return timer
