"""Putting a directory in place whole: build it under a temporary name beside its final place,
then rename it there, so readers see the old complete directory or the new complete one, never a
half-written one (a rename within one filesystem is atomic).

``staging_beside(final)`` makes ``.NAME.partial-<random>`` next to ``final``; ``publish(staging,
final)`` renames it to ``final``, moving an existing ``final`` aside first and deleting it only
after the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def staging_beside(final: Path) -> Path:
    """A new, empty ``.NAME.partial-<random>`` directory in ``final``'s parent (created)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def publish(staging: Path, final: Path) -> None:
    """Rename the complete ``staging`` directory to ``final`` (replacing an old one only now)."""
    final = Path(final)
    if final.exists():
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)
