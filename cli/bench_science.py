"""``matforge bench science --out DIR``: the seeds' experiments (pre-training objectives, freeze grid,
multi-property and attention-CGCNN), resumable in pieces, with results.csv and a results page.

See :mod:`matforge.experiments` (plan, stages, report). Imports are lazy: ``matforge --help`` loads
neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "science", help="the seeds' experiments: pre-train with each objective, fine-tune, freeze grid, report",
        description="Run the seed papers' experiments as resumable stages (each pre-training, export and "
                    "fine-tuning grid is skipped when its result exists) and write DIR/results.csv and a "
                    "results page. Overrides are dotted plan keys, e.g. exp1.seeds=[0] finetune.jobs=1.")
    p.add_argument("--out", required=False, help="output directory (re-running with the same DIR resumes)")
    p.add_argument("--preset", default="full", choices=("full", "mini"),
                   help="full: the experiment (hours on 2 cores); mini: the CI miniature (minutes)")
    p.add_argument("--plan", default=None, metavar="FILE", help="a YAML plan merged onto the preset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted plan overrides")
    p.add_argument("--corpus", default=None, metavar="DIR", help="the pre-training corpus (a matforge shard dir)")
    p.add_argument("--only", default=None, choices=("pretrain", "finetune", "report"), help="run one group of stages")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="start no new stage after M minutes (the current one finishes); rerun to continue")
    p.add_argument("--docs", default=None, metavar="FILE",
                   help="write the results page to FILE (e.g. docs/results.md; figures in docs/results/); "
                        "default DIR/results.md")
    p.add_argument("--print-plan", action="store_true", help="print the resolved plan and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matforge.experiments.plan import PlanError, load_plan, plan_to_yaml

    try:
        plan = load_plan(args.preset, args.overrides, plan_file=args.plan, corpus=args.corpus)
    except PlanError as exc:
        print(f"matforge bench science: error: {exc}")
        return 2
    if args.print_plan:
        print(plan_to_yaml(plan), end="")
        return 0
    if not args.out:
        print("matforge bench science: error: --out required")
        return 2
    from matforge.experiments.science import run_science
    from matforge.pretrain.config import ConfigError

    command = shlex.join(["matforge", "bench", "science", *sys.argv[3:]]) if len(sys.argv) > 3 else \
        f"matforge bench science --out {args.out}"
    try:
        result = run_science(plan, args.out, only=args.only, max_minutes=args.max_minutes, docs=args.docs,
                             command=command)
    except (PlanError, ConfigError) as exc:
        print(f"matforge bench science: error: {exc}")
        return 2
    log = result.log
    print(f"stages: {len(log.ran)} run, {len(log.skipped)} done already, {len(log.left)} left")
    for name in log.left:
        print(f"  left: {name}")
    print(f"results  {result.results_csv}")
    if result.page:
        print(f"page     {result.page}")
    return 0
