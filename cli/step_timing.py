"""Timing training steps fairly: contenders run alternating rounds over batches built beforehand.

A :class:`Contender` is a step function and the batches it cycles through. :func:`race` warms each
up, then runs ``repeats`` rounds of ``steps`` steps, alternating between the contenders, so that a
change of load on a shared machine hits all of them; each keeps its best round. Reported per
contender: ``step_ms``, ``structures_per_s`` and ``atoms_per_s`` of the best round, and every
round's ms per step; and, where the OS reports them (``resource.getrusage``; this process's threads,
not a GPU's), the best round's CPU seconds per step in user and kernel mode and the memory first
touched per step (minor page faults × page size, MB): on a CPU, every large tensor is fresh memory
from the OS, so the kernel's page-fault work grows with the bytes a step allocates, and it can be a
large, machine-dependent share of a step.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence


def _usage() -> tuple[float, float, int] | None:
    """(user s, kernel s, minor page faults) of this process so far, or None where not available."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _page_mb() -> float:
    try:
        import resource

        return resource.getpagesize() / 2**20
    except ImportError:
        return 4096 / 2**20


def index_groups(count: int, size: int, batches: int, seed: int = 0) -> list[list[int]]:
    """Up to ``batches`` disjoint groups of ``size`` shuffled record indices (fewer if data is short)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(count)
    full = max(1, count // size)
    return [order[k * size:(k + 1) * size].tolist() for k in range(min(batches, full))]


class Contender:
    """A step function and the batches it cycles through; ``structures``/``atoms`` per batch."""

    def __init__(self, name: str, step: Callable[[Any], Any], batches: Sequence[Any],
                 structures: Sequence[int], atoms: Sequence[int], synchronize: Callable[[], Any] | None = None) -> None:
        self.name, self.step, self.batches = name, step, list(batches)
        self.synchronize = synchronize  # waits for queued device work (torch.cuda.synchronize) before timing
        self.structures, self.atoms = list(structures), list(atoms)
        self.next = 0
        self.rounds: list[dict[str, float]] = []

    def run(self, steps: int) -> dict[str, float]:
        """``steps`` steps from where the last round stopped; seconds, structures and atoms done."""
        structures = atoms = 0
        if self.synchronize is not None:
            self.synchronize()
        u0 = _usage()
        t0 = time.perf_counter()
        for _ in range(steps):
            k = self.next % len(self.batches)
            self.step(self.batches[k])
            structures += self.structures[k]
            atoms += self.atoms[k]
            self.next += 1
        if self.synchronize is not None:
            self.synchronize()
        seconds = time.perf_counter() - t0
        u1 = _usage()
        result = {"seconds": seconds, "steps": steps, "structures": structures, "atoms": atoms}
        if u0 is not None and u1 is not None:
            result.update(user_s=u1[0] - u0[0], kernel_s=u1[1] - u0[1], faulted_mb=(u1[2] - u0[2]) * _page_mb())
        return result

    def best(self) -> dict[str, Any]:
        """The best round's ms per step and rates, and every round's ms per step."""
        r = min(self.rounds, key=lambda r: r["seconds"] / r["steps"])
        s = max(r["seconds"], 1e-12)
        out = {"step_ms": 1e3 * s / r["steps"], "structures_per_s": r["structures"] / s, "atoms_per_s": r["atoms"] / s,
               "rounds_step_ms": [1e3 * x["seconds"] / x["steps"] for x in self.rounds]}
        if "kernel_s" in r:
            out.update(user_s_per_step=r["user_s"] / r["steps"], kernel_s_per_step=r["kernel_s"] / r["steps"],
                       faulted_mb_per_step=r["faulted_mb"] / r["steps"])
        return out


def race(contenders: Sequence[Contender], steps: int, repeats: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Warm up each, then ``repeats`` alternating rounds of ``steps``; the best round of each."""
    for c in contenders:
        c.run(warmup)
    for _ in range(max(1, repeats)):
        for c in contenders:
            c.rounds.append(c.run(max(1, steps)))
    return {c.name: c.best() for c in contenders}
