"""The table of ``benchmarks/gpu_pretrain.sh``: one row per atom budget.

Columns: atoms/s and structures/s (median over the logged windows of the second half of the run,
from TensorBoard's ``throughput/*``, summed over ranks), peak GPU memory allocated by
PyTorch (``memory/peak_mb``, MiB) and the most nvidia-smi saw in use (MiB, CUDA context included),
mean GPU utilisation (%) over the nvidia-smi samples from the first logged step to the end of the
run, the seconds from the command to the first logged window (``time/launch_to_first_log_s``), the
final validation MAEs, and the DDP check's verdict.

    python3 benchmarks/gpu_summary.py OUT_DIR RUNS_DIR
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def smi_samples(path: Path, first: int, end: int) -> list[tuple[float, float]]:
    """(utilisation %, memory used MiB) of nvidia-smi lines ``first`` to ``end``."""
    rows = []
    with path.open() as f:
        for k, row in enumerate(csv.reader(f)):
            if first <= k < end and len(row) == 2:
                try:
                    rows.append((float(row[0]), float(row[1])))
                except ValueError:
                    continue
    return rows


def main(out: Path, runs: Path) -> int:
    header = ("max_atoms", "atoms/s", "structs/s", "peak_alloc_MiB", "smi_max_MiB", "util_%",
              "to_1st_log_s", "E/atom MAE", "F MAE", "S MAE", "exit")
    lines = ["  ".join(f"{h:>13}" for h in header)]
    for run in csv.DictReader((out / "runs.tsv").open(), delimiter="\t"):
        atoms = run["max_atoms"]
        values = scalars(runs / f"efs_{atoms}")
        half = max((s for s, _ in values.get("throughput/atoms_per_s", [(0, 0.0)])), default=0) // 2

        def median(tag: str) -> float:
            kept = [v for s, v in values.get(tag, []) if s > half]
            return statistics.median(kept) if kept else float("nan")

        def last(tag: str) -> float:
            series = values.get(tag, [])
            return series[-1][1] if series else float("nan")

        peak = max((v for _, v in values.get("memory/peak_mb", [])), default=float("nan"))
        smi = smi_samples(out / "smi.csv", int(run["smi_first_step"]), int(run["smi_end"]))
        util = statistics.mean(u for u, _ in smi) if smi else float("nan")
        smi_max = max((m for _, m in smi), default=float("nan"))
        atoms_per_s = median("throughput/atoms_per_s")
        structures_per_s = median("throughput/structures_per_s")
        row = (atoms, f"{atoms_per_s:,.0f}", f"{structures_per_s:,.0f}", f"{peak:,.0f}",
               f"{smi_max:,.0f}", f"{util:.0f}", f"{last('time/launch_to_first_log_s'):.1f}",
               f"{last('val/energy_per_atom_mae'):.4f}",
               f"{last('val/forces_mae'):.4f}", f"{last('val/stress_mae'):.5f}", run["exit"])
        lines.append("  ".join(f"{c:>13}" for c in row))
    ddp = (out / "ddp_step.txt").read_text().strip().splitlines() if (out / "ddp_step.txt").exists() else []
    lines.append(ddp[-1] if ddp else "ddp gpu check: not run")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
