"""Ray's bookkeeping processes and threads at idle CPU priority: they never preempt a rank.

Ray Train V2 starts, beside the training workers, actor processes that do almost nothing during
training: the controller, a placement-group cleaner, an autoscaling coordinator, a dataset manager
and a synchronisation actor. Each Python worker process of Ray wakes every 10 ms (its task loop's
signal check, a fixed interval), so together they wake a few hundred times a second. On a node
whose cores all run training ranks, every such wake-up preempts a rank, and a rank that is late
makes the others wait at the next gradient all-reduce. Measured on a 2-core VM (quick-start PaiNN
EFS, 2 workers × 1 thread, 700-step runs, interleaved pairs): stopping three of these actors
(SIGSTOP, as an experiment) raised the 2-worker throughput by 4.5–6 % in 3 of 3 pairs; running the
five at ``SCHED_IDLE`` by 2.2 % on average over 5 pairs (0 to 5 %).

``SCHED_IDLE`` (Linux) runs a thread only on a core that has nothing else to run (or at a tiny
share: weight 3 against 1,024 for a nice-0 thread), and its wake-ups do not preempt a normal
thread at once. The bookkeeping still happens, in the gaps a rank leaves while it waits for the
others, and at once when the ranks block (a checkpoint's report barrier, the end of the run). Under
the EEVDF scheduler (Linux 6.6 and later) an idle thread that has waited still gets its tiny share
at the end of a rank's time slice: a 5 s ``sched_switch`` trace of a 2-worker run (kernel 6.18)
counted ~100 switches a second per training thread to these idle threads, out of ~440 in all.

Which processes: the children of the raylet (the parent of the training workers), except the
training workers themselves and Ray's pooled idle workers (``ray::IDLE``), which may later become
a training worker after a restart. An unprivileged process cannot leave ``SCHED_IDLE`` again, so a
process that could become a training worker is never touched. This is done only for an embedded
Ray instance that ``matforge pretrain`` started itself: on a shared cluster node the raylet's
other children may be somebody else's work.

The same holds inside each training worker: the rank trains in a thread of its own, while the
process's main thread runs Ray's task loop (the 10 ms signal check, the controller's health polls),
waking about 120 times a second and preempting its own rank's training thread each time. That
thread goes to ``SCHED_IDLE`` too (:func:`idle_task_loop_thread`); the training thread, the threads
it starts later (they inherit its policy: the prefetch thread, OpenMP's pool) and torch's
collective threads keep theirs. Measured as above, the 2-worker throughput with the helpers
already idle gained +2.4 % on average over 5 pairs (−2.9 to +6.8 %) from this thread alone, and
+3.3 % over 8 pairs (−1.0 to +8.6 %) with every other thread of the worker idle too (Ray's gRPC
and I/O threads, which hardly wake: the main thread is what counts)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

POOLED_WORKER_TITLE = "ray::IDLE"


def idle_policy_supported() -> bool:
    """Whether this platform has ``SCHED_IDLE`` and a ``/proc`` to find processes in."""
    return hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler") and Path("/proc/self/task").is_dir()


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])  # the field after the state


def _title_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def children_of(parent: int) -> list[int]:
    """Pids of the processes whose parent is ``parent`` (ascending)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent_of(int(entry.name)) == parent:
            out.append(int(entry.name))
    return sorted(out)


def set_idle_policy(pid: int) -> bool:
    """Every thread of process ``pid`` to ``SCHED_IDLE``; False if the process is gone or not ours."""
    try:
        threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    done = False
    for tid in threads:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            done = True
        except (ProcessLookupError, PermissionError):
            continue
    return done


def is_idle_policy(pid: int) -> bool:
    """Whether the main thread of ``pid`` runs at ``SCHED_IDLE``."""
    return os.sched_getscheduler(pid) == os.SCHED_IDLE


def idle_ray_helpers(raylet_pid: int, training_pids: set[int]) -> list[int]:
    """Put the raylet's other children (module docstring) at ``SCHED_IDLE``; the pids changed.

    Processes already at ``SCHED_IDLE`` are left out of the result, so calling this again (after
    Ray started another helper) reports only the new ones. Nothing happens where the platform
    lacks ``SCHED_IDLE`` or ``/proc``.
    """
    if not idle_policy_supported():
        return []
    changed = []
    for pid in children_of(raylet_pid):
        if pid in training_pids or _title_of(pid).startswith(POOLED_WORKER_TITLE):
            continue
        try:
            if is_idle_policy(pid):
                continue
        except OSError:
            continue
        if set_idle_policy(pid):
            changed.append(pid)
    return changed


def idle_helpers_of_this_run(rank: int, world: int, device: object) -> list[int]:
    """From inside a training worker of an embedded instance: every rank contributes its pid (one
    small all-reduce, all ranks must call this), rank 0 idles the raylet's other children. The pids
    changed on rank 0, ``[]`` elsewhere."""
    import torch

    from matforge.pretrain.distributed import all_reduce_sum

    mine = torch.zeros(max(1, world), dtype=torch.float64, device=device)  # pids < 2**22: exact
    mine[rank] = float(os.getpid())
    pids = {int(p) for p in all_reduce_sum(mine).cpu().tolist()}
    return idle_ray_helpers(os.getppid(), pids) if rank == 0 else []


def idle_task_loop_thread() -> bool:
    """This process's main thread to ``SCHED_IDLE``, called from another thread (a Ray Train worker's
    training thread; module docstring). Whether it changed: False when called from the main thread
    itself, where the platform lacks ``SCHED_IDLE``, or when it already runs at it."""
    main = threading.main_thread()
    if not idle_policy_supported() or threading.current_thread() is main or main.native_id is None:
        return False
    try:
        if os.sched_getscheduler(main.native_id) == os.SCHED_IDLE:
            return False
        os.sched_setscheduler(main.native_id, os.SCHED_IDLE, os.sched_param(0))
    except (ProcessLookupError, PermissionError):
        return False
    return True
