"""The one exception fine-tuning raises for bad input (printed by the CLI as one line)."""

from __future__ import annotations

from matforge.datasets.errors import MatforgeDataError


class FinetuneError(MatforgeDataError, ValueError):
    """Fine-tuning cannot start or finish; the message names the file or record and the reason."""
