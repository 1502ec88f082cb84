"""The machine's own data-parallel ceiling: P independent processes running the pre-training step.

    python benchmarks/pretrain_ceiling.py [matforge bench pretrain options] [--docs docs/benchmarks.md]

Data-parallel training with P workers can at best do what P processes running the same training
step *without any communication* do: on a small shared machine the caches, the memory bandwidth and
the hypervisor's CPU time limit two processes long before DDP, gloo or Ray add anything. ``matforge
bench pretrain``'s runs are made by this script with this measurement after each repeat (same data,
config and overrides, each process with the thread settings of a Ray worker), so that its report
separates the two:

    ceiling(P)    = Σ_p atoms/s of process p (P at once)  /  atoms/s of one process alone
                    (the mean of a lone run before and one after the P processes)
    efficiency(P) = speed-up of P Ray workers over 1  /  ceiling(P)

Each process builds the model, objective and optimizer as ``matforge pretrain`` does, pre-builds a
few atom-budget batches of the training data (so graph building is not measured), runs a warm-up,
then ``steps`` timed training steps (forward with the objective's derivatives, loss, backward,
clipping, AdamW) and prints one JSON line ``{"atoms_per_s", "step_ms"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

CHILD_FLAG = "--ceiling-child"
BATCHES = 8       # distinct pre-built batches each process cycles through
WARMUP_STEPS = 3


def child_step_rate(data: str, config: str, overrides: list[str], steps: int, seed: int) -> dict[str, float]:
    """Train ``steps`` steps in this process; ``{"atoms_per_s", "step_ms"}`` (threads: as set by the caller)."""
    import torch

    from matforge.datasets.graphs import GraphConfig
    from matforge.datasets.loader import GraphDataset
    from matforge.datasets.sampler import AtomBudgetBatchSampler
    from matforge.datasets.shard_dataset import open_dataset
    from matforge.pretrain.config import load_config
    from matforge.training.schedule import build_optimizer
    from matforge.training.weight_gradients import backward_to_weights, trainable_weights
    from matforge.pretrain.worker import build_model, build_objective

    cfg = load_config(config, [f"data.train={data}", "data.train_split=null", "data.val=null", "data.val_split=null",
                               "data.synth.structures=0", *overrides])
    torch.set_num_threads(max(1, cfg.scaling.threads_per_worker))
    records = open_dataset(cfg.data.train)
    objective = build_objective(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, objective, records.manifest.elements)
    graphs = GraphDataset(records, GraphConfig(cutoff=model.cutoff, max_neighbors=model.max_neighbors,
                                               properties=tuple(objective.properties), dtype=cfg.train.dtype),
                          transform=objective.record_transform())
    groups = list(AtomBudgetBatchSampler(graphs.natoms, cfg.data.max_atoms, shuffle=True, seed=seed))[:BATCHES]
    if not groups:
        raise ValueError(f"{data}: no training batch fits data.max_atoms = {cfg.data.max_atoms}")
    batches = [graphs.collate(g) for g in groups]
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas))
    options = objective.forward_options(training=True)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")

    def step(batch: Any) -> None:
        loss = objective.loss(model(batch, **options), batch)
        optimizer.zero_grad(set_to_none=True)
        backward_to_weights(loss, trainable_weights(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    for batch in batches[:WARMUP_STEPS]:
        step(batch)
    atoms = 0
    start = time.perf_counter()
    for k in range(steps):
        batch = batches[k % len(batches)]
        step(batch)
        atoms += int(batch.num_nodes)
    seconds = time.perf_counter() - start
    return {"atoms_per_s": atoms / seconds, "step_ms": 1e3 * seconds / steps}


def run_processes(data: str, config: str, overrides: list[str], steps: int, processes: int,
                  env: dict[str, str], timeout: float) -> list[dict[str, float]]:
    """Start ``processes`` children at once (seeds 0..P-1: different batches); their figures."""
    def command(seed: int) -> list[str]:
        return [sys.executable, __file__, CHILD_FLAG, json.dumps(
            {"data": data, "config": config, "overrides": overrides, "steps": steps, "seed": seed})]

    procs = [subprocess.Popen(command(k), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env}) for k in range(processes)]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise SystemExit(f"pretrain_ceiling: error: a ceiling process exited with "
                                 f"{proc.returncode}:\n{stderr.strip()[-2000:]}")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    except subprocess.TimeoutExpired:
        raise SystemExit(f"pretrain_ceiling: error: a ceiling process took longer than {timeout:.0f} s") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def measure_ceiling(data: str, config: str, overrides: list[str], steps: int, processes: int,
                    env: dict[str, str], timeout: float = 900.0) -> dict[str, Any]:
    """One process alone, ``processes`` at once, one alone again: their atoms/s and the ratio of the
    processes' sum to the mean of the two lone runs (module docstring; the lone run on either side
    evens out a change of the machine's load during the measurement)."""
    before = run_processes(data, config, overrides, steps, 1, env, timeout)[0]["atoms_per_s"]
    together = [r["atoms_per_s"] for r in run_processes(data, config, overrides, steps, processes, env, timeout)]
    after = run_processes(data, config, overrides, steps, 1, env, timeout)[0]["atoms_per_s"]
    alone = 0.5 * (before + after)
    return {"processes": processes, "alone_atoms_per_s": [before, after], "together_atoms_per_s": together,
            "together_total_atoms_per_s": sum(together), "ceiling": sum(together) / alone}


def ceiling_runs(args: Any, data: str, counts: list[int], cores: int, repeat: int) -> list[dict[str, Any]]:
    """The no-communication ceiling of each W >= 2 (with 1 in the list) at each thread count they share."""
    from matforge.cli.bench_pretrain import thread_options
    from matforge.pretrain.config import load_config
    from matforge.pretrain.launcher import worker_env

    if 1 not in counts:
        return []
    out = []
    for w in sorted(c for c in set(counts) if c >= 2):
        for t in sorted(set(thread_options(1, args.threads, cores)) & set(thread_options(w, args.threads, cores))):
            overrides = [*([f"data.max_atoms={args.max_atoms}"] if args.max_atoms is not None else []),
                         *args.overrides, f"scaling.threads_per_worker={t}"]
            env = worker_env(load_config(args.config, [f"data.train={data}", "data.train_split=null", "data.val=null",
                                                       "data.val_split=null", "data.synth.structures=0", *overrides]))
            figures = measure_ceiling(data, args.config, overrides, args.steps, w, env, args.timeout)
            out.append({"workers": w, "threads_per_worker": t, "repeat": repeat, **figures})
    return out


def ceiling_summary(runs: list[dict[str, Any]],
                    ceilings: list[dict[str, Any]]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per repeat: ``{"workers=W,threads=T": [ceiling, ...]}`` and, for each loader setting L,
    ``{"workers=W,threads=T,loader_workers=L": [speed-up / ceiling, ...]}`` (runs of the same repeat)."""
    by_run = {(r["workers"], r["threads_per_worker"], r["loader_workers"], r["repeat"]): r["atoms_per_s"] for r in runs}
    ceiling: dict[str, list[float]] = {}
    efficiency: dict[str, list[float]] = {}
    for c in sorted(ceilings, key=lambda c: (c["workers"], c["threads_per_worker"], c["repeat"])):
        w, t, k = c["workers"], c["threads_per_worker"], c["repeat"]
        ceiling.setdefault(f"workers={w},threads={t}", []).append(c["ceiling"])
        for (w2, t2, l, k2), value in sorted(by_run.items()):
            if (w2, t2, k2) == (w, t, k) and (1, t, l, k) in by_run:
                efficiency.setdefault(f"workers={w},threads={t},loader_workers={l}", []).append(
                    value / by_run[(1, t, l, k)] / c["ceiling"])
    return ceiling, efficiency


def _child_main(spec: str) -> None:
    args = json.loads(spec)
    print(json.dumps(child_step_rate(args["data"], args["config"], list(args["overrides"]), int(args["steps"]),
                                     int(args["seed"]))), flush=True)


def format_ceiling(report: dict[str, Any]) -> str:
    """The ceiling and efficiency lines of a report with ``ceiling_per_repeat``/``efficiency_per_repeat``."""
    from matforge.cli.bench_pretrain import _median

    lines = []
    for key, values in report.get("ceiling_per_repeat", {}).items():
        lines.append(f"machine ceiling at {key} (independent processes, no communication, over one alone), each repeat: "
                     f"{', '.join(f'{x:.2f}' for x in values)} (median {_median(values):.2f}x)")
    for key, values in report.get("efficiency_per_repeat", {}).items():
        lines.append(f"  Ray DDP speed-up / ceiling at {key}, each repeat: {', '.join(f'{x:.2f}' for x in values)} "
                     f"(median {_median(values):.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from matforge.cli.bench_pretrain import add_arguments, format_table, measure

    parser = argparse.ArgumentParser(description="matforge bench pretrain, with the machine's own ceiling after "
                                                 "each repeat")
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = measure(args, after_repeat=ceiling_runs)
    report["ceiling"] = report.pop("extra")
    report["ceiling_per_repeat"], report["efficiency_per_repeat"] = ceiling_summary(report["runs"], report["ceiling"])
    table = format_table(report) + ("\n" + format_ceiling(report) if report["ceiling"] else "")
    print(json.dumps(report) if args.json else table)
    if args.docs:
        from matforge.training.docs_tables import printed_table_section, update_section

        update_section(args.docs, "benchmarks/pretrain_ceiling.py", printed_table_section(
            "Pre-training: 1 and 2 Ray workers against the machine's own ceiling", table))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        _child_main(sys.argv[2])
    else:
        raise SystemExit(main())
