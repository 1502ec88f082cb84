"""How evenly each cost model of the step balance splits a data-parallel step's work.

    python benchmarks/step_balance.py [--data DIR] [--world-size 2] [--docs docs/benchmarks.md]

In synchronous data-parallel training each step lasts as long as its slowest rank. For W ranks and
each cost model of the step balance (:mod:`matforge.datasets.step_balance`), this deals the
training structures as a W-worker run would (same sampler, seed and atom budget), then times every
rank's batches one after another in this one process (the training step of
:func:`matforge.pretrain.cost_calibration.time_training_steps`, fastest of ``--repeats``), so that
no other rank and no communication disturbs the timing. Per cost model it reports::

    excess = Σ_steps max_r t[r, step] / Σ_steps mean_r t[r, step] − 1

the share of each step the faster ranks spend waiting for the slowest (0 is perfect). Cost models:
``packed`` (no re-partition), ``atoms+edges`` (weights 1, 1, 0, the estimate without a
measurement) and ``measured`` (the weights a run measures at its start, measured here the same way).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time every rank's batches of a W-worker epoch in one process, for each "
                                            "cost model of the step balance, and report the slowest rank's excess per step.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--data", default=None, help="shard directory (default: EMT structures generated into a "
                                                "temporary directory, as the quick start does)")
    p.add_argument("--split", default=None, help="split of --data to use (default: all records)")
    p.add_argument("--structures", type=int, default=400, help="EMT structures to generate without --data (default 400)")
    p.add_argument("--config", default="quickstart", help="packaged config or YAML file (default quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable)")
    p.add_argument("--world-size", type=int, default=2, help="ranks to deal the batches to (default 2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of batches to time (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per batch; the fastest counts (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as one worker per core)")
    p.add_argument("--docs", default=None, help="markdown file whose section of this script is replaced")
    return p


def step_excess(seconds: Any) -> float:
    """Σ_steps max over ranks / Σ_steps mean over ranks − 1, for ``seconds`` of shape (W, steps)."""
    import numpy as np

    t = np.asarray(seconds, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] == 0:
        raise ValueError(f"seconds must have shape (ranks, steps) with steps >= 1, got {t.shape}")
    return float(t.max(axis=0).sum() / t.mean(axis=0).sum() - 1.0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.world_size < 2 or args.epochs < 1 or args.repeats < 1 or args.threads < 1:
        raise SystemExit("step_balance: error: --world-size >= 2, --epochs, --repeats and --threads >= 1 are needed")
    with tempfile.TemporaryDirectory(prefix="matforge-bench-balance-") as tmp:
        report = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(report))
        return 0
    table = format_report(report)
    print(table)
    if args.docs:
        from matforge.training.docs_tables import printed_table_section, update_section

        update_section(args.docs, "benchmarks/step_balance.py",
                       printed_table_section("Step balance across ranks", table))
    return 0


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.datasets.step_balance import DEFAULT_COST_WEIGHTS, neighbours_per_atom, structure_costs
    from matforge.pretrain.config import load_config
    from matforge.pretrain.cost_calibration import calibrate_cost_weights, time_training_steps
    from matforge.pretrain.worker import build_model, build_objective

    torch.set_num_threads(args.threads)
    data, split, source = _data(args, workdir)
    cfg = load_config(args.config, [f"data.train={data}", "data.val=null", "data.synth.structures=0", *args.overrides])
    records = open_dataset(data, split=split)
    objective = build_objective(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, objective, records.manifest.elements)
    cutoff = model.backbone.cutoff
    transform = objective.record_transform()
    graphs = GraphDataset(records, GraphConfig(cutoff=cutoff, max_neighbors=model.backbone.max_neighbors,
                                               properties=tuple(objective.properties), dtype=cfg.train.dtype),
                          cache_mb=1024, **({"transform": transform} if transform is not None else {}))
    neighbours = neighbours_per_atom(records.natoms, records.volume, cutoff)
    if neighbours is None:
        raise SystemExit(f"step_balance: error: {data}: no cell volumes; every cost model reduces to the atom count")
    device = torch.device("cpu")
    started = time.perf_counter()
    fit = calibrate_cost_weights(model, objective, graphs.collate, records.natoms, neighbours, cfg.data.max_atoms,
                                 device, repeats=2)
    calibration_s = time.perf_counter() - started
    models = {"packed": None, "atoms+edges": DEFAULT_COST_WEIGHTS,
              "measured": fit.weights if fit.weights is not None else DEFAULT_COST_WEIGHTS}
    rows = []
    for name, weights in models.items():
        cost = None if weights is None else structure_costs(records.natoms, records.volume, cutoff, weights)
        samplers = [AtomBudgetBatchSampler(records.natoms, cfg.data.max_atoms, seed=cfg.train.seed,
                                           world_size=args.world_size, rank=r, cost=cost, drop_last=True)
                    for r in range(args.world_size)]
        excess, step_ms = [], []
        for epoch in range(args.epochs):
            seconds = np.array([time_training_steps(model, objective, [graphs.collate(b, epoch) for b in
                                                                      s.rank_batches(epoch)], device, args.repeats)
                                for s in samplers])
            excess.append(step_excess(seconds))
            step_ms.append(1e3 * float(seconds.max(axis=0).mean()))
        rows.append({"cost_model": name, "weights": None if weights is None else list(weights),
                     "excess": float(np.mean(excess)), "excess_per_epoch": excess,
                     "step_ms": float(np.mean(step_ms))})
    return {"config": args.config, "data": source, "world_size": args.world_size, "epochs": args.epochs,
            "max_atoms": cfg.data.max_atoms, "model": cfg.model.name, "objective": cfg.objective,
            "calibration": fit.describe(), "calibration_s": calibration_s, "rows": rows}


def _data(args: argparse.Namespace, workdir: Path) -> tuple[str, str | None, str]:
    if args.data:
        if not Path(args.data).is_dir():
            raise SystemExit(f"step_balance: error: {args.data}: no such shard directory")
        return str(Path(args.data).resolve()), args.split, f"{args.data}" + (f" (split {args.split})" if args.split else "")
    from matforge.datasets.synth import write_synth

    out = workdir / "emt"
    write_synth(out, args.structures, seed=0)
    return str(out), None, f"generated: {args.structures} EMT structures (matforge data synth, seed 0)"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"step balance over {report['world_size']} ranks: {report['model']}, objective {report['objective']}, "
             f"{report['max_atoms']} atoms per batch, {report['epochs']} epoch(s); data {report['data']}",
             f"measured in {report['calibration_s']:.1f} s: {report['calibration']}", "",
             f"{'cost model':<12} {'slowest rank excess':>20} {'step ms (slowest)':>18}  weights (atom, edge, pair)"]
    for row in report["rows"]:
        weights = "-" if row["weights"] is None else ", ".join(f"{w:.3g}" for w in row["weights"])
        lines.append(f"{row['cost_model']:<12} {100 * row['excess']:>19.2f}% {row['step_ms']:>18.2f}  {weights}")
    lines.append("(excess: time per step the faster ranks wait for the slowest, timed one batch at a time in one "
                 "process)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
