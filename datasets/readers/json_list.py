"""Read a source file that is one JSON list of records (MatDeepLearn, mlearn), or refuse it cleanly.

The stdlib decoder is used rather than a streaming one (ijson) on purpose: these files are a few MB,
and Python-written JSON may hold ``NaN``/``Infinity`` tokens, which the stdlib accepts (so a NaN
label becomes one skipped record) while yajl-based streaming parsers reject the whole file.
``.gz`` files are decompressed transparently.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from matforge.datasets.errors import SourceError


def looks_like_json_list(head: bytes) -> bool:
    """True if the first bytes of a file open a JSON list (after whitespace / a UTF-8 BOM)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def load_json_list(path: Path, what: str) -> list[Any]:
    """The top-level list of ``path``; :class:`SourceError` if the file is unreadable, truncated,
    not JSON, not a list, or an empty list. ``what`` names the elements in messages ("structures")."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except OSError as exc:
        raise SourceError(path, f"cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SourceError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        if not exc.doc.strip():
            raise SourceError(path, "file is empty") from None
        at_end = exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
        hint = "; the file looks truncated" if at_end else ""
        raise SourceError(path, f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}){hint}") from None
    except RecursionError:
        raise SourceError(path, "JSON nested too deeply") from None
    if not isinstance(data, list):
        raise SourceError(path, f"expected a JSON list of {what}, found a {type(data).__name__}")
    if not data:
        raise SourceError(path, f"holds no {what} (empty list)")
    return data
