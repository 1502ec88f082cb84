"""Stages of ``matforge bench science`` and the loop that runs them: skip, select, stop in time.

A :class:`Stage` is one resumable piece of work (a pre-training run, an export, one fine-tuning
grid, the report) in one of the groups ``pretrain``, ``finetune``, ``report``. :func:`run_stages`
runs them in order: a stage whose result exists (``done()``) is skipped; ``only`` keeps one group;
after a stage, when ``deadline`` (a ``time.monotonic()`` value) has passed, the loop stops cleanly
and lists what is left. A stage that raises stops the loop (its partial result is resumed next time
by the stage itself: Ray Train resumes from the last checkpoint, the harness from finished cells).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from matforge.experiments.plan import STAGE_GROUPS


@dataclass
class Stage:
    """``name`` (e.g. ``pretrain exp1/efs``), its ``group``, a ``done`` test and the ``run`` doing it."""

    name: str
    group: str
    done: Callable[[], bool]
    run: Callable[[], None]

    def __post_init__(self) -> None:
        if self.group not in STAGE_GROUPS:
            raise ValueError(f"stage {self.name!r}: group {self.group!r} is not one of {', '.join(STAGE_GROUPS)}")


@dataclass
class StageLog:
    """What a :func:`run_stages` call did: stage names ran, skipped as done, and left for later."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        return bool(self.left)


def run_stages(stages: list[Stage], *, only: str | None = None, deadline: float | None = None,
               progress: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic) -> StageLog:
    """Run the stages not done yet (see the module docstring); returns the :class:`StageLog`."""
    if only is not None and only not in STAGE_GROUPS:
        raise ValueError(f"only: {only!r} is not one of {', '.join(STAGE_GROUPS)}")
    log = StageLog()
    selected = [s for s in stages if only is None or s.group == only]
    for index, stage in enumerate(selected):
        if stage.done():
            log.skipped.append(stage.name)
            continue
        if deadline is not None and clock() >= deadline:
            log.left = [s.name for s in selected[index:] if not s.done()]
            progress(f"[science] time is up: {len(log.left)} stage(s) left for the next run")
            break
        progress(f"[science] stage {stage.name}")
        t0 = clock()
        stage.run()
        log.seconds[stage.name] = clock() - t0
        log.ran.append(stage.name)
    return log
