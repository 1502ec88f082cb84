"""``matforge finetune --backbone B --data SRC --target T --out DIR [options]``: one fine-tuning run
(the same arguments as :func:`matforge.finetune.api.finetune`); prints the metrics as JSON."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a backbone (released name, exported dir, CGCNN .pth.tar, or none) on a small dataset",
        description="Fine-tune a backbone on one target of labelled structures and write DIR: the model "
                    "(card.json + model.safetensors), metrics.json, predictions.csv, split.json, history.csv, "
                    "parity.png. Needs no Ray.",
    )
    p.add_argument("--backbone", required=True,
                   help="released name (see `matforge backbones`), backbone directory, CGCNN .pth.tar, or none")
    p.add_argument("--arch", help="with --backbone none: an architecture name or a backbone to copy (random weights)")
    p.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                   help="with --backbone none --arch NAME: a constructor argument (value parsed as YAML; repeatable)")
    p.add_argument("--data", required=True, nargs="+", help="shard directory, or sources `matforge data convert` reads")
    p.add_argument("--format", default="auto", help="reader of the sources (default: auto-detect)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader option (repeatable)")
    p.add_argument("--target", required=True,
                   help="property name in the records, or efs | energy_forces | energy (fine-tune a potential)")
    p.add_argument("--task", default="regression", choices=["regression", "classification"])
    p.add_argument("--pooling", default="mean", choices=["mean", "sum"],
                   help="mean: intensive target (default); sum: extensive")
    p.add_argument("--loss", default="mae", choices=["mae", "mse", "huber"])
    p.add_argument("--units", default="", help="units of the target, for the card, metrics and plot")
    p.add_argument("--out", required=True, help="output directory (new, or replaced with --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--strategy", default="full", help="full | freeze:K | probe | lrdecay:F (default full)")
    p.add_argument("--reinit-rest", action="store_true", help="with freeze:K: re-initialise the unfrozen blocks")
    p.add_argument("--split", default="0.8,0.1,0.1",
                   help="train,val,test fractions; 'shards' (the data's own splits); or a JSON file "
                        "{\"train\": [ids], \"val\": [...], \"test\": [...]}")
    p.add_argument("--split-group", default="trajectory", choices=["trajectory", "composition", "none"])
    p.add_argument("--train-size", type=int, help="keep this many training structures (seeded subset)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32, help="structures per batch (default 32)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-epochs", type=int, default=5)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "plateau", "constant"])
    p.add_argument("--patience", type=int, default=100, help="epochs without improvement before stopping (default 100)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY", help="average the weights (e.g. 0.99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-new-elements", action="store_true",
                   help="give elements the backbone never saw fresh embeddings instead of refusing them")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--cache-dir", help="where converted sources are kept (default $MATFORGE_CACHE or ~/.cache/matforge)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.set_defaults(func=run)


def _split(text: str):
    import json
    from pathlib import Path

    from matforge.finetune.errors import FinetuneError

    if text.endswith(".json"):
        path = Path(text)
        try:
            value = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FinetuneError(f"{path}: cannot read the split ids ({exc})") from None
        if not isinstance(value, dict):
            raise FinetuneError(f"{path}: expected {{\"train\": [...], \"val\": [...], \"test\": [...]}}")
        return value
    return text


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import yaml

    from matforge.cli.data_convert import parse_options
    from matforge.finetune.api import finetune

    hyperparameters = {k: yaml.safe_load(v) for k, v in parse_options(args.hyperparameter).items()}
    metrics = finetune(
        args.backbone, args.data if len(args.data) > 1 else args.data[0], args.target, args.out,
        arch=args.arch, hyperparameters=hyperparameters or None, task=args.task, pooling=args.pooling,
        loss=args.loss, units=args.units, strategy=args.strategy, reinit_rest=args.reinit_rest,
        split=_split(args.split), split_group=args.split_group, train_size=args.train_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        schedule=args.schedule, patience=args.patience, ema_decay=args.ema, seed=args.seed, format=args.format,
        options=parse_options(args.option), allow_new_elements=args.allow_new_elements, cache_dir=args.cache_dir,
        threads=args.threads, progress=not args.no_progress and sys.stderr.isatty(),
        tensorboard=not args.no_tensorboard, overwrite=args.overwrite,
    )
    print(json.dumps(metrics, indent=2, default=str))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
