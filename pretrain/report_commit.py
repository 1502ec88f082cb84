"""Hold a rank after a checkpoint report until Ray Train's controller has taken the report.

Ray Train (2.60, Train V2) registers a checkpoint only when its controller has collected the report
of every rank for that round. The controller collects by polling each worker, one queued report per
poll, every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default), while ``ray.train.report``
returns as soon as the report is queued (Ray's own code notes the missing two-phase commit). So a
rank that dies within a poll interval of a checkpoint takes its queued report with it: the round
is never complete, the checkpoint is never registered, and the restart goes back to an older one,
or to step 0. On a busy node, where the controller runs at idle priority
(:mod:`matforge.pretrain.helper_priority`), the gap is longer. The 2-worker SIGKILL test, which
kills a rank two steps after a checkpoint, restarted from step 0 this way in 1 of 3 CI runs one day.

:func:`wait_until_report_taken` closes the gap: after reporting a checkpoint, each rank waits until
its worker's report queue is empty, i.e. the controller's poll has taken the report; the
controller then holds the reports of all ranks and registers the checkpoint while handling that
poll, before any later poll could see a failure. The wait costs up to one poll interval per
checkpoint; an embedded instance polls every 0.5 s (:data:`EMBEDDED_POLL_INTERVAL_S`).

The queue is Ray Train's internal ``execution_context.result_queue`` (a ``queue.Queue``). Where it
is not there (another Ray version, Ray Train's local mode) nothing is waited for.
"""

from __future__ import annotations

import time

EMBEDDED_POLL_INTERVAL_S = 0.5
"""``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` on an embedded instance: how often the controller polls."""


def _report_queue():
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        queue = get_train_context().execution_context.result_queue
    except Exception:  # another Ray version or local mode: no such queue
        return None
    return queue if hasattr(queue, "unfinished_tasks") else None


TESTED_RAY = "2.60"
"""The Ray release whose Train V2 internals this module was tested against (pyproject pins it)."""
_warned = False


def _warn_missing_queue() -> None:
    global _warned
    if _warned:
        return
    _warned = True
    try:
        import ray

        version = ray.__version__
    except Exception:  # pragma: no cover
        version = "unknown"
    import sys

    print(f"[matforge] WARNING: Ray {version} has no Train report queue where matforge looks for it "
          "(ray.train.v2 ... execution_context.result_queue; tested with Ray " + TESTED_RAY + "). Checkpoints "
          "still work, but a rank killed within one controller poll of a checkpoint report can lose that "
          "checkpoint, and the restart goes back to an older one.", file=sys.stderr, flush=True)


def wait_until_report_taken(timeout_s: float = 60.0, poll_s: float = 0.005, expected: bool = False) -> bool | None:
    """Block until the controller has taken this worker's queued reports.

    Returns True when it has, False on timeout (training goes on: the report stays queued, as
    without this wait), None where there is no queue to watch; with ``expected`` (a worker of a
    multi-worker run, where the queue should exist) a missing queue is warned about, once."""
    queue = _report_queue()
    if queue is None:
        if expected:
            _warn_missing_queue()
        return None
    deadline = time.monotonic() + timeout_s
    while queue.unfinished_tasks:
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
