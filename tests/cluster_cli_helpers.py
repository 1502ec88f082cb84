"""Small helpers shared by the in-process tests of ``matforge cluster``."""

from __future__ import annotations

import socket

import pytest


def closed_port() -> int:
    """A localhost port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("matforge: error: "), err
    return lines[0]
