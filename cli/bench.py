"""``matforge bench ...``: throughput benchmarks that print a table (or JSON)."""

from __future__ import annotations

import argparse

from matforge.cli.commands import command_group

BENCH_MODULES = ["matforge.cli.bench_data", "matforge.cli.bench_train", "matforge.cli.bench_pretrain",
                 "matforge.cli.bench_finetune", "matforge.cli.bench_science"]


def register(sub: argparse._SubParsersAction) -> None:
    command_group(sub, "bench", "measure throughput (data, train, pretrain) and fine-tuning accuracy",
                  "bench_command", "BENCH", BENCH_MODULES)
