"""Instruments for tests and audits of a pre-training run, both off unless an environment variable
names them (the launcher passes both variables on to the Ray workers):

* ``MATFORGE_FAULT_INJECT``: kill (or fail) one rank at one step, to test recovery from a lost worker;
* ``MATFORGE_BATCH_LOG``: write which records each step saw, to test that a resumed run sees exactly
  the batches an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FAULT_ENV = "MATFORGE_FAULT_INJECT"
"""Fault injection for tests: ``"rank=R,step=S[,mode=kill|raise]"`` SIGKILLs rank R (or raises in
it) when it reaches step S, once per run (a marker file in the run directory stops it from firing
again after the restart)."""


def maybe_inject_fault(rank: int, step: int, run_dir: Path) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fields = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    if int(fields.get("rank", -1)) != rank or int(fields.get("step", -1)) != step:
        return
    marker = run_dir / f".fault-injected-rank{rank}-step{step}"
    if marker.exists():
        return
    marker.write_text(fields.get("mode", "kill") + "\n")
    if fields.get("mode", "kill") == "raise":
        raise RuntimeError(f"fault injection: rank {rank} failed at step {step}")
    print(f"[matforge] fault injection: SIGKILL rank {rank} at step {step}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


BATCH_LOG_ENV = "MATFORGE_BATCH_LOG"
"""Set to 1 to write ``<run>/batches/rank<r>.jsonl``: which records each step saw (for audits/tests)."""


class BatchLog:
    """Optional audit trail: one JSON line per step with a hash of the batch's record indices."""

    def __init__(self, path: Path | None) -> None:
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")

    def write(self, step: int, epoch: int, batch_index: int, idx: "torch.Tensor") -> None:
        if self.file:
            digest = hashlib.sha1(idx.cpu().numpy().tobytes()).hexdigest()[:16]
            self.file.write(json.dumps({"step": step, "epoch": epoch, "batch": batch_index, "idx_sha1": digest}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
