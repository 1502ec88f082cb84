"""Monitoring: TensorBoard on rank 0, throughput and data-wait accounting, a progress line.

Every ``log_every`` steps each rank contributes its window's loss-term sums and counts and its
(atoms, structures, seconds waiting for data, seconds of compute, window length) to ONE
``all_reduce`` (:func:`reduce_window`); rank 0 then logs

* ``loss/<term>``: Σ_ranks,steps sum_k / Σ_ranks,steps count_k (the window's global mean of each
  term) and ``loss`` = Σ_k w_k · loss/<term>;
* ``throughput/atoms_per_s``, ``throughput/structures_per_s``: summed over ranks
  (Σ_ranks count / wall time of the window);
* ``time/data_wait_fraction``: Σ wait / Σ (wait + compute) over ranks;
* ``time/sync_wait_fraction``: Σ seconds at the step's synchronisation points / Σ (wait + compute)
  over ranks (:mod:`matforge.pretrain.sync_timing`; only where it is measured: several CPU workers);
* ``memory/peak_mb``: peak resident memory of rank 0 (CUDA: peak allocated);

beside the learning rate and the gradient norm before clipping. The loss sums stay on the training
device between logs (:class:`LossWindow`), so a step never waits for the device to report a number:
on a GPU every ``float(tensor)`` per step would stall the host until the queued kernels finish.
Event files go to ``<run>/tensorboard`` (an absolute path under the run's storage); on resume the
writer is opened with ``purge_step`` so curves never double back over replayed steps.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from matforge.pretrain.distributed import all_reduce_sum
from matforge.training.tensorboard import flatten, open_writer


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class ThroughputMeter:
    """Counts atoms/structures and splits wall time into data wait and compute (of which ``sync`` is
    spent waiting for the other ranks), per window; ``measures_sync``: this rank times its waits."""

    def __init__(self, measures_sync: bool = False) -> None:
        self.measures_sync = measures_sync
        self.reset()

    def reset(self) -> None:
        self.atoms = 0
        self.structures = 0
        self.wait = 0.0
        self.compute = 0.0
        self.sync = 0.0
        self.window_start = time.perf_counter()

    def add(self, atoms: int, structures: int, wait: float, compute: float, sync: float = 0.0) -> None:
        """One step: its atoms and structures, seconds waiting for the batch, seconds from the batch to
        the end of the optimiser step (``compute``), and the part of those spent waiting for the
        other ranks (``sync`` <= ``compute``)."""
        self.atoms += atoms
        self.structures += structures
        self.wait += wait
        self.compute += compute
        self.sync += sync

    def local_vector(self) -> list[float]:
        """This rank's [atoms, structures, wait s, compute s, window s, sync s, 1 if it measures
        sync else 0] since the last reset."""
        return [float(self.atoms), float(self.structures), self.wait, self.compute,
                time.perf_counter() - self.window_start, self.sync, float(self.measures_sync)]

    @staticmethod
    def figures(total: list[float], world_size: int) -> dict[str, float]:
        """Throughput, data-wait and (where every rank measures it) sync-wait fractions from the
        rank-summed :meth:`local_vector`."""
        wall = total[4] / max(1, world_size)  # mean window length over ranks
        busy = total[2] + total[3]
        out = {
            "throughput/atoms_per_s": total[0] / wall if wall > 0 else 0.0,
            "throughput/structures_per_s": total[1] / wall if wall > 0 else 0.0,
            "time/data_wait_fraction": total[2] / busy if busy > 0 else 0.0,
        }
        if total[6] >= world_size > 1:
            out["time/sync_wait_fraction"] = total[5] / busy if busy > 0 else 0.0
        return out


class LossWindow:
    """Per-term loss sums and counts of one logging window, accumulated on the training device.

    ``add(terms)`` takes the objective's ``{name: Term}`` of a step (names fixed for the run: the
    first step's, in sorted order); nothing is copied to the host until :func:`reduce_window`.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None     # (k,) float64
        self.counts: torch.Tensor | None = None   # (k,) float64

    def add(self, terms: dict[str, Any]) -> None:
        names = sorted(terms)
        if self.sums is None or self.counts is None:
            self.names = names
            self.sums = torch.zeros(len(names), dtype=torch.float64, device=self.device)
            self.counts = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        elif names != self.names:
            raise RuntimeError(f"loss terms changed within a run: {self.names} then {names}")
        self.sums += torch.stack([terms[n].sum.detach().to(torch.float64) for n in names])
        self.counts += torch.stack([torch.as_tensor(terms[n].count, device=self.device).to(torch.float64)
                                    for n in names])

    def local_vector(self) -> torch.Tensor:
        """[sums..., counts...] (2k,) float64 on the device (zeros after a reset)."""
        if self.sums is None or self.counts is None:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        return torch.cat([self.sums, self.counts])

    def reset(self) -> None:
        if self.sums is not None and self.counts is not None:
            self.sums.zero_()
            self.counts.zero_()

    def means(self, total: list[float], weights: dict[str, float]) -> dict[str, float]:
        """``loss/<name>`` (global mean; 0 where nothing was counted) and their weighted ``loss``."""
        k = len(self.names)
        out: dict[str, float] = {}
        loss = 0.0
        for i, name in enumerate(self.names):
            mean = total[i] / total[k + i] if total[k + i] > 0 else 0.0
            out[f"loss/{name}"] = mean
            loss += weights.get(name, 1.0) * mean
        out["loss"] = loss
        return out


def reduce_window(losses: LossWindow, meter: ThroughputMeter, weights: dict[str, float],
                  world_size: int) -> dict[str, float]:
    """Collective (every rank, same step): the window's loss means and throughput, from one
    ``all_reduce`` of [loss sums, loss counts, meter figures]; both windows are reset."""
    local = torch.cat([losses.local_vector(),
                       torch.tensor(meter.local_vector(), dtype=torch.float64, device=losses.device)])
    total = all_reduce_sum(local).cpu().tolist()
    k2 = 2 * len(losses.names)
    logged = losses.means(total[:k2], weights) if losses.names else {}
    logged.update(meter.figures(total[k2:], world_size))
    losses.reset()
    meter.reset()
    return logged


class Monitor:
    """Rank 0's TensorBoard writer and progress line (a no-op on other ranks)."""

    def __init__(self, log_dir: Path, enabled: bool, start_step: int, max_steps: int) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self.writer = None
        if enabled:
            self.writer = open_writer(log_dir, purge_step=start_step + 1 if start_step > 0 else None)

    def hparams(self, config: dict[str, Any], fitted: dict[str, Any]) -> None:
        if not self.writer:
            return
        import json

        flat = flatten("", config, {})
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
        self.writer.add_text("normalisation", "```\n" + json.dumps(fitted, indent=2) + "\n```", 0)
        # hparams in this run's own event file (run_name ".") so TensorBoard's HPARAMS tab links them
        self.writer.add_hparams({k: v for k, v in flat.items()}, {"hparam/started": 1.0}, run_name=".")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def progress(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        parts = [f"step {step}/{self.max_steps}"]
        for key in ("loss", "lr", "throughput/atoms_per_s", "time/data_wait_fraction", "time/sync_wait_fraction"):
            if key in values:
                parts.append(f"{key.split('/')[-1]} {values[key]:.4g}")
        print("[matforge] " + "  ".join(parts), file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.writer:
            self.writer.flush()
            self.writer.close()
