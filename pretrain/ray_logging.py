"""Quiet Ray Train's per-process chatter so the run's own progress lines stay readable.

Two of Ray Train's internal loggers write to every run's streamed output:

- the placement-group cleaner polls the Ray state API every second and warns each time it cannot
  reach it, which is always the case on an embedded instance started without the dashboard;
- the worker context logs every ``ray.train.report`` call (its metrics and checkpoint) at INFO, on
  a logger named after its source file's path rather than under ``ray.train``, so Train's own
  ``LoggingConfig(log_level=...)`` does not filter it.

:func:`quiet_ray_train_loggers` is installed as Ray's ``worker_process_setup_hook``, so it runs in
every Ray worker process (Train workers, the controller and its helper actors) before they start;
the training function calls it again after Ray Train has set up its workers' logging. Errors from
those loggers still come through.
"""

from __future__ import annotations

import logging

SETUP_HOOK = f"{__name__}.quiet_ray_train_loggers"


def quieted_loggers() -> dict[str, int]:
    """``{logger name: level}`` for the chatty Ray Train loggers."""
    from ray.train.v2._internal.execution import context

    return {
        "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
        context.__file__: logging.WARNING,  # that module's logger is getLogger(__file__)
        context.__name__: logging.WARNING,  # in case a later Ray names it by module
    }


def quiet_ray_train_loggers() -> None:
    """Raise the level of the loggers :func:`quieted_loggers` names, in this process."""
    for name, level in quieted_loggers().items():
        logging.getLogger(name).setLevel(level)
