"""``matforge pretrain --config NAME_OR_FILE [key=value ...]``: the main job."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train a backbone on LMDB shards with Ray Train (local Ray or --address)",
        description="Pre-train on LMDB shards with Ray Train. Packaged configs: quickstart, efs, "
                    "denoise_derivative, denoise_head, combined. Overrides are dotted keys, e.g. "
                    "train.max_steps=500 scaling.num_workers=4 data.train=/data/mptrj",
    )
    p.add_argument("--config", default="quickstart", help="packaged config name or a YAML file (default: quickstart)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto or ray://host:10001)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-export", action="store_true", help="do not export the final backbone to <run>/export")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    launched_at = time.time()
    from matforge.pretrain.config import ConfigError, load_config, to_yaml

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise SystemExit(f"matforge: error: {exc}")
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from matforge.pretrain.launcher import run_pretrain

    try:
        result = run_pretrain(cfg, address=args.address, export=not args.no_export, launched_at=launched_at)
    except ConfigError as exc:
        raise SystemExit(f"matforge: error: {exc}")
    print(f"run directory   {result.run_dir}")
    print(f"tensorboard     tensorboard --logdir {result.run_dir / 'tensorboard'}")
    print(f"last checkpoint {result.checkpoint}")
    if result.export_dir:
        print(f"backbone        {result.export_dir}")
    shown = {k: v for k, v in result.metrics.items() if k.startswith("val/") or k in ("step", "loss")}
    for key, value in shown.items():
        print(f"  {key:<28s} {value:.6g}" if isinstance(value, float) else f"  {key:<28s} {value}")
    return 0
