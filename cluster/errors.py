"""The one error type of :mod:`matforge.cluster`: a problem the user can fix, said in one line.

``matforge cluster ...`` prints it as ``matforge: error: <message>`` and exits 2, never with a stack
trace. Messages name what was tried (the address, the file, the submission id) and what to change.
"""

from __future__ import annotations


class ClusterError(Exception):
    """A submission or job query that cannot go on; ``str(err)`` is one line.

    ``transient`` marks a lost connection, which following a job may wait out.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(one_line(message))
        self.transient = transient


def one_line(text: str, limit: int = 400) -> str:
    """``text`` with its lines joined by ``; `` and whitespace collapsed, cut at ``limit`` characters."""
    parts = [" ".join(line.split()) for line in str(text).splitlines()]
    joined = "; ".join(part for part in parts if part)
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"
